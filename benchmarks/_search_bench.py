"""Nearest-code search with one frozen codebook: vqkit, FAISS and vector-quantize-pytorch.

Every contender gets the same Gaussian queries and the same Gaussian codebook. Throughput is
compared with a same-process fp32 GEMM of the same shape, (N, D) x (D, K), which does the
multiply-adds of an exhaustive L2 search without the argmin.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import torch
from tqdm import tqdm

from vqkit.quantizers import VectorQuantizer

if __package__:
    from . import _timing
    from ._vqp import VQP_IMPORT_ERROR, VectorQuantize
else:  # imported by `python benchmarks/quantizers.py`, which puts benchmarks/ on sys.path
    import _timing
    from _vqp import VQP_IMPORT_ERROR, VectorQuantize

logger = logging.getLogger(__name__)

# vector-quantize-pytorch builds several (rows, K) tensors per call: the distances, their
# intermediates and an int64 one-hot matrix. It runs on row chunks of at most this many
# (row, code) pairs, an estimated 1 GB at peak, and its time is the sum over the chunks.
VQP_MAX_PAIRS_PER_CHUNK = 1 << 25

# A contender's distance to its chosen code counts as equal to FAISS's within this relative error.
DISTANCE_RTOL = 1e-4

CONTENDERS = ("vqkit", "faiss", "vqp")


@dataclass(frozen=True)
class SearchConfig:
    num_queries: int
    dims: tuple[int, ...]
    codebook_sizes: tuple[int, ...]
    repeats: int
    min_seconds: float
    """Each timed measurement repeats the call until this much time has passed."""
    peak_size: int
    """Side of the square sgemm whose GFLOP/s is reported as the peak."""
    seed: int = 0


def make_vqkit_search(codebook: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function that runs vqkit's full VectorQuantizer forward in eval mode and returns the indices."""
    codebook_size, dim = codebook.shape
    quantizer = VectorQuantizer(dim, codebook_size, kmeans_init=False, seed=0)
    quantizer.codebook.set_codes(codebook)
    quantizer.codebook.initialized.fill_(True)
    quantizer.eval()

    def run(queries: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return quantizer(queries).indices

    return run


def make_faiss_search(codebook: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function that searches an IndexFlatL2 containing `codebook` and returns the indices."""
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook.numpy())

    def run(queries: torch.Tensor) -> torch.Tensor:
        _, ids = index.search(queries.numpy(), 1)
        return torch.from_numpy(ids[:, 0])

    return run


def vqp_chunk_rows(codebook_size: int) -> int:
    return max(1, VQP_MAX_PAIRS_PER_CHUNK // codebook_size)


def make_vqp_search(codebook: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function that runs vector-quantize-pytorch's VectorQuantize in eval mode on row chunks
    and returns the indices."""
    codebook_size, dim = codebook.shape
    quantizer = VectorQuantize(
        dim=dim, codebook_size=codebook_size, kmeans_init=False, rotation_trick=False, decay=0.99
    ).eval()
    with torch.no_grad():
        quantizer.codebook = codebook
    if not torch.equal(quantizer.codebook, codebook):
        raise RuntimeError("vector-quantize-pytorch did not take the benchmark codebook")
    rows = vqp_chunk_rows(codebook_size)

    def run(queries: torch.Tensor) -> torch.Tensor:
        ids = []
        with torch.no_grad():
            for chunk in queries.split(rows):
                _, chunk_ids, _ = quantizer(chunk[None])
                ids.append(chunk_ids[0])
        return torch.cat(ids)

    return run


def make_sgemm(queries: torch.Tensor, codebook: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Return a function that computes queries @ codebook.T into a preallocated (N, K) buffer."""
    scores = torch.empty(queries.shape[0], codebook.shape[0])
    codebook_t = codebook.t()
    return lambda: torch.mm(queries, codebook_t, out=scores)


def measure_peak_sgemm(size: int, repeats: int, min_seconds: float) -> dict[str, float]:
    """Time a (size x size) @ (size x size) fp32 matmul and return its median seconds and GFLOP/s."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    multiply = lambda: torch.mm(left, right, out=out)  # noqa: E731
    multiply()
    seconds = statistics.median(_timing.time_interleaved({"peak": multiply}, repeats, min_seconds)["peak"])
    return {"size": size, "seconds": seconds, "gflops": 2 * size**3 / seconds / 1e9}


def squared_distances(queries: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Return the float64 squared distance of each query to its chosen code."""
    return (queries.double() - codebook.double()[ids]).pow(2).sum(dim=1)


def agreement_with_faiss(
    queries: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor, faiss_ids: torch.Tensor
) -> dict[str, float]:
    """Return the fraction of indices equal to FAISS's, and of chosen distances equal to FAISS's.

    Near-ties make exact searches pick different codes at the same distance, so the second
    fraction counts a query as agreeing when its distance matches within `DISTANCE_RTOL`.
    """
    ids = ids.reshape(-1).long()
    faiss_ids = faiss_ids.reshape(-1).long()
    distance = squared_distances(queries, codebook, ids)
    faiss_distance = squared_distances(queries, codebook, faiss_ids)
    close = (distance - faiss_distance).abs() <= DISTANCE_RTOL * faiss_distance.abs()
    return {
        "index_agreement": (ids == faiss_ids).double().mean().item(),
        "distance_agreement": close.double().mean().item(),
    }


def throughput(seconds: list[float], num_queries: int, flops: int, sgemm_gflops: float, peak_gflops: float) -> dict:
    """Return the median time of one contender with its vectors/s, GFLOP/s and percentages of the references."""
    median_seconds = statistics.median(seconds)
    gflops = flops / median_seconds / 1e9
    return {
        "seconds": median_seconds,
        "all_seconds": seconds,
        "vectors_per_second": num_queries / median_seconds,
        "gflops": gflops,
        "percent_of_sgemm": 100 * gflops / sgemm_gflops,
        "percent_of_peak": 100 * gflops / peak_gflops,
    }


def benchmark_shape(dim: int, codebook_size: int, config: SearchConfig, peak_gflops: float) -> dict[str, object]:
    """Time every contender and the same-shape sgemm on one (D, K) and return the row of results."""
    generator = torch.Generator().manual_seed(config.seed + 1000 * dim + codebook_size)
    queries = torch.randn(config.num_queries, dim, generator=generator)
    codebook = torch.randn(codebook_size, dim, generator=generator)

    searches = {"vqkit": make_vqkit_search(codebook), "faiss": make_faiss_search(codebook)}
    if VectorQuantize is not None:
        searches["vqp"] = make_vqp_search(codebook)

    # The warm-up call of each search also provides the indices that are compared with FAISS.
    indices = {name: search(queries) for name, search in searches.items()}
    sgemm = make_sgemm(queries, codebook)
    sgemm()

    timed: dict[str, Callable[[], object]] = {name: (lambda s=search: s(queries)) for name, search in searches.items()}
    timed["sgemm"] = sgemm
    seconds = _timing.time_interleaved(timed, config.repeats, config.min_seconds)
    del timed, sgemm  # frees the (N, K) sgemm output before the next shape

    flops = 2 * config.num_queries * dim * codebook_size
    sgemm_seconds = statistics.median(seconds["sgemm"])
    sgemm_gflops = flops / sgemm_seconds / 1e9
    row: dict[str, object] = {
        "dim": dim,
        "codebook_size": codebook_size,
        "num_queries": config.num_queries,
        "sgemm": {"seconds": sgemm_seconds, "gflops": sgemm_gflops, "all_seconds": seconds["sgemm"]},
        "contenders": {},
        "skipped": {},
    }
    for name in CONTENDERS:
        if name not in searches:
            row["skipped"][name] = f"vector-quantize-pytorch is not installed ({VQP_IMPORT_ERROR})"
            continue
        result = throughput(seconds[name], config.num_queries, flops, sgemm_gflops, peak_gflops)
        if name != "faiss":
            result.update(agreement_with_faiss(queries, codebook, indices[name], indices["faiss"]))
        if name == "vqp":
            result["chunks"] = math.ceil(config.num_queries / vqp_chunk_rows(codebook_size))
        row["contenders"][name] = result
    return row


def run_search_benchmark(config: SearchConfig) -> dict[str, object]:
    """Measure the peak sgemm, then every (D, K) of `config`, and return the results for the report."""
    if VectorQuantize is None:
        logger.warning("Skipping vector-quantize-pytorch in the search benchmark: %s", VQP_IMPORT_ERROR)
    logger.info("Timing a %d^3 sgemm as the peak reference", config.peak_size)
    peak = measure_peak_sgemm(config.peak_size, config.repeats, config.min_seconds)

    shapes = [(dim, size) for dim in config.dims for size in config.codebook_sizes]
    rows = []
    for dim, codebook_size in tqdm(shapes, desc="search (D, K)", disable=None):
        logger.info("Search benchmark: D=%d, K=%d, N=%d", dim, codebook_size, config.num_queries)
        rows.append(benchmark_shape(dim, codebook_size, config, peak["gflops"]))
    return {
        "config": config.__dict__,
        "peak_sgemm": peak,
        "distance_rtol": DISTANCE_RTOL,
        "vqp_max_pairs_per_chunk": VQP_MAX_PAIRS_PER_CHUNK,
        "rows": rows,
    }
