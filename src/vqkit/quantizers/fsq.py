"""FSQ: finite scalar quantization ("Finite Scalar Quantization: VQ-VAE Made Simple",
Mentzer et al., 2023). Each channel is bounded and rounded to a few levels; no codebook is learned."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Quantizer, check_indices, straight_through
from .distributed import all_reduce_sum
from .output import QuantizerOutput, perplexity_from_counts


class FSQ(Quantizer):
    """Finite scalar quantizer with ``levels[i]`` values on channel i.

    Args:
        levels: number of values per channel, each >= 2; the codebook size is their product.
        dim: input size D. When it differs from ``len(levels)``, linear layers project in and out.
        dead_code_threshold: steps without use after which a code counts as dead in
            ``dead_codes``. FSQ cannot restart codes, so this only reports. None disables it.
        channel_first: inputs are (B, D, ...) instead of (B, ..., D).

    Shapes:
        input (B, ..., D) -> ``quantized`` (B, ..., D), ``indices`` (B, ...) long in
        [0, prod(levels)). Rounding always runs in fp32: in bf16 neighbouring levels can collide.
    """

    def __init__(
        self,
        levels: list[int] | tuple[int, ...],
        dim: int | None = None,
        dead_code_threshold: int | None = 100,
        channel_first: bool = False,
    ):
        levels = list(levels)
        if len(levels) == 0 or any(isinstance(l, bool) or not isinstance(l, int) or l < 2 for l in levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels!r}")
        super().__init__(dim if dim is not None else len(levels), channel_first)
        self.levels = levels
        self.codebook_size = math.prod(levels)
        self.dead_code_threshold = dead_code_threshold

        levels_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("steps_since_used", torch.zeros(self.codebook_size, dtype=torch.long))

        needs_projection = self.dim != len(levels)
        self.project_in = nn.Linear(self.dim, len(levels)) if needs_projection else nn.Identity()
        self.project_out = nn.Linear(len(levels), self.dim) if needs_projection else nn.Identity()

    def _bound(self, z: Tensor) -> Tensor:
        """Squash z (N, d) into (-L/2, L/2) per channel so that rounding gives exactly L values."""
        half_range = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_range)
        return torch.tanh(z + shift) * half_range - offset

    def _project(self, layer: nn.Module, x: Tensor) -> Tensor:
        weight = getattr(layer, "weight", None)
        return layer(x if weight is None else x.to(weight.dtype)).float()

    def forward(self, x: Tensor) -> QuantizerOutput:
        flat, lead_shape = self._flatten(x)
        half_width = torch.div(self._levels, 2, rounding_mode="floor")

        with torch.autocast(device_type=flat.device.type, enabled=False):
            bounded = self._bound(self._project(self.project_in, flat))
            rounded = torch.round(bounded).detach()
            codes = straight_through(bounded, rounded) / half_width
            out = self._project(self.project_out, codes)

            digits = (rounded + half_width).long()
            ids = (digits * self._basis).sum(dim=1)
            counts = torch.bincount(ids, minlength=self.codebook_size)
            if self.training:
                counts = all_reduce_sum(counts.float())
                self.steps_since_used.add_(1).masked_fill_(counts > 0, 0)

        zero = flat.new_zeros(())
        dead = zero.long()
        if self.dead_code_threshold is not None:
            dead = (self.steps_since_used >= self.dead_code_threshold).sum()
        return QuantizerOutput(
            quantized=self._unflatten(out, lead_shape, x.dtype),
            indices=ids.reshape(lead_shape),
            loss=zero,
            commitment_loss=zero,
            codebook_loss=zero,
            perplexity=perplexity_from_counts(counts),
            dead_codes=dead,
        )

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Return the output vectors for ``indices`` (B, ...) as (B, ..., D), or (B, D, ...) with
        ``channel_first``; in eval mode this equals ``forward(x).quantized``."""
        check_indices(indices, self.codebook_size)
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        flat = indices.reshape(-1, 1).long()
        digits = torch.div(flat, self._basis, rounding_mode="floor") % self._levels.long()
        codes = (digits.float() - half_width) / half_width
        out = self._project(self.project_out, codes).reshape(*indices.shape, self.dim)
        return out.movedim(-1, 1) if self.channel_first and out.ndim > 2 else out
