"""`vqkit eval codebook-lm`: the evaluation of the codebook-feature language models.

    vqkit eval codebook-lm                      # shipped checkpoints, writes results/codebook_lm.*
    vqkit eval codebook-lm --only tokfsm --pairs 50

TokFSM: transition accuracy over sampled generations and first-transition accuracy, for the
plain and the codebook model. The codebook model also gets the state purity of every site and
steering by codes, per layer and per site.

Text: test-split perplexity of the base and the codebook model. The codebook model also gets a
code search for three token sets, and the rate at which forcing the best codes steers
generation into each set.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vqkit.evals.machine import describe_machine

logger = logging.getLogger(__name__)

USAGE_ERROR = 2
DEFAULT_MODELS = {
    "tokfsm_plain": "lm-tokfsm-base",
    "tokfsm_codebook": "codebook-lm-tokfsm-k1",
    "text_base": "lm-text-base",
    "text_codebook": "codebook-lm-text-k8",
}


def load_model(name: str, device: str):
    """Load a registered model name or a checkpoint folder as `CausalLM` or `CodebookLM`, in eval mode."""
    import json

    from vqkit import registry
    from vqkit.models.causal_lm import CausalLM
    from vqkit.models.codebook_lm import CodebookLM

    if name in registry.list_models():
        return registry.load(name, device=device)
    folder = Path(name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{name!r} is neither a registered model nor a checkpoint folder with config.json")
    model_class = CodebookLM if "codebook_size" in json.loads(config_file.read_text()) else CausalLM
    return model_class.from_pretrained(str(folder), map_location=device)


def check_role(model, role: str, name: str) -> None:
    """Raise ValueError when `model` cannot play `role` ("tokfsm_plain", "text_codebook", ...)."""
    from vqkit.models.codebook_lm import CodebookLM

    if role.endswith("codebook") and not isinstance(model, CodebookLM):
        raise ValueError(f"--{role.replace('_', '-')} {name} is a plain model; pass a codebook model")
    if role.startswith("tokfsm") and model.vocab_size != 11:
        raise ValueError(f"--{role.replace('_', '-')} {name} has {model.vocab_size} tokens; pass a TokFSM model (11 tokens)")
    if role.startswith("text") and model.tokenizer is None:
        raise ValueError(f"--{role.replace('_', '-')} {name} has no tokenizer; pass a text model")


def evaluate_tokfsm(plain, codebook, *, generations: int, pairs: int, progress: bool) -> dict[str, Any]:
    """Return TokFSM accuracies for both models, and purity and steering rows for the codebook model."""
    from vqkit.data.fsm import FSM
    from vqkit.evals import tokfsm_metrics as fsm_metrics

    fsm = FSM()
    models = {"plain": plain, "codebook": codebook}
    accuracy = {}
    for name, model in models.items():
        started = time.perf_counter()
        accuracy[name] = {
            "first_transition_accuracy": fsm_metrics.first_transition_accuracy(model, fsm),
            "transition_accuracy": fsm_metrics.transition_accuracy(model, fsm, num_sequences=generations),
            "seconds": time.perf_counter() - started,
        }
        logger.info("TokFSM %s: %s", name, accuracy[name])

    purity = fsm_metrics.state_purity(codebook, fsm)
    layers = sorted({int(site.split(".")[1]) for site in codebook.sites})
    site_sets = {f"layers.{layer}": [s for s in codebook.sites if s.startswith(f"layers.{layer}.")] for layer in layers}
    site_sets.update({site: [site] for site in codebook.sites})
    steering = fsm_metrics.steering_by_layer(codebook, fsm, num_pairs=pairs, site_sets=site_sets)
    return {
        "fsm": {"num_states": fsm.num_states, "num_edges": fsm.num_edges, "seed": fsm.seed},
        "generations": generations,
        "pairs": pairs,
        "accuracy": accuracy,
        "purity": purity,
        "steering": steering,
    }


def evaluate_text(base, codebook, *, windows: int, prompts: int, new_tokens: int, progress: bool) -> dict[str, Any]:
    """Return test perplexity of both models, the code search and the steering rates."""
    from vqkit.data.text import TextCorpus, TokenWindows
    from vqkit.evals import codebook_text_metrics as text_metrics

    tokenizer = codebook.tokenizer
    corpus = TextCorpus.load(vocab_size=len(tokenizer))
    seq_len = 256
    test = TokenWindows(corpus.tokens("test"), seq_len, mode="sequential")
    scored = [test[i] for i in range(min(windows, len(test)))]
    perplexity = {
        "base": base.perplexity(scored, progress=progress),
        "codebook": codebook.perplexity(scored, progress=progress),
        "windows": len(scored),
        "tokens_per_window": seq_len,
    }
    logger.info("Text perplexity: %s", perplexity)

    # Codes are searched on the validation split and steering prompts come from the test split.
    validation = TokenWindows(corpus.tokens("validation"), seq_len, mode="sequential")
    activations = text_metrics.collect_activations(
        codebook, [validation[i] for i in range(min(64, len(validation)))], progress=progress
    )
    prompt_windows = [test[i][:16] for i in range(0, min(len(test), 4 * prompts), 4)][:prompts]
    searches = {}
    for set_name in text_metrics.TOKEN_SETS:
        in_set = text_metrics.token_set_ids(tokenizer, set_name)
        # Codes that fire on the set's tokens, then codes that fire just before them.
        codes = []
        for offset in (0, 1):
            found = text_metrics.search_codes(activations, in_set, min_count=10, top=3, offset=offset)
            codes += [{**row, "offset": offset} for row in found]
        for row in codes:
            row.update(
                text_metrics.steering_rate(
                    codebook, prompt_windows, in_set, [(row["site"], row["group"], row["code"])], max_new_tokens=new_tokens
                )
            )
            row["example_contexts"] = [
                "".join(parts) for parts in text_metrics.code_contexts(tokenizer, activations, row["site"], row["code"], row["group"], limit=3)
            ]
        # All codes found for the set forced together, one per site and group.
        combined = list({(row["site"], row["group"]): (row["site"], row["group"], row["code"]) for row in codes}.values())
        together = {"codes": combined, **text_metrics.steering_rate(codebook, prompt_windows, in_set, combined, max_new_tokens=new_tokens)}
        searches[set_name] = {"vocabulary_tokens": int(in_set.sum()), "codes": codes, "combined": together}
        logger.info("Code search %s: %s", set_name, codes[:1])
    return {
        "perplexity": perplexity,
        "code_search": searches,
        "prompts": len(prompt_windows),
        "new_tokens": new_tokens,
    }


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit eval codebook-lm",
        description="Evaluate the codebook-feature LMs: TokFSM accuracy, purity and steering; text perplexity, "
        "code search and steering. Writes JSON, Markdown and a plot.",
    )
    for key, default in DEFAULT_MODELS.items():
        flag = "--" + key.replace("_", "-")
        parser.add_argument(flag, default=default, help=f"registered model or checkpoint folder (default: {default})")
    parser.add_argument("--only", choices=("tokfsm", "text"), help="run one of the two parts")
    parser.add_argument("--generations", type=int, default=100, help="sampled TokFSM generations (default: 100)")
    parser.add_argument("--pairs", type=int, default=100, help="state pairs per steering row (default: 100)")
    parser.add_argument(
        "--windows", type=int, default=10_000, help="at most this many 256-token test windows (default: 10000)"
    )
    parser.add_argument("--prompts", type=int, default=20, help="text prompts per steering measurement (default: 20)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt (default: 32)")
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for the result files (default: ./results)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit eval codebook-lm ARGS`, print the Markdown report and return the exit status."""
    from vqkit.evals.codebook_lm_report import write_results

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    for name in ("generations", "pairs", "windows", "prompts", "new_tokens"):
        if getattr(args, name) < 1:
            print(f"vqkit eval codebook-lm: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return USAGE_ERROR
    if args.out.exists() and not args.out.is_dir():
        print(f"vqkit eval codebook-lm: --out {args.out} is a file; pass a folder", file=sys.stderr)
        return USAGE_ERROR
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"vqkit eval codebook-lm: invalid --device {args.device!r}; pass cpu, cuda or cuda:N", file=sys.stderr)
        return USAGE_ERROR
    if device.type == "cuda" and not torch.cuda.is_available():
        print("vqkit eval codebook-lm: --device cuda requested, but CUDA is not available; pass --device cpu", file=sys.stderr)
        return USAGE_ERROR
    progress = not args.no_progress
    results: dict[str, Any] = {
        "command": " ".join(["vqkit eval codebook-lm", *map(shlex.quote, argv)]),
        "machine": describe_machine(torch.device(args.device)),
        "models": {},
    }
    try:
        if args.only in (None, "tokfsm"):
            plain, codebook = load_model(args.tokfsm_plain, args.device), load_model(args.tokfsm_codebook, args.device)
            check_role(plain, "tokfsm_plain", args.tokfsm_plain)
            check_role(codebook, "tokfsm_codebook", args.tokfsm_codebook)
            results["models"].update(tokfsm_plain=args.tokfsm_plain, tokfsm_codebook=args.tokfsm_codebook)
            results["tokfsm"] = evaluate_tokfsm(plain, codebook, generations=args.generations, pairs=args.pairs, progress=progress)
        if args.only in (None, "text"):
            base, codebook = load_model(args.text_base, args.device), load_model(args.text_codebook, args.device)
            check_role(base, "text_base", args.text_base)
            check_role(codebook, "text_codebook", args.text_codebook)
            results["models"].update(text_base=args.text_base, text_codebook=args.text_codebook)
            results["text"] = evaluate_text(
                base, codebook, windows=args.windows, prompts=args.prompts, new_tokens=args.new_tokens, progress=progress
            )
    except (ValueError, FileNotFoundError) as error:
        print(f"vqkit eval codebook-lm: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR
    print(write_results(args.out, results), end="")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
