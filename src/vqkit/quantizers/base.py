"""Shared input handling for vqkit quantizers: layout, validation and the straight-through path."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqkit.hub import VQKitModelMixin


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_indices(indices: Tensor, codebook_size: int, name: str = "indices") -> None:
    """Raise a ValueError unless ``indices`` is an integer tensor with values in [0, codebook_size)."""
    if not isinstance(indices, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of code ids, got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {indices.dtype}; convert with .long()")
    if indices.numel() == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= codebook_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains {bad}, outside the valid range [0, {codebook_size - 1}] of this codebook")


def check_finite_scores(scores: Tensor, flat: Tensor) -> None:
    """Raise a ValueError if ``flat`` (N, D) has NaN or inf values, given ``scores`` computed from it.

    A NaN or inf in ``flat`` makes any sum or distance computed from it non-finite, so only a
    non-finite score triggers the element-wise count, which can also find that a score merely
    overflowed on large finite values.
    """
    if torch.isfinite(scores).all():
        return
    bad = int((~torch.isfinite(flat)).sum())
    if bad:
        raise ValueError(f"input contains {bad} non-finite values (NaN or inf); check the layer that produced it")


def straight_through(x: Tensor, codes: Tensor) -> Tensor:
    """Return ``codes`` in the forward pass and pass the gradient to ``x`` unchanged.

    ``codes + (x - x.detach())`` adds an exact zero, so the value equals ``codes`` bit for bit and
    ``codes_from_indices`` can reproduce it. When ``x`` needs no gradient, ``codes`` is returned
    as is. Detach ``codes`` first if the downstream gradient must not reach the codebook.
    """
    if not x.requires_grad:
        return codes
    return codes + (x - x.detach())


def rotation_trick(x: Tensor, codes: Tensor, eps: float = 1e-8) -> Tensor:
    """Return ``codes`` in the forward pass, with the gradient of the rotation trick.

    From "Restructuring Vector Quantization with the Rotation Trick" (arXiv 2410.06424): each x
    is mapped onto its code by the rotation that takes x/|x| to q/|q|, followed by the rescaling
    |q|/|x|. Rotation and scale are constants for autograd, so the gradient reaching x is the
    output gradient rotated back and rescaled, not copied unchanged.

    x, codes: (N, D) fp32.
    """
    x_norm = x.norm(dim=1, keepdim=True).clamp_min(eps)
    code_norm = codes.norm(dim=1, keepdim=True).clamp_min(eps)
    x_dir = (x / x_norm).detach()
    code_dir = (codes / code_norm).detach()
    mid = nn.functional.normalize(x_dir + code_dir, dim=1, eps=eps).detach()
    scale = (code_norm / x_norm).detach()

    # R x with R = I - 2 mid mid^T + 2 code_dir x_dir^T, the rotation in the plane of x_dir and
    # code_dir that carries x_dir onto code_dir.
    rotated = x - 2 * (x * mid).sum(1, keepdim=True) * mid + 2 * (x * x_dir).sum(1, keepdim=True) * code_dir
    rotated = scale * rotated
    return codes.detach() + (rotated - rotated.detach())


class Quantizer(nn.Module, VQKitModelMixin):
    """Base class: moves the channel axis last, flattens to (N, D) and validates the input.

    Subclasses take inputs shaped (B, ..., D), or (B, D, ...) with ``channel_first=True``, and
    save and load standalone with ``save_pretrained`` / ``from_pretrained``.
    """

    def __init__(self, dim: int, channel_first: bool = False):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.channel_first = channel_first

    def _flatten(self, x: Tensor, check_finite: bool = True) -> tuple[Tensor, torch.Size]:
        """Validate ``x`` and return it as (N, D) fp32 rows plus the leading shape.

        With ``check_finite=False`` the caller must run ``check_finite_scores`` on its search
        distances instead, which saves a pass over the data.
        """
        if not isinstance(x, Tensor):
            raise ValueError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}; convert it with .float()")
        if x.ndim < 2:
            raise ValueError(f"input must have a batch and a channel axis, got shape {tuple(x.shape)}")

        channel_axis = 1 if self.channel_first else -1
        if x.shape[channel_axis] != self.dim:
            layout = "(B, D, ...) with channel_first=True" if self.channel_first else "(B, ..., D)"
            hint = "" if self.channel_first else "; for (B, D, H, W) feature maps pass channel_first=True"
            raise ValueError(
                f"input has {x.shape[channel_axis]} channels on axis {channel_axis}, expected dim={self.dim} "
                f"in layout {layout}{hint}"
            )

        if self.channel_first:
            x = x.movedim(1, -1)
        flat = x.reshape(-1, self.dim).float()

        if check_finite:
            check_finite_scores(flat.sum(), flat)
        return flat, x.shape[:-1]

    def _unflatten(self, flat: Tensor, lead_shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """Invert ``_flatten``: (N, D) back to the input layout and dtype."""
        out = flat.reshape(*lead_shape, self.dim).to(dtype)
        if self.channel_first:
            out = out.movedim(-1, 1)
        return out
