"""ImageTokenizer: the encode/decode contract, input conversion and checks, checkpoints, training and resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file

import vqkit
from vqkit import cli, registry
from vqkit.data.images import PhotoCrops, photo_tensor
from vqkit.tokenizers import image_train
from vqkit.tokenizers.image import ImageTokenizer
from vqkit.tokenizers.image_inputs import MAX_IMAGE_SIDE, prepare_images
from vqkit.tokenizers.image_train import train
from vqkit.tokenizers.image_train_config import CONFIGS, ImageTrainConfig, full_model_kwargs

TINY = full_model_kwargs(CONFIGS["tiny"].model)


def tiny_tokenizer(**overrides) -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(**{**TINY, **overrides, "seed": 0})


@pytest.fixture(scope="module")
def tokenizer() -> ImageTokenizer:
    """A tiny tokenizer whose codebook was initialised by k-means on one batch of photo crops."""
    model = tiny_tokenizer()
    crops = torch.stack([PhotoCrops(32)[i] for i in range(8)])
    model(crops)
    return model.eval()


@pytest.fixture
def photo_batch() -> torch.Tensor:
    """Two 32 x 48 float crops of a training photo, (2, 3, 32, 48) in [0, 1]."""
    photo = photo_tensor("astronaut")
    return torch.stack([photo[:, 100:132, 100:148], photo[:, 300:332, 200:248]])


def small_eval_images() -> dict[str, torch.Tensor]:
    """A held-out crop small enough to evaluate in milliseconds; its odd width exercises padding."""
    return {"chelsea": photo_tensor("chelsea")[:, 100:140, 200:245]}


# ---- contract: shapes, dtypes, depths -----------------------------------------------------------


def test_properties_describe_the_codes(tokenizer):
    assert tokenizer.codebook_size == 64
    assert tokenizer.depth == 3
    assert tokenizer.downsample_factor == 2


def test_default_model_matches_small_config():
    model = ImageTokenizer()
    parameters = sum(p.numel() for p in model.parameters())

    assert (model.codebook_size, model.depth, model.downsample_factor) == (512, 4, 4)
    assert 1_000_000 <= parameters <= 2_000_000


def test_encode_decode_shapes_and_dtypes(tokenizer, photo_batch):
    codes = tokenizer.encode(photo_batch)
    images = tokenizer.decode(codes)

    assert codes.shape == (2, 3, 16, 24)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0
    assert int(codes.max()) < tokenizer.codebook_size
    assert images.shape == (2, 3, 32, 48)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


def test_input_kinds_give_same_codes(tokenizer, photo_batch):
    pixels = (photo_batch * 255).round().to(torch.uint8)  # (2, 3, H, W)
    expected = tokenizer.encode(pixels)
    channel_last = pixels.permute(0, 2, 3, 1).numpy()  # (2, H, W, 3)
    inputs = {
        "float (B, 3, H, W)": pixels.float() / 255,
        "uint8 (B, 3, H, W)": pixels,
        "numpy uint8 (B, H, W, 3)": channel_last,
        "numpy float (B, H, W, 3)": channel_last.astype(np.float64) / 255,
        "list of PIL images": [Image.fromarray(image) for image in channel_last],
        "list of numpy images": list(channel_last),
    }
    for kind, value in inputs.items():
        codes = tokenizer.encode(value)
        assert codes.shape == expected.shape, kind
        assert torch.equal(codes, expected), kind


def test_half_precision_input_is_accepted(tokenizer, photo_batch):
    # float16 rounds k / 255, so the codes may differ slightly from the float32 ones.
    codes = tokenizer.encode(photo_batch.half())

    assert codes.shape == (2, 3, 16, 24)
    assert (codes == tokenizer.encode(photo_batch)).float().mean() > 0.9


def test_single_image_gives_batch_of_one(tokenizer, photo_batch):
    pixels = (photo_batch[0] * 255).round().to(torch.uint8).permute(1, 2, 0)  # (H, W, 3)
    expected = tokenizer.encode(pixels.permute(2, 0, 1)[None])
    inputs = {
        "uint8 tensor (H, W, 3)": pixels,
        "numpy (H, W, 3)": pixels.numpy(),
        "PIL image": Image.fromarray(pixels.numpy()),
    }
    for kind, value in inputs.items():
        codes = tokenizer.encode(value)
        assert codes.shape == (1, 3, 16, 24), kind
        assert torch.equal(codes, expected), kind


def test_decode_at_every_depth(tokenizer, photo_batch):
    codes = tokenizer.encode(photo_batch)
    decoded = []
    for depth in range(1, tokenizer.depth + 1):
        images = tokenizer.decode(codes[:, :depth])
        decoded.append(images)

        assert images.shape == photo_batch.shape
        assert torch.allclose(images, tokenizer.reconstruct(photo_batch, depth=depth), atol=1e-6)
    for shallower, deeper in zip(decoded, decoded[1:]):
        assert not torch.equal(shallower, deeper)


def test_decode_sums_prefix_codes(tokenizer, photo_batch):
    codes = tokenizer.encode(photo_batch)
    codebook = tokenizer.quantizer.codebooks[0].weight
    partial_sum = codebook[codes[:, 0]] + codebook[codes[:, 1]]  # (B, h, w, D)

    expected = tokenizer._decode_latents(partial_sum.permute(0, 3, 1, 2)).clamp(0, 1)
    assert torch.allclose(tokenizer.decode(codes[:, :2]), expected, atol=1e-6)


def test_encode_keeps_codebook_in_training(photo_batch):
    model = tiny_tokenizer()
    model(torch.stack([PhotoCrops(32)[i] for i in range(8)]))
    before = {name: tensor.clone() for name, tensor in model.quantizer.state_dict().items()}

    model.train()
    model.encode(photo_batch)

    assert model.training and model.quantizer.training
    for name, tensor in model.quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_empty_batch_gives_empty_codes_and_images(tokenizer):
    codes = tokenizer.encode(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))

    assert codes.shape == (0, 3, 16, 16)
    assert tokenizer.decode(codes).shape == (0, 3, 32, 32)


def test_training_forward_returns_losses(photo_batch):
    model = tiny_tokenizer().train()
    output = model(photo_batch)

    assert output.reconstruction.shape == photo_batch.shape
    assert output.quantizer.indices.shape == (2, 16, 24, 3)
    expected = output.l1_loss + output.mse_loss + output.quantizer_loss
    assert torch.allclose(output.loss, expected)
    assert output.quantizer_loss > 0
    output.loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0


def test_normalized_lookup_quantizes_unit_vectors(photo_batch):
    model = tiny_tokenizer(normalized_lookup=True, lookup_dim=4)
    latents = model._lookup_latents(photo_batch)
    output = model(photo_batch)

    assert model.quantizer.dim == 4
    assert latents.shape[1] == 4
    assert torch.allclose(latents.norm(dim=1), torch.ones(2, 16, 24), atol=1e-5)
    assert output.reconstruction.shape == photo_batch.shape
    model.eval()
    assert model.decode(model.encode(photo_batch)).shape == photo_batch.shape


# ---- padding, cropping and conversion -------------------------------------------------------------


def test_odd_size_padded_and_cropped(tokenizer, caplog):
    image = photo_tensor("astronaut")[:, :31, :45][None]
    with caplog.at_level(logging.WARNING, logger="vqkit.tokenizers.image"):
        codes = tokenizer.encode(image)

    assert codes.shape == (1, 3, 16, 23)
    assert "31x45 is not a multiple of the downsample factor 2" in caplog.text
    assert tokenizer.decode(codes).shape == (1, 3, 32, 46)
    assert tokenizer.decode(codes, image_size=(31, 45)).shape == (1, 3, 31, 45)
    assert tokenizer.reconstruct(image).shape == (1, 3, 31, 45)
    assert tokenizer(image).reconstruction.shape == (1, 3, 31, 45)


def test_odd_size_uses_reflect_padding(tokenizer):
    image = photo_tensor("astronaut")[:, :31, :45][None]
    padded = torch.nn.functional.pad(image, (0, 1, 0, 1), mode="reflect")

    assert torch.equal(tokenizer.encode(image), tokenizer.encode(padded))


def test_tiny_image_uses_replicate_padding():
    model = tiny_tokenizer(block_out_channels=(16, 16, 16)).eval()  # downsample factor 4
    image = torch.rand(1, 3, 2, 3)
    codes = model.encode(image)

    assert codes.shape == (1, 3, 1, 1)
    assert model.reconstruct(image).shape == (1, 3, 2, 3)


def test_grayscale_is_converted_to_rgb(tokenizer, photo_batch, caplog):
    gray = photo_batch.mean(dim=1, keepdim=True)
    with caplog.at_level(logging.INFO, logger="vqkit.tokenizers.image_inputs"):
        codes = tokenizer.encode(gray)

    assert "grayscale" in caplog.text
    assert torch.equal(codes, tokenizer.encode(gray.expand(-1, 3, -1, -1)))
    pil_gray = Image.fromarray((gray[0, 0] * 255).round().byte().numpy(), mode="L")
    assert prepare_images(pil_gray).shape == (1, 3, 32, 48)


def test_rgba_is_composited_onto_white(tokenizer, photo_batch, caplog):
    opaque = torch.cat([photo_batch, torch.ones_like(photo_batch[:, :1])], dim=1)
    transparent = torch.cat([photo_batch, torch.zeros_like(photo_batch[:, :1])], dim=1)
    with caplog.at_level(logging.INFO, logger="vqkit.tokenizers.image_inputs"):
        codes = tokenizer.encode(opaque)

    assert "alpha" in caplog.text
    assert torch.equal(codes, tokenizer.encode(photo_batch))
    assert torch.equal(prepare_images(transparent), torch.ones_like(photo_batch))
    pil_rgba = Image.fromarray((opaque[0].permute(1, 2, 0) * 255).round().byte().numpy(), mode="RGBA")
    assert prepare_images(pil_rgba).shape == (1, 3, 32, 48)


def test_float_within_tolerance_is_clamped():
    images = torch.full((1, 3, 4, 4), 1.005)
    images[0, 0, 0, 0] = -0.005

    prepared = prepare_images(images)
    assert float(prepared.max()) == 1.0
    assert float(prepared.min()) == 0.0


# ---- invalid inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 8, 8), 2.0), r"must be in \[0, 1\], but contain 2 \(the tolerance is 0\.01\)"),
        (torch.full((1, 3, 8, 8), -0.5), r"but contain -0\.5"),
        (torch.full((1, 3, 8, 8), float("nan")), "192 non-finite values"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int16), "unsupported image dtype torch.int16"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.bool), "unsupported image dtype torch.bool"),
        (np.zeros((8, 8, 3), dtype=np.int32), "unsupported image dtype int32"),
        (torch.zeros(1, 3, MAX_IMAGE_SIDE + 1, 2), f"{MAX_IMAGE_SIDE + 1}x2 is over the limit of 4096 pixels"),
        (np.zeros((2, MAX_IMAGE_SIDE + 1, 3), dtype=np.uint8), "over the limit of 4096 pixels per side"),
        (torch.zeros(1, 3, 0, 8), "has an empty side"),
        (torch.rand(3, 8, 8), "3-D torch.float32 tensor of shape \\(3, 8, 8\\) is ambiguous"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "has 8 channels on its last axis"),
        (torch.rand(1, 5, 8, 8), "5 channels on axis 1"),
        (torch.rand(8), "must be \\(B, C, H, W\\)"),
        (np.zeros((8, 8, 7), dtype=np.uint8), "7 channels on its last axis"),
        ("image.png", "unsupported image input of type str"),
        ([], "the list of images is empty"),
        ([torch.rand(3, 8, 8)], "list of torch tensors is not accepted"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "must share a size, got 8x8, 8x10"),
        (Image.new("I;16", (8, 8)), "unsupported PIL image mode 'I;16'"),
    ],
)
def test_invalid_images_raise(tokenizer, images, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.encode(images)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.full((1, 2, 4, 4), 64), r"codes contain 64, outside the valid range \[0, 63\]"),
        (torch.full((1, 2, 4, 4), -1), r"codes contain -1, outside the valid range \[0, 63\]"),
        (torch.zeros(1, 2, 4, 4), "integer dtype, got torch.float32"),
        (torch.zeros(1, 4, 4, 4, dtype=torch.long), "4 residual levels on axis 1, expected 1 to depth=3"),
        (torch.zeros(1, 0, 4, 4, dtype=torch.long), "0 residual levels"),
        (torch.zeros(2, 4, 4, dtype=torch.long), r"shape \(B, depth, h, w\), got \(2, 4, 4\)"),
        (torch.zeros(1, 1, 2049, 1, dtype=torch.long), "4098-pixel side, over the limit of 4096"),
        ([[0]], "must be a torch.Tensor"),
    ],
)
def test_invalid_codes_raise(tokenizer, codes, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.decode(codes)


def test_decode_rejects_oversized_image_size(tokenizer):
    codes = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="image_size 9x8 is invalid.*decoded size 8x8"):
        tokenizer.decode(codes, image_size=(9, 8))


def test_reconstruct_rejects_invalid_depth(tokenizer, photo_batch):
    with pytest.raises(ValueError, match="depth must be an integer from 1 to 3, got 4"):
        tokenizer.reconstruct(photo_batch, depth=4)


def test_invalid_group_count_raises():
    with pytest.raises(ValueError, match=r"norm_num_groups=16 must divide .* but not \[24\]"):
        ImageTokenizer(block_out_channels=(32, 24), norm_num_groups=16)


# ---- checkpoints and the registry ---------------------------------------------------------------


def test_save_and_load_round_trip(tokenizer, photo_batch, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())

    assert not loaded.training
    assert config["codebook_size"] == 64
    assert config["block_out_channels"] == [16, 32]
    codes = tokenizer.encode(photo_batch)
    assert torch.equal(loaded.encode(photo_batch), codes)
    assert torch.equal(loaded.decode(codes), tokenizer.decode(codes))


@pytest.fixture
def checkpoints_root(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "checkpoints_root", lambda: tmp_path)
    return tmp_path


def test_registered_name_loads_image_tokenizer(tokenizer, checkpoints_root, photo_batch):
    tokenizer.save_pretrained(checkpoints_root / "image-rqvae-64")

    by_load = vqkit.load("image-rqvae-64")
    by_class = ImageTokenizer.from_pretrained("image-rqvae-64")

    assert isinstance(by_load, ImageTokenizer)
    assert torch.equal(by_class.encode(photo_batch), tokenizer.encode(photo_batch))


def test_missing_checkpoint_says_how_to_train(checkpoints_root):
    expected = r"not found: .*image-rqvae-64\. Train it with `vqkit train image-tokenizer --config small"

    with pytest.raises(FileNotFoundError, match=expected):
        vqkit.load("image-rqvae-64")
    with pytest.raises(FileNotFoundError, match=expected):
        ImageTokenizer.from_pretrained("image-rqvae-64")


# ---- training -----------------------------------------------------------------------------------


def tiny_config(**overrides) -> ImageTrainConfig:
    return dataclasses.replace(CONFIGS["tiny"], **overrides)


def fixed_batch_loss(model: ImageTokenizer) -> float:
    crops = torch.stack([PhotoCrops(32, seed=99)[i] for i in range(16)])
    model.eval()
    with torch.no_grad():
        return float(model(crops).loss)


def test_tiny_training_lowers_loss(tmp_path):
    torch.manual_seed(0)
    before = fixed_batch_loss(tiny_tokenizer())

    result = train(
        tiny_config(), tmp_path / "model", tmp_path / "state", progress=False, eval_images=small_eval_images()
    )
    trained = ImageTokenizer.from_pretrained(tmp_path / "model")

    assert [record["step"] for record in result.history] == list(range(1, 21))
    assert fixed_batch_loss(trained) < 0.7 * before
    final = result.evaluations[-1]
    assert final["step"] == 20
    assert {"psnr_depth_1", "psnr_depth_2", "psnr"} <= final.keys()
    assert final["psnr"] > 15.0
    assert (tmp_path / "state" / image_train.STATE_FILE).is_file()


class Interrupted(Exception):
    pass


def interrupt_at(step_to_stop: int):
    def on_step(step, metrics):
        if step == step_to_stop:
            raise Interrupted

    return on_step


def test_resume_continues_same_run(tmp_path):
    config = tiny_config(steps=12, save_every=4, eval_every=100)
    eval_images = small_eval_images()
    full = train(config, tmp_path / "a", tmp_path / "a-state", progress=False, eval_images=eval_images)

    with pytest.raises(Interrupted):
        train(
            config, tmp_path / "b", tmp_path / "b-state", progress=False, eval_images=eval_images,
            on_step=interrupt_at(6),
        )
    resumed = train(
        config, tmp_path / "b", tmp_path / "b-state", resume=True, progress=False, eval_images=eval_images
    )

    assert resumed.start_step == 4
    full_losses = [record["loss"] for record in full.history[4:]]
    assert [record["loss"] for record in resumed.history] == full_losses
    weights_full = load_file(tmp_path / "a" / "model.safetensors")
    weights_resumed = load_file(tmp_path / "b" / "model.safetensors")
    for name, tensor in weights_full.items():
        assert torch.equal(weights_resumed[name], tensor), name
    records = [json.loads(line) for line in (tmp_path / "b-state" / image_train.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))


def test_existing_state_needs_resume(tmp_path):
    config = tiny_config(steps=2)
    train(config, tmp_path / "m", tmp_path / "s", progress=False, eval_images={})

    with pytest.raises(FileExistsError, match="Pass --resume"):
        train(config, tmp_path / "m", tmp_path / "s", progress=False, eval_images={})
    with pytest.raises(ValueError, match=r"batch_size=4 \(checkpoint: 8\)"):
        train(dataclasses.replace(config, batch_size=4), tmp_path / "m", tmp_path / "s", resume=True, eval_images={})


def test_lpips_option_explains_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="LPIPS loss needs pretrained VGG16 weights"):
        train(tiny_config(lpips_weight=0.1), tmp_path / "m", tmp_path / "s", progress=False)


def test_discriminator_joins_after_warm_up(tmp_path):
    config = tiny_config(steps=4, discriminator_start=2)
    result = train(config, tmp_path / "m", tmp_path / "s", progress=False, eval_images={})

    assert "discriminator_loss" not in result.history[1]
    assert result.history[2]["discriminator_loss"] > 0
    assert "generator_loss" in result.history[3]
    state = load_file(tmp_path / "s" / image_train.STATE_FILE)
    assert any(name.startswith("discriminator_optimizer.") for name in state)


def test_cli_trains_tiny_config(tmp_path, monkeypatch):
    monkeypatch.setattr(image_train, "eval_photos", small_eval_images)
    argv = ["train", "image-tokenizer", "--config", "tiny", "--steps", "3", "--no-progress",
            "--out", str(tmp_path / "model"), "--state-dir", str(tmp_path / "state"), "--device", "cpu"]

    assert cli.main(argv) == 0
    assert ImageTokenizer.from_pretrained(tmp_path / "model").depth == 3
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2


# ---- torchrun / DDP -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        result = train(
            tiny_config(steps=6, save_every=3), out_dir / f"model-{rank}", out_dir / f"state-{rank}",
            progress=False, eval_images=small_eval_images(), device="cpu",
        )
        state = {f"model.{name}": tensor for name, tensor in result.model.state_dict().items()}
        state["losses"] = torch.tensor([record["loss"] for record in result.history])
        save_file(state, out_dir / f"rank-{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    mp.start_processes(ddp_worker, args=(2, free_port(), tmp_path), nprocs=2, start_method="spawn", join=True)
    single = train(
        tiny_config(steps=6, save_every=3), tmp_path / "single", tmp_path / "single-state",
        progress=False, eval_images=small_eval_images(), device="cpu",
    )

    assert (tmp_path / "model-0" / "model.safetensors").is_file()
    assert not (tmp_path / "model-1").exists(), "only rank 0 writes checkpoints"
    assert not (tmp_path / "state-1").exists()
    ranks = [load_file(tmp_path / f"rank-{rank}.safetensors") for rank in range(2)]
    for name, tensor in ranks[0].items():
        assert torch.equal(ranks[1][name], tensor), f"{name} differs between ranks"
    # Adam amplifies rounding differences in near-zero gradients, so the weights drift apart by
    # up to the learning rate per step. The losses of the same batches stay close.
    expected = torch.tensor([record["loss"] for record in single.history])
    assert torch.allclose(ranks[0]["losses"], expected, rtol=1e-3, atol=1e-4)
