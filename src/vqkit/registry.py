"""Registry of pretrained models that ship with vqkit, looked up by short names such as "image-rqvae-64".

Each entry names the model class as a "module:Class" string and the checkpoint folder under
checkpoints/, so listing models imports neither torch nor any model code.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from vqkit._imports import import_object, validate_import_spec
from vqkit._paths import data_folder

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# Lowercase letters, digits, ".", "_" and "-". A name never contains "/", so it cannot be
# mistaken for a Hugging Face Hub repo id ("owner/name") in `from_pretrained`.
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class ModelEntry:
    """A registered pretrained model: its short name, class, checkpoint folder and description."""

    name: str
    model_class: str
    """Import path of the model class, "package.module:Class"."""
    checkpoint: str
    """Checkpoint folder, relative to `checkpoints_root()`, with POSIX separators."""
    description: str
    """One line for `vqkit list` and the demo's About tab."""
    train_command: str = ""
    """Command that trains the checkpoint, shown when its folder is missing; empty when there is none."""

    @property
    def path(self) -> Path:
        """Absolute path of the checkpoint folder. It may not exist."""
        return checkpoints_root() / self.checkpoint

    def import_class(self) -> type:
        """Import and return the model class."""
        model_class = import_object(self.model_class)
        if not isinstance(model_class, type):
            raise TypeError(f"{self.model_class!r}, registered for model {self.name!r}, is not a class")
        return model_class

    def require_checkpoint(self) -> Path:
        """Return `path`, or raise FileNotFoundError saying how to restore or train it when the folder is missing."""
        folder = self.path
        if folder.is_dir():
            return folder
        if self.train_command:
            remedy = f"Train it with `{self.train_command}` from the repository root."
        else:
            remedy = "Restore it from the vqkit repository, or reinstall vqkit."
        raise FileNotFoundError(f"checkpoint folder for model {self.name!r} not found: {folder}. {remedy}")


# Models that ship with vqkit, one ModelEntry per folder under checkpoints/.
_SHIPPED_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        "image-rqvae-64",
        "vqkit.tokenizers.image:ImageTokenizer",
        "image-rqvae-64",
        "RQ-VAE image tokenizer trained on 64x64 photo crops: 4 residual levels, 512 shared codes, 4x downsampling",
        train_command="vqkit train image-tokenizer --config small --out checkpoints/image-rqvae-64",
    ),
    ModelEntry(
        "lm-tokfsm-base",
        "vqkit.models.causal_lm:CausalLM",
        "lm-tokfsm-base",
        "Plain Llama-style LM (4 layers, d=128) trained on TokFSM sequences of a 100-state machine",
        train_command="vqkit train codebook-lm --config tokfsm-base --out checkpoints/lm-tokfsm-base",
    ),
    ModelEntry(
        "codebook-lm-tokfsm-k1",
        "vqkit.models.codebook_lm:CodebookLM",
        "codebook-lm-tokfsm-k1",
        "lm-tokfsm-base with 1000-code, k=1 codebooks at every attention and MLP output, codes trained on the frozen LM",
        train_command=(
            "vqkit train codebook-lm --config tokfsm-codebook --base checkpoints/lm-tokfsm-base "
            "--out checkpoints/codebook-lm-tokfsm-k1"
        ),
    ),
    ModelEntry(
        "lm-text-base",
        "vqkit.models.causal_lm:CausalLM",
        "lm-text-base",
        "Plain Llama-style LM (4 layers, d=256, 4096-token byte-level BPE) trained on Python's documentation",
        train_command="vqkit train codebook-lm --config text-base --out checkpoints/lm-text-base",
    ),
    ModelEntry(
        "codebook-lm-text-k8",
        "vqkit.models.codebook_lm:CodebookLM",
        "codebook-lm-text-k8",
        "lm-text-base with 2000-code, k=8 codebooks on every attention head's output, codes trained on the frozen LM",
        train_command=(
            "vqkit train codebook-lm --config text-codebook --base checkpoints/lm-text-base "
            "--out checkpoints/codebook-lm-text-k8"
        ),
    ),
    ModelEntry(
        "speech-vocoder",
        "vqkit.tokenizers.vocoder:ISTFTVocoder",
        "speech-vocoder",
        "Vocos-style iSTFT vocoder, 80-band log-mel to 16 kHz audio, shared by every speech codec",
        train_command="vqkit train speech-codec --config vocoder --out checkpoints/speech-vocoder",
    ),
    ModelEntry(
        "speech-lscodec-50hz",
        "vqkit.tokenizers.speech:SpeechCodec",
        "speech-lscodec-50hz",
        "LSCodec speech codec, 50 codes/s from one 300-code codebook (450 bit/s), speaker-decoupled, prompted decoder",
        train_command=(
            "vqkit train speech-codec --config lscodec-50hz-vae --out runs/lscodec-50hz-vae-model && "
            "vqkit train speech-codec --config lscodec-50hz --init-from runs/lscodec-50hz-vae-model "
            "--out checkpoints/speech-lscodec-50hz"
        ),
    ),
    ModelEntry(
        "speech-lscodec-25hz",
        "vqkit.tokenizers.speech:SpeechCodec",
        "speech-lscodec-25hz",
        "LSCodec speech codec, 25 codes/s from one 1024-code codebook (250 bit/s), speaker-decoupled, prompted decoder",
        train_command=(
            "vqkit train speech-codec --config lscodec-25hz-vae --out runs/lscodec-25hz-vae-model && "
            "vqkit train speech-codec --config lscodec-25hz --init-from runs/lscodec-25hz-vae-model "
            "--out checkpoints/speech-lscodec-25hz"
        ),
    ),
    ModelEntry(
        "speech-rvq-25hz",
        "vqkit.tokenizers.speech:SpeechCodec",
        "speech-rvq-25hz",
        "EnCodec-style baseline: 2 residual 512-code codebooks at 25 frames/s (450 bit/s), no prompt, no perturbation",
        train_command="vqkit train speech-codec --config rvq-25hz-2x512 --out checkpoints/speech-rvq-25hz",
    ),
)

