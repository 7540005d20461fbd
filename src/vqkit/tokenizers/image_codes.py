"""Codes files of the image tokenizer, and the `vqkit encode image` and `vqkit decode image` commands.

    vqkit encode image photo.png -o photo.safetensors [--model image-rqvae-64]
    vqkit decode image photo.safetensors -o photo.png [--model NAME_OR_DIR] [--depth D]

A codes file is a safetensors file with one integer tensor, "codes", of shape (depth, h, w):
the code ids of one image, level by level. It is stored as uint8, int16 or int32, the
smallest type that fits every id of the codebook. Its string metadata are:

- `format`: "vqkit.image-codes", and `format_version`: "1";
- `model`: the registered model name, or the absolute checkpoint folder, that encoded it;
- `image_height`, `image_width`: the size of the image before padding, which decode crops to;
- `codebook_size`, `downsample_factor`: of that model, checked against the decoding model.

Reading a file that is not valid safetensors, lacks this metadata, or contains code ids
outside [0, codebook_size) raises ValueError naming the value and the limit. The commands
print such errors as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vqkit.tokenizers.image import ImageTokenizer, load_image_tokenizer

logger = logging.getLogger(__name__)

CODES_TENSOR = "codes"
FORMAT_NAME = "vqkit.image-codes"
FORMAT_VERSION = 1
DEFAULT_MODEL = "image-rqvae-64"
# Exit status for invalid input, the same as for invalid command lines.
USAGE_ERROR = 2

_INTEGER_METADATA = ("image_height", "image_width", "codebook_size", "downsample_factor")


@dataclass(frozen=True)
class ImageCodes:
    """The contents of a codes file."""

    codes: Tensor
    """long (depth, h, w)."""
    image_size: tuple[int, int]
    """(H, W) of the image before `encode` padded it."""
    model: str
    codebook_size: int
    downsample_factor: int


def storage_dtype(codebook_size: int) -> torch.dtype:
    """Return the smallest integer dtype that can store the ids 0 .. codebook_size - 1."""
    if codebook_size <= 2**8:
        return torch.uint8
    if codebook_size <= 2**15:
        return torch.int16
    return torch.int32


def save_codes(path: str | os.PathLike[str], codes: ImageCodes) -> None:
    """Write `codes` to a safetensors codes file at `path`, replacing any file there."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model": codes.model,
        "image_height": str(codes.image_size[0]),
        "image_width": str(codes.image_size[1]),
        "codebook_size": str(codes.codebook_size),
        "downsample_factor": str(codes.downsample_factor),
    }
    from vqkit.hub import apply_umask_to_file

    tensor = codes.codes.to("cpu", storage_dtype(codes.codebook_size)).contiguous()
    _check_parent_folder(Path(path))
    save_file({CODES_TENSOR: tensor}, os.fspath(path), metadata=metadata)
    apply_umask_to_file(Path(path))


def _check_parent_folder(path: Path) -> None:
    """Raise FileNotFoundError naming the folder when the output's folder does not exist."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} not found: create it first, or choose another -o path")


def load_codes(path: str | os.PathLike[str]) -> ImageCodes:
    """Read and validate a codes file written by `save_codes`.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not valid
    safetensors, has missing or invalid metadata, or contains out-of-range code ids.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codes file not found: {path}")
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            metadata = file.metadata() or {}
            names = list(file.keys())
            tensor = file.get_tensor(CODES_TENSOR) if CODES_TENSOR in names else None
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a valid safetensors file ({_one_line(error)}); "
            "re-create it with `vqkit encode image IMAGE -o CODES.safetensors`"
        ) from None

    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path} is not a vqkit image codes file: its metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT_NAME!r}. Write codes files with `vqkit encode image`."
        )
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"{path} has format_version {metadata.get('format_version')!r}; this vqkit reads version {FORMAT_VERSION}"
        )
    if tensor is None:
        raise ValueError(f"{path} has no {CODES_TENSOR!r} tensor; it contains {names}")
    values = {name: _metadata_int(path, metadata, name) for name in _INTEGER_METADATA}
    model = metadata.get("model", "")
    if not model:
        raise ValueError(f"{path} has no 'model' in its metadata; pass --model to decode it")

    codes = _check_codes_tensor(path, tensor, values["codebook_size"])
    _check_image_size(path, values, codes.shape)
    return ImageCodes(
        codes=codes,
        image_size=(values["image_height"], values["image_width"]),
        model=model,
        codebook_size=values["codebook_size"],
        downsample_factor=values["downsample_factor"],
    )


def _metadata_int(path: Path, metadata: dict[str, str], name: str) -> int:
    raw = metadata.get(name)
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path} has invalid metadata {name}={raw!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{path} has invalid metadata {name}={value}: expected a positive integer")
    return value


def _check_codes_tensor(path: Path, tensor: Tensor, codebook_size: int) -> Tensor:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{path}: the {CODES_TENSOR!r} tensor has dtype {tensor.dtype}, expected an integer dtype")
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise ValueError(
            f"{path}: the {CODES_TENSOR!r} tensor has shape {tuple(tensor.shape)}, expected non-empty (depth, h, w)"
        )
    codes = tensor.long()
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{path}: code id {bad} is outside the valid range [0, {codebook_size - 1}] "
            f"of the file's {codebook_size}-code codebook"
        )
    return codes


