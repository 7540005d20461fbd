"""TopKCodebook: the sparse codebook bottleneck of "Codebook Features: Sparse and Discrete
Interpretability for Neural Networks" (Tamkin et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, check_positive_int, straight_through
from .codebook import Codebook
from .output import QuantizerOutput, perplexity_from_counts


class TopKCodebook(Quantizer):
    """Replace each vector by the mean of its k best-scoring codes, scored by ``x.c / ||c||``.

    The codes train by gradient: ``codebook_loss`` is ``mse(output, sg(x))``, and the output's
    gradient reaches both the selected codes and, straight through, the input.

    Args:
        dim: size D of the vectors.
        codebook_size: number of codes K.
        k: codes active per vector, 1 <= k <= K.
        commitment_weight: weight of ``mse(x, sg(output))``; 0 leaves the input unconstrained.
        kmeans_init: fit the codes by k-means on the first training batch.
        dead_code_threshold: restart a code after this many training steps without use; None disables.
        channel_first: inputs are (B, D, ...) instead of (B, ..., D).
        seed: seed for k-means and restarts; None follows ``torch.manual_seed``.

    Shapes:
        input (B, ..., D) -> ``quantized`` (B, ..., D), ``indices`` (B, ..., k) long, best first.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        k: int = 1,
        commitment_weight: float = 0.0,
        kmeans_init: bool = False,
        dead_code_threshold: int | None = None,
        channel_first: bool = False,
        seed: int | None = None,
    ):
        super().__init__(dim, channel_first)
        check_positive_int("codebook_size", codebook_size)
        check_positive_int("k", k)
        if k > codebook_size:
            raise ValueError(f"k={k} is larger than codebook_size={codebook_size}; use k <= codebook_size")
        self.codebook_size = codebook_size
        self.k = k
        self.commitment_weight = commitment_weight
        self.codebook = Codebook(
            dim,
            codebook_size,
            metric="projection",
            ema_decay=None,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            seed=seed,
        )

    def forward(self, x: Tensor) -> QuantizerOutput:
        flat, lead_shape = self._flatten(x)
        codebook = self.codebook

        with torch.autocast(device_type=flat.device.type, enabled=False):
            if self.training:
                codebook.maybe_initialize(flat)
            _, ids = codebook.search_codes(flat, k=self.k)  # (N, k)
            mean_codes = codebook.lookup(ids).mean(dim=1)  # (N, D)

            if self.training:
                counts, dead = codebook.update(flat.detach(), ids)
            else:
                counts = torch.bincount(ids.reshape(-1), minlength=self.codebook_size)
                dead = codebook.count_dead()

            zero = flat.new_zeros(())
            codebook_loss, commitment = zero, zero
            if flat.shape[0] > 0:
                codebook_loss = nn.functional.mse_loss(mean_codes, flat.detach())
                if self.commitment_weight:
                    commitment = self.commitment_weight * nn.functional.mse_loss(flat, mean_codes.detach())
            out = straight_through(flat, mean_codes)

        return QuantizerOutput(
            quantized=self._unflatten(out, lead_shape, x.dtype),
            indices=ids.reshape(*lead_shape, self.k),
            loss=commitment + codebook_loss,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity_from_counts(counts),
            dead_codes=dead.to(ids.device),
        )

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Return the mean code for ``indices`` (B, ..., k) as (B, ..., D), or (B, D, ...) with
        ``channel_first``; in eval mode this equals ``forward(x).quantized``."""
        if not isinstance(indices, Tensor) or indices.ndim < 1 or indices.shape[-1] != self.k:
            shape = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
            raise ValueError(f"indices must be shaped (B, ..., k={self.k}), got {shape}")
        flat = indices.reshape(-1, self.k)
        codes = self.codebook.codes_from_indices(flat).mean(dim=1).reshape(*indices.shape[:-1], self.dim)
        return codes.movedim(-1, 1) if self.channel_first and codes.ndim > 2 else codes
