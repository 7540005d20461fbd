"""Rendered text images in the DejaVu fonts, deterministic by seed.

Debian's fonts-dejavu-core package provides the fonts; nothing is downloaded.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng

FONT_FOLDER = Path("/usr/share/fonts/truetype/dejavu")
# The six faces that Debian's fonts-dejavu-core package installs, as (fontconfig pattern, file name).
DEJAVU_FONTS: tuple[tuple[str, str], ...] = (
    ("DejaVu Sans:style=Book", "DejaVuSans.ttf"),
    ("DejaVu Sans:style=Bold", "DejaVuSans-Bold.ttf"),
    ("DejaVu Serif:style=Book", "DejaVuSerif.ttf"),
    ("DejaVu Serif:style=Bold", "DejaVuSerif-Bold.ttf"),
    ("DejaVu Sans Mono:style=Book", "DejaVuSansMono.ttf"),
    ("DejaVu Sans Mono:style=Bold", "DejaVuSansMono-Bold.ttf"),
)

# Words for the rendered text, a fixed list so that every installation renders the same images.
TEXT_WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is it for on with as at by from this that be are was not or
    image token code book level depth model train test data pixel photo colour shape
    red green blue black white small large left right top bottom north south east west
    river stone cloud light paper letter number table window garden morning evening
    quick brown slow quiet bright dark warm cold early late open closed first last
    zero one two three four five six seven eight nine ten hundred
    vector matrix sample signal noise filter layer block patch crop scale
    Monday Friday April October London Paris Tokyo Nairobi Lima Oslo
    """.split()
)


def find_dejavu_fonts() -> tuple[Path, ...]:
    """Return the paths of the six DejaVu faces in `DEJAVU_FONTS`, in that order.

    Looks in /usr/share/fonts/truetype/dejavu first, then runs `fc-match`. Raises
    FileNotFoundError naming the Debian package fonts-dejavu-core when a face is missing.
    """
    paths = []
    missing = []
    for pattern, file_name in DEJAVU_FONTS:
        path = _find_font_file(pattern, file_name)
        if path is None:
            missing.append(file_name)
        else:
            paths.append(path)
    if missing:
        raise FileNotFoundError(
            f"DejaVu fonts not found: {', '.join(missing)}. Install them with "
            "`sudo apt-get install fonts-dejavu-core` (Debian and Ubuntu), or the DejaVu fonts "
            "package of your system, so that fontconfig can find them."
        )
    return tuple(paths)


def _find_font_file(pattern: str, file_name: str) -> Path | None:
    candidate = FONT_FOLDER / file_name
    if candidate.is_file():
        return candidate
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    try:
        result = subprocess.run(
            [fc_match, "--format=%{file}", pattern], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # fc-match returns its best substitute when the font is missing, so check the file name.
    found = Path(result.stdout.strip())
    if result.returncode == 0 and found.name == file_name and found.is_file():
        return found
    return None


@functools.lru_cache(maxsize=None)
def _load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


@dataclass(frozen=True)
class TextSample:
    """The parameters of one rendered text image."""

    lines: tuple[str, ...]
    font: Path
    font_size: int
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]
    origin: tuple[int, int]
    """(x, y) of the top-left corner of the first line, in pixels."""

    @property
    def text(self) -> str:
        """The rendered text, lines joined by newlines."""
        return "\n".join(self.lines)


class TextImages(Dataset):
    """Words and short lines of text rendered with PIL in the DejaVu fonts.

    Item `i` draws from `(seed, i)`: one to `4 * max_lines` words from `TEXT_WORDS`, one of
    the six fonts in `DEJAVU_FONTS`, a font size between `image_size / 12` and
    `image_size / 5` pixels, and dark text on a light background or the reverse. The words
    are wrapped greedily to the image width, and words after the last line that fits (at most
    `max_lines`) are dropped. A single word wider than the image is cut at the right edge.

    Items are `(image, text)`: a float (3, image_size, image_size) tensor in [0, 1] and the
    rendered string, lines joined by newlines. Raises FileNotFoundError, naming the package
    to install, when the fonts are missing.
    """

    def __init__(self, image_size: int = 128, seed: int = 0, max_lines: int = 3, length: int = DEFAULT_LENGTH):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        if max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {max_lines!r}")
        self.image_size = image_size
        self.seed = seed
        self.max_lines = max_lines
        self.length = length
        self.fonts = find_dejavu_fonts()

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> TextSample:
        """Return the parameters of item `index` without rendering it."""
        index = check_index(index, self.length)
        rng = item_rng(self.seed, index)
        font = self.fonts[int(rng.integers(len(self.fonts)))]
        font_size = int(rng.integers(max(6, self.image_size // 12), self.image_size // 5 + 1))
        dark = tuple(int(v) for v in rng.integers(0, 90, size=3))
        light = tuple(int(v) for v in rng.integers(170, 256, size=3))
        foreground, background = (dark, light) if rng.integers(2) == 0 else (light, dark)

        num_words = int(rng.integers(1, 4 * self.max_lines + 1))
        words = [TEXT_WORDS[int(w)] for w in rng.integers(len(TEXT_WORDS), size=num_words)]
        lines = self._wrap(words, font, font_size)
        line_height = self._line_height(font, font_size)
        widest = max(self._text_width(line, font, font_size) for line in lines)
        margin_x = max(0, self.image_size - widest)
        margin_y = max(0, self.image_size - line_height * len(lines))
        origin = (int(rng.integers(margin_x + 1)), int(rng.integers(margin_y + 1)))
        return TextSample(tuple(lines), font, font_size, foreground, background, origin)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        sample = self.sample(index)
        return self.render(sample), sample.text

    def render(self, sample: TextSample) -> Tensor:
        """Draw `sample` and return it as a float (3, image_size, image_size) tensor in [0, 1]."""
        image = Image.new("RGB", (self.image_size, self.image_size), sample.background)
        draw = ImageDraw.Draw(image)
        font = _load_font(sample.font, sample.font_size)
        line_height = self._line_height(sample.font, sample.font_size)
        x, y = sample.origin
        for number, line in enumerate(sample.lines):
            draw.text((x, y + number * line_height), line, font=font, fill=sample.foreground)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255.0)

    def _wrap(self, words: list[str], font: Path, font_size: int) -> list[str]:
        """Wrap `words` greedily into lines no wider than the image; return the lines that fit its height."""
        max_lines = min(self.max_lines, max(1, self.image_size // self._line_height(font, font_size)))
        lines = [words[0]]
        for word in words[1:]:
            candidate = f"{lines[-1]} {word}"
            if self._text_width(candidate, font, font_size) <= self.image_size:
                lines[-1] = candidate
            elif len(lines) < max_lines:
                lines.append(word)
            else:
                break
        return lines

    @staticmethod
    def _text_width(text: str, font: Path, font_size: int) -> int:
        return int(np.ceil(_load_font(font, font_size).getlength(text)))

    @staticmethod
    def _line_height(font: Path, font_size: int) -> int:
        ascent, descent = _load_font(font, font_size).getmetrics()
        return ascent + descent