def _check_image_size(path: Path, values: dict[str, int], shape: torch.Size) -> None:
    factor = values["downsample_factor"]
    limits = (shape[1] * factor, shape[2] * factor)
    size = (values["image_height"], values["image_width"])
    if size[0] > limits[0] or size[1] > limits[1]:
        raise ValueError(
            f"{path}: image size {size[0]}x{size[1]} in the metadata exceeds the decoded size "
            f"{limits[0]}x{limits[1]} of its {shape[1]}x{shape[2]} code grid"
        )


def check_codes_match(codes: ImageCodes, tokenizer: ImageTokenizer, source: str) -> None:
    """Raise ValueError when `tokenizer` cannot decode `codes`: another codebook size or downsample factor, or too many levels."""
    if codes.codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"{source} was encoded with a {codes.codebook_size}-code codebook, but the model has "
            f"{tokenizer.codebook_size} codes; decode it with the model that encoded it ({codes.model})"
        )
    if codes.downsample_factor != tokenizer.downsample_factor:
        raise ValueError(
            f"{source} has downsample factor {codes.downsample_factor}, but the model's is "
            f"{tokenizer.downsample_factor}; decode it with the model that encoded it ({codes.model})"
        )
    if codes.codes.shape[0] > tokenizer.depth:
        raise ValueError(
            f"{source} has {codes.codes.shape[0]} residual levels, more than the model's depth {tokenizer.depth}"
        )


def model_reference(name_or_path: str) -> str:
    """Return what a codes file records as its model: a registered name as is, a folder as an absolute path."""
    from vqkit import registry

    if registry.is_registered(name_or_path):
        return name_or_path
    return str(Path(name_or_path).resolve())


# ---- command line ------------------------------------------------------------------------------


def encode_main(argv: list[str] | None = None) -> int:
    """Run `vqkit encode image IMAGE -o CODES` and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="vqkit encode image",
        description="Encode an image file into a safetensors codes file with the image tokenizer.",
    )
    parser.add_argument("image", type=Path, help="image file that PIL can read (PNG, JPEG, ...)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="codes file to write (.safetensors)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"registered model name or checkpoint folder (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--device", default="cpu", help="torch device to encode on (default: cpu)")
    args = parser.parse_args(argv)

    try:
        tokenizer = load_image_tokenizer(args.model, device=args.device)
        image = read_image(args.image)
        codes = tokenizer.encode(image)[0]
        result = ImageCodes(
            codes=codes,
            image_size=(image.height, image.width),
            model=model_reference(args.model),
            codebook_size=tokenizer.codebook_size,
            downsample_factor=tokenizer.downsample_factor,
        )
        save_codes(args.output, result)
    except (ValueError, FileNotFoundError) as error:
        return _fail("vqkit encode image", error)
    depth, height, width = codes.shape
    logger.info("Wrote %d x %d x %d codes of %s to %s", depth, height, width, args.image, args.output)
    return 0


def decode_main(argv: list[str] | None = None) -> int:
    """Run `vqkit decode image CODES -o IMAGE` and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="vqkit decode image",
        description="Decode a codes file written by `vqkit encode image` back into an image file.",
    )
    parser.add_argument("codes", type=Path, help="codes file (.safetensors) written by `vqkit encode image`")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="image file to write; its suffix sets the format"
    )
    parser.add_argument(
        "--model", help="registered model name or checkpoint folder (default: the model recorded in the codes file)"
    )
    parser.add_argument(
        "--depth", type=int, help="decode only the first DEPTH residual levels (default: all in the file)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to decode on (default: cpu)")
    args = parser.parse_args(argv)

    try:
        stored = load_codes(args.codes)
        tokenizer = load_image_tokenizer(args.model or stored.model, device=args.device)
        check_codes_match(stored, tokenizer, str(args.codes))
        levels = stored.codes.shape[0]
        depth = levels if args.depth is None else args.depth
        if not 1 <= depth <= levels:
            raise ValueError(f"--depth {depth} is out of range: {args.codes} has levels 1 to {levels}")
        image = tokenizer.decode(stored.codes[None, :depth], image_size=stored.image_size)[0]
        write_image(args.output, image)
    except (ValueError, FileNotFoundError) as error:
        return _fail("vqkit decode image", error)
    logger.info("Wrote a %dx%d image decoded at depth %d to %s", *stored.image_size, depth, args.output)
    return 0


def read_image(path: Path):
    """Open an image file with PIL and load its pixels; raise ValueError when PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read {path} as an image: {_one_line(error)}") from None


def write_image(path: Path, image: Tensor) -> None:
    """Write a float (3, H, W) image in [0, 1] as 8-bit RGB; the suffix of `path` sets the format."""
    from PIL import Image

    pixels = image.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    _check_parent_folder(path)
    try:
        Image.fromarray(pixels).save(path)
    except (ValueError, KeyError) as error:
        # PIL raises these for a suffix it does not know.
        raise ValueError(f"cannot write {path}: {_one_line(error)}; use a suffix such as .png") from None


def _fail(command: str, error: Exception) -> int:
    print(f"{command}: {_one_line(error)}", file=sys.stderr)
    return USAGE_ERROR


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