_models: dict[str, ModelEntry] = {entry.name: entry for entry in _SHIPPED_MODELS}


def checkpoints_root() -> Path:
    """Return the folder of shipped checkpoints: the installed vqkit/checkpoints, else the repository's checkpoints/."""
    return data_folder("checkpoints")


def register_model(
    name: str,
    model_class: str,
    checkpoint: str,
    description: str,
    *,
    train_command: str = "",
    replace: bool = False,
) -> ModelEntry:
    """Register a pretrained model under a short name and return its entry.

    `model_class` is a "package.module:Class" string, imported only when the model is loaded.
    `checkpoint` is a folder relative to `checkpoints_root()`. `train_command`, when given, is
    the command line that trains the checkpoint, shown when the folder is missing. Registering
    a name again with the same values does nothing, and with other values raises ValueError
    unless `replace` is true.
    """
    entry = _make_entry(name, model_class, checkpoint, description, train_command)
    existing = _models.get(name)
    if existing is not None and existing != entry and not replace:
        raise ValueError(
            f"model name {name!r} is already registered for {existing.model_class} "
            f"({existing.checkpoint}). Pick another name, or pass replace=True to overwrite it."
        )
    _models[name] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove a registered model. Raises ValueError when `name` is not registered."""
    get_model_entry(name)
    del _models[name]


def _make_entry(name: str, model_class: str, checkpoint: str, description: str, train_command: str = "") -> ModelEntry:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, for example 'image-rqvae-64'"
        )
    validate_import_spec(model_class, f"model class for {name!r}")
    checkpoint_path = PurePosixPath(checkpoint)
    if checkpoint_path.is_absolute() or ".." in checkpoint_path.parts or str(checkpoint_path) in ("", "."):
        raise ValueError(
            f"invalid checkpoint folder {checkpoint!r} for model {name!r}: give a folder "
            "relative to checkpoints/, such as 'image-rqvae-64', without '..'"
        )
    if not description or "\n" in description:
        raise ValueError(f"invalid description {description!r} for model {name!r}: give one non-empty line")
    if not isinstance(train_command, str) or "\n" in train_command:
        raise ValueError(f"invalid train_command {train_command!r} for model {name!r}: give one line or ''")
    return ModelEntry(name, model_class, str(checkpoint_path), description, train_command)


def is_registered(name: Any) -> bool:
    """Return whether `name` is a registered model name."""
    return isinstance(name, str) and name in _models


def get_model_entry(name: str) -> ModelEntry:
    """Return the entry registered under `name`. Raises ValueError listing the known names when there is none."""
    entry = _models.get(name) if isinstance(name, str) else None
    if entry is None:
        known = ", ".join(sorted(_models)) or "none are registered yet"
        raise ValueError(
            f"unknown model name {name!r}. Known names: {known}. "
            "Run `vqkit list` to see them with their descriptions."
        )
    return entry


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_models)


def model_entries() -> list[ModelEntry]:
    """Return the registered model entries, sorted by name."""
    return [_models[name] for name in sorted(_models)]


def load(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load the registered model `name` from its shipped checkpoint onto `device`, in eval mode.

    Raises ValueError for an unknown name or an unusable device, and FileNotFoundError when
    the checkpoint folder is missing.
    """
    from vqkit.hub import VQKitModelMixin

    entry = get_model_entry(name)
    model_class = entry.import_class()
    if not issubclass(model_class, VQKitModelMixin):
        raise TypeError(
            f"model class {entry.model_class}, registered for {name!r}, does not inherit "
            "vqkit.hub.VQKitModelMixin, so vqkit cannot load its checkpoint"
        )

    folder = entry.require_checkpoint()
    logger.info("Loading model %s (%s) from %s onto %s", name, entry.model_class, folder, device)
    return model_class.from_pretrained(str(folder), map_location=device)
