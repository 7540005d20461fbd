"""Training state of the image tokenizer: the tensors that `--resume` needs, and the checks on resume.

`vqkit.training.save_training_state` and `load_training_state` write and read the file. This
module collects its tensors (model and discriminator weights, optimizer moments,
random-generator states), restores them, and merges a resumed run's configuration with the
stored one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from vqkit.tokenizers.image_train_config import (
    ImageTrainConfig,
    config_from_json,
    config_to_json,
)
from vqkit.training import (
    load_optimizer_state,
    merge_resumed_config,
    model_state_tensors,
    optimizer_state_tensors,
    prefixed,
    restore_model_state,
)

logger = logging.getLogger(__name__)

# Version of the training-state layout; bump it when the tensor names or metadata change.
STATE_FORMAT = 2

# Settings that may differ between the interrupted run and `--resume`. Any other difference
# would change the loss curve, so it raises ValueError.
RESUMABLE_CHANGES = ("steps", "eval_every", "save_every")


def state_tensors(model, optimizer, discriminator, discriminator_optimizer) -> tuple[dict[str, Tensor], dict]:
    """Collect the tensors and JSON metadata of a training state; the caller adds step, config and format."""
    tensors, metadata = model_state_tensors(model, optimizer)
    if discriminator is not None:
        tensors.update({f"discriminator.{name}": t for name, t in discriminator.state_dict().items()})
        disc_tensors, disc_meta = optimizer_state_tensors(discriminator_optimizer, "discriminator_optimizer")
        tensors.update(disc_tensors)
        metadata["discriminator_optimizer"] = disc_meta
    return tensors, metadata


def restore_state(saved, model, optimizer, discriminator, discriminator_optimizer) -> int:
    """Load a training state into the freshly built objects; return its completed steps.

    `Optimizer.load_state_dict` moves the moments to the device of the parameters.
    """
    step = restore_model_state(saved, model, optimizer, STATE_FORMAT)
    tensors, metadata = saved
    if discriminator is not None:
        discriminator.load_state_dict(prefixed(tensors, "discriminator"))
        load_optimizer_state(
            discriminator_optimizer, tensors, metadata["discriminator_optimizer"], "discriminator_optimizer"
        )
    return step


def resumed_config(requested: ImageTrainConfig, metadata: dict[str, Any], state_file: Path) -> ImageTrainConfig:
    """Return the stored configuration with the resumable changes from `requested` applied."""
    return merge_resumed_config(
        requested, config_from_json(metadata["config"]), int(metadata["step"]), state_file, RESUMABLE_CHANGES, config_to_json
    )
