"""Named configurations of `vqkit train speech-codec`: the shared vocoder, the two LSCodec stages at
50 Hz and 25 Hz, and the EnCodec-style residual baseline.

Stages:
- "vocoder": `ISTFTVocoder` from log-mel of the clean audio back to the waveform.
- "vae": LSCodec stage 1, a sampled bottleneck with a KL term, perturbed input, prompted decoder.
- "vq": LSCodec stage 2; starts from a "vae" checkpoint (`init_from`) and quantizes the mean.
- "rvq": the baseline, residual codes of the clean input, trained end to end without a prompt.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

STAGES = ("vocoder", "vae", "vq", "rvq")
CORPORA = ("default", "tiny")


@dataclass(frozen=True)
class SpeechTrainConfig:
    """Settings of one speech training run.

    `model` contains `SpeechCodec` (or, for the "vocoder" stage, `ISTFTVocoder`) constructor
    arguments. `batch_size` is the global batch, split across torchrun ranks.
    """

    name: str
    stage: str
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    """Stage-1 checkpoint folder that the "vq" stage starts from."""
    corpus: str = "default"
    """"default" (22 voices, about 4 hours) or "tiny" (the test corpus)."""
    crop_seconds: float = 3.2
    batch_size: int = 16
    steps: int = 3000
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    save_every: int = 250
    seed: int = 0
    perturb: bool = True
    """Encode speaker-perturbed audio (speed change, then the inverse tempo change)."""
    speed_range: tuple[float, float] = (0.8, 1.25)
    """Perturbation speeds are drawn log-uniformly from this range."""
    prompt_fraction: tuple[float, float] = (1 / 3, 1 / 2)
    """Length of the prompt cut from the crop, as a fraction of the crop."""
    codebook_warmup_steps: int = 300
    """Steps after the k-means initialisation with the codes frozen. EMA updates and dead-code
    restarts start after them."""
    token_fit_clips: int = 256
    """Training crops used to fit the MFCC k-means targets at the start of the "vae" stage."""

    def validate(self) -> None:
        """Raise ValueError for settings that cannot train, naming the setting and the fix."""
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus {self.corpus!r} is not one of {CORPORA}")
        for name in ("batch_size", "steps", "eval_every", "save_every", "token_fit_clips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning rate {self.learning_rate} must be a positive number (--lr)")
        if not self.crop_seconds >= 0.32:
            raise ValueError(f"crop_seconds={self.crop_seconds} is too short; use at least 0.32 s")
        low, high = self.speed_range
        if not 0.5 <= low <= high <= 2.0:
            raise ValueError(f"speed_range {self.speed_range} must satisfy 0.5 <= low <= high <= 2.0")
        low, high = self.prompt_fraction
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"prompt_fraction {self.prompt_fraction} must satisfy 0 < low <= high < 1")
        if self.stage == "vq" and not self.init_from:
            raise ValueError("the 'vq' stage starts from a stage-1 model: pass --init-from FOLDER (a 'vae' checkpoint)")


_LSCODEC_50HZ = {"frame_rate": 50, "codebook_size": 300}
_LSCODEC_25HZ = {"frame_rate": 25, "codebook_size": 1024}
# 25 frames/s x 2 codebooks x 9 bits = 450 bits/s, the bitrate of LSCodec at 50 Hz.
_RVQ_25HZ = {
    "frame_rate": 25,
    "codebook_size": 512,
    "quantizer": "rvq",
    "num_quantizers": 2,
    "use_prompt": False,
    "mfcc_clusters": 0,
}
_TINY_MODEL = {
    "encoder_channels": 32,
    "decoder_dim": 32,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "mfcc_clusters": 8,
    "codebook_size": 16,
    "latent_dim": 8,
}
_TINY_RUN = {
    "corpus": "tiny",
    "crop_seconds": 0.64,
    "batch_size": 4,
    "steps": 6,
    "warmup_steps": 2,
    "eval_every": 3,
    "save_every": 3,
    "codebook_warmup_steps": 2,
    "token_fit_clips": 8,
}

CONFIGS: dict[str, SpeechTrainConfig] = {
    config.name: config
    for config in (
        SpeechTrainConfig(
            "vocoder", "vocoder", crop_seconds=1.0, steps=6000, learning_rate=1e-3, eval_every=1000, perturb=False
        ),
        SpeechTrainConfig("lscodec-50hz-vae", "vae", dict(_LSCODEC_50HZ), steps=3000),
        SpeechTrainConfig("lscodec-50hz", "vq", dict(_LSCODEC_50HZ), steps=1500, learning_rate=5e-4),
        SpeechTrainConfig("lscodec-25hz-vae", "vae", dict(_LSCODEC_25HZ), steps=3000),
        SpeechTrainConfig("lscodec-25hz", "vq", dict(_LSCODEC_25HZ), steps=1500, learning_rate=5e-4),
        # The baseline trains its encoder from scratch, so its codes follow the encoder from the
        # k-means fit on. With a frozen warm-up the encoder outputs drifted away from the codes.
        SpeechTrainConfig(
            "rvq-25hz-2x512", "rvq", dict(_RVQ_25HZ), steps=2000, perturb=False, codebook_warmup_steps=0
        ),
        SpeechTrainConfig("tiny-vocoder", "vocoder", {"channels": 16, "num_blocks": 1}, perturb=False, **_TINY_RUN),
        SpeechTrainConfig("tiny-vae", "vae", dict(_TINY_MODEL), **_TINY_RUN),
        SpeechTrainConfig("tiny-vq", "vq", dict(_TINY_MODEL), **_TINY_RUN),
        SpeechTrainConfig(
            "tiny-rvq", "rvq", {**_TINY_MODEL, **_RVQ_25HZ, "codebook_size": 16}, perturb=False, **_TINY_RUN
        ),
    )
}

# Settings that may differ between an interrupted run and `--resume`.
RESUMABLE_CHANGES = ("steps", "eval_every", "save_every")


def config_to_json(config: SpeechTrainConfig) -> dict[str, Any]:
    """Return the configuration as JSON values (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_json(values: dict[str, Any]) -> SpeechTrainConfig:
    """Inverse of `config_to_json`."""
    values = dict(values)
    for name in ("speed_range", "prompt_fraction"):
        values[name] = tuple(values[name])
    return SpeechTrainConfig(**values)
