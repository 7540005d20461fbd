"""Pieces that every vqkit training loop shares: process-group set-up, DDP settings, averaging
over ranks, learning-rate schedule and training-state checkpoints in safetensors.

A training-state file contains tensors (model weights, optimizer moments, random-generator
states) and a JSON metadata string (step, configuration, optimizer hyperparameters). It is
written to a temporary file and renamed into place, so a run killed while saving leaves the
previous state file intact. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")

# Key of the JSON metadata inside a training-state file's safetensors header.
METADATA_KEY = "vqkit_training_state"

# Keyword arguments of DistributedDataParallel for a model with vqkit quantizers. The quantizers
# keep their codebook buffers identical on all ranks themselves, so DDP need not copy them from
# rank 0 before every forward. torch 2.14 deprecates `broadcast_buffers` in favour of
# `forward_sync_buffers`, which older versions lack.
if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
    DDP_NO_BUFFER_SYNC = {"forward_sync_buffers": False}
else:
    DDP_NO_BUFFER_SYNC = {"broadcast_buffers": False}


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs and writes files."""
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that `torchrun` describes in the environment, if any, and pick the device.

    `device` is "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N".
    Under torchrun (WORLD_SIZE > 1), CUDA ranks use NCCL on cuda:LOCAL_RANK and CPU ranks use
    gloo. Raises ValueError when CUDA is requested but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: pass 'cpu', 'cuda', 'cuda:N' or 'auto'") from error
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested, but CUDA is not available here. Pass --device cpu.")
    if torch_device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: pass 'cpu', 'cuda' or 'cuda:N'")

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(rank=0, world_size=1, device=torch_device)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    logger.info("Joined process group: rank %d of %d on %s", rank, dist.get_world_size(), torch_device)
    return DistributedContext(rank=rank, world_size=dist.get_world_size(), device=torch_device)


