"""Nearest-code search: FAISS's blocked GEMM + top-k kernel on the CPU, tiled torch elsewhere.

Both paths return the same indices up to ties. Neither keeps the full (N, K) score matrix: FAISS
reduces each block while it is in cache, and the torch path works on row tiles of bounded size.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import faiss
    from faiss.contrib.torch_utils import swig_ptr_from_FloatTensor, swig_ptr_from_IndicesTensor
except ImportError:  # the torch path still works, only slower on the CPU
    faiss = None

# Scores kept in memory at once by the torch path, in fp32 elements (32 MiB).
TORCH_TILE_ELEMENTS = 1 << 23

# Below this many multiply-adds the FAISS call overhead outweighs its kernel.
FAISS_MIN_WORK = 1 << 16


def _faiss_search(x: Tensor, codebook: Tensor, k: int, metric: str, codebook_sqnorm: Tensor | None):
    """Run FAISS's exhaustive search on the tensors' memory. x: (N, D), codebook: (K, D), fp32."""
    n, dim = x.shape
    codebook_size = codebook.shape[0]
    distances = torch.empty(n, k, dtype=torch.float32)
    indices = torch.empty(n, k, dtype=torch.int64)

    x_ptr = swig_ptr_from_FloatTensor(x)
    c_ptr = swig_ptr_from_FloatTensor(codebook)
    d_ptr = swig_ptr_from_FloatTensor(distances)
    i_ptr = swig_ptr_from_IndicesTensor(indices)
    if metric == "l2":
        norm_ptr = None if codebook_sqnorm is None else swig_ptr_from_FloatTensor(codebook_sqnorm)
        faiss.knn_L2sqr(x_ptr, c_ptr, dim, n, codebook_size, k, d_ptr, i_ptr, norm_ptr)
    else:
        faiss.knn_inner_product(x_ptr, c_ptr, dim, n, codebook_size, k, d_ptr, i_ptr)
    return distances, indices


def _torch_search(x: Tensor, codebook: Tensor, k: int, metric: str, codebook_sqnorm: Tensor | None):
    """Tiled addmm + argmin/top-k in plain torch. Works on any device."""
    n = x.shape[0]
    codebook_size = codebook.shape[0]
    rows_per_tile = max(1, TORCH_TILE_ELEMENTS // max(codebook_size, 1))
    distances = torch.empty(n, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=x.device)

    if metric == "l2" and codebook_sqnorm is None:
        codebook_sqnorm = codebook.pow(2).sum(dim=1)

    for start in range(0, n, rows_per_tile):
        tile = x[start : start + rows_per_tile]
        if metric == "l2":
            # ||x||^2 is constant per row, so rank on ||c||^2 - 2 x.c and add it back afterwards.
            scores = torch.addmm(codebook_sqnorm, tile, codebook.t(), alpha=-2.0)
            values, ids = torch.topk(scores, k, dim=1, largest=False) if k > 1 else scores.min(dim=1, keepdim=True)
            values = values + tile.pow(2).sum(dim=1, keepdim=True)
        else:
            scores = tile @ codebook.t()
            values, ids = torch.topk(scores, k, dim=1) if k > 1 else scores.max(dim=1, keepdim=True)
        distances[start : start + rows_per_tile] = values
        indices[start : start + rows_per_tile] = ids
    return distances, indices


@torch.no_grad()
def search(
    x: Tensor,
    codebook: Tensor,
    k: int = 1,
    metric: str = "l2",
    codebook_sqnorm: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Find the ``k`` best codes for each row of ``x``.

    Args:
        x: (N, D) queries.
        codebook: (K, D) codes.
        k: codes to return per query, best first.
        metric: ``"l2"`` (smallest squared distance) or ``"ip"`` (largest inner product).
        codebook_sqnorm: optional (K,) precomputed ``||c||^2`` for ``"l2"``.
        backend: ``"faiss"``, ``"torch"`` or ``"auto"`` (FAISS for CPU tensors when installed).

    Returns:
        ``(scores, indices)``, both (N, k): squared L2 distances for ``"l2"``, inner products
        for ``"ip"``, and long code ids. The search always runs in fp32, even under autocast.
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    codebook_size = codebook.shape[0]
    if not 1 <= k <= codebook_size:
        raise ValueError(f"k must be between 1 and the codebook size {codebook_size}, got {k}")

    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float().contiguous()
        codebook = codebook.detach().float().contiguous()
        if codebook_sqnorm is not None:
            codebook_sqnorm = codebook_sqnorm.detach().float().contiguous()

        if x.shape[0] == 0:
            empty = torch.empty(0, k, device=x.device)
            return empty, empty.long()

        use_faiss = backend == "faiss" or (
            backend == "auto" and x.device.type == "cpu" and x.shape[0] * x.shape[1] * codebook_size >= FAISS_MIN_WORK
        )
        if use_faiss and (faiss is None or x.device.type != "cpu"):
            if backend == "faiss":
                raise ValueError("backend='faiss' needs faiss-cpu installed and CPU tensors; use backend='torch'")
            use_faiss = False

        if use_faiss:
            return _faiss_search(x, codebook, k, metric, codebook_sqnorm)
        return _torch_search(x, codebook, k, metric, codebook_sqnorm)
