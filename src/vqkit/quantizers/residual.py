"""ResidualVQ: the residual quantizer of RQ-VAE ("Autoregressive Image Generation using Residual
Quantization", Lee et al., 2022). Each level quantizes what the previous levels left over."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, check_positive_int, rotation_trick, straight_through
from .codebook import KMEANS_MAX_POINTS_PER_CODE, Codebook
from .kmeans import kmeans
from .output import QuantizerOutput, perplexity_from_counts
from .search import search


class ResidualVQ(Quantizer):
    """Residual vector quantizer with ``depth`` levels.

    Args:
        dim: size D of the vectors to quantize.
        codebook_size: codes K per codebook.
        depth: number of residual levels.
        shared_codebook: one codebook serves every level, as in RQ-VAE; otherwise one per level.
        ema_decay, commitment_weight, kmeans_init, kmeans_iters, kmeans_init_points,
        dead_code_threshold, rotation_trick, channel_first, seed: as in ``VectorQuantizer``.

    Shapes:
        input (B, ..., D) -> ``quantized`` (B, ..., D), the sum of the ``depth`` codes;
        ``indices`` (B, ..., depth) long. ``commitment_loss`` averages ``mse(x, sg(partial sum))``
        over the levels, so every prefix of the codes is trained to approximate x.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        depth: int,
        shared_codebook: bool = True,
        ema_decay: float | None = 0.99,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        kmeans_init_points: int | None = None,
        dead_code_threshold: int | None = 100,
        rotation_trick: bool = False,
        channel_first: bool = False,
        seed: int | None = None,
    ):
        super().__init__(dim, channel_first)
        self.codebook_size = check_positive_int("codebook_size", codebook_size)
        self.depth = check_positive_int("depth", depth)
        self.shared_codebook = shared_codebook
        self.commitment_weight = commitment_weight
        self.rotation_trick = rotation_trick
        self.kmeans_iters = kmeans_iters

        num_codebooks = 1 if shared_codebook else depth
        self.codebooks = nn.ModuleList(
            Codebook(
                dim,
                codebook_size,
                metric="l2",
                ema_decay=ema_decay,
                kmeans_init=kmeans_init,
                kmeans_iters=kmeans_iters,
                kmeans_init_points=kmeans_init_points,
                dead_code_threshold=dead_code_threshold,
                seed=None if seed is None else seed + level,
            )
            for level in range(num_codebooks)
        )

    def codebook_at(self, level: int) -> Codebook:
        """Return the codebook used at residual ``level`` (0-based)."""
        return self.codebooks[0 if self.shared_codebook else level]

    def _fit_shared(self, data: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Fit one codebook for all levels: k-means on x, then k-means on the residuals of every
        level that the first fit leaves, so that the codes also cover small deep residuals."""
        centers, _ = kmeans(data, self.codebook_size, generator, iters=self.kmeans_iters)
        residual = data
        levels = []
        for _ in range(self.depth):
            levels.append(residual)
            _, ids = search(residual, centers)
            residual = residual - centers[ids[:, 0]]

        stacked = torch.cat(levels)
        limit = KMEANS_MAX_POINTS_PER_CODE * self.codebook_size
        if stacked.shape[0] > limit:
            keep = torch.randperm(stacked.shape[0], generator=generator)[:limit]
            stacked = stacked[keep.to(stacked.device)]
        return kmeans(stacked, self.codebook_size, generator, iters=self.kmeans_iters)

    def forward(self, x: Tensor) -> QuantizerOutput:
        flat, lead_shape = self._flatten(x)

        with torch.autocast(device_type=flat.device.type, enabled=False):
            if self.training and self.shared_codebook:
                self.codebooks[0].maybe_initialize(flat, fit=self._fit_shared)

            residual = flat
            total = torch.zeros_like(flat)
            residuals, level_ids, level_codes, partial_sums = [], [], [], []
            ready = True  # a per-level codebook only initializes once the levels above it have
            for level in range(self.depth):
                codebook = self.codebook_at(level)
                if self.training and not self.shared_codebook and ready:
                    ready = codebook.maybe_initialize(residual)

                _, ids = codebook.search_codes(residual)
                ids = ids[:, 0]
                codes = codebook.lookup(ids)
                total = total + codes
                residuals.append(residual)
                level_ids.append(ids)
                level_codes.append(codes)
                partial_sums.append(total)
                residual = residual - codes.detach()

            level_counts, dead = self._update_or_count(residuals, level_ids)
            commitment, codebook_loss = self._losses(flat, residuals, level_codes, partial_sums)
            if self.rotation_trick:
                out = rotation_trick(flat, total)
            else:
                out = straight_through(flat, total.detach())

        indices = torch.stack(level_ids, dim=-1)
        perplexity = torch.stack([perplexity_from_counts(c) for c in level_counts]).mean()
        return QuantizerOutput(
            quantized=self._unflatten(out, lead_shape, x.dtype),
            indices=indices.reshape(*lead_shape, self.depth),
            loss=commitment + codebook_loss,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            dead_codes=dead.to(indices.device),
        )

    def _update_or_count(self, residuals: list[Tensor], level_ids: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Apply the training update (or, in eval, count usage). Returns per-level (K,) counts and
        the total number of dead codes."""
        level_counts = [torch.bincount(ids, minlength=self.codebook_size) for ids in level_ids]
        if not self.training:
            return level_counts, sum(cb.count_dead() for cb in self.codebooks)

        if self.shared_codebook:
            # One update per step from all levels, so the EMA decays once per step. Rows are
            # ordered vector by vector (not level by level) so that the rows gathered from all
            # ranks come in the same order as in one process on the concatenated batch.
            rows = torch.stack(residuals, dim=1).reshape(-1, self.dim).detach()
            _, dead = self.codebooks[0].update(rows, torch.stack(level_ids, dim=1).reshape(-1))
            return level_counts, dead

        dead = torch.zeros((), dtype=torch.long)
        for level in range(self.depth):
            _, level_dead = self.codebooks[level].update(residuals[level].detach(), level_ids[level])
            dead = dead + level_dead
        return level_counts, dead

    def _losses(self, flat, residuals, level_codes, partial_sums) -> tuple[Tensor, Tensor]:
        """Return (commitment, codebook) losses averaged over levels."""
        zero = flat.new_zeros(())
        if flat.shape[0] == 0:
            return zero, zero

        commitment = torch.stack([nn.functional.mse_loss(flat, s.detach()) for s in partial_sums]).mean()
        codebook_loss = zero
        if self.codebooks[0].ema_decay is None:
            codebook_loss = torch.stack(
                [nn.functional.mse_loss(c, r.detach()) for c, r in zip(level_codes, residuals)]
            ).mean()
        return self.commitment_weight * commitment, codebook_loss

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Return the sum of the codes of the first d levels for ``indices`` (B, ..., d), d <= depth.

        The result is (B, ..., D), or (B, D, ...) with ``channel_first``. With d = depth in eval
        mode it equals ``forward(x).quantized``; a smaller d gives the coarser partial sum.
        """
        if not isinstance(indices, Tensor) or indices.ndim < 1:
            raise ValueError("indices must be a tensor shaped (B, ..., d) with d residual levels")
        levels = indices.shape[-1]
        if not 1 <= levels <= self.depth:
            raise ValueError(
                f"indices has {levels} residual levels on its last axis, expected between 1 and depth={self.depth}"
            )

        total = None
        for level in range(levels):
            codes = self.codebook_at(level).codes_from_indices(indices[..., level])
            total = torch.zeros_like(codes) + codes if total is None else total + codes
        return total.movedim(-1, 1) if self.channel_first and total.ndim > 2 else total
