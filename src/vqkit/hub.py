"""Checkpoint saving and loading for vqkit models, in the Hugging Face Hub layout.

A checkpoint is a folder with `config.json` (the model's constructor arguments),
`model.safetensors` (the weights) and a generated `README.md` model card. Models get
`save_pretrained` and `from_pretrained` by inheriting `VQKitModelMixin`::

    class TinyCodec(nn.Module, VQKitModelMixin):
        def __init__(self, dim: int = 8, codebook_size: int = 512): ...

    TinyCodec(dim=16).save_pretrained("checkpoints/tiny")
    model = TinyCodec.from_pretrained("checkpoints/tiny")
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = constants.CONFIG_NAME
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE
MODEL_CARD_FILE = "README.md"

# Weight files in pickle format. vqkit never loads them, because unpickling can run
# arbitrary code. They are only named in error messages.
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
LOCAL_FOLDER_NAMES = ("checkpoints", "runs")
"""Folders that vqkit's commands write checkpoints to. "checkpoints/name" is always a local path, never a Hub repo id."""

ModelT = TypeVar("ModelT", bound="VQKitModelMixin")


class VQKitModelMixin(PyTorchModelHubMixin):
    """Mixin for `torch.nn.Module` subclasses that adds atomic, safetensors-only checkpoints.

    It changes three things in `huggingface_hub.PyTorchModelHubMixin`:

    - `save_pretrained` writes the checkpoint into a temporary sibling folder and renames it
      into place, so an interrupted save leaves the previous checkpoint as it was.
    - `from_pretrained` loads `model.safetensors` only. huggingface_hub 2.4 falls back to a
      pickled `pytorch_model.bin` when a Hub repo has no safetensors file; vqkit raises instead.
      It also loads with `strict=True` by default, where huggingface_hub defaults to False.
    - `from_pretrained` accepts a name registered in `vqkit.registry` besides a local folder
      or a Hub repo id.
    """

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        config: dict | Any | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write config.json, model.safetensors and README.md to `save_directory`, replacing it whole.

        The checkpoint is written to a hidden temporary folder next to `save_directory`,
        flushed to disk, then renamed into place. An existing README.md is kept, as
        huggingface_hub does. The previous folder is swapped out with two renames, so for a
        moment no folder exists at the path, but a reader never sees a partly written one.
        A process killed during the save leaves a hidden `.NAME.saving-*` folder, or, when
        killed between the two renames, the previous checkpoint in `.NAME.old-*`, for the
        user to delete or rename.

        Raises ValueError, before anything is replaced, when `save_directory` is a file or
        contains files that this save would not write, so that replacing it never deletes
        unrelated files. Returns the commit URL when `push_to_hub` is true, else None.
        """
        target = Path(os.path.realpath(save_directory))
        if target.exists() and not target.is_dir():
            raise ValueError(f"cannot save a checkpoint to {target}: it is a file. Pass a folder path.")
        target.parent.mkdir(parents=True, exist_ok=True)

        # Unlike tempfile.mkdtemp, which creates mode 0o700, mkdir applies the umask, so the
        # renamed checkpoint gets the same permissions as a folder created directly.
        staging = target.with_name(f".{target.name}.saving-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
        try:
            existing_card = target / MODEL_CARD_FILE
            if existing_card.is_file():
                shutil.copy2(existing_card, staging / MODEL_CARD_FILE)
            super().save_pretrained(staging, config=config, model_card_kwargs=model_card_kwargs)
            _apply_umask(staging)
            if target.is_dir():
                _check_replaceable(target, staging)
            _fsync_tree(staging)
            _replace_folder(staging, target)
        finally:
            # After a successful save the staging folder has become `target`, so this only
            # removes what a failed save left behind.
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("Saved checkpoint to %s", target)

        if not push_to_hub:
            return None
        if config is None:
            config = self._hub_mixin_config
        if config is not None:
            push_to_hub_kwargs["config"] = config
        return self.push_to_hub(
            repo_id=repo_id or target.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs
        )

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **kwargs: Any,
    ) -> ModelT:
        """Build the model from its config and load its safetensors weights, in eval mode.

        `pretrained_model_name_or_path` is tried in this order: a name registered in
        `vqkit.registry` (write "./name" to mean a local folder with the same name), a local
        folder, then a Hugging Face Hub repo id, which huggingface_hub downloads and caches.
        `map_location` is the device that receives the weights. With `strict`, missing or
        unexpected weight names raise RuntimeError. Other keyword arguments are passed to
        `huggingface_hub.ModelHubMixin.from_pretrained` (revision, cache_dir, token, ...) or
        override constructor arguments from config.json.
        """
        source = _resolve_registered_name(cls, pretrained_model_name_or_path)
        device = _validate_device(map_location)
        try:
            return super().from_pretrained(source, map_location=device, strict=strict, **kwargs)
        except (LocalEntryNotFoundError, RepositoryNotFoundError) as error:
            # Only a Hub repo id gets here. The source is not a folder here, and the Hub is
            # unreachable (offline, no cached copy) or has no such repo.
            reason = str(error).strip().splitlines()[0]
            raise FileNotFoundError(
                f"{source!r} is not a folder under {Path.cwd()} and could not be fetched from the Hugging Face "
                f"Hub ({reason}). Pass an existing checkpoint folder, a registered model name (`vqkit list`) "
                "or a reachable Hub repo id."
            ) from None

    @classmethod
    def _from_pretrained(
        cls: type[ModelT],
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> ModelT:
        import safetensors.torch

        weights_file = _find_weights_file(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        model = cls(**model_kwargs)
        safetensors.torch.load_model(model, weights_file, strict=strict, device=map_location)
        model.eval()
        logger.info("Loaded %s weights from %s", cls.__qualname__, weights_file)
        return model


def _apply_umask(folder: Path) -> None:
    """Give the files in `folder` the permissions of a newly created file (0o666 less the umask).

    safetensors 0.8 writes its files with mode 0o600 whatever the umask, which leaves a
    checkpoint unreadable to other users.
    """
    for path in folder.iterdir():
        if path.is_file():
            apply_umask_to_file(path)


def apply_umask_to_file(path: Path) -> None:
    """Set `path` to the permissions of a newly created file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _resolve_registered_name(cls: type, name_or_path: str | os.PathLike[str]) -> str:
    """Return the shipped checkpoint folder when `name_or_path` is a registered name, else the argument as a string.

    Raises FileNotFoundError, saying how to restore or train it, when a registered name's folder is missing.
    """
    from vqkit import registry

    if not registry.is_registered(name_or_path):
        source = os.fspath(name_or_path)
        if Path(source).expanduser().exists():
            return source
        if "/" not in source and os.sep not in source:
            # A bare word is neither a folder here nor an "owner/name" Hub repo id, so asking the
            # Hub would only wait on the network before failing.
            raise FileNotFoundError(
                f"{source!r} is not a registered model name and no folder of that name exists. "
                f"Registered names: {', '.join(registry.list_models())}. Pass one of them, a folder written "
                "by save_pretrained, or a Hub repo id such as 'owner/name'."
            )
        if _looks_like_path(source):
            raise FileNotFoundError(
                f"checkpoint folder {source} does not exist; pass an existing folder written by save_pretrained, "
                "a registered model name (`vqkit list`) or a Hub repo id such as 'owner/name'"
            )
        return source

    entry = registry.get_model_entry(str(name_or_path))
    registered_class = entry.import_class()
    if not issubclass(cls, registered_class):
        raise ValueError(
            f"model name {entry.name!r} is registered for {entry.model_class}, not for "
            f"{cls.__module__}.{cls.__qualname__}. Load it with vqkit.load({entry.name!r})."
        )
    return str(entry.require_checkpoint())


