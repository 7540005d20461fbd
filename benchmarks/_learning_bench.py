"""Codebook learning on a Gaussian mixture, scored on held-out points.

vqkit's VectorQuantizer and vector-quantize-pytorch's VectorQuantize learn their codebooks
from a stream of training batches (EMA updates, k-means initialisation, dead-code
restarts). faiss.Kmeans runs on the whole training set at once and is the quality reference.
Every codebook is scored by the same exact nearest-code assignment of the held-out points.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy
import torch
from tqdm import tqdm

from vqkit.quantizers import VectorQuantizer

if __package__:
    from ._vqp import VQP_IMPORT_ERROR, VectorQuantize
else:  # imported by `python benchmarks/quantizers.py`, which puts benchmarks/ on sys.path
    from _vqp import VQP_IMPORT_ERROR, VectorQuantize

logger = logging.getLogger(__name__)

CONTENDERS = ("vqkit", "faiss_kmeans", "vqp")
METRICS = ("mse", "mse_over_variance", "code_usage", "perplexity", "seconds")


@dataclass(frozen=True)
class LearningConfig:
    dim: int
    components: int
    """Number of Gaussians in the mixture."""
    train_size: int
    heldout_size: int
    batch_size: int
    steps: int
    """Number of training batches for the streaming quantizers. The stream reshuffles the training set each epoch."""
    codebook_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    faiss_iters: int
    vqp_dead_code_thresholds: dict[int, float]
    """vector-quantize-pytorch's threshold_ema_dead_code for each codebook size K.

    VectorQuantize replaces a code whose EMA count per batch falls below the threshold. A code's
    mean count is batch_size / K, so no one threshold suits every K.
    """
    ema_decay: float = 0.99
    kmeans_iters: int = 10
    """Lloyd iterations of the k-means init of both streaming quantizers."""
    vqkit_dead_code_steps: int = 100
    """vqkit restarts a code after this many consecutive training steps without use."""

    def __post_init__(self) -> None:
        if self.train_size < self.batch_size:
            raise ValueError(f"train_size {self.train_size} is smaller than one batch of {self.batch_size}")
        missing = set(self.codebook_sizes) - set(self.vqp_dead_code_thresholds)
        if missing:
            raise ValueError(f"vqp_dead_code_thresholds has no threshold for codebook sizes {sorted(missing)}")


@dataclass(frozen=True)
class Mixture:
    """Parameters of a Gaussian mixture with C components in D dimensions."""

    means: torch.Tensor  # (C, D)
    scales: torch.Tensor  # (C, D) standard deviations along each component's principal axes
    rotations: torch.Tensor  # (C, D, D) orthogonal
    weights: torch.Tensor  # (C,) sums to 1


def make_mixture(components: int, dim: int, generator: torch.Generator) -> Mixture:
    """Draw a well-separated anisotropic Gaussian mixture.

    Means are N(0, I), so two means are about sqrt(2 D) apart. Each component has its own
    random orientation and axis standard deviations log-uniform in [0.05, 0.5], so its points
    lie well inside that spacing. Weights vary by up to 3x between components.
    """
    means = torch.randn(components, dim, generator=generator)
    log_scales = torch.empty(components, dim).uniform_(math.log(0.05), math.log(0.5), generator=generator)
    rotations, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=generator))
    weights = torch.empty(components).uniform_(0.5, 1.5, generator=generator)
    return Mixture(means, log_scales.exp(), rotations, weights / weights.sum())


def sample_mixture(mixture: Mixture, count: int, generator: torch.Generator) -> torch.Tensor:
    """Draw `count` points of `mixture` in random order, as (count, D) fp32."""
    labels = torch.multinomial(mixture.weights, count, replacement=True, generator=generator)
    per_component = torch.bincount(labels, minlength=mixture.weights.shape[0]).tolist()
    noise = torch.randn(count, mixture.means.shape[1], generator=generator)
    parts = [
        mixture.means[component] + (component_noise * mixture.scales[component]) @ mixture.rotations[component]
        for component, component_noise in enumerate(noise.split(per_component))
    ]
    return torch.cat(parts)[torch.randperm(count, generator=generator)]


def stream_batches(data: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield `steps` batches of `data`, going through a new random permutation in each epoch."""
    batches_per_epoch = data.shape[0] // batch_size
    order = torch.randperm(data.shape[0], generator=generator)
    for step in range(steps):
        position = step % batches_per_epoch
        if step > 0 and position == 0:
            order = torch.randperm(data.shape[0], generator=generator)
        yield data[order[position * batch_size : (position + 1) * batch_size]]


def train_vqkit(train: torch.Tensor, codebook_size: int, config: LearningConfig, seed: int) -> torch.Tensor:
    """Train vqkit's VectorQuantizer (EMA, k-means init, dead-code restarts) on the stream and return the codebook."""
    quantizer = VectorQuantizer(
        config.dim,
        codebook_size,
        ema_decay=config.ema_decay,
        kmeans_init=True,
        kmeans_iters=config.kmeans_iters,
        dead_code_threshold=config.vqkit_dead_code_steps,
        seed=seed,
    ).train()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for batch in stream_batches(train, config.batch_size, config.steps, generator):
            quantizer(batch)
    return quantizer.codebook.weight.detach().clone()


