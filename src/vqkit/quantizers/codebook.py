"""The codebook engine that VectorQuantizer, ResidualVQ and TopKCodebook share.

It owns the code vectors and their training state: k-means initialisation, EMA updates,
code-usage tracking and dead-code restarts, all kept identical across ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import check_indices, check_positive_int
from .distributed import (
    all_gather_rows,
    all_reduce_sum,
    broadcast_from_main,
    is_main_rank,
)
from .kmeans import kmeans
from .search import search

logger = logging.getLogger(__name__)

METRICS = ("l2", "cosine", "projection")

# The k-means fit, like FAISS's, keeps at most this many points per code.
KMEANS_MAX_POINTS_PER_CODE = 256

FitFn = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]]


class Codebook(nn.Module):
    """K code vectors of size D with their training state.

    Args:
        dim: D, the code size.
        codebook_size: K, the number of codes.
        metric: how inputs are matched to codes. ``"l2"``: smallest Euclidean distance.
            ``"cosine"``: inputs and codes are l2-normalised, codes are returned normalised.
            ``"projection"``: largest ``x.c / ||c||``, codes are returned as stored.
        ema_decay: decay of the exponential moving averages that move each code to the mean of
            its inputs, or None to train the codes by gradient as an ``nn.Parameter``.
        kmeans_init: fit the codes by k-means on the first training batches instead of using
            the random initialisation. Until the fit, training steps leave the codes as they are.
        kmeans_iters: Lloyd iterations of that fit.
        kmeans_init_points: training vectors (all ranks together) collected before the fit.
            None means ``min(16 K, max(K, 2**18))``: enough for a stable fit, bounded in memory.
            Values below K are raised to K.
        dead_code_threshold: a code unused for this many consecutive training steps is moved
            onto a random input vector of the current batch; None disables restarts.
        seed: seed of the generator for k-means and restarts; None draws one from torch's
            global generator, so ``torch.manual_seed`` makes runs repeatable.
        eps: Laplace smoothing of EMA cluster sizes.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        metric: str = "l2",
        ema_decay: float | None = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        kmeans_init_points: int | None = None,
        dead_code_threshold: int | None = 100,
        seed: int | None = None,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.codebook_size = check_positive_int("codebook_size", codebook_size)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None for a gradient-trained codebook, got {ema_decay!r}")
        if dead_code_threshold is not None:
            check_positive_int("dead_code_threshold", dead_code_threshold)
        check_positive_int("kmeans_iters", kmeans_iters)
        if kmeans_init_points is None:
            kmeans_init_points = min(16 * codebook_size, max(codebook_size, 2**18))
        check_positive_int("kmeans_init_points", kmeans_init_points)

        self.metric = metric
        self.ema_decay = ema_decay
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.kmeans_init_points = max(kmeans_init_points, codebook_size)
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps

        weight = torch.randn(codebook_size, dim) / dim**0.5
        if ema_decay is None:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)
        self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
        self.register_buffer("ema_embed_sum", weight.clone())
        self.register_buffer("steps_since_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

        if seed is None:
            seed = int(torch.randint(2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        self._init_pool: list[Tensor] = []
        self._init_batches = 0
        self.frozen = False
        """When true, training steps count code usage but neither move codes nor restart them
        (a warm-up after initialisation). Not saved: the training loop sets it every step."""

    # ---- lookup -----------------------------------------------------------------------------

    def prepare_query(self, x: Tensor) -> Tensor:
        """Map (N, D) fp32 inputs into the space the codes live in (unit sphere for cosine)."""
        if self.metric == "cosine":
            return nn.functional.normalize(x, dim=-1)
        return x

    def search_codes(self, query: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """Return ``(scores, ids)``, both (N, k), for prepared (N, D) queries.

        Scores are squared L2 distances for ``"l2"`` and ``"cosine"`` (where they equal
        ``2 - 2 cos``), and ``x.c / ||c||`` for ``"projection"``.
        """
        weight = self.weight.detach().float()
        if self.metric == "l2":
            return search(query, weight, k=k, metric="l2")

        unit_codes = nn.functional.normalize(weight, dim=-1)
        scores, ids = search(query, unit_codes, k=k, metric="ip")
        if self.metric == "cosine":
            scores = (2.0 - 2.0 * scores).clamp_min(0.0)
        return scores, ids

    def lookup(self, ids: Tensor) -> Tensor:
        """Return the codes for long ``ids`` of any shape, as (*ids.shape, D) fp32.

        In gradient mode the result is differentiable with respect to the codes.
        """
        codes = nn.functional.embedding(ids, self.weight).float()
        if self.metric == "cosine":
            codes = nn.functional.normalize(codes, dim=-1)
        return codes

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Validate ``indices`` and return their codes, (*indices.shape, D) fp32."""
        check_indices(indices, self.codebook_size)
        return self.lookup(indices.long())

    def count_dead(self) -> Tensor:
        """Return the number of codes unused for ``dead_code_threshold`` steps, as a long scalar."""
        if self.dead_code_threshold is None:
            return torch.zeros((), dtype=torch.long, device=self.steps_since_used.device)
        return (self.steps_since_used >= self.dead_code_threshold).sum()

    # ---- initialisation -----------------------------------------------------------------------

    @torch.no_grad()
    def maybe_initialize(self, query: Tensor, fit: FitFn | None = None) -> bool:
        """Collect prepared (N, D) training vectors and run the k-means fit once there are enough.

        A collective under ``torch.distributed``: vectors are gathered from all ranks, rank 0 runs
        ``fit(data, generator) -> (codes (K, D), counts (K,))`` (default: k-means) and broadcasts
        the codes. Returns True when the codebook is initialized.
        """
        if bool(self.initialized):
            return True

        pool = all_gather_rows(query.detach().float())
        self._init_pool.append(pool)
        self._init_batches += 1
        collected = sum(part.shape[0] for part in self._init_pool)
        if collected < self.kmeans_init_points:
            logger.info("k-means init: %d of %d vectors collected", collected, self.kmeans_init_points)
            return False

        data = torch.cat(self._init_pool)
        self._init_pool.clear()
        codes = torch.empty_like(self.weight, dtype=torch.float32)
        counts = torch.zeros(self.codebook_size, device=self.weight.device)
        if is_main_rank():
            limit = KMEANS_MAX_POINTS_PER_CODE * self.codebook_size
            if data.shape[0] > limit:
                keep = torch.randperm(data.shape[0], generator=self.generator)[:limit]
                data = data[keep.to(data.device)]
            fit = fit or self.fit_kmeans
            fitted, fitted_counts = fit(data, self.generator)
            codes.copy_(fitted)
            counts.copy_(fitted_counts.float())
        broadcast_from_main(codes)
        broadcast_from_main(counts)

        # Scale the k-means counts to one batch so that early EMA steps are not swamped.
        counts = counts / self._init_batches
        self.set_codes(codes, counts)
        self.initialized.fill_(True)
        self._init_batches = 0
        logger.info("k-means init: fitted %d codes on %d vectors", self.codebook_size, collected)
        return True

    def resume_state(self) -> dict[str, Tensor]:
        """Return what a resumed training run needs beyond `state_dict`: the random generator
        state and the vectors collected so far for a pending k-means fit, as CPU tensors."""
        pool = torch.cat(self._init_pool) if self._init_pool else torch.empty(0, self.dim)
        return {
            "generator": self.generator.get_state(),
            "kmeans_pool": pool.detach().cpu(),
            "kmeans_batches": torch.tensor(self._init_batches),
        }

    def load_resume_state(self, state: dict[str, Tensor]) -> None:
        """Restore the output of `resume_state`."""
        self.generator.set_state(state["generator"])
        pool = state["kmeans_pool"]
        self._init_pool = [pool.to(self.weight.device)] if pool.numel() else []
        self._init_batches = int(state["kmeans_batches"])

    def fit_kmeans(self, data: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Default fit: k-means++ seeding and Lloyd iterations in the search space."""
        return kmeans(data, self.codebook_size, generator, iters=self.kmeans_iters)

    @torch.no_grad()
    def set_codes(self, codes: Tensor, cluster_size: Tensor | None = None) -> None:
        """Overwrite all codes with ``codes`` (K, D), resetting the EMA state and usage counters."""
        if cluster_size is None:
            cluster_size = torch.ones(self.codebook_size, device=codes.device)
        self.weight.data.copy_(codes)
        self.ema_cluster_size.copy_(cluster_size)
        self.ema_embed_sum.copy_(codes * cluster_size[:, None])
        self.steps_since_used.zero_()

    # ---- training updates ---------------------------------------------------------------------

    @torch.no_grad()
    def update(self, query: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Apply one training step's statistics. A collective under ``torch.distributed``.

        Args:
            query: (N, D) prepared fp32 vectors of this rank; N may be 0.
            ids: (N,) or (N, k) long codes chosen for them.

        Returns:
            ``(counts, dead)``: (K,) float code counts summed over all ranks, and the long scalar
            number of dead codes that were restarted. Before the k-means fit only counts.
        """
        if ids.ndim == 1:
            ids = ids[:, None]
        counts = torch.bincount(ids.reshape(-1), minlength=self.codebook_size).float()
        all_reduce_sum(counts)
        if not bool(self.initialized) or self.frozen:  # the k-means fit will overwrite every code
            return counts, torch.zeros((), dtype=torch.long)

        if self.ema_decay is not None:
            sums = torch.zeros_like(self.ema_embed_sum)
            for column in ids.unbind(dim=1):
                sums.index_add_(0, column, query)
            all_reduce_sum(sums)
            self._ema_step(counts, sums)

        if self.dead_code_threshold is None:
            return counts, torch.zeros((), dtype=torch.long)

        self.steps_since_used.add_(1)
        self.steps_since_used.masked_fill_(counts > 0, 0)
        dead = self.steps_since_used >= self.dead_code_threshold
        num_dead = int(dead.sum())  # identical on every rank, because counts were reduced
        if num_dead > 0:
            self.restart(dead, query)
        return counts, torch.tensor(num_dead)

    def _ema_step(self, counts: Tensor, sums: Tensor) -> None:
        """Move the running counts and sums, then set each code to its smoothed mean."""
        decay = self.ema_decay
        self.ema_cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)

        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.weight.data.copy_(self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart(self, dead: Tensor, query: Tensor) -> None:
        """Move the codes flagged in ``dead`` (K,) onto random vectors of this step's batch.

        The batch is gathered from all ranks and rank 0 draws the vectors, so every rank sets
        the same codes. Nothing happens when the whole batch is empty.
        """
        pool = all_gather_rows(query)
        if pool.shape[0] == 0:
            return

        dead_ids = dead.nonzero().flatten()
        replacements = torch.empty(dead_ids.numel(), self.dim, device=query.device)
        if is_main_rank():
            if pool.shape[0] >= dead_ids.numel():
                rows = torch.randperm(pool.shape[0], generator=self.generator)[: dead_ids.numel()]
            else:
                rows = torch.randint(pool.shape[0], (dead_ids.numel(),), generator=self.generator)
            replacements.copy_(pool[rows.to(pool.device)])
        broadcast_from_main(replacements)

        self.weight.data[dead_ids] = replacements.to(self.weight.dtype)
        self.ema_cluster_size[dead_ids] = 1.0
        self.ema_embed_sum[dead_ids] = replacements
        self.steps_since_used[dead_ids] = 0
        logger.debug("restarted %d dead codes", dead_ids.numel())
