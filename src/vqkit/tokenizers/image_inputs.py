"""Conversion of the image inputs that `ImageTokenizer` accepts into float RGB batches, with their checks.

`prepare_images` lists the accepted inputs and the errors it raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Largest accepted image side, in pixels, for encode, decode and the training forward.
MAX_IMAGE_SIDE = 4096
# Float images may exceed [0, 1] by this much (resampling filters overshoot slightly); such
# values are clamped. Values further out raise ValueError.
RANGE_TOLERANCE = 0.01

ImageInput = Any
"""A torch.Tensor, numpy.ndarray, PIL.Image.Image, or a list of same-sized numpy or PIL images."""


def prepare_images(images: ImageInput) -> Tensor:
    """Convert supported image inputs to a float32 (B, 3, H, W) batch in [0, 1] on their device.

    Accepted inputs and layouts:

    - torch.Tensor (B, C, H, W), float in [0, 1] or uint8 in [0, 255];
    - torch.Tensor (H, W, C) uint8, one image;
    - torch.Tensor (H, W), one grayscale image, float or uint8;
    - numpy.ndarray (H, W), (H, W, C) or (B, H, W, C), float in [0, 1] or uint8;
    - PIL.Image.Image in an 8-bit mode;
    - a list or tuple of numpy arrays or PIL images with the same height and width.

    C may be 1 (grayscale), 2 (grayscale and alpha), 3 (RGB) or 4 (RGBA). Grayscale is
    repeated to three channels, and an alpha channel is composited onto a white background,
    with an INFO log. Float values within `RANGE_TOLERANCE` of [0, 1] are clamped.

    Raises ValueError for other types, layouts and dtypes, for float values further outside
    [0, 1], non-finite values, empty sides and sides over `MAX_IMAGE_SIDE` pixels.
    """
    if isinstance(images, (list, tuple)):
        return _stack_images(images)
    if _is_pil_image(images):
        return _pil_to_tensor(images)
    if isinstance(images, np.ndarray):
        return _array_to_tensor(images)
    if isinstance(images, Tensor):
        return _tensor_to_batch(images)
    raise ValueError(
        f"unsupported image input of type {type(images).__name__}: pass a torch.Tensor "
        "(B, C, H, W), a numpy array (H, W, C), a PIL image, or a list of those"
    )


def _is_pil_image(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _stack_images(images: Sequence[Any]) -> Tensor:
    if not images:
        raise ValueError("the list of images is empty: pass at least one image")
    if any(isinstance(image, Tensor) for image in images):
        raise ValueError("a list of torch tensors is not accepted: stack them with torch.stack into (B, C, H, W)")
    batches = [prepare_images(image) for image in images]
    sizes = {tuple(batch.shape[2:]) for batch in batches}
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise ValueError(f"images in one list must share a size, got {listed}; encode them one at a time")
    return torch.cat(batches)


def _pil_to_tensor(image: Any) -> Tensor:
    mode = image.mode
    if mode in ("1", "L", "LA", "RGB", "RGBA"):
        converted = image.convert("L") if mode == "1" else image
    elif mode in ("P", "PA"):
        converted = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        logger.info("converting PIL image mode %s to RGB", mode)
        converted = image.convert("RGB")
    else:
        raise ValueError(
            f"unsupported PIL image mode {mode!r}: vqkit accepts 8-bit images. "
            "Convert it first, e.g. image.convert('RGB')."
        )
    return _array_to_tensor(np.asarray(converted))


def _array_to_tensor(array: np.ndarray) -> Tensor:
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    elif array.ndim != 4:
        raise ValueError(
            f"numpy images must be channel-last (H, W), (H, W, C) or (B, H, W, C), got shape {array.shape}"
        )
    if array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"numpy image has {array.shape[-1]} channels on its last axis, expected 1, 2, 3 or 4; "
            "numpy images are channel-last (H, W, C)"
        )
    _check_dtype(array.dtype, array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating))
    _check_sides(array.shape[1], array.shape[2])
    # np.array copies, so read-only arrays (PIL's, for one) become writable tensors.
    return _to_unit_rgb(torch.from_numpy(np.array(array)).permute(0, 3, 1, 2))


def _tensor_to_batch(tensor: Tensor) -> Tensor:
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        if tensor.dtype != torch.uint8:
            raise ValueError(
                f"a 3-D {tensor.dtype} tensor of shape {tuple(tensor.shape)} is ambiguous: pass float "
                "images as a (B, C, H, W) batch, e.g. image[None] for one (C, H, W) image"
            )
        if tensor.shape[-1] not in (1, 2, 3, 4):
            raise ValueError(
                f"a 3-D uint8 tensor must be one (H, W, C) image, but shape {tuple(tensor.shape)} has "
                f"{tensor.shape[-1]} channels on its last axis; for a (C, H, W) image pass image[None]"
            )
        tensor = tensor.permute(2, 0, 1)[None]
    elif tensor.ndim != 4:
        raise ValueError(f"image tensors must be (B, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] not in (1, 2, 3, 4):
        raise ValueError(
            f"image tensor has {tensor.shape[1]} channels on axis 1, expected 1, 2, 3 or 4; "
            "tensors are channel-first (B, C, H, W)"
        )
    _check_dtype(tensor.dtype, tensor.dtype == torch.uint8 or tensor.dtype.is_floating_point)
    _check_sides(tensor.shape[2], tensor.shape[3])
    return _to_unit_rgb(tensor)


def _check_dtype(dtype: Any, is_supported: bool) -> None:
    if not is_supported:
        raise ValueError(f"unsupported image dtype {dtype}: pass uint8 values in [0, 255] or floats in [0, 1]")


def _check_sides(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} has an empty side")
    if max(height, width) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"image size {height}x{width} is over the limit of {MAX_IMAGE_SIDE} pixels per side; "
            "resize or tile the image first"
        )


def _to_unit_rgb(batch: Tensor) -> Tensor:
    """Scale a (B, C, H, W) uint8 or float batch to float32 [0, 1] and convert it to RGB."""
    if batch.dtype == torch.uint8:
        x = batch.float().div_(255.0)
    else:
        x = batch.float()
        if x.numel():
            _check_float_range(x)
            x = x.clamp(0.0, 1.0)

    channels = x.shape[1]
    if channels in (2, 4):
        logger.info("compositing the alpha channel of %d-channel input onto white", channels)
        alpha = x[:, -1:]
        x = x[:, :-1] * alpha + (1.0 - alpha)
    if x.shape[1] == 1:
        logger.info("converting grayscale input to RGB")
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _check_float_range(x: Tensor) -> None:
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"images contain {bad} non-finite values (NaN or inf); replace them, e.g. with torch.nan_to_num, before encoding"
        )
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        bad = low if low < -RANGE_TOLERANCE else high
        raise ValueError(
            f"float images must be in [0, 1], but contain {bad:g} (the tolerance is {RANGE_TOLERANCE:g}); "
            "divide uint8 pixel values by 255, or pass the uint8 tensor itself"
        )
