"""Fixtures shared by the image tokenizer's eval, export, codes-file, demo and benchmark tests."""

from __future__ import annotations

import pytest
import torch

from vqkit.data.images import PhotoCrops
from vqkit.tokenizers.image import ImageTokenizer
from vqkit.tokenizers.image_train import CONFIGS, full_model_kwargs


def build_tiny_image_tokenizer(**overrides) -> ImageTokenizer:
    """Return the "tiny" configuration (K=64, depth 3, factor 2) in eval mode, its codebook fitted by k-means on photo crops."""
    torch.manual_seed(0)
    model = ImageTokenizer(**{**full_model_kwargs(CONFIGS["tiny"].model), **overrides, "seed": 0})
    model(torch.stack([PhotoCrops(32)[i] for i in range(8)]))
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_image_tokenizer():
    """The function `build_tiny_image_tokenizer`, for tests that need other constructor arguments."""
    return build_tiny_image_tokenizer


@pytest.fixture(scope="session")
def tiny_image_tokenizer() -> ImageTokenizer:
    return build_tiny_image_tokenizer()


@pytest.fixture(scope="session")
def tiny_image_tokenizer_dir(tiny_image_tokenizer, tmp_path_factory):
    """A checkpoint folder of `tiny_image_tokenizer`, written by save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-image-tokenizer") / "model"
    tiny_image_tokenizer.save_pretrained(folder)
    return folder
