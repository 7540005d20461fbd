"""`vqkit eval image-tokenizer` (vqkit.evals.image_tokenizer) and the shared metrics (vqkit.evals.metrics)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from vqkit import cli
from vqkit.data import images as image_data
from vqkit.data.images import photo_tensor
from vqkit.evals import image_tokenizer, image_tokenizer_report, metrics

# ---- metrics -----------------------------------------------------------------------------------


def test_psnr_of_uniform_error():
    reference = torch.zeros(3, 16, 16)

    assert metrics.psnr(reference, reference + 0.1) == pytest.approx(20.0)
    assert metrics.psnr(reference, reference) == math.inf


def test_psnr_accepts_channel_last_uint8():
    reference = np.zeros((16, 16, 3), dtype=np.uint8)
    reconstruction = np.full((16, 16, 3), 51, dtype=np.uint8)  # 0.2 on the [0, 1] scale

    assert metrics.psnr(reference, reconstruction) == pytest.approx(10 * math.log10(1 / 0.04))


def test_ssim_bounds():
    image = photo_tensor("coffee")[:, :32, :32]

    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.ssim(image, image.flip(2)) < 0.9


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (torch.zeros(3, 6, 6), torch.zeros(3, 6, 6), "at least 7 x 7 pixels, got 6x6"),
        (torch.zeros(3, 8, 8), torch.zeros(3, 8, 9), "differ in shape"),
        (torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), r"must be \(3, H, W\)"),
    ],
)
def test_ssim_rejects_invalid_images(first, second, message):
    with pytest.raises(ValueError, match=message):
        metrics.ssim(first, second)


def test_code_usage_and_perplexity():
    codes = torch.tensor([[0, 1], [1, 3]])

    assert metrics.code_usage(codes, 8) == 3 / 8
    assert metrics.code_perplexity(torch.arange(4).repeat(5), 8) == pytest.approx(4.0)
    assert metrics.code_usage(torch.empty(0, dtype=torch.long), 8) == 0.0


@pytest.mark.parametrize(
    ("depth", "codebook_size", "factor", "expected"),
    [(4, 512, 4, 2.25), (1, 1000, 2, 2.5), (3, 64, 2, 4.5), (2, 1, 4, 0.0)],
)
def test_bits_per_pixel(depth, codebook_size, factor, expected):
    assert metrics.bits_per_pixel(depth, codebook_size, factor) == expected


def test_frechet_distance_one_dimension():
    rng = np.random.default_rng(0)
    first = rng.normal(1.0, 2.0, size=(500, 1))
    second = rng.normal(-1.0, 0.5, size=(400, 1))
    expected = (first.mean() - second.mean()) ** 2 + (first.std(ddof=1) - second.std(ddof=1)) ** 2

    assert metrics.frechet_distance(first, second) == pytest.approx(expected)
    assert metrics.frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("count_a", "count_b", "dims"), [(60, 50, 6), (5, 9, 12)])
def test_frechet_distance_matches_sqrtm(count_a, count_b, dims):
    rng = np.random.default_rng(dims)
    first = rng.normal(size=(count_a, dims)) @ rng.normal(size=(dims, dims))
    second = rng.normal(size=(count_b, dims)) * 1.5 + 0.3
    cov_a, cov_b = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    mean_gap = first.mean(axis=0) - second.mean(axis=0)
    expected = mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)

    assert metrics.frechet_distance(first, second) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_single_sample():
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))


def test_image_tiles_cover_rows_in_order():
    image = torch.rand(3, 130, 200)
    tiles = metrics.image_tiles(image, 64)

    assert tiles.shape == (6, 3, 64, 64)
    assert torch.equal(tiles[0], image[:, :64, :64])
    assert torch.equal(tiles[1], image[:, :64, 64:128])
    assert torch.equal(tiles[3], image[:, 64:128, :64])


@pytest.fixture
def empty_weight_cache(tmp_path, monkeypatch):
    """Make an empty folder the only place searched for Inception weights, and torch hub's checkpoint folder."""
    monkeypatch.setattr(metrics, "torch_hub_checkpoints", lambda: tmp_path)
    monkeypatch.setattr(metrics, "inception_cache_dirs", lambda: [tmp_path])
    return tmp_path


