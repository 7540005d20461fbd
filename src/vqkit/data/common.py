"""Helpers shared by the generated datasets: per-item random generators and index checks.

Item `i` of a dataset built with seed `s` is a function of `(s, i)` only, so any worker, rank or
resumed run can produce any item without replaying the ones before it.
"""

from __future__ import annotations

import numpy as np

# Number of items a dataset reports by default. Items are generated on demand, so this only
# bounds the indices a sampler draws from.
DEFAULT_LENGTH = 1_000_000


def item_rng(seed: int, index: int) -> np.random.Generator:
    """Return the random generator for item `index` of a dataset seeded with `seed`."""
    return np.random.default_rng([seed, index])


def check_index(index: int, length: int) -> int:
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"index {index} is out of range for a dataset of length {length}")
    return index
