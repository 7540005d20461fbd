"""Training loop of the language models: `vqkit train codebook-lm`.

    vqkit train codebook-lm --config tokfsm-base --out checkpoints/tokfsm-base
    vqkit train codebook-lm --config tokfsm-codebook --base checkpoints/tokfsm-base --out checkpoints/tokfsm-codebook-k1
    vqkit train codebook-lm --config text-base --out checkpoints/text-base --resume
    torchrun --nproc_per_node 2 -m vqkit.cli train codebook-lm --config text-base --out ...

The "base" stage trains a plain `CausalLM` from scratch. The "codebook" stage loads a base
checkpoint, wraps it in a `CodebookLM` and fine-tunes everything with the language-model
loss plus the codebook loss. Training uses AdamW with a linear warm-up and cosine decay, and
gradient clipping. Every `eval_every` steps rank 0 reports first-transition accuracy
(TokFSM) or validation perplexity (text). Every `save_every` steps, and at the end, rank 0
writes the training state to `STATE_DIR/training_state.safetensors` (enough for `--resume`),
the model to `OUT/` with `save_pretrained`, and metrics to `STATE_DIR/metrics.jsonl`.

Batches are a function of the step number, so a resumed run trains on the same batches as
an uninterrupted one. Under torchrun each rank takes its slice of the global batch and DDP
averages gradients; the codebooks reduce their statistics across ranks themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vqkit.cli_types import add_training_run_arguments, positive_int, training_overrides
from vqkit.models.causal_lm import CausalLM
from vqkit.models.codebook_lm import CodebookLM
from vqkit.models.lm_train_config import (
    CONFIGS,
    RESUMABLE_CHANGES,
    LMTrainConfig,
    config_from_json,
    config_to_json,
)
from vqkit.training import (
    cosine_learning_rate,
    finish_step,
    mean_over_ranks,
    prepare_metrics_file,
    restore_model_state,
    save_run,
    start_run,
    wrap_for_ranks,
)

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = 2


def build_model(config: LMTrainConfig, base: str | Path | None) -> CausalLM:
    """Return the untrained model of `config`: a fresh `CausalLM`, `base` wrapped in a `CodebookLM`,
    or, for a codebook stage with `lm_config` and no `base`, a `CodebookLM` trained from scratch."""
    if config.stage == "base":
        if base is not None:
            raise ValueError("--base applies to codebook-stage configurations only; a base stage trains from scratch")
        return CausalLM(config.lm_config)
    if base is None:
        if config.lm_config:
            return CodebookLM(config.lm_config, **{**config.codebook, "seed": config.seed})
        raise ValueError("the codebook stage fine-tunes a trained model: pass --base with a base-stage checkpoint")
    plain = _load_base(config, base)
    return CodebookLM.from_hf(plain.lm, tokenizer=plain.tokenizer, **{**config.codebook, "seed": config.seed})


def build_optimizer(model: CausalLM, config: LMTrainConfig) -> torch.optim.AdamW:
    """Return AdamW over the trained parameters, with the peak learning rate of each group as `peak_lr`.

    Codes train at `learning_rate` without weight decay. The LM weights train at
    `lm_learning_rate` (default: `learning_rate`); at 0 they are frozen and left out.
    """
    codebook_parameters = [p for name, p in model.named_parameters() if name.startswith("bottlenecks.")]
    lm_parameters = [p for name, p in model.named_parameters() if not name.startswith("bottlenecks.")]
    lm_learning_rate = config.learning_rate if config.lm_learning_rate is None else config.lm_learning_rate
    groups = []
    if lm_learning_rate > 0:
        groups.append({"params": lm_parameters, "peak_lr": lm_learning_rate, "weight_decay": config.weight_decay})
    else:
        for parameter in lm_parameters:
            parameter.requires_grad_(False)
    if codebook_parameters:
        groups.append({"params": codebook_parameters, "peak_lr": config.learning_rate, "weight_decay": 0.0})
    if not groups:
        raise ValueError("nothing to train: lm_learning_rate is 0 and the model has no codebooks")
    return torch.optim.AdamW([{**group, "lr": group["peak_lr"]} for group in groups])


def _load_base(config: LMTrainConfig, base: str | Path) -> CausalLM:
    """Load a base-stage checkpoint folder or registered name, and check that it suits `config`'s task."""

    from vqkit import registry

    if str(base) in registry.list_models():
        base = registry.get_model_entry(str(base)).require_checkpoint()
    config_file = Path(base) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"base checkpoint not found: {base} has no config.json. Pass a folder that `vqkit train codebook-lm` wrote in the base stage")
    stored = json.loads(config_file.read_text())
    if "codebook_size" in stored:
        raise ValueError(f"--base {base} is a codebook model; pass the plain base-stage checkpoint it was trained from")
    plain = CausalLM.from_pretrained(str(base))
    expected_vocab = 11 if config.task == "tokfsm" else config.text_vocab_size
    if plain.vocab_size != expected_vocab:
        raise ValueError(
            f"--base {base} has a vocabulary of {plain.vocab_size} tokens, but the {config.task} task needs "
            f"{expected_vocab}; pass a base checkpoint trained on {config.task}"
        )
    return plain


