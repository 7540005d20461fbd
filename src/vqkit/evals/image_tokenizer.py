"""`vqkit eval image-tokenizer`: the image tokenizer on the held-out photographs, at every depth.

    vqkit eval image-tokenizer [--model NAME_OR_DIR] [--out results/] [--device cpu] [--no-rfid]

Each held-out photo (`vqkit.data.images.EVAL_PHOTOS`) is encoded whole, once, and decoded with
the first d residual levels for every depth d from 1 to D. Per depth the evaluation reports

- PSNR and SSIM, means over the photos (`vqkit.evals.metrics`);
- the codes used at level d, as a percentage of the K codes, and their perplexity, over
  the codes of all photos at that level;
- the fixed-length rate, `d * ceil(log2 K) / f^2` bits per pixel;
- rFID, when Inception-v3 weights are cached locally (see `metrics.load_inception`),
  between non-overlapping `RFID_TILE_SIZE` tiles of the originals and of the reconstructions.

It also times the encode and the full-depth decode of every photo, after one warm-up call
on a small image, and reports images per second. It writes OUT/image_tokenizer.json,
OUT/image_tokenizer.md (also printed) and OUT/image_tokenizer_grid.png, a grid with one row
per photo and the columns original, depth 1, depth 2 and depth 4.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqkit.evals import metrics
from vqkit.evals.image_tokenizer_report import write_results
from vqkit.evals.machine import describe_machine
from vqkit.tokenizers.image import ImageTokenizer, load_image_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "image-rqvae-64"
# Side of the tiles that rFID compares. 64 is the crop size the shipped model trained on, and
# it gives 142 tiles from the three held-out photos.
RFID_TILE_SIZE = 64
# Exit status for invalid arguments or a model that cannot be loaded, as argparse uses.
USAGE_ERROR = 2


def evaluate(
    tokenizer: ImageTokenizer,
    images: dict[str, Tensor] | None = None,
    *,
    rfid: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `tokenizer`, switched to eval mode, on `images`; return the results as a JSON-ready dict.

    `images` maps names to float (3, H, W) images in [0, 1] and defaults to the held-out
    photographs. The returned dict has "config", "depths" (one entry per depth), "photos"
    (one entry per image), "throughput" and "rfid" (with "computed" false and a "reason"
    when it was skipped). The reconstructions for the grid are under the private key
    "_reconstructions", which `write_results` drops from the JSON.
    """
    from tqdm.auto import tqdm

    from vqkit.data.images import eval_photos

    if images is None:
        images = eval_photos()
    if not images:
        raise ValueError("images is empty: give at least one image to evaluate")
    tokenizer.eval()
    device = tokenizer.device
    depths = range(1, tokenizer.depth + 1)

    _warm_up(tokenizer)
    photos, all_codes, reconstructions = [], [], {}
    for name, image in tqdm(images.items(), desc="eval image-tokenizer", unit="image", disable=not progress):
        photo, codes, decoded = _evaluate_photo(tokenizer, name, image)
        photos.append(photo)
        all_codes.append(codes)
        reconstructions[name] = decoded

    rfid_info, rfid_by_depth = _rfid(images, reconstructions, depths, device) if rfid else (_rfid_skipped(), {})
    per_depth = [_depth_row(tokenizer, depth, photos, all_codes, rfid_by_depth.get(depth)) for depth in depths]
    count = len(images)
    megapixels = sum(photo["height"] * photo["width"] for photo in photos) / 1e6
    encode_seconds = sum(photo["encode_seconds"] for photo in photos)
    decode_seconds = sum(photo["decode_seconds"] for photo in photos)
    return {
        "config": {
            "codebook_size": tokenizer.codebook_size,
            "depth": tokenizer.depth,
            "downsample_factor": tokenizer.downsample_factor,
            "parameters": sum(parameter.numel() for parameter in tokenizer.parameters()),
        },
        "depths": per_depth,
        "photos": photos,
        "throughput": {
            "images": count,
            "megapixels": megapixels,
            "encode_seconds": encode_seconds,
            "decode_seconds": decode_seconds,
            "encode_images_per_second": count / encode_seconds,
            "decode_images_per_second": count / decode_seconds,
        },
        "rfid": rfid_info,
        "_reconstructions": reconstructions,
    }


