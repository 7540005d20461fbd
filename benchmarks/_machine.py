"""A description of the machine and software behind a benchmark run, for its report header."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
from pathlib import Path

import faiss
import numpy
import torch

import vqkit
from vqkit.evals.machine import cpu_model

# Shared libraries of OpenMP runtimes: GNU libgomp, Intel libiomp5 and LLVM libomp.
_OPENMP_LIBRARY = re.compile(r"lib(gomp|iomp5|omp)\b[^/]*\.so")
_BLAS_LIBRARY = re.compile(r"lib(openblas|mkl_rt|mkl_core|blis|flexiblas)[^/]*\.so")


def loaded_libraries(pattern: re.Pattern[str]) -> list[str]:
    """Return the shared libraries mapped into this process whose file name matches `pattern`.

    A library inside site-packages is shown from its package folder on, such as
    torch/lib/libgomp.so.1 or faiss_cpu.libs/libgomp-....so, to distinguish the copies that
    different wheels bundle. Other libraries are shown with their full path. Reads
    /proc/self/maps, so the list is empty on systems without /proc.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {Path(line.split()[-1]) for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(_short_library_path(path) for path in paths if pattern.search(path.name))


def _short_library_path(path: Path) -> str:
    for marker in ("site-packages", "dist-packages"):
        if marker in path.parts:
            return "/".join(path.parts[path.parts.index(marker) + 1 :])
    return str(path)


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def faiss_shares_torch_thread_pool() -> bool:
    """Return whether FAISS and torch use the same OpenMP runtime, and so the same thread pool.

    Probes by changing FAISS's thread count and reading torch's. Both counts are restored.
    """
    torch_threads = torch.get_num_threads()
    faiss_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch_threads + 1)
    shared = torch.get_num_threads() == torch_threads + 1
    faiss.omp_set_num_threads(faiss_threads)
    torch.set_num_threads(torch_threads)
    return shared


def load_average() -> float | None:
    """Return the 1-minute system load average, or None where the OS does not provide one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def describe_machine(
    threads: int, faiss_imported_before_torch: bool, load_average_before: float | None
) -> dict[str, object]:
    """Return the CPU, thread count, library versions, loaded runtimes and load of this process's machine.

    Call it at the end of the run, after the benchmarked libraries are imported, so that their
    OpenMP and BLAS libraries are loaded. `load_average_before` is the load_average() taken
    before the run.
    """
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_mkl": torch.backends.mkl.is_available(),
        "faiss": faiss.__version__,
        "faiss_compile_options": faiss.get_compile_options().strip(),
        "vector_quantize_pytorch": package_version("vector-quantize-pytorch"),
        "vqkit": vqkit.__version__,
        "numpy": numpy.__version__,
        "openmp_runtimes": loaded_libraries(_OPENMP_LIBRARY),
        "faiss_shares_torch_thread_pool": faiss_shares_torch_thread_pool(),
        "faiss_imported_before_torch": faiss_imported_before_torch,
        "blas_libraries": loaded_libraries(_BLAS_LIBRARY),
        "load_average_before": load_average_before,
        "load_average_after": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