def cosine_learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, final_fraction: float) -> float:
    """Return the learning rate at 0-based `step`: linear warm-up to `peak`, then cosine decay to `final_fraction * peak`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = final_fraction * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def mean_over_ranks(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Average each tensor over the ranks of the process group; without one, return `values` as they are."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    stacked = torch.stack([value.float() for value in values.values()])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(values, stacked))


# ---- training-state files --------------------------------------------------------------------


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors named `PREFIX.PARAM_ID.KEY` and JSON-ready metadata.

    The metadata contains the parameter groups (learning rate, betas, ...) and any non-tensor
    per-parameter state.
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], metadata: dict[str, Any], prefix: str
) -> None:
    """Restore `optimizer` from the output of `optimizer_state_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        param_id, key = name[len(prefix) + 1 :].split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    for param_id, values in metadata.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})


def save_training_state(path: str | os.PathLike[str], tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write `tensors` and JSON `metadata` to the safetensors file `path`, replacing it atomically.

    Tensors are copied to the CPU and made contiguous. The file is written next to `path`,
    flushed to disk and renamed over it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    temporary = path.with_name(f".{path.name}.saving-{uuid.uuid4().hex[:8]}")
    try:
        save_file(cpu_tensors, temporary, metadata={METADATA_KEY: json.dumps(metadata)})
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if os.name == "posix":
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by `save_training_state`; return (CPU tensors, metadata).

    Raises FileNotFoundError when `path` does not exist and ValueError when it has no vqkit
    training-state metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    with safe_open(path, framework="pt", device="cpu") as file:
        header = file.metadata() or {}
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} is not a vqkit training state: its header has no {METADATA_KEY!r} entry")
    return tensors, json.loads(header[METADATA_KEY])


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Return the entries of `tensors` whose names start with `PREFIX.`, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(prefix + ".")}


def merge_resumed_config(
    requested: ConfigT,
    stored: ConfigT,
    stored_step: int,
    state_file: Path,
    resumable: tuple[str, ...],
    to_json: Callable[[ConfigT], dict[str, Any]],
) -> ConfigT:
    """Return the dataclass `stored` with the `resumable` settings taken from `requested`.

    Raises ValueError when any other setting differs, or when `stored_step` is past the
    requested `steps`, naming the settings and the fix.
    """
    requested_values = to_json(requested)
    stored_values = to_json(stored)
    conflicts = [
        f"{name}={requested_values[name]!r} (checkpoint: {stored_values[name]!r})"
        for name in stored_values
        if name not in resumable and requested_values[name] != stored_values[name]
    ]
    if conflicts:
        raise ValueError(
            f"cannot resume {state_file}: it was trained with other settings: {'; '.join(conflicts)}. "
            "Pass the original settings, or start a new run with another --state-dir."
        )
    changes = {name: getattr(requested, name) for name in resumable}
    if changes["steps"] != stored.steps:
        logger.warning(
            "Resuming with steps=%d instead of %d: the learning-rate schedule changes from here on",
            changes["steps"],
            stored.steps,
        )
    if stored_step > changes["steps"]:
        raise ValueError(
            f"cannot resume {state_file}: it is at step {stored_step}, past the requested "
            f"steps={changes['steps']}. Pass --steps {stored_step} or more."
        )
    return dataclasses.replace(stored, **changes)


def codebook_resume_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """Collect `Codebook.resume_state` of every codebook in `model`, named `codebook.MODULE.KEY`.

    The codebooks' generators drive k-means and dead-code restarts, and a k-means fit may be
    waiting for more vectors; neither is in the state dict.
    """
    from vqkit.quantizers.codebook import Codebook

    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, Codebook):
            tensors.update({f"codebook.{name}.{key}": value for key, value in module.resume_state().items()})
    return tensors


def load_codebook_resume_tensors(model: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    """Restore the output of `codebook_resume_tensors` into the codebooks of `model`."""
    from vqkit.quantizers.codebook import Codebook

    for name, module in model.named_modules():
        if isinstance(module, Codebook):
            module.load_resume_state(prefixed(tensors, f"codebook.{name}"))


def load_resumable_state(state_file: Path, resume: bool) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Return the training state in `state_file` when resuming, or None for a new run.

    Raises FileExistsError when the file exists but `resume` is false, so that a new run never
    overwrites the state of an earlier one.
    """
    if state_file.is_file():
        if not resume:
            raise FileExistsError(
                f"training state already exists at {state_file}. Pass --resume to continue that run, "
                "or delete the folder (or choose another --state-dir) to start a new one."
            )
        return load_training_state(state_file)
    if resume:
        logger.info("No training state at %s, starting a new run", state_file)
    return None


def model_state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Collect the weights, optimizer moments, torch RNG state and codebook resume state of a run.

    Returns (tensors, metadata); the caller adds step, config and format to the metadata.
    """
    tensors = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = optimizer_state_tensors(optimizer, "optimizer")
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update(codebook_resume_tensors(model))
    return tensors, {"optimizer": optimizer_meta}


def restore_model_state(
    saved: tuple[dict[str, Tensor], dict[str, Any]], model: torch.nn.Module, optimizer: torch.optim.Optimizer, state_format: int
) -> int:
    """Load the output of `model_state_tensors` into freshly built objects; return the completed steps."""
    tensors, metadata = saved
    if metadata.get("format") != state_format:
        raise ValueError(
            f"training state has format {metadata.get('format')!r}, this vqkit reads format {state_format}; "
            "start a new run"
        )
    model.load_state_dict(prefixed(tensors, "model"))
    load_optimizer_state(optimizer, tensors, metadata["optimizer"], "optimizer")
    torch.set_rng_state(tensors["rng.torch"])
    load_codebook_resume_tensors(model, tensors)
    return int(metadata["step"])


def prepare_metrics_file(metrics_file: Path, start_step: int) -> None:
    """Create the folder of `metrics_file` and drop the records of steps after `start_step`.

    A new run (step 0) starts an empty file. A resumed run keeps the earlier steps: the
    steps after its checkpoint ran in the interrupted run and run again now.
    """
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    if start_step == 0:
        metrics_file.unlink(missing_ok=True)
    elif metrics_file.is_file():
        kept_lines = [
            line
            for line in metrics_file.read_text().splitlines()
            if line.strip() and int(json.loads(line)["step"]) <= start_step
        ]
        metrics_file.write_text("".join(line + "\n" for line in kept_lines))


def append_metrics(metrics_file: Path, record: dict[str, float]) -> None:
    """Append `record` to `metrics_file` as one JSON line."""
    with open(metrics_file, "a") as file:
        file.write(json.dumps(record) + "\n")


@dataclass
class RunStart:
    """Result of `start_run`: the configuration to train with and the state to resume from."""

    config: Any
    """The requested configuration, or the stored one with the resumable changes when resuming."""
    context: DistributedContext
    saved: tuple[dict[str, Tensor], dict[str, Any]] | None
    """The training state to restore, or None for a new run."""
    state_file: Path


def start_run(
    config: ConfigT,
    out_dir: Path,
    state_dir: Path,
    state_file_name: str,
    *,
    resume: bool,
    device: str,
    resumable: tuple[str, ...],
    to_json: Callable[[ConfigT], dict[str, Any]],
    from_json: Callable[[dict[str, Any]], ConfigT],
) -> RunStart:
    """Check the output folders, join the process group and load the state to resume, if any.

    `config` needs a `batch_size`, which must split evenly across ranks. Raises ValueError for
    a folder that is a file, an uneven batch or a resumed state with other settings, and
    FileExistsError for an existing state without `resume`.
    """
    for folder, option in ((out_dir, "--out"), (state_dir, "--state-dir")):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file; pass a folder")
    state_file = state_dir / state_file_name
    context = setup_distributed(device)
    if config.batch_size % context.world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly across {context.world_size} ranks")

    saved = load_resumable_state(state_file, resume)
    if saved is not None:
        stored = from_json(saved[1]["config"])
        config = merge_resumed_config(config, stored, int(saved[1]["step"]), state_file, resumable, to_json)
    return RunStart(config, context, saved, state_file)


def wrap_for_ranks(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """Return `model` in DistributedDataParallel when several ranks train, else `model` itself."""
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **DDP_NO_BUFFER_SYNC)


def save_run(
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    out_dir: Path,
    state_file: Path,
    context: DistributedContext,
    metadata: dict[str, Any],
    prepare: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> None:
    """Write the training state, then the model with `save_pretrained`, on rank 0; the other ranks wait.

    `metadata` (config, format, ...) joins the state's metadata together with `step`.
    `prepare` may rewrite the tensors before saving, for example to copy tied weights.
    """
    if context.is_main:
        tensors, state_metadata = model_state_tensors(model, optimizer)
        if prepare is not None:
            tensors = prepare(tensors)
        state_metadata.update(metadata, step=step)
        save_training_state(state_file, tensors, state_metadata)
        model.save_pretrained(out_dir)
        logger.info("Saved step %d to %s and %s", step, state_file.parent, out_dir)
    if context.world_size > 1:
        dist.barrier()


def finish_step(
    completed: int,
    config: Any,
    context: DistributedContext,
    metrics: dict[str, float],
    metrics_file: Path,
    evaluate: Callable[[], dict[str, float]],
    save: Callable[[], None],
    bar: Any,
) -> None:
    """Close training step `completed`: evaluate on rank 0 when due, record `metrics`, save when due.

    `config` supplies `steps`, `eval_every` and `save_every`. The evaluation's values join
    `metrics` and are written through the tqdm `bar`. `save` runs on every rank, since saving
    ends with a barrier.
    """
    is_last = completed == config.steps
    if context.is_main and (completed % config.eval_every == 0 or is_last):
        evaluation = evaluate()
        metrics.update(evaluation)
        bar.write(f"step {completed}: " + ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items()))
    if context.is_main:
        append_metrics(metrics_file, metrics)
    if completed % config.save_every == 0 or is_last:
        save()
