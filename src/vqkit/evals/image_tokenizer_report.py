"""Report of `vqkit eval image-tokenizer`: the JSON results, the Markdown tables and the reconstruction grid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from vqkit.evals.report import markdown_table, write_json_and_markdown

logger = logging.getLogger(__name__)

JSON_FILE = "image_tokenizer.json"
MARKDOWN_FILE = "image_tokenizer.md"
GRID_FILE = "image_tokenizer_grid.png"
# Depths shown in the grid. A model with fewer levels shows its full depth in place of the missing ones.
GRID_DEPTHS = (1, 2, 4)


def write_results(out_dir: Path, results: dict[str, Any], images: dict[str, Tensor]) -> str:
    """Write the JSON, Markdown and grid files into `out_dir`; return the Markdown."""
    markdown = render_markdown(results)
    public = {key: value for key, value in results.items() if not key.startswith("_")}
    write_json_and_markdown(out_dir, JSON_FILE, public, MARKDOWN_FILE, markdown)
    save_grid(out_dir / GRID_FILE, images, results)
    logger.info("Wrote %s, %s and %s to %s", JSON_FILE, MARKDOWN_FILE, GRID_FILE, out_dir)
    return markdown


DEPTH_COLUMNS = [
    "Depth",
    "PSNR (dB)",
    "SSIM",
    "Codes used at level d (%)",
    "Perplexity at level d",
    "Bits per pixel",
    "rFID",
]


def render_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown report: set-up, the per-depth table, the per-photo table, speed and the rFID note."""
    parts = [
        _describe_setup(results),
        markdown_table(DEPTH_COLUMNS, [_depth_table_row(row) for row in results["depths"]]),
        _photo_table(results["photos"], results["config"]["depth"]),
        _describe_speed(results["throughput"], results["config"]["depth"]),
        _describe_rfid(results["rfid"]),
    ]
    return "\n\n".join(parts) + "\n"


def _describe_setup(results: dict[str, Any]) -> str:
    config, machine = results["config"], results["machine"]
    photos = ", ".join(_photo_label(photo) for photo in results["photos"])
    return "\n".join(
        [
            "## Image tokenizer evaluation",
            "",
            f"Model `{results['model']}`: K = {config['codebook_size']} codes, depth D = {config['depth']}, "
            f"downsample factor f = {config['downsample_factor']}, {config['parameters']:,} parameters.",
            f"Command: `{results['command']}`. Device: {machine['device']} ({machine['cpu_model']}, "
            f"{machine['threads']} torch threads), torch {machine['torch']}, vqkit {machine['vqkit']}, "
            f"{machine['date']}.",
            "",
            f"Held-out photos, whole: {photos}. PSNR and SSIM are means over the photos. Codes used and "
            "perplexity count the codes of all photos at level d only. Bits per pixel is "
            "d * ceil(log2 K) / f^2, the rate of fixed-width code ids without entropy coding.",
        ]
    )


def _depth_table_row(row: dict[str, Any]) -> list[str]:
    return [
        str(row["depth"]),
        f"{row['psnr']:.2f}",
        f"{row['ssim']:.4f}",
        f"{100 * row['level_code_usage']:.1f}",
        f"{row['level_perplexity']:.1f}",
        f"{row['bits_per_pixel']:.3g}",
        "skipped" if row["rfid"] is None else f"{row['rfid']:.2f}",
    ]


def _photo_table(photos: list[dict[str, Any]], depth: int) -> str:
    columns = [
        "Photo",
        "Size",
        "Code grid",
        f"PSNR at D={depth} (dB)",
        f"SSIM at D={depth}",
        "Encode (s)",
        "Decode (s)",
    ]
    rows = [
        [
            photo["name"],
            f"{photo['height']}x{photo['width']}",
            f"{photo['code_grid'][0]}x{photo['code_grid'][1]}",
            f"{photo['psnr'][str(depth)]:.2f}",
            f"{photo['ssim'][str(depth)]:.4f}",
            f"{photo['encode_seconds']:.3f}",
            f"{photo['decode_seconds']:.3f}",
        ]
        for photo in photos
    ]
    return markdown_table(columns, rows)


def _describe_speed(throughput: dict[str, Any], depth: int) -> str:
    return (
        f"Speed: {throughput['encode_images_per_second']:.3g} images/s encode and "
        f"{throughput['decode_images_per_second']:.3g} images/s decode at depth {depth}, over "
        f"{throughput['images']} photos of {throughput['megapixels']:.2f} megapixels in all, "
        "one photo per call, after one warm-up call."
    )


def _photo_label(photo: dict[str, Any]) -> str:
    return f"{photo['name']} ({photo['height']}x{photo['width']})"


def _describe_rfid(rfid: dict[str, Any]) -> str:
    if not rfid["computed"]:
        return f"rFID skipped: {rfid['reason']}"
    comparability = (
        "These are the weights of published FID numbers, but with this few samples the value is "
        "biased upwards, so compare it only between runs of this evaluation."
        if rfid["comparable_to_published_fid"]
        else "These are torchvision's ImageNet weights, not the TensorFlow FID Inception, so the "
        "values are comparable only between runs of this evaluation."
    )
    return (
        f"rFID: Fréchet distance between Inception-v3 pool features ({rfid['network']}, {rfid['weights']}) "
        f"of {rfid['tiles']} non-overlapping {rfid['tile_size']} x {rfid['tile_size']} tiles of the "
        f"originals and the same tiles of the reconstructions, resized to 299 x 299. {comparability}"
    )


def grid_depths(depth: int) -> list[int]:
    """Return the depths shown in the grid: those of `GRID_DEPTHS` up to `depth`, and `depth` when 4 exceeds it."""
    depths = {value for value in GRID_DEPTHS if value <= depth}
    depths.add(min(depth, max(GRID_DEPTHS)))
    return sorted(depths)


def save_grid(path: Path, images: dict[str, Tensor], results: dict[str, Any]) -> None:
    """Save a PNG grid: one row per photo, the original and then its reconstruction at each of `grid_depths`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    depths = grid_depths(results["config"]["depth"])
    reconstructions = results["_reconstructions"]
    psnr_by_photo = {photo["name"]: photo["psnr"] for photo in results["photos"]}
    aspects = [image.shape[1] / image.shape[2] for image in images.values()]
    cell_width = 3.2
    figure = Figure(figsize=(cell_width * (1 + len(depths)), sum(cell_width * a + 0.5 for a in aspects)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(images), 1 + len(depths), squeeze=False, gridspec_kw={"height_ratios": aspects})

    for row, (name, image) in enumerate(images.items()):
        cells = [("original", image)]
        cells += [
            (f"depth {depth}: {psnr_by_photo[name][str(depth)]:.2f} dB", reconstructions[name][depth])
            for depth in depths
        ]
        for column, (label, picture) in enumerate(cells):
            axis = axes[row][column]
            axis.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="lanczos")
            axis.set_title(label, fontsize=10)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
