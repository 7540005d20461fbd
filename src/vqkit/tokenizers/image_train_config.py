"""Configuration of image-tokenizer training: the named configurations and their JSON form.

A training state stores its configuration as JSON with every `ImageTokenizer` argument
filled in (`full_model_kwargs`), so that `--resume` can compare it with the requested one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from vqkit.tokenizers.image import ImageTokenizer


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


def config_to_json(config: ImageTrainConfig) -> dict[str, Any]:
    """Return `config` as a dict of JSON types, with tuples turned into lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_json(values: dict[str, Any]) -> ImageTrainConfig:
    """Rebuild the configuration that `config_to_json` returned, with its tuples restored."""
    values = dict(values)
    values["betas"] = tuple(values["betas"])
    model = dict(values.pop("model"))
    if "block_out_channels" in model:
        model["block_out_channels"] = tuple(model["block_out_channels"])
    return ImageTrainConfig(model=model, **values)
