"""Training loop of the image tokenizer: `vqkit train image-tokenizer`.

    vqkit train image-tokenizer --config small --out checkpoints/image-rqvae-64 --steps 5000
    vqkit train image-tokenizer --config small --out checkpoints/image-rqvae-64 --steps 5000 --resume
    torchrun --nproc_per_node 2 -m vqkit.cli train image-tokenizer --config small --out ...

The model trains on random crops of the bundled training photos (`vqkit.data.images`) with
AdamW, a linear warm-up and cosine decay, and gradient clipping. Every `eval_every` steps
rank 0 reports the PSNR of the held-out photos, reconstructed whole. Every `save_every`
steps, and at the end, rank 0 writes

- `STATE_DIR/training_state.safetensors`: model weights, optimizer moments, the step and
  the random-generator states, enough to continue the same run with `--resume`;
- `OUT/`: the model alone, through `save_pretrained`, loadable with
  `ImageTokenizer.from_pretrained(OUT)`;
- `STATE_DIR/metrics.jsonl`: one JSON line of losses per step and one per evaluation.

Batches are a function of the step number (item `step * batch_size + i` of `PhotoCrops`), so
a resumed run trains on the same batches as an uninterrupted one and continues its loss curve.
Under torchrun each rank takes its slice of the global batch, and DDP averages gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vqkit.cli_types import add_training_run_arguments, positive_int, training_overrides
from vqkit.data.images import PhotoCrops, eval_photos
from vqkit.tokenizers.discriminator import (
    PatchDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from vqkit.tokenizers.image import ImageTokenizer
from vqkit.tokenizers.image_train_config import (
    CONFIGS,
    ImageTrainConfig,
    config_to_json,
    full_model_kwargs,
)
from vqkit.tokenizers.image_train_state import (
    STATE_FORMAT,
    restore_state,
    resumed_config,
    state_tensors,
)
from vqkit.training import (
    DDP_NO_BUFFER_SYNC,
    DistributedContext,
    append_metrics,
    cosine_learning_rate,
    load_resumable_state,
    mean_over_ranks,
    prepare_metrics_file,
    save_training_state,
    setup_distributed,
)

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """Record of one `train` call: the steps it ran, the metrics it recorded and the trained model."""

    start_step: int
    """Completed steps when the run started: 0, or the step of the resumed checkpoint."""
    final_step: int
    history: list[dict[str, float]]
    """One entry per training step of this run: step (completed steps), loss, l1, mse, ..."""
    evaluations: list[dict[str, float]]
    """One entry per evaluation: step and PSNR of the held-out photos, per depth at the end."""
    model: ImageTokenizer
    """The trained model, in training mode, on the training device."""


def train(
    config: ImageTrainConfig,
    out_dir: str | Path,
    state_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    eval_images: dict[str, Tensor] | None = None,
) -> TrainResult:
    """Train an `ImageTokenizer` as `config` describes; write checkpoints to `out_dir` and `state_dir`.

    With `resume`, training continues from `state_dir`'s training state when there is one,
    using the configuration stored there; only the settings in `RESUMABLE_CHANGES` may
    differ. Without `resume`, an existing training state raises FileExistsError rather than
    being overwritten. `on_step(completed_steps, metrics)` is called on every rank after each
    step, after any checkpoint of that step is written. `eval_images` maps names to float
    (3, H, W) images in [0, 1] for the PSNR evaluation; it defaults to the held-out photos.
    Joins the torchrun process group when the environment describes one.
    """
    config.validate()
    config = dataclasses.replace(config, model=full_model_kwargs(config.model))
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    state_file = state_dir / STATE_FILE
    context = setup_distributed(device)

    saved = load_resumable_state(state_file, resume)
    if saved is not None:
        config = resumed_config(config, saved[1], state_file)
    _check_batch_split(config, context)

    torch.manual_seed(config.seed)
    model = ImageTokenizer(**{**config.model, "seed": config.seed}).to(context.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay
    )
    discriminator, discriminator_optimizer = None, None
    if config.discriminator_start is not None:
        discriminator = PatchDiscriminator().to(context.device)
        discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_lr, betas=(0.5, 0.9))

    start_step = 0
    if saved is not None:
        start_step = restore_state(saved, model, optimizer, discriminator, discriminator_optimizer)
        logger.info("Resuming from step %d of %d (%s)", start_step, config.steps, state_file)
    if context.is_main:
        _prepare_output(out_dir, state_dir, start_step)

    if eval_images is None:
        eval_images = eval_photos() if context.is_main else {}
    runner = _Runner(config, context, model, optimizer, discriminator, discriminator_optimizer, eval_images)
    return runner.run(start_step, out_dir, state_dir, progress=progress, on_step=on_step)


class _Runner:
    """The loop itself, with the objects that every step uses."""

    def __init__(self, config, context, model, optimizer, discriminator, discriminator_optimizer, eval_images):
        self.config: ImageTrainConfig = config
        self.context: DistributedContext = context
        self.model: ImageTokenizer = model
        self.optimizer = optimizer
        self.discriminator: PatchDiscriminator | None = discriminator
        self.discriminator_optimizer = discriminator_optimizer
        self.dataset = PhotoCrops(config.crop_size, seed=config.seed, length=config.steps * config.batch_size)
        self.eval_images = eval_images

        self.train_model: nn.Module = model
        self.train_discriminator: nn.Module | None = discriminator
        if context.world_size > 1:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(model, device_ids=device_ids, **DDP_NO_BUFFER_SYNC)
            if discriminator is not None:
                self.train_discriminator = DistributedDataParallel(discriminator, device_ids=device_ids)

    def run(self, start_step, out_dir, state_dir, *, progress, on_step) -> TrainResult:
        config, context = self.config, self.context
        history: list[dict[str, float]] = []
        evaluations: list[dict[str, float]] = []
        bar = None
        if progress and context.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=start_step, desc="train image-tokenizer", unit="step")

        self.model.train()
        for step in range(start_step, config.steps):
            metrics = self.train_step(step)
            history.append(metrics)
            if context.is_main:
                append_metrics(state_dir / METRICS_FILE, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", perplexity=f"{metrics['perplexity']:.0f}")

            completed = step + 1
            is_last = completed == config.steps
            if context.is_main and self.eval_images and (completed % config.eval_every == 0 or is_last):
                evaluation = self.evaluate(completed, all_depths=is_last)
                evaluations.append(evaluation)
                append_metrics(state_dir / METRICS_FILE, evaluation)
                scores = ", ".join(f"{k} {v:.2f}" for k, v in evaluation.items() if k.startswith("psnr"))
                message = f"step {completed}: held-out {scores} dB"
                if bar is not None:
                    bar.write(message)
                else:
                    logger.info(message)
            if completed % config.save_every == 0 or is_last:
                self.save(completed, out_dir, state_dir)
            if on_step is not None:
                on_step(completed, metrics)

        if bar is not None:
            bar.close()
        if context.world_size > 1:
            dist.barrier()
        return TrainResult(start_step, config.steps, history, evaluations, self.model)

    def train_step(self, step: int) -> dict[str, float]:
        config = self.config
        learning_rate = cosine_learning_rate(
            step, config.steps, config.learning_rate, config.warmup_steps, config.final_lr_fraction
        )
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

        batch = self.batch(step)
        output = self.train_model(batch)
        loss = output.loss
        use_discriminator = self.discriminator is not None and step >= config.discriminator_start
        generator_loss = None
        if use_discriminator:
            # Frozen, so that the generator loss sends gradients to the tokenizer only.
            self.discriminator.requires_grad_(False)
            generator_loss = hinge_generator_loss(self.discriminator(output.reconstruction))
            self.discriminator.requires_grad_(True)
            loss = loss + config.discriminator_weight * generator_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()

        values = {
            "loss": loss.detach(),
            "l1": output.l1_loss.detach(),
            "mse": output.mse_loss.detach(),
            "quantizer_loss": output.quantizer_loss.detach(),
            "grad_norm": grad_norm.detach(),
        }
        if use_discriminator:
            real_and_fake = torch.cat([batch, output.reconstruction.detach()])
            logits = self.train_discriminator(real_and_fake)
            real_logits, fake_logits = logits.chunk(2)
            discriminator_loss = hinge_discriminator_loss(real_logits, fake_logits)
            self.discriminator_optimizer.zero_grad(set_to_none=True)
            discriminator_loss.backward()
            self.discriminator_optimizer.step()
            values["generator_loss"] = generator_loss.detach()
            values["discriminator_loss"] = discriminator_loss.detach()

        metrics = {name: float(value) for name, value in mean_over_ranks(values).items()}
        metrics["step"] = step + 1
        metrics["lr"] = learning_rate
        metrics["perplexity"] = float(output.quantizer.perplexity)
        metrics["dead_codes"] = int(output.quantizer.dead_codes)
        return metrics

    def batch(self, step: int) -> Tensor:
        """Return this rank's slice of the global batch of `step`, on the training device."""
        per_rank = self.config.batch_size // self.context.world_size
        first = step * self.config.batch_size + self.context.rank * per_rank
        crops = [self.dataset[index] for index in range(first, first + per_rank)]
        return torch.stack(crops).to(self.context.device)

    @torch.no_grad()
    def evaluate(self, step: int, all_depths: bool) -> dict[str, float]:
        """Return the mean PSNR in dB of the held-out photos, at full depth or at every depth."""
        depths = range(1, self.model.depth + 1) if all_depths else [self.model.depth]
        self.model.eval()
        try:
            result: dict[str, float] = {"step": step}
            for depth in depths:
                scores = [
                    _psnr(self.model.reconstruct(image[None].to(self.context.device), depth=depth), image)
                    for image in self.eval_images.values()
                ]
                key = "psnr" if depth == self.model.depth else f"psnr_depth_{depth}"
                result[key] = sum(scores) / len(scores)
            return result
        finally:
            self.model.train()

    def save(self, step: int, out_dir: Path, state_dir: Path) -> None:
        """Write the training state, then the model, on rank 0; the other ranks wait for it."""
        if self.context.is_main:
            started = time.perf_counter()
            tensors, metadata = state_tensors(
                self.model, self.optimizer, self.discriminator, self.discriminator_optimizer
            )
            metadata.update(step=step, config=config_to_json(self.config), format=STATE_FORMAT)
            save_training_state(state_dir / STATE_FILE, tensors, metadata)
            self.model.save_pretrained(out_dir)
            logger.info("Saved step %d to %s and %s in %.1f s", step, state_dir, out_dir, time.perf_counter() - started)
        if self.context.world_size > 1:
            dist.barrier()


