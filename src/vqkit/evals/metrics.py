"""Metrics that vqkit's evaluations share: image fidelity, code statistics, rate and rFID.

Images are float (3, H, W) tensors or (H, W, 3) arrays in [0, 1]. PSNR and SSIM are
`skimage.metrics` with `data_range=1`.

rFID compares Inception-v3 pool features of originals and reconstructions. vqkit never
downloads the Inception weights: `load_inception` looks for a weight file in the local torch
hub cache and raises `InceptionUnavailable` with the reason when there is none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vqkit.quantizers.output import code_perplexity as _code_perplexity

logger = logging.getLogger(__name__)


# ---- image fidelity ----------------------------------------------------------------------------


def to_float_image(image: Tensor | np.ndarray) -> np.ndarray:
    """Convert a (3, H, W) tensor or (H, W, 3) array in [0, 1] to a float64 (H, W, 3) array."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W), got shape {tuple(image.shape)}")
        return image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image arrays must be (H, W, 3), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64)


def psnr(reference: Tensor | np.ndarray, reconstruction: Tensor | np.ndarray) -> float:
    """Return the peak signal-to-noise ratio in dB of `reconstruction` against `reference`, peak 1.

    Returns inf for identical images.
    """
    from skimage.metrics import peak_signal_noise_ratio

    reference_array, reconstruction_array = _same_shape(reference, reconstruction)
    if np.array_equal(reference_array, reconstruction_array):
        return math.inf
    return float(peak_signal_noise_ratio(reference_array, reconstruction_array, data_range=1.0))


def ssim(reference: Tensor | np.ndarray, reconstruction: Tensor | np.ndarray) -> float:
    """Return the mean structural similarity of two RGB images (skimage defaults: 7 x 7 window, per channel).

    Raises ValueError for images with a side under 7 pixels.
    """
    from skimage.metrics import structural_similarity

    reference_array, reconstruction_array = _same_shape(reference, reconstruction)
    if min(reference_array.shape[:2]) < 7:
        raise ValueError(
            f"SSIM needs images of at least 7 x 7 pixels, got {reference_array.shape[0]}x{reference_array.shape[1]}"
        )
    return float(structural_similarity(reference_array, reconstruction_array, channel_axis=-1, data_range=1.0))


