"""The demo's "Image tokenizer" tab: encode an image, show its codes, decode at every depth, edit one code.

The tab loads the model named by the `VQKIT_IMAGE_TOKENIZER_MODEL` environment variable, a
registered model name or a checkpoint folder, or else the registered `image-rqvae-64`.
`build_tab(model=...)` overrides both. When the model cannot be loaded, for example because
its checkpoint has not been trained yet, the tab shows the error and the train command in
place of its controls. The model is loaded when the app is built, so restart the demo once
the checkpoint exists.

Its events are also API endpoints for gradio_client: "/load_example_photo",
"/tokenize_image" and "/edit_image_code". The edit reads the codes of the last
"/tokenize_image" call of the same session from a `gradio.State`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from vqkit import registry
from vqkit.data.images import EVAL_PHOTOS, load_photo
from vqkit.evals import metrics
from vqkit.tokenizers.image import ImageTokenizer, load_image_tokenizer
from vqkit.tokenizers.image_inputs import prepare_images

logger = logging.getLogger(__name__)

MODEL_ENV = "VQKIT_IMAGE_TOKENIZER_MODEL"
DEFAULT_MODEL = "image-rqvae-64"
# Uploads with a longer side are downscaled to it, which bounds the CPU time of one request.
MAX_SIDE = 512
# Every image passes between server and browser as PNG. Gradio's default, lossy WebP, would
# alter the photos before encoding and the reconstructions shown.
IMAGE_FORMAT = "png"
# Difference maps saturate at this absolute change per pixel, averaged over RGB, on the [0, 1] scale.
DIFFERENCE_SCALE = 0.25


def build_tab(model: str | None = None) -> None:
    """Create the tab's components inside the current gradio context.

    `model` is a registered name or a checkpoint folder; None reads `MODEL_ENV`, then falls
    back to `DEFAULT_MODEL`.
    """
    source = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    try:
        tokenizer = load_image_tokenizer(source)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        logger.error("Image tokenizer tab: cannot load model %r: %s", source, error)
        gr.Markdown(describe_unavailable(source, error))
        return
    _build_controls(tokenizer, source)


def describe_unavailable(source: str, error: Exception) -> str:
    """Return the Markdown shown in place of the tab when the model cannot be loaded."""
    lines = [f"**The image tokenizer `{source}` could not be loaded.**", "", f"{error}"]
    if registry.is_registered(source):
        command = registry.get_model_entry(source).train_command
        if command:
            lines += ["", "Train it from the repository root, then restart `vqkit demo`:", "", f"```sh\n{command}\n```"]
    lines += ["", f"To use another checkpoint, set {MODEL_ENV} to a checkpoint folder or registered model name."]
    return "\n".join(lines)


def _build_controls(tokenizer: ImageTokenizer, source: str) -> None:
    depth, codebook_size = tokenizer.depth, tokenizer.codebook_size
    gr.Markdown(
        f"Model `{source}`: {depth} residual levels over one codebook of {codebook_size} codes, "
        f"one code per level for every {tokenizer.downsample_factor} x {tokenizer.downsample_factor} pixels. "
        f"Images longer than {MAX_SIDE} pixels are downscaled first. The example photos were held out "
        "from training."
    )
    codes_state = gr.State(None)
    with gr.Row():
        with gr.Column():
            example = gr.Dropdown(choices=list(EVAL_PHOTOS), value=None, label="Example photo")
            image = gr.Image(
                label="Image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"], format=IMAGE_FORMAT
            )
            tokenize_button = gr.Button("Tokenize", variant="primary")
        with gr.Column():
            summary = gr.Markdown()
            code_map = gr.Image(
                label=f"Depth-1 code ids (colour = code id / {codebook_size}, the codebook size)",
                type="numpy",
                format=IMAGE_FORMAT,
                interactive=False,
            )
    gallery = gr.Gallery(
        label="Reconstruction at each depth", columns=min(depth, 4), object_fit="contain", format=IMAGE_FORMAT
    )

    gr.Markdown("### Edit one code\nReplace one code id, then decode all levels again.")
    with gr.Row():
        level = gr.Number(label=f"Depth (1 to {depth})", value=1, precision=0, minimum=1, maximum=depth)
        row = gr.Number(label="Row", value=0, precision=0, minimum=0)
        column = gr.Number(label="Column", value=0, precision=0, minimum=0)
        new_code = gr.Number(label=f"New code id (0 to {codebook_size - 1})", value=0, precision=0, minimum=0)
        edit_button = gr.Button("Decode with the edit")
    edit_summary = gr.Markdown()
    with gr.Row():
        edited = gr.Image(label="Decoded with the edit", type="numpy", format=IMAGE_FORMAT, interactive=False)
        difference = gr.Image(
            label="Difference to the unedited decode", type="numpy", format=IMAGE_FORMAT, interactive=False
        )

    example.change(load_example, inputs=example, outputs=image, api_name="load_example_photo")
    tokenize_button.click(
        lambda picture: tokenize(tokenizer, picture),
        inputs=image,
        outputs=[summary, code_map, gallery, codes_state],
        api_name="tokenize_image",
    )
    # A named signature, so the API lists the inputs as depth, row, column and new_code.
    def edit_with_tokenizer(codes: dict | None, depth: float, row: float, column: float, new_code: float):
        return edit_code(tokenizer, codes, depth, row, column, new_code)

    edit_button.click(
        edit_with_tokenizer,
        inputs=[codes_state, level, row, column, new_code],
        outputs=[edit_summary, edited, difference],
        api_name="edit_image_code",
    )


def load_example(name: str | None) -> np.ndarray | None:
    """Return the held-out photo `name` as uint8 (H, W, 3), or None when nothing is selected."""
    if not name:
        return None
    if name not in EVAL_PHOTOS:
        raise gr.Error(f"unknown example photo {name!r}; choose one of {', '.join(EVAL_PHOTOS)}")
    return np.array(load_photo(name))


def tokenize(tokenizer: ImageTokenizer, picture: np.ndarray | None) -> tuple[str, np.ndarray, list, dict[str, Any]]:
    """Encode `picture`; return the summary, the depth-1 code map, the reconstructions and the codes state."""
    if picture is None:
        raise gr.Error("Upload an image or pick an example photo first.")
    picture, note = _fit_side(picture)
    try:
        image = prepare_images(picture)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    size = (image.shape[2], image.shape[3])
    codes = tokenizer.encode(image)

    gallery, rows = [], []
    for depth in range(1, tokenizer.depth + 1):
        reconstruction = tokenizer.decode(codes[:, :depth], image_size=size)[0]
        score = metrics.psnr(image[0], reconstruction)
        gallery.append((_to_uint8(reconstruction), f"depth {depth}: {score:.2f} dB"))
        rate = metrics.bits_per_pixel(depth, tokenizer.codebook_size, tokenizer.downsample_factor)
        rows.append(f"| {depth} | {score:.2f} | {rate:.3g} |")

    grid = codes.shape[2:]
    lines = [
        f"Image {size[0]} x {size[1]} pixels{note}: a {grid[0]} x {grid[1]} code grid with "
        f"{tokenizer.depth} codes per position (rows 0 to {grid[0] - 1}, columns 0 to {grid[1] - 1}).",
        "",
        "| Depth | PSNR (dB) | Bits per pixel |",
        "|---|---|---|",
        *rows,
    ]
    state = {"codes": codes[0].cpu().numpy(), "image_size": size}
    return "\n".join(lines), code_map(codes[0, 0].cpu().numpy(), tokenizer, size), gallery, state


def edit_code(
    tokenizer: ImageTokenizer, state: dict[str, Any] | None, level: Any, row: Any, column: Any, new_code: Any
) -> tuple[str, np.ndarray, np.ndarray]:
    """Replace one code id and decode at full depth; return the summary, the edited image and the difference map."""
    if state is None:
        raise gr.Error("Tokenize an image first, then edit one of its codes.")
    codes = np.array(state["codes"], dtype=np.int64)
    size = tuple(state["image_size"])
    levels, height, width = codes.shape
    level = _check_int("depth", level, 1, levels)
    row = _check_int("row", row, 0, height - 1)
    column = _check_int("column", column, 0, width - 1)
    new_code = _check_int("new code id", new_code, 0, tokenizer.codebook_size - 1)

    edited_codes = codes.copy()
    old_code = int(codes[level - 1, row, column])
    edited_codes[level - 1, row, column] = new_code
    original = tokenizer.decode(torch.from_numpy(codes)[None], image_size=size)[0]
    edited = tokenizer.decode(torch.from_numpy(edited_codes)[None], image_size=size)[0]

    change = (edited - original).abs().mean(dim=0)  # (H, W), mean over RGB
    changed = torch.nonzero(change > 1.0 / 255.0)
    if len(changed):
        top, left = changed.min(dim=0).values.tolist()
        bottom, right = changed.max(dim=0).values.tolist()
        extent = f"Pixels changed by more than 1/255: rows {top} to {bottom}, columns {left} to {right}."
    else:
        extent = "No pixel changed by more than 1/255."
    f = tokenizer.downsample_factor
    message = (
        f"Code at depth {level}, row {row}, column {column} (pixels {row * f} to {row * f + f - 1} down, "
        f"{column * f} to {column * f + f - 1} across) changed from {old_code} to {new_code}. "
        f"Largest change: {float(change.max()):.3f} on the [0, 1] scale. {extent}"
    )
    return message, _to_uint8(edited), difference_map(change)


def code_map(ids: np.ndarray, tokenizer: ImageTokenizer, size: tuple[int, int]) -> np.ndarray:
    """Colour (h, w) code ids with viridis by id / (K - 1), enlarged f times to the image size, as uint8 RGB."""
    from matplotlib import colormaps

    scale = max(tokenizer.codebook_size - 1, 1)
    colours = colormaps["viridis"](ids / scale)[..., :3]
    f = tokenizer.downsample_factor
    enlarged = colours.repeat(f, axis=0).repeat(f, axis=1)[: size[0], : size[1]]
    return (enlarged * 255).round().astype(np.uint8)


def difference_map(change: torch.Tensor) -> np.ndarray:
    """Colour an (H, W) absolute difference with magma, saturating at `DIFFERENCE_SCALE`, as uint8 RGB."""
    from matplotlib import colormaps

    normalised = (change / DIFFERENCE_SCALE).clamp(0, 1).cpu().numpy()
    return (colormaps["magma"](normalised)[..., :3] * 255).round().astype(np.uint8)


def _fit_side(picture: np.ndarray) -> tuple[np.ndarray, str]:
    height, width = picture.shape[:2]
    if max(height, width) <= MAX_SIDE:
        return picture, ""
    scale = MAX_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS))
    return resized, f" (downscaled from {height} x {width})"


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if value is None or float(value) != int(float(value)):
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    number = int(float(value))
    if not low <= number <= high:
        raise gr.Error(f"{name} {number} is out of range: it must be from {low} to {high}")
    return number


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return image.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
