"""ImageTokenizer.to_diffusers: the depth-1 export to a diffusers VQModel."""

from __future__ import annotations

import pytest
import torch
from diffusers import VQModel

from vqkit.data.images import photo_tensor


@pytest.fixture
def photo_batch() -> torch.Tensor:
    """Two 32 x 48 crops of a held-out photo, float (2, 3, 32, 48) in [0, 1]."""
    photo = photo_tensor("coffee")
    return torch.stack([photo[:, 100:132, 200:248], photo[:, 250:282, 300:348]])


def vq_reconstruct(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = vq(images * 2.0 - 1.0).sample
    return ((output + 1.0) / 2.0).clamp(0.0, 1.0)


def test_export_reconstructs_depth_one(tiny_image_tokenizer, photo_batch):
    tokenizer = tiny_image_tokenizer
    vq = tokenizer.to_diffusers()
    expected = tokenizer.decode(tokenizer.encode(photo_batch)[:, :1])

    assert isinstance(vq, VQModel)
    assert not vq.training
    assert torch.allclose(vq_reconstruct(vq, photo_batch), expected, atol=1e-5)


def test_export_picks_same_codes(tiny_image_tokenizer, photo_batch):
    tokenizer = tiny_image_tokenizer
    vq = tokenizer.to_diffusers()
    codes = tokenizer.encode(photo_batch)

    with torch.no_grad():
        _, _, (_, _, ids) = vq.quantize(vq.encode(photo_batch * 2.0 - 1.0).latents)
    assert torch.equal(ids.view(2, 16, 24), codes[:, 0])


def test_export_decodes_code_ids(tiny_image_tokenizer, photo_batch):
    tokenizer = tiny_image_tokenizer
    vq = tokenizer.to_diffusers()
    codes = tokenizer.encode(photo_batch)[:, 0]  # (B, h, w)

    with torch.no_grad():
        latents = vq.quantize.get_codebook_entry(codes.flatten(), (2, 16, 24, vq.config.latent_channels))
        output = vq.decode(latents, force_not_quantize=True).sample
    decoded = ((output + 1.0) / 2.0).clamp(0.0, 1.0)
    assert torch.allclose(decoded, tokenizer.decode(codes[:, None]), atol=1e-5)


def test_export_copies_configuration(tiny_image_tokenizer):
    vq = tiny_image_tokenizer.to_diffusers()

    assert vq.config.num_vq_embeddings == 64
    assert tuple(vq.config.block_out_channels) == (16, 32)
    assert vq.config.latent_channels == 16
    assert vq.config.mid_block_add_attention is False
    assert torch.equal(vq.quantize.embedding.weight, tiny_image_tokenizer.quantizer.codebook_at(0).weight)


def test_export_with_attention_matches(make_tiny_image_tokenizer, photo_batch):
    tokenizer = make_tiny_image_tokenizer(mid_block_attention=True)
    vq = tokenizer.to_diffusers()
    expected = tokenizer.decode(tokenizer.encode(photo_batch)[:, :1])

    assert vq.config.mid_block_add_attention is True
    assert torch.allclose(vq_reconstruct(vq, photo_batch), expected, atol=1e-5)


@pytest.mark.parametrize("depth", [2, 3, 0])
def test_export_rejects_other_depths(tiny_image_tokenizer, depth):
    with pytest.raises(ValueError, match=rf"to_diffusers\(depth={depth}\) requested.*only depth=1"):
        tiny_image_tokenizer.to_diffusers(depth=depth)


def test_export_rejects_normalized_lookup(make_tiny_image_tokenizer):
    tokenizer = make_tiny_image_tokenizer(normalized_lookup=True, lookup_dim=4)

    with pytest.raises(ValueError, match="normalized_lookup=True.*cannot be mapped onto VQModel"):
        tokenizer.to_diffusers()
