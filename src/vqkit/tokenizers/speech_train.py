"""Training loop of the speech codec and its vocoder: `vqkit train speech-codec`.

    vqkit train speech-codec --config vocoder --out checkpoints/speech-vocoder --resume
    vqkit train speech-codec --config lscodec-50hz-vae --out runs/lscodec-50hz-vae-model --resume
    vqkit train speech-codec --config lscodec-50hz --init-from runs/lscodec-50hz-vae-model \\
        --out checkpoints/speech-lscodec-50hz --resume
    torchrun --nproc_per_node 2 -m vqkit.cli train speech-codec --config ...

Batches are crops of the synthesized corpus (`vqkit.data.speech`), a function of the step
number, so `--resume` continues the same run. Each training crop gets its own perturbation
speed; each step draws one prompt length and side for its whole batch. AdamW with a linear
warm-up and cosine decay, gradient clipping, tqdm progress, held-out loss every `eval_every`
steps. Every `save_every` steps rank 0 writes `STATE_DIR/training_state.safetensors` (weights,
optimizer, random state, codebook state), the model to `OUT/` with `save_pretrained`, and
appends to `STATE_DIR/metrics.jsonl`.

The "vq" and "rvq" stages skip optimizer steps until the codebook's k-means fit has collected
its vectors, then keep the codes frozen for `codebook_warmup_steps` before EMA updates and
dead-code restarts begin.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from vqkit.cli_types import add_training_run_arguments, positive_int, training_overrides
from vqkit.data.common import item_rng
from vqkit.data.speech import SpeechCorpus, SpeechCorpusConfig, SpeechCrops
from vqkit.quantizers.codebook import Codebook
from vqkit.quantizers.kmeans import kmeans
from vqkit.tokenizers.speech import N_MFCC, SpeechCodec
from vqkit.tokenizers.speech_audio import speech_levels_db
from vqkit.tokenizers.speech_features import LogMel, perturb_speaker
from vqkit.tokenizers.speech_train_config import (
    CONFIGS,
    RESUMABLE_CHANGES,
    SpeechTrainConfig,
    config_from_json,
    config_to_json,
)
from vqkit.tokenizers.vocoder import (
    ISTFTVocoder,
    mel_l1_loss,
    multi_resolution_stft_loss,
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
STATE_FORMAT = 1
EVAL_CROPS = 16


def load_corpus(name: str, progress: bool = True) -> SpeechCorpus:
    """Build (first time) or open the corpus that a configuration names."""
    config = SpeechCorpusConfig.tiny() if name == "tiny" else SpeechCorpusConfig()
    return SpeechCorpus.build(config, progress=progress)


def training_level_db(corpus: SpeechCorpus, progress: bool = True) -> float:
    """Return the median active speech level of the training split's utterances, in dB re full scale, to 0.1 dB.

    It becomes the codec's `input_level_db`: the level that inference scales its input to.
    """
    from tqdm.auto import tqdm

    utterances = tqdm(corpus.utterances("train"), desc="speech level", unit="file", disable=not progress)
    levels = speech_levels_db(item.load() for item in utterances)
    return round(statistics.median(levels), 1)


def check_init_from(config: SpeechTrainConfig) -> None:
    """Raise FileNotFoundError when a 'vq' stage's `init_from` is not a folder."""
    if config.stage == "vq" and not Path(config.init_from).expanduser().is_dir():
        raise FileNotFoundError(
            f"--init-from {config.init_from} is not a folder; pass the folder that the stage-1 ('vae') run wrote with --out"
        )


def build_model(config: SpeechTrainConfig, input_level_db: float | None = None) -> nn.Module:
    """Return the model of a stage: an `ISTFTVocoder`, or a `SpeechCodec` (from `init_from` for "vq").

    `input_level_db` is the codec's inference input level (`training_level_db`).
    """
    if config.stage == "vocoder":
        return ISTFTVocoder(**config.model)
    model = SpeechCodec(**{**config.model, "seed": config.seed, "input_level_db": input_level_db})
    if config.stage == "vq":
        stage_one = SpeechCodec.from_pretrained(config.init_from)
        weights = {k: v for k, v in stage_one.state_dict().items() if not k.startswith("quantizer.")}
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as error:  # tensor sizes differ
            missing, unexpected = [str(error).splitlines()[1].strip()], []
        if unexpected or any(not name.startswith("quantizer.") for name in missing):
            raise ValueError(
                f"--init-from {config.init_from} does not match the configured model "
                f"({(unexpected or missing)[0]}); pass the stage-1 checkpoint of the same configuration"
            )
    return model