def test_load_inception_never_downloads(empty_weight_cache):
    with pytest.raises(metrics.InceptionUnavailable) as raised:
        metrics.load_inception()

    message = str(raised.value)
    assert metrics.PYTORCH_FID_WEIGHTS in message
    assert metrics.TORCHVISION_INCEPTION_WEIGHTS in message
    assert str(empty_weight_cache) in message
    assert "does not download" in message


def test_load_inception_needs_pytorch_fid_package(empty_weight_cache):
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pytorch-fid is installed, so its weight file would be loaded")
    (empty_weight_cache / metrics.PYTORCH_FID_WEIGHTS).write_bytes(b"")

    with pytest.raises(metrics.InceptionUnavailable, match="pytorch-fid package .* is not installed"):
        metrics.load_inception()


def test_load_inception_rejects_fid_weights_elsewhere(empty_weight_cache, tmp_path_factory, monkeypatch):
    other_folder = tmp_path_factory.mktemp("other-cache")
    (other_folder / metrics.PYTORCH_FID_WEIGHTS).write_bytes(b"")
    monkeypatch.setattr(metrics, "inception_cache_dirs", lambda: [empty_weight_cache, other_folder])

    with pytest.raises(metrics.InceptionUnavailable, match="pytorch-fid reads its weights only from"):
        metrics.load_inception()


# ---- the evaluation ----------------------------------------------------------------------------


def small_photos() -> dict[str, torch.Tensor]:
    """Two held-out crops of 64 x 130 pixels: 2 rFID tiles each, and an even width to pad."""
    return {
        "chelsea": photo_tensor("chelsea")[:, 100:164, 150:280],
        "rocket": photo_tensor("rocket")[:, 200:264, 250:380],
    }


def one_small_photo() -> dict[str, torch.Tensor]:
    """One 40 x 70 held-out crop: too small for a 64-pixel rFID tile."""
    return {"coffee": photo_tensor("coffee")[:, 150:190, 200:270]}


def colour_statistics(images: torch.Tensor) -> np.ndarray:
    """A cheap stand-in for Inception features: per-channel means and standard deviations, (N, 6)."""
    flat = images.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], dim=1).double().numpy()


@pytest.fixture(scope="module")
def results(tiny_image_tokenizer, tmp_path_factory):
    """`evaluate` on `small_photos()`, with a cheap stand-in for the Inception network."""
    weights = tmp_path_factory.mktemp("weights") / "fake.pth"
    features = metrics.InceptionFeatures(colour_statistics, "fake", weights, False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "load_inception", lambda device="cpu": features)
        return image_tokenizer.evaluate(tiny_image_tokenizer, small_photos(), progress=False)


def test_evaluate_reports_every_depth(results):
    assert [row["depth"] for row in results["depths"]] == [1, 2, 3]
    for row in results["depths"]:
        assert 5 < row["psnr"] < 60, row
        assert -1 <= row["ssim"] <= 1, row
        assert 0 < row["level_code_usage"] <= 1, row
        assert 1 <= row["level_perplexity"] <= 64, row
        assert row["bits_per_pixel"] == row["depth"] * 6 / 4
        assert row["rfid"] >= 0, row


def test_evaluate_computes_rfid_on_tiles(results):
    assert results["rfid"]["computed"] is True
    assert results["rfid"]["network"] == "fake"
    assert results["rfid"]["tiles"] == 4
    assert results["rfid"]["tile_size"] == 64


def test_evaluate_records_photos_and_speed(results):
    assert [photo["name"] for photo in results["photos"]] == ["chelsea", "rocket"]
    assert results["photos"][0]["code_grid"] == [32, 65]
    assert set(results["photos"][0]["psnr"]) == {"1", "2", "3"}
    assert results["throughput"]["images"] == 2
    assert results["throughput"]["encode_images_per_second"] > 0
    assert results["throughput"]["decode_images_per_second"] > 0
    assert results["config"] == {"codebook_size": 64, "depth": 3, "downsample_factor": 2, "parameters": 165059}


