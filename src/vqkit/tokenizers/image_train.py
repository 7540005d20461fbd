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
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vqkit.data.images import PhotoCrops, eval_photos
from vqkit.tokenizers.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from vqkit.tokenizers.image import ImageTokenizer
from vqkit.training import (
    DistributedContext,
    cosine_learning_rate,
    load_optimizer_state,
    load_training_state,
    optimizer_state_tensors,
    prefixed,
    save_training_state,
    setup_distributed,
)

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"
# Version of the training-state layout; bump it when the tensor names or metadata change.
STATE_FORMAT = 1

# Settings that may differ between the interrupted run and `--resume`. Any other difference
# would change the loss curve, so it raises ValueError.
RESUMABLE_CHANGES = ("steps", "eval_every", "save_every")


@dataclass
class ImageTrainConfig:
    """Hyperparameters of one image-tokenizer training run.

    `model` contains `ImageTokenizer` constructor arguments; the model's seed is `seed`.
    `batch_size` is the global batch, split evenly across torchrun ranks. The discriminator
    is off while `discriminator_start` is None; otherwise its hinge loss, weighted by
    `discriminator_weight`, joins the generator loss from that step on.
    """

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    crop_size: int = 64
    batch_size: int = 16
    steps: int = 6000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 500
    save_every: int = 500
    seed: int = 0
    discriminator_start: int | None = None
    discriminator_weight: float = 0.1
    discriminator_lr: float = 2e-4
    lpips_weight: float = 0.0

    def validate(self) -> None:
        """Raise ValueError for settings that cannot train."""
        positive = {
            "crop_size": self.crop_size,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "save_every": self.save_every,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.discriminator_start is not None and self.discriminator_start < 0:
            raise ValueError(f"discriminator_start must be >= 0 or None, got {self.discriminator_start!r}")
        if self.lpips_weight:
            # NOTE: LPIPS is not implemented. Every LPIPS implementation scores with a VGG16 or
            # AlexNet trained on ImageNet, whose weights would have to be downloaded.
            raise ValueError(
                f"lpips_weight={self.lpips_weight} requested, but the LPIPS loss needs pretrained "
                "VGG16 weights downloaded from the internet, and vqkit never downloads weights at run "
                "time. Set lpips_weight to 0; the loss is L1 + MSE + quantizer loss (+ GAN)."
            )


# Named configurations. "small" is the model registered as image-rqvae-64; "tiny" is for tests.
CONFIGS: dict[str, ImageTrainConfig] = {
    "tiny": ImageTrainConfig(
        name="tiny",
        model={
            "block_out_channels": (16, 32),
            "norm_num_groups": 8,
            "latent_channels": 16,
            "codebook_size": 64,
            "depth": 3,
        },
        crop_size=32,
        batch_size=8,
        steps=20,
        learning_rate=2e-3,
        warmup_steps=2,
        eval_every=10,
        save_every=10,
    ),
    # NOTE: 6000 steps should take about 43 minutes on a 2-core x86_64 CPU, an estimate from
    # 2.35 steps/s measured at batch 16 with torch 2.14.1 plus 2.6 s per evaluation. Whether
    # the loss has converged by then is unverified.
    "small": ImageTrainConfig(name="small", crop_size=64, batch_size=16, steps=6000),
    # NOTE: "large" has not been trained to convergence; its step count and learning rate
    # are unmeasured guesses for a GPU run.
    "large": ImageTrainConfig(name="large", crop_size=128, batch_size=16, steps=20000, learning_rate=5e-4),
}


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

    saved = None
    if state_file.is_file():
        if not resume:
            raise FileExistsError(
                f"training state already exists at {state_file}. Pass --resume to continue that run, "
                "or delete the folder (or choose another --state-dir) to start a new one."
            )
        saved = load_training_state(state_file)
        config = _resumed_config(config, saved[1], state_file)
    elif resume:
        logger.info("No training state at %s, starting a new run", state_file)
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
        start_step = _restore(saved, model, optimizer, discriminator, discriminator_optimizer)
        logger.info("Resuming from step %d of %d (%s)", start_step, config.steps, state_file)
    if context.is_main:
        _prepare_output(out_dir, state_dir, start_step)

    if eval_images is None:
        eval_images = eval_photos() if context.is_main else {}
    runner = _Runner(config, context, model, optimizer, discriminator, discriminator_optimizer, eval_images)
    return runner.run(start_step, out_dir, state_dir, progress=progress, on_step=on_step)


# The quantizer keeps its codebook buffers identical on all ranks itself, so DDP need not copy
# them from rank 0 before every forward. torch 2.14 deprecates `broadcast_buffers` in favour of
# `forward_sync_buffers`, which older versions lack.
if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
    _NO_BUFFER_SYNC = {"forward_sync_buffers": False}
else:
    _NO_BUFFER_SYNC = {"broadcast_buffers": False}


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
            self.train_model = DistributedDataParallel(model, device_ids=device_ids, **_NO_BUFFER_SYNC)
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
                _append_metrics(state_dir, metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", perplexity=f"{metrics['perplexity']:.0f}")

            completed = step + 1
            is_last = completed == config.steps
            if context.is_main and self.eval_images and (completed % config.eval_every == 0 or is_last):
                evaluation = self.evaluate(completed, all_depths=is_last)
                evaluations.append(evaluation)
                _append_metrics(state_dir, evaluation)
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

        metrics = {name: float(value) for name, value in _mean_over_ranks(values).items()}
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
            tensors, metadata = _state_tensors(
                self.model, self.optimizer, self.discriminator, self.discriminator_optimizer
            )
            metadata.update(step=step, config=_config_to_json(self.config), format=STATE_FORMAT)
            save_training_state(state_dir / STATE_FILE, tensors, metadata)
            self.model.save_pretrained(out_dir)
            logger.info("Saved step %d to %s and %s in %.1f s", step, state_dir, out_dir, time.perf_counter() - started)
        if self.context.world_size > 1:
            dist.barrier()


# ---- state and configuration -------------------------------------------------------------------


def _state_tensors(model, optimizer, discriminator, discriminator_optimizer) -> tuple[dict[str, Tensor], dict]:
    tensors = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = optimizer_state_tensors(optimizer, "optimizer")
    tensors.update(optimizer_tensors)
    metadata: dict[str, Any] = {"optimizer": optimizer_meta}
    if discriminator is not None:
        tensors.update({f"discriminator.{name}": t for name, t in discriminator.state_dict().items()})
        disc_tensors, disc_meta = optimizer_state_tensors(discriminator_optimizer, "discriminator_optimizer")
        tensors.update(disc_tensors)
        metadata["discriminator_optimizer"] = disc_meta

    # The codebook's generator drives k-means and dead-code restarts; it is not in the state dict.
    tensors["rng.torch"] = torch.get_rng_state()
    for level, codebook in enumerate(model.quantizer.codebooks):
        tensors[f"rng.codebook.{level}"] = codebook.generator.get_state()
    return tensors, metadata


def _restore(saved, model, optimizer, discriminator, discriminator_optimizer) -> int:
    """Load a training state into the freshly built objects; return its completed steps.

    `Optimizer.load_state_dict` moves the moments to the device of the parameters.
    """
    tensors, metadata = saved
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(
            f"training state has format {metadata.get('format')!r}, this vqkit reads format {STATE_FORMAT}; "
            "start a new run"
        )
    model.load_state_dict(prefixed(tensors, "model"))
    load_optimizer_state(optimizer, tensors, metadata["optimizer"], "optimizer")
    if discriminator is not None:
        discriminator.load_state_dict(prefixed(tensors, "discriminator"))
        load_optimizer_state(
            discriminator_optimizer, tensors, metadata["discriminator_optimizer"], "discriminator_optimizer"
        )

    torch.set_rng_state(tensors["rng.torch"])
    for level, codebook in enumerate(model.quantizer.codebooks):
        codebook.generator.set_state(tensors[f"rng.codebook.{level}"])
    return int(metadata["step"])


def full_model_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return `model_kwargs` completed with the `ImageTokenizer` defaults, without `seed`.

    Storing every argument keeps a training state resumable when a default changes later.
    """
    parameters = inspect.signature(ImageTokenizer.__init__).parameters
    unknown = sorted(set(model_kwargs) - set(parameters) - {"self"})
    if unknown:
        raise ValueError(f"unknown ImageTokenizer arguments in the model configuration: {', '.join(unknown)}")
    values = {
        name: parameter.default
        for name, parameter in parameters.items()
        if name not in ("self", "seed") and parameter.default is not inspect.Parameter.empty
    }
    values.update({name: value for name, value in model_kwargs.items() if name != "seed"})
    values["block_out_channels"] = tuple(values["block_out_channels"])
    return values


def _config_to_json(config: ImageTrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _config_from_json(values: dict[str, Any]) -> ImageTrainConfig:
    values = dict(values)
    values["betas"] = tuple(values["betas"])
    model = dict(values.pop("model"))
    if "block_out_channels" in model:
        model["block_out_channels"] = tuple(model["block_out_channels"])
    return ImageTrainConfig(model=model, **values)


def _resumed_config(requested: ImageTrainConfig, metadata: dict[str, Any], state_file: Path) -> ImageTrainConfig:
    """Return the stored configuration with the resumable changes from `requested` applied."""
    stored = _config_from_json(metadata["config"])
    requested_values = _config_to_json(requested)
    stored_values = _config_to_json(stored)
    conflicts = [
        f"{name}={requested_values[name]!r} (checkpoint: {stored_values[name]!r})"
        for name in stored_values
        if name not in RESUMABLE_CHANGES and requested_values[name] != stored_values[name]
    ]
    if conflicts:
        raise ValueError(
            f"cannot resume {state_file}: it was trained with other settings: {'; '.join(conflicts)}. "
            "Pass the original settings, or start a new run with another --state-dir."
        )
    changes = {name: getattr(requested, name) for name in RESUMABLE_CHANGES}
    if changes["steps"] != stored.steps:
        logger.warning(
            "Resuming with steps=%d instead of %d: the learning-rate schedule changes from here on",
            changes["steps"],
            stored.steps,
        )
    if int(metadata["step"]) > changes["steps"]:
        raise ValueError(
            f"cannot resume {state_file}: it is at step {metadata['step']}, past the requested "
            f"steps={changes['steps']}. Pass --steps {metadata['step']} or more."
        )
    return dataclasses.replace(stored, **changes)


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
    state_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = state_dir / METRICS_FILE
    if start_step == 0:
        metrics_file.unlink(missing_ok=True)
        return
    if metrics_file.is_file():
        # Steps after the checkpoint ran in the interrupted run and run again now.
        kept_lines = [
            line
            for line in metrics_file.read_text().splitlines()
            if line.strip() and int(json.loads(line)["step"]) <= start_step
        ]
        metrics_file.write_text("".join(line + "\n" for line in kept_lines))


def _append_metrics(state_dir: Path, record: dict[str, float]) -> None:
    with open(state_dir / METRICS_FILE, "a") as file:
        file.write(json.dumps(record) + "\n")


def _mean_over_ranks(values: dict[str, Tensor]) -> dict[str, Tensor]:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    stacked = torch.stack([value.float() for value in values.values()])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked))


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
    parser.add_argument("--out", required=True, type=Path, help="folder for the model checkpoint (save_pretrained)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the training state and metrics.jsonl (default: runs/NAME, NAME being the --out folder name)",
    )
    parser.add_argument("--steps", type=int, help="total optimizer steps, counted from step 0 (default: from --config)")
    parser.add_argument("--resume", action="store_true", help="continue from the training state in --state-dir, if any")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, help="global batch size, split across torchrun ranks")
    parser.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    parser.add_argument("--eval-every", type=int, help="steps between held-out PSNR evaluations")
    parser.add_argument("--save-every", type=int, help="steps between checkpoints")
    parser.add_argument("--seed", type=int, help="seed of the model initialisation, codebook and crops")
    parser.add_argument(
        "--gan-start", type=int, help="step from which the PatchGAN hinge loss is added (default: off)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the tqdm progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> ImageTrainConfig:
    """Return the named configuration with the command-line overrides applied."""
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "eval_every": args.eval_every,
        "save_every": args.save_every,
        "seed": args.seed,
        "discriminator_start": args.gan_start,
    }
    overrides = {name: value for name, value in overrides.items() if value is not None}
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