@torch.no_grad()
def fit_token_targets(codec: SpeechCodec, waveforms: Tensor, generator: torch.Generator) -> None:
    """Fit the codec's MFCC standardisation and k-means centres on float (B, samples) 16 kHz training audio."""
    frames = codec.mfcc(waveforms.to(codec.device)).reshape(-1, N_MFCC)
    codec.mfcc_mean.copy_(frames.mean(dim=0))
    codec.mfcc_std.copy_(frames.std(dim=0).clamp_min(1e-3))
    standardized = (frames - codec.mfcc_mean) / codec.mfcc_std
    centroids, _ = kmeans(standardized.cpu(), codec.mfcc_clusters, iters=20, generator=generator)
    codec.mfcc_centroids.copy_(centroids)


@dataclass
class Batch:
    clean: Tensor
    """(B, samples) float at 16 kHz."""
    perturbed: Tensor | None
    prompt_frames: int
    prompt_first: bool


class _Batches:
    """Training and held-out batches, each a function of its step (and rank)."""

    def __init__(self, config: SpeechTrainConfig, corpus: SpeechCorpus, samples_per_frame: int):
        self.config = config
        # Whole code frames, so that every crop maps onto the frame grid.
        frames = max(2, round(config.crop_seconds * 16_000 / samples_per_frame))
        self.crop_seconds = frames * samples_per_frame / 16_000
        self.mel_frames = frames * samples_per_frame // 160
        self.downsample = samples_per_frame // 160
        self.train = SpeechCrops(
            corpus, "train", self.crop_seconds, seed=config.seed, length=config.steps * config.batch_size
        )
        self.held_out = SpeechCrops(corpus, "test_seen", self.crop_seconds, seed=config.seed + 1, length=EVAL_CROPS)

    def _perturbed(self, clean: Tensor, indices: range) -> Tensor | None:
        if not self.config.perturb:
            return None
        low, high = self.config.speed_range
        rows = []
        for row, index in zip(clean, indices):
            speed = math.exp(item_rng(self.config.seed + 2, index).uniform(math.log(low), math.log(high)))
            rows.append(perturb_speaker(row[None], speed)[0])
        return torch.stack(rows)

    def _prompt(self, step: int) -> tuple[int, bool]:
        rng = np.random.default_rng([self.config.seed + 3, step])
        low, high = self.config.prompt_fraction
        frames = round(rng.uniform(low, high) * self.mel_frames / self.downsample) * self.downsample
        return max(self.downsample, frames), bool(rng.integers(2))

    def batch(self, step: int, rank: int, world_size: int) -> Batch:
        per_rank = self.config.batch_size // world_size
        first = step * self.config.batch_size + rank * per_rank
        indices = range(first, first + per_rank)
        clean = torch.stack([self.train[index][0] for index in indices])
        return Batch(clean, self._perturbed(clean, indices), *self._prompt(step))

    def held_out_batch(self) -> Batch:
        clean = torch.stack([self.held_out[index][0] for index in range(EVAL_CROPS)])
        prompt = (round(self.mel_frames / 3 / self.downsample) * self.downsample) or self.downsample
        return Batch(clean, None, prompt, True)


def _codebooks(model: nn.Module) -> list[Codebook]:
    return [module for module in model.modules() if isinstance(module, Codebook)]