def test_evaluate_psnr_matches_reconstruct(results, tiny_image_tokenizer):
    photo = small_photos()["chelsea"]
    expected = metrics.psnr(photo, tiny_image_tokenizer.reconstruct(photo[None], depth=2)[0])

    assert results["photos"][0]["psnr"]["2"] == pytest.approx(expected)


def test_evaluate_without_rfid(tiny_image_tokenizer):
    results = image_tokenizer.evaluate(tiny_image_tokenizer, one_small_photo(), rfid=False, progress=False)

    assert results["rfid"] == {"computed": False, "reason": "disabled (--no-rfid)"}
    assert all(row["rfid"] is None for row in results["depths"])


def test_evaluate_rejects_empty_images(tiny_image_tokenizer):
    with pytest.raises(ValueError, match="images is empty"):
        image_tokenizer.evaluate(tiny_image_tokenizer, {}, progress=False)


@pytest.mark.parametrize(("depth", "expected"), [(4, [1, 2, 4]), (3, [1, 2, 3]), (8, [1, 2, 4]), (2, [1, 2]), (1, [1])])
def test_grid_depths(depth, expected):
    assert image_tokenizer_report.grid_depths(depth) == expected


@pytest.fixture(scope="module")
def eval_run(tiny_image_tokenizer_dir, tmp_path_factory):
    """Run `vqkit eval image-tokenizer` on one 40 x 70 crop without Inception weights; return (status, stdout, folder)."""
    folder = tmp_path_factory.mktemp("eval")
    out = folder / "results"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(image_data, "eval_photos", one_small_photo)
        patch.setattr(metrics, "torch_hub_checkpoints", lambda: folder)
        patch.setattr(metrics, "inception_cache_dirs", lambda: [folder])
        argv = ["eval", "image-tokenizer", "--model", str(tiny_image_tokenizer_dir), "--out", str(out), "--no-progress"]
        status = cli.main(argv)
    return status, stdout.getvalue(), out


def reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def test_eval_command_writes_json(eval_run, tiny_image_tokenizer_dir):
    status, _, out = eval_run
    results = json.loads((out / image_tokenizer_report.JSON_FILE).read_text(), parse_constant=reject_constant)

    assert status == 0
    assert results["model"] == str(tiny_image_tokenizer_dir)
    assert results["command"].startswith("vqkit eval image-tokenizer --model ")
    assert len(results["depths"]) == 3
    assert results["rfid"]["computed"] is False
    assert "does not download" in results["rfid"]["reason"]
    assert all(row["rfid"] is None for row in results["depths"])
    assert "_reconstructions" not in results
    assert results["machine"]["threads"] == torch.get_num_threads()


def test_eval_command_prints_and_writes_markdown(eval_run):
    _, printed, out = eval_run
    markdown = (out / image_tokenizer_report.MARKDOWN_FILE).read_text()
    depth_rows = [line for line in markdown.splitlines() if line.startswith("| ") and line[2].isdigit()]

    assert printed == markdown
    assert "| Depth | PSNR (dB) | SSIM |" in markdown
    assert len(depth_rows) == 3
    assert all(row.endswith("| skipped |") for row in depth_rows)
    assert "rFID skipped: " in markdown
    assert "coffee (40x70)" in markdown


def test_eval_command_writes_grid(eval_run):
    _, _, out = eval_run

    with Image.open(out / image_tokenizer_report.GRID_FILE) as grid:
        assert grid.format == "PNG"
        assert grid.width > grid.height > 100


def test_eval_command_reports_missing_model(capsys, tmp_path):
    status = cli.main(["eval", "image-tokenizer", "--model", str(tmp_path / "absent"), "--out", str(tmp_path)])
    error = capsys.readouterr().err

    assert status == 2
    assert error.startswith("vqkit eval image-tokenizer: model ")
    assert error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