class _Batches:
    """The training batches and evaluation of one task, as functions of the step number."""

    def __init__(self, config: LMTrainConfig, model: CausalLM):
        self.config = config
        if config.task == "tokfsm":
            from vqkit.data.fsm import FSM, FSMSequences

            self.fsm = FSM()
            self.dataset = FSMSequences(self.fsm, config.fsm_states_per_sequence, seed=config.seed)
        else:
            from vqkit.data.text import TextCorpus, TokenWindows

            corpus = TextCorpus.load(
                source=config.text_source,
                vocab_size=config.text_vocab_size,
                max_documents_per_split=config.text_max_documents,
            )
            if model.tokenizer is None:
                model.tokenizer = corpus.tokenizer
            self.dataset = TokenWindows(corpus.tokens("train"), config.seq_len, seed=config.seed)
            validation = TokenWindows(corpus.tokens("validation"), config.seq_len, mode="sequential")
            self.validation = [validation[i] for i in range(min(config.eval_windows, len(validation)))]

    def batch(self, step: int, rank: int, world_size: int) -> Tensor:
        per_rank = self.config.batch_size // world_size
        first = step * self.config.batch_size + rank * per_rank
        return torch.stack([self.dataset[index] for index in range(first, first + per_rank)])

    def evaluate(self, model: CausalLM) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            if self.config.task == "tokfsm":
                from vqkit.evals.tokfsm_metrics import first_transition_accuracy

                return {"first_transition_accuracy": first_transition_accuracy(model, self.fsm)}
            return {"validation_perplexity": model.perplexity(self.validation)}
        finally:
            model.train(was_training)


def train(
    config: LMTrainConfig,
    out_dir: str | Path,
    state_dir: str | Path,
    *,
    base: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> CausalLM:
    """Train the model that `config` describes; write checkpoints to `out_dir` and `state_dir`.

    With `resume`, training continues from `state_dir`'s training state when there is one,
    using the configuration stored there (only `RESUMABLE_CHANGES` may differ). Without it,
    an existing training state raises FileExistsError. Returns the trained model.
    """
    config.validate()
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    run = start_run(
        config, out_dir, state_dir, STATE_FILE, resume=resume, device=device, resumable=RESUMABLE_CHANGES,
        to_json=config_to_json, from_json=config_from_json,
    )  # fmt: skip
    config, context, saved = run.config, run.context, run.saved

    torch.manual_seed(config.seed)
    model = build_model(config, base).to(context.device)
    model.train()
    optimizer = build_optimizer(model, config)
    start_step = 0
    if saved is not None:
        start_step = restore_model_state(saved, model, optimizer, STATE_FORMAT)
        logger.info("Resuming from step %d of %d (%s)", start_step, config.steps, run.state_file)
    if context.is_main:
        prepare_metrics_file(state_dir / METRICS_FILE, start_step)

    trained_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    batches = _Batches(config, model)
    train_model = wrap_for_ranks(model, context)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps,
        initial=start_step,
        desc=f"train {config.task} {config.stage}",
        unit="step",
        disable=not (progress and context.is_main),
    )
    for step in range(start_step, config.steps):
        learning_rate = cosine_learning_rate(
            step, config.steps, config.learning_rate, config.warmup_steps, config.final_lr_fraction
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * group["peak_lr"] / config.learning_rate

        tokens = batches.batch(step, context.rank, context.world_size).to(context.device)
        output = train_model(tokens, labels=tokens)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained_parameters, config.grad_clip)
        optimizer.step()

        metrics = _step_metrics(output, grad_norm)
        metrics.update(step=step + 1, lr=learning_rate)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")

        metadata = {"config": config_to_json(config), "format": STATE_FORMAT}
        finish_step(
            step + 1, config, context, metrics, state_dir / METRICS_FILE,
            evaluate=partial(batches.evaluate, model),
            save=partial(save_run, step + 1, model, optimizer, out_dir, run.state_file, context, metadata, prepare=_unshared),
            bar=bar,
        )  # fmt: skip
    bar.close()
    if context.world_size > 1:
        dist.barrier()
    return model


def _step_metrics(output: Any, grad_norm: Tensor) -> dict[str, float]:
    values = {"loss": output.loss.detach(), "grad_norm": grad_norm.detach()}
    if isinstance(output.loss, Tensor) and hasattr(output, "lm_loss"):
        values.update(
            lm_loss=output.lm_loss.detach(),
            codebook_loss=output.codebook_loss.detach(),
            code_perplexity=output.perplexity.detach(),
        )
    metrics = {name: float(value) for name, value in mean_over_ranks(values).items()}
    if hasattr(output, "dead_codes"):
        metrics["dead_codes"] = int(output.dead_codes)
    return metrics


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copy the tensors that share memory with an earlier one (tied embeddings), which safetensors rejects."""
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        result[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit train codebook-lm",
        description="Train a plain language model (base stage) or fine-tune it with codebooks (codebook stage).",
    )
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS), help="named configuration")
    parser.add_argument(
        "--base", type=Path, help="base-stage checkpoint folder or registered name that the codebook stage starts from"
    )
    add_training_run_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int(), help="global batch size in sequences")
    parser.add_argument("--eval-every", type=positive_int(), help="steps between evaluations")
    parser.add_argument("--seed", type=int, help="seed of the initialisation, codebooks and batches")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit train codebook-lm ARGS` and return the exit status."""
    args = build_parser().parse_args(argv)
    config = dataclasses.replace(CONFIGS[args.config], **training_overrides(args))
    state_dir = args.state_dir or Path("runs") / args.out.resolve().name
    try:
        train(config, args.out, state_dir, base=args.base, resume=args.resume, device=args.device, progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    return 0