def _evaluate_photo(
    tokenizer: ImageTokenizer, name: str, image: Tensor
) -> tuple[dict[str, Any], Tensor, dict[int, Tensor]]:
    """Encode one image and decode it at every depth; return its record, its (D, h, w) codes and its reconstructions by depth.

    Only the encode and the full-depth decode are timed.
    """
    device = tokenizer.device
    depths = range(1, tokenizer.depth + 1)
    size = (image.shape[1], image.shape[2])
    batch = image[None].to(device)

    start = time.perf_counter()
    codes = tokenizer.encode(batch)
    _synchronize(device)
    encode_time = time.perf_counter() - start

    start = time.perf_counter()
    tokenizer.decode(codes, image_size=size)
    _synchronize(device)
    decode_time = time.perf_counter() - start

    decoded = {depth: tokenizer.decode(codes[:, :depth], image_size=size)[0].cpu() for depth in depths}
    record = {
        "name": name,
        "height": size[0],
        "width": size[1],
        "code_grid": [codes.shape[2], codes.shape[3]],
        "encode_seconds": encode_time,
        "decode_seconds": decode_time,
        "psnr": {str(depth): metrics.psnr(image, decoded[depth]) for depth in depths},
        "ssim": {str(depth): metrics.ssim(image, decoded[depth]) for depth in depths},
    }
    return record, codes[0].cpu(), decoded


def _warm_up(tokenizer: ImageTokenizer) -> None:
    """Run one small encode and decode, so that one-time set-up costs stay out of the timings."""
    side = 8 * tokenizer.downsample_factor
    tokenizer.decode(tokenizer.encode(torch.rand(1, 3, side, side, device=tokenizer.device)))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _depth_row(
    tokenizer: ImageTokenizer, depth: int, photos: list[dict[str, Any]], all_codes: list[Tensor], rfid: float | None
) -> dict[str, Any]:
    level_codes = torch.cat([codes[depth - 1].reshape(-1) for codes in all_codes])
    return {
        "depth": depth,
        "psnr": float(np.mean([photo["psnr"][str(depth)] for photo in photos])),
        "ssim": float(np.mean([photo["ssim"][str(depth)] for photo in photos])),
        "level_code_usage": metrics.code_usage(level_codes, tokenizer.codebook_size),
        "level_perplexity": metrics.code_perplexity(level_codes, tokenizer.codebook_size),
        "bits_per_pixel": metrics.bits_per_pixel(depth, tokenizer.codebook_size, tokenizer.downsample_factor),
        "rfid": rfid,
    }


def _rfid_skipped() -> dict[str, Any]:
    return {"computed": False, "reason": "disabled (--no-rfid)"}


def _rfid(
    images: dict[str, Tensor], reconstructions: dict[str, dict[int, Tensor]], depths: range, device: torch.device
) -> tuple[dict[str, Any], dict[int, float]]:
    """Return the rFID description and the rFID per depth, or a skip reason and no values."""
    try:
        inception = metrics.load_inception(device)
    except metrics.InceptionUnavailable as error:
        logger.warning("Skipping rFID: %s", error)
        return {"computed": False, "reason": str(error)}, {}

    originals = [tile for image in images.values() for tile in metrics.image_tiles(image, RFID_TILE_SIZE)]
    if len(originals) < 2:
        reason = f"the images give {len(originals)} tiles of {RFID_TILE_SIZE} x {RFID_TILE_SIZE} pixels; rFID needs at least 2"
        return {"computed": False, "reason": reason}, {}
    reference = metrics.extract_features(inception.extract, originals)
    by_depth = {}
    for depth in depths:
        tiles = [tile for name in images for tile in metrics.image_tiles(reconstructions[name][depth], RFID_TILE_SIZE)]
        by_depth[depth] = metrics.frechet_distance(reference, metrics.extract_features(inception.extract, tiles))
    info = {
        "computed": True,
        "network": inception.network,
        "weights": str(inception.weights_path),
        "comparable_to_published_fid": inception.comparable_to_published_fid,
        "tiles": len(originals),
        "tile_size": RFID_TILE_SIZE,
    }
    return info, by_depth


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit eval image-tokenizer",
        description="Evaluate the image tokenizer on the held-out photos at every depth: PSNR, SSIM, "
        "code usage, perplexity, bits per pixel, speed and, with local Inception weights, rFID.",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"registered model name or checkpoint folder (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for the result files (default: results)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--no-rfid", action="store_true", help="skip rFID even when Inception weights are cached")
    parser.add_argument("--no-progress", action="store_true", help="do not show the tqdm progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit eval image-tokenizer ARGS`, print the Markdown report and return the exit status."""
    import shlex

    from vqkit.data.images import eval_photos

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        tokenizer = load_image_tokenizer(args.model, device=args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"vqkit eval image-tokenizer: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR

    images = eval_photos()
    results = {
        "model": args.model,
        "command": " ".join(["vqkit eval image-tokenizer", *map(shlex.quote, argv)]),
        "machine": describe_machine(tokenizer.device),
        **evaluate(tokenizer, images, rfid=not args.no_rfid, progress=not args.no_progress),
    }
    print(write_results(args.out, results, images), end="")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