def _check_batch_split(config: ImageTrainConfig, context: DistributedContext) -> None:
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} does not split evenly across {context.world_size} ranks; "
            "pass a multiple of the number of processes"
        )


def _prepare_output(out_dir: Path, state_dir: Path, start_step: int) -> None:
    """Fail early on an unusable output folder, and drop metrics recorded after the resumed step."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; pass a folder for the model checkpoint")
    prepare_metrics_file(state_dir / METRICS_FILE, start_step)


def _psnr(reconstruction: Tensor, image: Tensor) -> float:
    mse = float(((reconstruction[0].cpu() - image) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit train image-tokenizer",
        description="Train the RQ-VAE image tokenizer on crops of the bundled photos.",
    )
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS), help="named configuration (default: small)")
    add_training_run_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int(), help="global batch size, split across torchrun ranks")
    parser.add_argument("--eval-every", type=positive_int(), help="steps between held-out PSNR evaluations")
    parser.add_argument("--seed", type=int, help="seed of the model initialisation, codebook and crops")
    parser.add_argument(
        "--gan-start", type=int, help="step from which the PatchGAN hinge loss is added (default: off)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ImageTrainConfig:
    """Return the named configuration with the command-line overrides applied."""
    overrides = training_overrides(args)
    if args.gan_start is not None:
        overrides["discriminator_start"] = args.gan_start
    return dataclasses.replace(CONFIGS[args.config], **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit train image-tokenizer ARGS` and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        state_dir = args.state_dir or Path("runs") / args.out.resolve().name
        result = train(
            config, args.out, state_dir, resume=args.resume, device=args.device, progress=not args.no_progress
        )
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"vqkit train image-tokenizer: {error}\n")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    if result.evaluations:
        final = result.evaluations[-1]
        psnr = ", ".join(f"{k} {v:.2f} dB" for k, v in final.items() if k.startswith("psnr"))
        logger.info("Finished at step %d; held-out %s; model in %s", result.final_step, psnr, args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