def compute_losses(
    model: nn.Module, stage: str, batch: Batch, device: torch.device, log_mel: LogMel
) -> dict[str, Tensor]:
    """Return the scalar losses of one batch. The optimizer minimises "loss"."""
    clean = batch.clean.to(device)
    if stage == "vocoder":
        mel = log_mel(clean)[..., : clean.shape[-1] // 160]
        audio = model(mel)
        stft = multi_resolution_stft_loss(audio, clean)
        mel_l1 = mel_l1_loss(audio, clean, log_mel)
        return {"loss": stft + mel_l1, "stft": stft, "mel_l1": mel_l1}

    perturbed = batch.perturbed.to(device) if batch.perturbed is not None else None
    output = model(clean, perturbed, batch.prompt_frames, batch.prompt_first, quantize=stage != "vae")
    return {
        "loss": output.loss,
        "mel_l1": output.mel_l1,
        "token_ce": output.token_ce,
        "kl": output.kl,
        "quantizer_loss": output.quantizer_loss,
        "perplexity": output.perplexity,
        "dead_codes": output.dead_codes,
    }


def train(
    config: SpeechTrainConfig,
    out_dir: str | Path,
    state_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> nn.Module:
    """Train the stage that `config` describes; write checkpoints to `out_dir` and `state_dir`.

    With `resume`, continue from `state_dir`'s training state when there is one (only
    `RESUMABLE_CHANGES` may differ). Without it, an existing state raises FileExistsError.
    Returns the trained model. Joins the torchrun process group when the environment has one.
    """
    config.validate()
    check_init_from(config)
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    run = start_run(
        config, out_dir, state_dir, STATE_FILE, resume=resume, device=device, resumable=RESUMABLE_CHANGES,
        to_json=config_to_json, from_json=config_from_json,
    )  # fmt: skip
    config, context, saved = run.config, run.context, run.saved

    torch.manual_seed(config.seed)
    corpus = load_corpus(config.corpus, progress=progress and context.is_main)
    level = None if config.stage == "vocoder" else training_level_db(corpus, progress and context.is_main)
    model = build_model(config, level).to(context.device)
    model.train()
    samples_per_frame = 160 if config.stage == "vocoder" else model.samples_per_frame
    batches = _Batches(config, corpus, samples_per_frame)
    if config.stage == "vae" and saved is None:
        clips = torch.stack([batches.train[index][0] for index in range(config.token_fit_clips)])
        fit_token_targets(model, clips, torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)

    start_step = 0
    if saved is not None:
        start_step = restore_model_state(saved, model, optimizer, STATE_FORMAT)
        logger.info("Resuming from step %d of %d (%s)", start_step, config.steps, run.state_file)
    if context.is_main:
        prepare_metrics_file(state_dir / METRICS_FILE, start_step)

    train_model = wrap_for_ranks(model, context)
    log_mel = LogMel().to(context.device)
    codebooks = _codebooks(model) if config.stage in ("vq", "rvq") else []

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps,
        initial=start_step,
        desc=f"train {config.name}",
        unit="step",
        disable=not (progress and context.is_main),
    )
    for step in range(start_step, config.steps):
        learning_rate = cosine_learning_rate(
            step, config.steps, config.learning_rate, config.warmup_steps, config.final_lr_fraction
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        for codebook in codebooks:
            codebook.frozen = _codebook_warming_up(codebook, step, config)

        batch = batches.batch(step, context.rank, context.world_size)
        losses = compute_losses(train_model, config.stage, batch, context.device, log_mel)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if all(bool(codebook.initialized) for codebook in codebooks):
            optimizer.step()

        metrics = {
            name: float(value) for name, value in mean_over_ranks({k: v.detach() for k, v in losses.items()}).items()
        }
        metrics.update(step=step + 1, lr=learning_rate, grad_norm=float(grad_norm))
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")

        metadata = {"config": config_to_json(config), "format": STATE_FORMAT}
        finish_step(
            step + 1, config, context, metrics, state_dir / METRICS_FILE,
            evaluate=partial(_evaluate, model, config.stage, batches, context.device, log_mel),
            save=partial(save_run, step + 1, model, optimizer, out_dir, run.state_file, context, metadata),
            bar=bar,
        )  # fmt: skip
    bar.close()
    if context.world_size > 1:
        dist.barrier()
    return model


def _codebook_warming_up(codebook: Codebook, step: int, config: SpeechTrainConfig) -> bool:
    """Return whether `codebook` stays frozen at `step`: from its k-means fit until `codebook_warmup_steps` later.

    The fit happens on the first steps of the run, and the step it happened at is not stored.
    The warm-up is therefore counted from step 0, which differs from the fit by a few steps.
    """
    return bool(codebook.initialized) and step < config.codebook_warmup_steps


@torch.no_grad()
def _evaluate(
    model: nn.Module, stage: str, batches: _Batches, device: torch.device, log_mel: LogMel
) -> dict[str, float]:
    """Held-out losses on fixed crops of training speakers reading held-out sentences (no perturbation)."""
    model.eval()
    try:
        losses = compute_losses(model, stage, batches.held_out_batch(), device, log_mel)
    finally:
        model.train()
    keep = ("mel_l1", "stft", "token_ce")
    return {f"held_out_{name}": float(value) for name, value in losses.items() if name in keep}


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit train speech-codec",
        description="Train the LSCodec speech codec (stage 'vae', then 'vq'), the RVQ baseline or the shared vocoder.",
    )
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS), help="named configuration")
    add_training_run_arguments(parser)
    parser.add_argument("--init-from", help="stage-1 ('vae') checkpoint folder that a 'vq' stage starts from")
    parser.add_argument("--batch-size", type=positive_int(), help="global batch size, split across torchrun ranks")
    parser.add_argument("--eval-every", type=positive_int(), help="steps between held-out evaluations")
    parser.add_argument("--seed", type=int, help="seed of the model, codebook, crops and perturbations")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit train speech-codec ARGS` and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = training_overrides(args)
        if args.init_from is not None:
            overrides["init_from"] = args.init_from
        config = dataclasses.replace(CONFIGS[args.config], **overrides)
        state_dir = args.state_dir or Path("runs") / args.out.resolve().name
        train(config, args.out, state_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        parser.exit(2, f"vqkit train speech-codec: {error}\n")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    logger.info("Finished; model in %s", args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
