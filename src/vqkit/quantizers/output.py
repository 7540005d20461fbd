"""The output record that every vqkit quantizer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class QuantizerOutput:
    """Result of one quantizer forward pass.

    Attributes:
        quantized: the quantized input, same shape and dtype as the input. Gradients reach the
            input through the straight-through estimator (or the rotation trick).
        indices: long tensor of code ids. Its shape is the input shape without the channel axis,
            plus a trailing axis for quantizers that pick several codes per vector
            (``ResidualVQ``: depth, ``GroupedVQ``: groups, ``TopKCodebook``: k).
        loss: scalar, ``commitment_loss + codebook_loss``.
        commitment_loss: scalar, the weighted pull of the input towards its codes.
        codebook_loss: scalar, the pull of the codes towards the input; zero for EMA and
            codebook-free quantizers.
        perplexity: scalar, ``exp`` of the entropy of code usage in this batch (all ranks
            together under ``torch.distributed``). Equals the codebook size for uniform usage.
        dead_codes: long scalar, the number of codes unused for ``dead_code_threshold`` steps.
            In training these codes were restarted during this step.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor
    perplexity: Tensor
    dead_codes: Tensor


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """Return ``exp(entropy)`` of the usage distribution given per-code counts of shape (K,)."""
    counts = counts.float()
    total = counts.sum().clamp_min(1.0)
    probs = counts / total
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return torch.exp(entropy)


def code_perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """Return the usage perplexity of integer ``indices`` (any shape) over ``codebook_size`` codes."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size)
    return perplexity_from_counts(counts)