def _same_shape(first: Tensor | np.ndarray, second: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first_array, second_array = to_float_image(first), to_float_image(second)
    if first_array.shape != second_array.shape:
        raise ValueError(f"images differ in shape: {first_array.shape} and {second_array.shape}")
    return first_array, second_array


# ---- codes and rate ----------------------------------------------------------------------------


def code_usage(codes: Tensor, codebook_size: int) -> float:
    """Return the fraction of the `codebook_size` codes that occur in the integer tensor `codes`."""
    if codes.numel() == 0:
        return 0.0
    return int(torch.unique(codes).numel()) / codebook_size


def code_perplexity(codes: Tensor, codebook_size: int) -> float:
    """Return exp(entropy) of the code frequencies in `codes`; equals `codebook_size` for uniform use."""
    return float(_code_perplexity(codes.long(), codebook_size))


def bits_per_pixel(depth: int, codebook_size: int, downsample_factor: int) -> float:
    """Return the fixed-length code rate: `depth * ceil(log2 K)` bits per latent position over `f * f` pixels.

    This is the rate of storing the codes as fixed-width integers, without entropy coding,
    counted per pixel of the image padded to a multiple of `f`.
    """
    bits_per_code = math.ceil(math.log2(codebook_size)) if codebook_size > 1 else 0
    return depth * bits_per_code / downsample_factor**2


# ---- rFID ------------------------------------------------------------------------------------


class InceptionUnavailable(RuntimeError):
    """No usable Inception-v3 weights were found locally, so rFID cannot be computed."""


# Weight files as their packages name them in the torch hub cache.
# pytorch-fid: the TensorFlow FID Inception ported to PyTorch, the network behind published FID.
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
# torchvision: Inception-v3 trained on ImageNet by torchvision, a different network.
TORCHVISION_INCEPTION_WEIGHTS = "inception_v3_google-0cc3c7bd.pth"

FeatureFunction = Callable[[Tensor], np.ndarray]
"""Maps a float (N, 3, H, W) batch in [0, 1] to float64 (N, F) features."""


@dataclass
class InceptionFeatures:
    """An Inception-v3 feature extractor and where its weights came from."""

    extract: FeatureFunction
    network: str
    """"pytorch-fid" or "torchvision"."""
    weights_path: Path
    comparable_to_published_fid: bool


def torch_hub_checkpoints() -> Path:
    """Return `torch.hub.get_dir()`/checkpoints, the folder `torch.hub.load_state_dict_from_url` caches files in.

    `torch.hub.get_dir()` follows $TORCH_HOME and $XDG_CACHE_HOME.
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_cache_dirs() -> list[Path]:
    """Return the folders searched for Inception weights: `torch_hub_checkpoints()`, then ~/.cache/torch/hub/checkpoints."""
    folders = [torch_hub_checkpoints(), Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def find_weight_file(name: str, folders: Iterable[Path] | None = None) -> Path | None:
    """Return the first existing `folder / name` among `folders` (default: `inception_cache_dirs()`), or None."""
    for folder in inception_cache_dirs() if folders is None else folders:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def load_inception(device: str | torch.device = "cpu") -> InceptionFeatures:
    """Return a 2048-feature Inception-v3 extractor built from locally cached weights, never downloading.

    The pytorch-fid network is preferred, because its weights are the ones published FID
    numbers use. It needs the `pytorch-fid` package and its weight file. The fallback is
    torchvision's ImageNet Inception-v3, whose FID values are only comparable with each other.

    Raises InceptionUnavailable, naming the files and folders searched, when neither is usable.
    """
    folders = inception_cache_dirs()
    fid_weights = find_weight_file(PYTORCH_FID_WEIGHTS, folders)
    reasons = []
    if fid_weights is not None and fid_weights.parent != torch_hub_checkpoints():
        # pytorch-fid looks in torch_hub_checkpoints() only, and downloads when the file is not there.
        reasons.append(
            f"found {fid_weights}, but pytorch-fid reads its weights only from {torch_hub_checkpoints()}; "
            "move the file there"
        )
    elif fid_weights is not None:
        try:
            return _load_pytorch_fid(fid_weights, device)
        except ImportError:
            reasons.append(f"found {fid_weights}, but the pytorch-fid package that builds its network is not installed")

    torchvision_weights = find_weight_file(TORCHVISION_INCEPTION_WEIGHTS, folders)
    if torchvision_weights is not None:
        return _load_torchvision_inception(torchvision_weights, device)

    searched = ", ".join(str(folder) for folder in folders)
    if not reasons:
        reasons.append(
            f"neither {PYTORCH_FID_WEIGHTS} (pytorch-fid) nor {TORCHVISION_INCEPTION_WEIGHTS} (torchvision) is in {searched}"
        )
    raise InceptionUnavailable(
        "; ".join(reasons) + ". vqkit does not download weights; place one of the files there to compute rFID."
    )


def _load_pytorch_fid(weights_path: Path, device: str | torch.device) -> InceptionFeatures:
    from pytorch_fid.inception import InceptionV3

    # pytorch-fid loads its weights with torch.hub.load_state_dict_from_url, which reads
    # torch_hub_checkpoints()/PYTORCH_FID_WEIGHTS when it exists and downloads only when it does
    # not. load_inception calls this only when the file is there.
    network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    @torch.no_grad()
    def extract(images: Tensor) -> np.ndarray:
        # Takes [0, 1] input and resizes it to 299 x 299 itself.
        features = network(images.to(device))[0]
        return features.flatten(1).to("cpu", torch.float64).numpy()

    logger.info("rFID uses the pytorch-fid Inception-v3 from %s", weights_path)
    return InceptionFeatures(extract, "pytorch-fid", weights_path, comparable_to_published_fid=True)


def _load_torchvision_inception(weights_path: Path, device: str | torch.device) -> InceptionFeatures:
    from torchvision.models import inception_v3

    # transform_input=True is how torchvision runs these weights: it maps ImageNet-normalised
    # input to the [-1, 1] scale the original network was trained on.
    network = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    # weights_only=True restricts unpickling to tensors and plain containers.
    network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    network.fc = torch.nn.Identity()
    network = network.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def extract(images: Tensor) -> np.ndarray:
        resized = torch.nn.functional.interpolate(
            images.to(device), size=(299, 299), mode="bilinear", align_corners=False
        )
        features = network((resized - mean) / std)
        return features.to("cpu", torch.float64).numpy()

    logger.info("rFID uses torchvision's ImageNet Inception-v3 from %s", weights_path)
    return InceptionFeatures(extract, "torchvision", weights_path, comparable_to_published_fid=False)


def image_tiles(image: Tensor, tile_size: int) -> Tensor:
    """Cut a (3, H, W) image into its non-overlapping `tile_size` squares, row by row, as (N, 3, t, t).

    The right and bottom remainders that do not fill a whole tile are dropped.
    """
    rows, columns = image.shape[1] // tile_size, image.shape[2] // tile_size
    cropped = image[:, : rows * tile_size, : columns * tile_size]
    tiles = cropped.unfold(1, tile_size, tile_size).unfold(2, tile_size, tile_size)  # (3, rows, cols, t, t)
    return tiles.permute(1, 2, 0, 3, 4).reshape(rows * columns, 3, tile_size, tile_size)


def extract_features(extract: FeatureFunction, images: Sequence[Tensor], batch_size: int = 32) -> np.ndarray:
    """Run `extract` over (N, 3, H, W) batches of equal-sized `images`, `batch_size` at a time; return (N, F)."""
    stacked = torch.stack(list(images))
    parts = [extract(stacked[start : start + batch_size]) for start in range(0, len(stacked), batch_size)]
    return np.concatenate(parts)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Return the Fréchet distance between Gaussians fitted to two (N, F) feature sets.

    d = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)). Writing each covariance
    as L L^T, the last trace equals the sum of the singular values of L_a^T L_b, because the
    non-zero eigenvalues of S_a S_b are those of (L_a^T L_b)(L_a^T L_b)^T. With N <= F,
    L is the centred features over sqrt(N - 1), so no F x F matrix square root is needed and
    the singular covariances of small samples need no regularising offset.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sets must be (N, F) with the same F, got {features_a.shape} and {features_b.shape}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("each feature set needs at least 2 samples for a covariance")
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    factor_a, mean_a = _covariance_factor(features_a)
    factor_b, mean_b = _covariance_factor(features_b)

    difference = mean_a - mean_b
    trace_a = float(np.sum(factor_a**2))
    trace_b = float(np.sum(factor_b**2))
    trace_root = float(np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum())
    distance = float(difference @ difference) + trace_a + trace_b - 2.0 * trace_root
    # Rounding can leave identical sets a tiny negative distance.
    return max(distance, 0.0)


def _covariance_factor(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (L, mean) with L L^T the sample covariance; L is F x min(N, F)."""
    mean = features.mean(axis=0)
    centred = features - mean
    count, dims = features.shape
    if count <= dims:
        return centred.T / np.sqrt(count - 1), mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (count - 1))
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None)), mean


def json_safe(value: Any) -> Any:
    """Return `value` with non-finite floats replaced by None, recursively, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