def _looks_like_path(source: str) -> bool:
    """True for strings that are meant as paths rather than a Hub repo id ("owner/name").

    That is absolute and explicitly relative paths, more than one "/", "folder/name" where
    "folder" exists here, and names under vqkit's own output folders ("checkpoints/name",
    "runs/name") wherever they are written.
    """
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source:
        return True
    first = source.split("/", 1)[0]
    return first in LOCAL_FOLDER_NAMES or (bool(first) and Path(first).is_dir())


def _validate_device(device: str | torch.device) -> str:
    """Return `device` as a string that safetensors accepts; raise ValueError when torch cannot use it."""
    import torch

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"invalid device {device!r}: {error}. Pass a torch device string such as 'cpu' or 'cuda:0'."
        ) from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested, but CUDA is not available here. Pass device='cpu'.")
    if torch_device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested, but MPS is not available here. Pass device='cpu'.")
    return str(torch_device)


def _find_weights_file(model_id: str, **download_kwargs: Any) -> str:
    """Return the local path of model.safetensors for a checkpoint folder or Hub repo id, downloading it if needed."""
    if os.path.isdir(model_id):
        weights_file = os.path.join(model_id, WEIGHTS_FILE)
        if os.path.isfile(weights_file):
            return weights_file
        pickle_files = [name for name in PICKLE_WEIGHT_FILES if os.path.isfile(os.path.join(model_id, name))]
        message = f"{WEIGHTS_FILE} not found in checkpoint folder {model_id}."
        if pickle_files:
            message += (
                f" The folder has {', '.join(pickle_files)}, a pickle file, which vqkit never loads "
                "because unpickling can run arbitrary code. Convert it once with "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                f"'{WEIGHTS_FILE}') from code you trust."
            )
        raise FileNotFoundError(message)

    try:
        return hf_hub_download(repo_id=model_id, filename=WEIGHTS_FILE, **download_kwargs)
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(
            f"Hugging Face Hub repo {model_id!r} has no {WEIGHTS_FILE}. vqkit loads safetensors "
            "weights only and never pickle files such as pytorch_model.bin."
        ) from None


def _check_replaceable(target: Path, staging: Path) -> None:
    """Raise ValueError when `target` contains entries that the new checkpoint in `staging` does not."""
    new_entries = {entry.name for entry in staging.iterdir()}
    foreign_entries = sorted(entry.name for entry in target.iterdir() if entry.name not in new_entries)
    if foreign_entries:
        raise ValueError(
            f"not replacing {target}: it contains {', '.join(foreign_entries)}, which this "
            "checkpoint does not write, and saving replaces the whole folder. Move those "
            "entries elsewhere or save to a new folder."
        )


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`. An existing `target` is renamed aside first and deleted afterwards."""
    if not target.exists():
        os.rename(staging, target)
        _fsync_directory(target.parent)
        return

    # POSIX rename() does not replace a non-empty folder, so the old one moves aside first.
    backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    _fsync_directory(target.parent)
    try:
        shutil.rmtree(backup)
    except OSError as error:
        logger.warning("Saved checkpoint to %s, but could not delete the previous one at %s: %s", target, backup, error)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                os.fsync(file.fileno())
        _fsync_directory(Path(root))


def _fsync_directory(folder: Path) -> None:
    # Windows cannot open a folder for fsync, and a rename there is not made durable this way.
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
