"""`vqkit encode image` / `vqkit decode image` and the codes files they exchange."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from vqkit import cli
from vqkit.data.images import load_photo
from vqkit.tokenizers import image_codes
from vqkit.tokenizers.image_codes import FORMAT_NAME, ImageCodes, load_codes, save_codes


@pytest.fixture
def photo_png(tmp_path):
    """A 30 x 45 crop of a held-out photo as PNG; neither side is a multiple of the factor 2."""
    path = tmp_path / "crop.png"
    Image.fromarray(np.array(load_photo("chelsea")[100:130, 200:245])).save(path)
    return path


@pytest.fixture
def codes_file(tiny_image_tokenizer_dir, photo_png, tmp_path):
    path = tmp_path / "crop.safetensors"
    assert cli.main(["encode", "image", str(photo_png), "-o", str(path), "--model", str(tiny_image_tokenizer_dir)]) == 0
    return path


def write_codes_file(path, codes: torch.Tensor, **metadata_overrides) -> None:
    metadata = {
        "format": FORMAT_NAME,
        "format_version": "1",
        "model": "image-rqvae-64",
        "image_height": "8",
        "image_width": "8",
        "codebook_size": "64",
        "downsample_factor": "2",
        **metadata_overrides,
    }
    save_file({"codes": codes}, str(path), metadata={k: v for k, v in metadata.items() if v is not None})


def run_decode(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(["decode", "image", *args])
    return status, capsys.readouterr().err


def test_encode_writes_codes_and_metadata(codes_file, tiny_image_tokenizer_dir):
    with safe_open(str(codes_file), framework="pt") as file:
        metadata = file.metadata()
        codes = file.get_tensor("codes")

    assert codes.dtype == torch.uint8  # K = 64 fits in one byte
    assert codes.shape == (3, 15, 23)
    assert metadata["format"] == FORMAT_NAME
    assert metadata["model"] == str(tiny_image_tokenizer_dir.resolve())
    assert (metadata["image_height"], metadata["image_width"]) == ("30", "45")
    assert (metadata["codebook_size"], metadata["downsample_factor"]) == ("64", "2")


def test_round_trip_matches_reconstruct(codes_file, photo_png, tiny_image_tokenizer, tmp_path):
    output = tmp_path / "decoded.png"
    assert cli.main(["decode", "image", str(codes_file), "-o", str(output)]) == 0

    decoded = np.asarray(Image.open(output))
    original = np.asarray(Image.open(photo_png))
    expected = tiny_image_tokenizer.reconstruct(original)[0].permute(1, 2, 0).numpy() * 255
    assert decoded.shape == (30, 45, 3)
    assert np.abs(decoded.astype(np.float64) - expected).max() <= 0.5 + 1e-3


def test_decode_depth_option_uses_prefix(codes_file, tiny_image_tokenizer, tmp_path):
    output = tmp_path / "coarse.png"
    assert cli.main(["decode", "image", str(codes_file), "-o", str(output), "--depth", "1"]) == 0

    stored = load_codes(codes_file)
    expected = tiny_image_tokenizer.decode(stored.codes[None, :1], image_size=(30, 45))[0]
    expected_pixels = expected.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(output)), expected_pixels)


def test_storage_dtype_grows_with_codebook():
    assert image_codes.storage_dtype(256) == torch.uint8
    assert image_codes.storage_dtype(257) == torch.int16
    assert image_codes.storage_dtype(2**15) == torch.int16
    assert image_codes.storage_dtype(2**15 + 1) == torch.int32


def test_save_and_load_keep_values(tmp_path):
    codes = torch.randint(0, 1000, (2, 3, 4))
    save_codes(tmp_path / "c.safetensors", ImageCodes(codes, (5, 7), "image-rqvae-64", 1000, 2))

    loaded = load_codes(tmp_path / "c.safetensors")
    assert loaded.codes.dtype == torch.long
    assert torch.equal(loaded.codes, codes)
    assert loaded.image_size == (5, 7)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a safetensors file", "is not a valid safetensors file"),
        (b"", "is not a valid safetensors file"),
    ],
)
def test_decode_rejects_corrupted_file(capsys, tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)

    status, error = run_decode(capsys, str(path), "-o", str(tmp_path / "out.png"))
    assert status == 2
    assert message in error
    assert error.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


def test_decode_rejects_truncated_file(capsys, codes_file, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(codes_file.read_bytes()[:-40])

    status, error = run_decode(capsys, str(truncated), "-o", str(tmp_path / "out.png"))
    assert status == 2
    assert "is not a valid safetensors file" in error


@pytest.mark.parametrize(
    ("codes", "metadata", "message"),
    [
        (torch.full((1, 4, 4), 64, dtype=torch.int16), {}, r"code id 64 is outside the valid range \[0, 63\]"),
        (torch.full((1, 4, 4), -3, dtype=torch.int16), {}, r"code id -3 is outside the valid range \[0, 63\]"),
        (torch.zeros(1, 4, 4), {}, "has dtype torch.float32, expected an integer dtype"),
        (torch.zeros(4, 4, dtype=torch.int16), {}, r"has shape \(4, 4\), expected non-empty \(depth, h, w\)"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), {"format": None}, "is not a vqkit image codes file"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), {"format": "other"}, "metadata 'format' is 'other'"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), {"format_version": "9"}, "format_version '9'"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), {"image_width": "wide"}, "invalid metadata image_width='wide'"),
        (
            torch.zeros(1, 4, 4, dtype=torch.int16),
            {"image_height": "9"},
            "image size 9x8 .* exceeds the decoded size 8x8",
        ),
    ],
)
def test_decode_rejects_invalid_codes_file(capsys, tmp_path, codes, metadata, message):
    path = tmp_path / "codes.safetensors"
    write_codes_file(path, codes, **metadata)

    status, error = run_decode(capsys, str(path), "-o", str(tmp_path / "out.png"))
    assert status == 2
    assert error.startswith("vqkit decode image: ")
    assert error.count("\n") == 1
    assert re.search(message, error), error


def test_decode_rejects_codebook_mismatch(capsys, tmp_path, tiny_image_tokenizer_dir):
    path = tmp_path / "codes.safetensors"
    write_codes_file(path, torch.full((1, 4, 4), 100, dtype=torch.int16), codebook_size="512")

    status, error = run_decode(
        capsys, str(path), "-o", str(tmp_path / "out.png"), "--model", str(tiny_image_tokenizer_dir)
    )
    assert status == 2
    assert "encoded with a 512-code codebook, but the model has 64 codes" in error


def test_decode_rejects_depth_out_of_range(capsys, codes_file, tmp_path):
    status, error = run_decode(capsys, str(codes_file), "-o", str(tmp_path / "out.png"), "--depth", "4")

    assert status == 2
    assert "--depth 4 is out of range" in error
    assert "levels 1 to 3" in error


def test_decode_reports_missing_model(capsys, codes_file, tmp_path):
    status, error = run_decode(
        capsys, str(codes_file), "-o", str(tmp_path / "out.png"), "--model", str(tmp_path / "nowhere")
    )

    assert status == 2
    assert "nowhere' not found: it is neither a registered model name" in error


def test_decode_reports_missing_file(capsys, tmp_path):
    status, error = run_decode(capsys, str(tmp_path / "absent.safetensors"), "-o", str(tmp_path / "out.png"))

    assert status == 2
    assert "codes file not found" in error


def test_encode_rejects_unreadable_image(capsys, tmp_path, tiny_image_tokenizer_dir):
    text = tmp_path / "notes.png"
    text.write_text("not an image")

    status = cli.main(
        ["encode", "image", str(text), "-o", str(tmp_path / "c.safetensors"), "--model", str(tiny_image_tokenizer_dir)]
    )
    error = capsys.readouterr().err
    assert status == 2
    assert "cannot read" in error
    assert "as an image" in error
    assert not (tmp_path / "c.safetensors").exists()
