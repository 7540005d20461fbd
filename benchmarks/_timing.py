"""Wall-clock timing and thread settings shared by the vqkit benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import faiss
import torch


def time_per_call(function: Callable[[], object], min_seconds: float) -> float:
    """Call `function` until at least `min_seconds` have passed and return the mean seconds per call.

    It always makes at least one call, so a slow function is timed once.
    """
    calls = 0
    start = time.perf_counter()
    while True:
        function()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def time_interleaved(
    functions: dict[str, Callable[[], object]], repeats: int, min_seconds: float
) -> dict[str, list[float]]:
    """Time each function `repeats` times, one round over all functions at a time.

    Interleaving spreads slow drifts of the machine (frequency, other load) over every
    function instead of charging them to whichever ran last. Each round starts one function
    later than the previous one, so that no function always follows the same neighbour.
    Returns the seconds per call of every round, by function name.
    """
    names = list(functions)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(time_per_call(functions[name], min_seconds))
    return seconds


@contextlib.contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Set torch's and FAISS's thread counts to `threads`, and restore both on exit.

    The faiss-cpu wheel bundles its own OpenMP runtime, which FAISS uses when faiss is imported
    before torch, so the two counts are set separately.
    """
    saved_torch = torch.get_num_threads()
    saved_faiss = faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_torch)
        faiss.omp_set_num_threads(saved_faiss)
