"""Labelled procedural shapes (circles, squares, triangles in named colours), deterministic by seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
}
# Shapes are drawn at this many times the output size and downscaled, for anti-aliased edges.
SHAPE_SUPERSAMPLING = 4


@dataclass(frozen=True)
class ShapeSample:
    """The parameters of one procedural shape image."""

    label: int
    """Index into `SHAPE_CLASSES`."""
    colour: str
    """Key of `SHAPE_COLOURS`."""
    background: tuple[int, int, int]
    centre: tuple[float, float]
    """(x, y) in pixels of the output image."""
    radius: float
    """Distance from the centre to the corners (square, triangle) or the edge (circle), in pixels."""
    rotation: float
    """Rotation in radians; circles ignore it."""

    @property
    def shape(self) -> str:
        """The class name, from `SHAPE_CLASSES`."""
        return SHAPE_CLASSES[self.label]


class ShapeImages(Dataset):
    """One filled circle, square or triangle per image, labelled by its shape.

    Item `i` draws its parameters from `(seed, i)`. The shape is uniform over
    `SHAPE_CLASSES` and the fill colour over `SHAPE_COLOURS`, on a dark grey background. The
    radius is between 1/5 and 2/5 of the image side, and the centre keeps the whole shape
    inside the image. Squares and triangles also get a random rotation.

    Items are `(image, label)`: a float (3, image_size, image_size) tensor in [0, 1] and the
    int index of the shape in `SHAPE_CLASSES`.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, length: int = DEFAULT_LENGTH):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        self.image_size = image_size
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> ShapeSample:
        """Return the parameters of item `index` without rendering it."""
        index = check_index(index, self.length)
        rng = item_rng(self.seed, index)
        label = int(rng.integers(len(SHAPE_CLASSES)))
        colour = list(SHAPE_COLOURS)[int(rng.integers(len(SHAPE_COLOURS)))]
        grey = int(rng.integers(0, 60))
        size = self.image_size
        radius = float(rng.uniform(size / 5, 2 * size / 5))
        centre = (float(rng.uniform(radius, size - radius)), float(rng.uniform(radius, size - radius)))
        rotation = float(rng.uniform(0.0, 2 * np.pi))
        return ShapeSample(label, colour, (grey, grey, grey), centre, radius, rotation)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        sample = self.sample(index)
        return self.render(sample), sample.label

    def render(self, sample: ShapeSample) -> Tensor:
        """Draw `sample` and return it as a float (3, image_size, image_size) tensor in [0, 1]."""
        scale = SHAPE_SUPERSAMPLING
        canvas_size = self.image_size * scale
        image = Image.new("RGB", (canvas_size, canvas_size), sample.background)
        draw = ImageDraw.Draw(image)
        fill = SHAPE_COLOURS[sample.colour]
        cx, cy = sample.centre[0] * scale, sample.centre[1] * scale
        radius = sample.radius * scale
        if sample.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            corners = 4 if sample.shape == "square" else 3
            angles = sample.rotation + 2 * np.pi * np.arange(corners) / corners
            points = [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]
            draw.polygon(points, fill=fill)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BOX)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255.0)
