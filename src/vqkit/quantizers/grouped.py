"""GroupedVQ: product quantization, one VectorQuantizer per group of channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, check_positive_int
from .output import QuantizerOutput
from .vq import VectorQuantizer


class GroupedVQ(Quantizer):
    """Split D channels into ``groups`` equal slices and quantize each with its own codebook.

    The effective codebook has ``codebook_size ** groups`` entries at the cost of ``groups``
    searches over ``codebook_size`` codes of size D / groups.

    Args:
        dim: size D of the vectors; must be divisible by ``groups``.
        codebook_size: codes per group.
        groups: number of channel groups G.
        channel_first: inputs are (B, D, ...) instead of (B, ..., D).
        **vq_kwargs: passed to each group's ``VectorQuantizer`` (distance, ema_decay, ...).

    Shapes:
        input (B, ..., D) -> ``quantized`` (B, ..., D), ``indices`` (B, ..., G) long. Losses and
        perplexity are averaged over groups; ``dead_codes`` is summed.
    """

    def __init__(self, dim: int, codebook_size: int, groups: int, channel_first: bool = False, **vq_kwargs):
        super().__init__(dim, channel_first)
        self.groups = check_positive_int("groups", groups)
        if dim % groups != 0:
            raise ValueError(f"dim={dim} must be divisible by groups={groups}; pick groups among the divisors of dim")
        self.codebook_size = codebook_size
        seed = vq_kwargs.pop("seed", None)
        self.quantizers = nn.ModuleList(
            VectorQuantizer(
                dim // groups, codebook_size, seed=None if seed is None else seed + group, **vq_kwargs
            )
            for group in range(groups)
        )

    def forward(self, x: Tensor) -> QuantizerOutput:
        flat, lead_shape = self._flatten(x)
        outputs = [quantizer(part) for quantizer, part in zip(self.quantizers, flat.chunk(self.groups, dim=1))]

        quantized = torch.cat([o.quantized for o in outputs], dim=1)
        indices = torch.stack([o.indices for o in outputs], dim=-1)
        commitment = torch.stack([o.commitment_loss for o in outputs]).mean()
        codebook_loss = torch.stack([o.codebook_loss for o in outputs]).mean()
        return QuantizerOutput(
            quantized=self._unflatten(quantized, lead_shape, x.dtype),
            indices=indices.reshape(*lead_shape, self.groups),
            loss=commitment + codebook_loss,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=torch.stack([o.perplexity for o in outputs]).mean(),
            dead_codes=torch.stack([o.dead_codes for o in outputs]).sum(),
        )

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Return the codes for ``indices`` (B, ..., G) as (B, ..., D), or (B, D, ...) with
        ``channel_first``; in eval mode this equals ``forward(x).quantized``."""
        if not isinstance(indices, Tensor) or indices.ndim < 1 or indices.shape[-1] != self.groups:
            shape = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
            raise ValueError(f"indices must be shaped (B, ..., groups={self.groups}), got {shape}")
        parts = [q.codes_from_indices(indices[..., g]) for g, q in enumerate(self.quantizers)]
        codes = torch.cat(parts, dim=-1)
        return codes.movedim(-1, 1) if self.channel_first and codes.ndim > 2 else codes
