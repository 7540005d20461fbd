"""Collectives that keep codebooks identical across ranks under ``torch.distributed``.

Every helper is a no-op outside a process group of two or more ranks. Each one is a collective:
all ranks must call it in the same order, including ranks whose batch is empty.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Return True inside an initialized process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_rank() -> bool:
    """Return True on rank 0, or when not distributed."""
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` in place over all ranks and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(tensor: Tensor) -> Tensor:
    """Overwrite ``tensor`` in place with rank 0's copy and return it."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def all_gather_rows(rows: Tensor) -> Tensor:
    """Concatenate (n_r, D) tensors from every rank in rank order; n_r may differ, and may be 0.

    Returns a (sum n_r, D) tensor on every rank.
    """
    if not is_distributed():
        return rows

    world_size = dist.get_world_size()
    local_count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = [torch.zeros_like(local_count) for _ in range(world_size)]
    dist.all_gather(counts, local_count)
    counts = [int(c.item()) for c in counts]

    # all_gather needs equal shapes, so pad every rank to the largest count.
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(gathered, counts)], dim=0)
