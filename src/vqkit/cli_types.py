"""Argument types and options shared by vqkit's command lines and benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def positive_int(value_name: str = "value") -> Callable[[str], int]:
    """Return an argparse type that parses an integer >= 1. `value_name` names the value in its error."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"invalid {value_name} {value!r}: give an integer >= 1")
        return number

    return parse


def training_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Return the configuration fields that the shared training options set, leaving out options not given."""
    values = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "eval_every": args.eval_every,
        "save_every": args.save_every,
        "seed": args.seed,
    }
    return {name: value for name, value in values.items() if value is not None}


def add_training_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that every `vqkit train` target shares: output folders, steps, resume,
    device, learning rate, checkpoint interval and the progress bar."""
    parser.add_argument("--out", required=True, type=Path, help="folder for the model checkpoint (save_pretrained)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the training state and metrics.jsonl (default: runs/NAME, NAME being the --out folder name)",
    )
    parser.add_argument("--steps", type=positive_int(), help="total optimizer steps, counted from step 0 (default: from --config)")
    parser.add_argument("--resume", action="store_true", help="continue from the training state in --state-dir, if any")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    parser.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    parser.add_argument("--save-every", type=positive_int(), help="steps between checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="do not show the tqdm progress bar")