def train_vqp(train: torch.Tensor, codebook_size: int, config: LearningConfig, seed: int) -> torch.Tensor:
    """Train vector-quantize-pytorch's VectorQuantize (EMA, k-means init, dead-code expiry) and return the codebook."""
    torch.manual_seed(seed)  # VectorQuantize draws its k-means seeds and restarts from the global generator
    quantizer = VectorQuantize(
        dim=config.dim,
        codebook_size=codebook_size,
        decay=config.ema_decay,
        kmeans_init=True,
        kmeans_iters=config.kmeans_iters,
        threshold_ema_dead_code=config.vqp_dead_code_thresholds[codebook_size],
        rotation_trick=False,
    ).train()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for batch in stream_batches(train, config.batch_size, config.steps, generator):
            quantizer(batch[None])
    return quantizer.codebook.detach().clone()


def train_faiss_kmeans(train: torch.Tensor, codebook_size: int, config: LearningConfig, seed: int) -> torch.Tensor:
    """Run faiss.Kmeans on the whole training set and return the centroids."""
    kmeans = faiss.Kmeans(config.dim, codebook_size, niter=config.faiss_iters, seed=seed, verbose=False)
    kmeans.train(numpy.ascontiguousarray(train.numpy()))
    return torch.from_numpy(kmeans.centroids.copy())


TRAINERS = {"vqkit": train_vqkit, "faiss_kmeans": train_faiss_kmeans, "vqp": train_vqp}


def score_codebook(heldout: torch.Tensor, codebook: torch.Tensor) -> dict[str, float]:
    """Assign each held-out point to its nearest code and return distortion and usage statistics.

    `mse` is the mean squared distance of a point to its code, summed over dimensions, and
    `mse_over_variance` divides it by the summed per-dimension variance of the held-out set:
    the fraction of variance that the codebook leaves unexplained. The assignment is plain
    float64 torch, independent of every contender.
    """
    points = heldout.double()
    codes = codebook.double()
    scores = codes.pow(2).sum(dim=1) - 2 * points @ codes.t()
    ids = scores.argmin(dim=1)
    mse = (points - codes[ids]).pow(2).sum(dim=1).mean().item()
    variance = points.var(dim=0, unbiased=False).sum().item()

    counts = torch.bincount(ids, minlength=codebook.shape[0]).double()
    probabilities = counts[counts > 0] / counts.sum()
    entropy = -(probabilities * probabilities.log()).sum().item()
    return {
        "mse": mse,
        "mse_over_variance": mse / variance,
        "code_usage": (counts > 0).double().mean().item(),
        "perplexity": math.exp(entropy),
    }


def summarize(values: list[float]) -> dict[str, float | None]:
    """Return the mean and the sample standard deviation (None for a single value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def warm_up(train_size: int, contenders: list[str], config: LearningConfig) -> None:
    """Run every trainer for two steps on a small sample, untimed, so that no timed fit pays for
    one-time set-up such as thread pools and lazily loaded kernels."""
    generator = torch.Generator().manual_seed(-1)
    mixture = make_mixture(config.components, config.dim, generator)
    train = sample_mixture(mixture, train_size, generator)
    short = dataclasses.replace(config, steps=2, faiss_iters=2)
    for name in contenders:
        for codebook_size in config.codebook_sizes:
            TRAINERS[name](train, codebook_size, short, seed=0)


def run_learning_benchmark(config: LearningConfig) -> dict[str, object]:
    """Train and score every contender for each seed and codebook size, and return the results for the report."""
    contenders = [name for name in CONTENDERS if name != "vqp" or VectorQuantize is not None]
    skipped = {}
    if VectorQuantize is None:
        skipped["vqp"] = f"vector-quantize-pytorch is not installed ({VQP_IMPORT_ERROR})"
        logger.warning("Skipping vector-quantize-pytorch in the learning benchmark: %s", VQP_IMPORT_ERROR)

    # faiss.Kmeans warns below 39 training points per centroid (its min_points_per_centroid).
    warm_up(train_size=max(config.batch_size, 39 * max(config.codebook_sizes)), contenders=contenders, config=config)
    scores: dict[int, dict[str, list[dict[str, float]]]] = {
        size: {name: [] for name in contenders} for size in config.codebook_sizes
    }
    progress = tqdm(total=len(config.seeds) * len(config.codebook_sizes) * len(contenders), desc="learning", disable=None)
    for seed in config.seeds:
        generator = torch.Generator().manual_seed(seed)
        mixture = make_mixture(config.components, config.dim, generator)
        train = sample_mixture(mixture, config.train_size, generator)
        heldout = sample_mixture(mixture, config.heldout_size, generator)
        for codebook_size in config.codebook_sizes:
            for name in contenders:
                logger.info("Learning benchmark: %s, K=%d, seed %d", name, codebook_size, seed)
                start = time.perf_counter()
                codebook = TRAINERS[name](train, codebook_size, config, seed)
                seconds = time.perf_counter() - start
                scores[codebook_size][name].append({**score_codebook(heldout, codebook), "seconds": seconds})
                progress.update()
    progress.close()

    rows = []
    mse_ratios = {}
    for codebook_size, by_contender in scores.items():
        for name, per_seed in by_contender.items():
            summary = {metric: summarize([result[metric] for result in per_seed]) for metric in METRICS}
            rows.append({"codebook_size": codebook_size, "contender": name, **summary, "per_seed": per_seed})
        ratios = [ours["mse"] / reference["mse"] for ours, reference in zip(by_contender["vqkit"], by_contender["faiss_kmeans"])]
        mse_ratios[codebook_size] = {**summarize(ratios), "per_seed": ratios}
    return {"config": config.__dict__, "rows": rows, "vqkit_over_faiss_mse": mse_ratios, "skipped": skipped}
