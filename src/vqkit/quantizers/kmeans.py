"""k-means++ seeding and Lloyd iterations for codebook initialisation.

These run on one process. Quantizers call them on rank 0 with data gathered from every rank and
broadcast the result, so that a distributed run matches a single process on the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .search import search


def _sample_rows(weights: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Draw ``count`` distinct row ids with probability proportional to ``weights`` (N,), on the CPU."""
    weights = weights.detach().double().cpu()
    if weights.sum() <= 0:  # every point already coincides with a centre
        weights = torch.ones_like(weights)
    count = min(count, int((weights > 0).sum()))
    return torch.multinomial(weights, count, replacement=False, generator=generator)


def kmeans_plusplus(x: Tensor, num_centers: int, generator: torch.Generator, rounds: int = 64) -> Tensor:
    """Seed ``num_centers`` centres from the rows of ``x`` (N, D) by D^2 sampling.

    Exact k-means++ draws one centre per round, which costs K sequential passes over the data. To
    bound that cost for large codebooks this draws ``ceil(K / rounds)`` centres per round, each
    distinct, with probability proportional to the squared distance to the nearest centre chosen
    so far. With ``rounds >= K`` it is exact k-means++.

    Returns:
        (num_centers, D) fp32 centres. If ``x`` has fewer distinct rows than ``num_centers``, the
        remaining centres repeat sampled rows.
    """
    x = x.float()
    n = x.shape[0]
    per_round = max(1, math.ceil(num_centers / rounds))

    first = torch.randint(n, (1,), generator=generator)
    centers = [x[first.to(x.device)]]
    min_sqdist = (x - centers[0]).pow(2).sum(dim=1)
    chosen = 1

    while chosen < num_centers:
        take = min(per_round, num_centers - chosen)
        rows = _sample_rows(min_sqdist, take, generator)
        if rows.numel() == 0:  # fewer distinct points than centres
            rows = torch.randint(n, (num_centers - chosen,), generator=generator)
        new = x[rows.to(x.device)]
        centers.append(new)
        chosen += new.shape[0]

        new_sqdist, _ = search(x, new, k=1)
        min_sqdist = torch.minimum(min_sqdist, new_sqdist[:, 0].clamp_min(0.0))

    return torch.cat(centers)[:num_centers]


def kmeans(
    x: Tensor,
    num_centers: int,
    generator: torch.Generator,
    iters: int = 10,
    kmeanspp_rounds: int = 64,
) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x`` (N, D) with k-means++ seeding and ``iters`` Lloyd steps.

    A centre that loses all its points is moved onto a random point, so every centre is used.

    Returns:
        ``(centers, counts)``: (K, D) fp32 centres and (K,) long point counts from the last
        assignment.
    """
    x = x.float()
    centers = kmeans_plusplus(x, num_centers, generator, rounds=kmeanspp_rounds)
    counts = torch.zeros(num_centers, dtype=torch.long, device=x.device)

    for step in range(iters + 1):
        _, ids = search(x, centers, k=1)
        ids = ids[:, 0]
        counts = torch.bincount(ids, minlength=num_centers)
        if step == iters:  # the final pass only measures the counts of the returned centres
            break

        sums = torch.zeros_like(centers).index_add_(0, ids, x)
        used = counts > 0
        centers = torch.where(used[:, None], sums / counts.clamp_min(1)[:, None].float(), centers)

        empty = (~used).nonzero().flatten()
        if empty.numel() > 0:
            rows = torch.randint(x.shape[0], (empty.numel(),), generator=generator).to(x.device)
            centers[empty] = x[rows]

    return centers, counts
