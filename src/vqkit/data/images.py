"""Photographs that need no download, and random training crops of them.

Rendered text is in `vqkit.data.text_images` and labelled shapes in `vqkit.data.shapes`.
`PhotoCrops` is deterministic: item `i` with seed `s` is a function of `(s, i)` only.

The RGB photographs that scikit-image ships inside its wheel (loading them downloads nothing).
Sources and licences are as stated in the docstrings of `skimage.data` (scikit-image 0.26):

=====================  ===========  ==========================================================
name                   H x W        content and source
=====================  ===========  ==========================================================
astronaut              512 x 512    Eileen Collins, NASA Great Images database; public domain
chelsea                300 x 451    Chelsea the cat, photo by Stefan van der Walt; CC0
coffee                 400 x 600    coffee cup, photo by Rachel Michetti (Pikolo Espresso Bar); CC0
rocket                 427 x 640    Falcon 9 launching DSCOVR, SpaceX photos; public domain
motorcycle_left        500 x 741    Middlebury 2014 stereo benchmark, left view, downscaled 4x
motorcycle_right       500 x 741    the same scene, right view
hubble_deep_field      872 x 1000   Hubble eXtreme Deep Field, HubbleSite (NASA); public domain
immunohistochemistry   512 x 512    IHC-stained colonic glands, Center for Microscopy And
                                    Molecular Imaging (CMMI); no known copyright restrictions
retina                 1411 x 1411  fundus photograph of a human retina, Wikimedia Commons
                                    (Mikael Häggström); CC0
=====================  ===========  ==========================================================

`skimage.data.cat` is the same picture as `chelsea`, and the synthetic RGB images
(`colorwheel`, `logo`) are not photographs, so none of them is listed.

`EVAL_PHOTOS` (chelsea, coffee, rocket: an animal, a still life and an outdoor scene) are held
out. They are evaluated as whole images and never cropped for training. The two motorcycle
views show the same scene, so both stay on the training side.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng

PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
EVAL_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "rocket")
TRAIN_PHOTOS: tuple[str, ...] = tuple(name for name in PHOTO_NAMES if name not in EVAL_PHOTOS)

# Crop side in pixels for each named training configuration.
PHOTO_CROP_SIZES: dict[str, int] = {"small": 64, "large": 128}


def _skimage_loaders() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data

    return {
        "astronaut": data.astronaut,
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "motorcycle_left": lambda: data.stereo_motorcycle()[0],
        "motorcycle_right": lambda: data.stereo_motorcycle()[1],
        "hubble_deep_field": data.hubble_deep_field,
        "immunohistochemistry": data.immunohistochemistry,
        "retina": data.retina,
    }


@functools.lru_cache(maxsize=None)
def _load_photo_cached(name: str) -> np.ndarray:
    photo = _skimage_loaders()[name]()
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise RuntimeError(
            f"skimage.data photo {name!r} has shape {photo.shape} and dtype {photo.dtype}, "
            "expected (H, W, 3) uint8; the installed scikit-image may have changed it"
        )
    photo.setflags(write=False)
    return photo


def load_photo(name: str) -> np.ndarray:
    """Return the bundled photograph `name` as a read-only uint8 (H, W, 3) array. Cached per process."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}. Known photos: {', '.join(PHOTO_NAMES)}.")
    return _load_photo_cached(name)


def photo_tensor(name: str) -> Tensor:
    """Return the bundled photograph `name` as a float (3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1).float().div_(255.0)


def eval_photos() -> dict[str, Tensor]:
    """Return the held-out photographs, whole, as float (3, H, W) tensors in [0, 1], keyed by name."""
    return {name: photo_tensor(name) for name in EVAL_PHOTOS}


class PhotoCrops(Dataset):
    """Random square crops with random horizontal flips of the training photographs.

    Item `i` picks a photo uniformly (not by area, so the 1411 x 1411 retina does not
    dominate), a crop position uniformly inside it and a flip with probability 1/2, all from
    `(seed, i)`. Photos are cropped at the resolution scikit-image ships, without resizing.

    Args:
        crop_size: crop side in pixels, or a configuration name from `PHOTO_CROP_SIZES`
            ("small": 64, "large": 128). Must fit inside every photo in `photos`.
        seed: seed of the crop positions and flips.
        photos: names of the photos to crop. Defaults to `TRAIN_PHOTOS`. Held-out photos are
            rejected so that they cannot leak into training by accident.
        length: number of items the dataset reports.

    Items are float (3, crop_size, crop_size) tensors in [0, 1].
    """

    def __init__(
        self,
        crop_size: int | str = "small",
        seed: int = 0,
        photos: Sequence[str] = TRAIN_PHOTOS,
        length: int = DEFAULT_LENGTH,
    ):
        if isinstance(crop_size, str):
            if crop_size not in PHOTO_CROP_SIZES:
                raise ValueError(
                    f"unknown crop configuration {crop_size!r}: choose one of {', '.join(PHOTO_CROP_SIZES)} "
                    "or pass the crop side in pixels"
                )
            crop_size = PHOTO_CROP_SIZES[crop_size]
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
        photos = tuple(photos)
        if not photos:
            raise ValueError("photos is empty: give at least one name from TRAIN_PHOTOS")
        held_out = [name for name in photos if name in EVAL_PHOTOS]
        if held_out:
            raise ValueError(f"photos {held_out} are held out for evaluation and must not be cropped for training")

        self.crop_size = crop_size
        self.seed = seed
        self.photos = photos
        self.length = length
        self._images = [load_photo(name) for name in photos]
        too_small = [
            f"{name} ({image.shape[0]}x{image.shape[1]})"
            for name, image in zip(photos, self._images)
            if min(image.shape[:2]) < crop_size
        ]
        if too_small:
            raise ValueError(f"crop_size {crop_size} does not fit inside {', '.join(too_small)}")

    def __len__(self) -> int:
        return self.length

    def crop_origin(self, index: int) -> tuple[str, int, int, bool]:
        """Return (photo name, top, left, flipped) of item `index`."""
        index = check_index(index, self.length)
        rng = item_rng(self.seed, index)
        photo = int(rng.integers(len(self.photos)))
        height, width = self._images[photo].shape[:2]
        top = int(rng.integers(height - self.crop_size + 1))
        left = int(rng.integers(width - self.crop_size + 1))
        flipped = bool(rng.integers(2))
        return self.photos[photo], top, left, flipped

    def __getitem__(self, index: int) -> Tensor:
        name, top, left, flipped = self.crop_origin(index)
        image = self._images[self.photos.index(name)]
        crop = image[top : top + self.crop_size, left : left + self.crop_size]
        if flipped:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
