"""Stable partitioning of item ids onto shards: splitmix64(id) mod N.

The same id always lands on the same shard for a given N, whatever the order or the
machine, so an upsert of item X goes to one known shard.
"""

from __future__ import annotations

import numpy as np

SCHEME = "splitmix64-mod"


def splitmix64(ids: np.ndarray) -> np.ndarray:
    """ids (n,) int64 -> (n,) uint64 well-mixed hashes (splitmix64 finaliser)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """ids (n,) int64 -> (n,) int64 shard index in [0, num_shards)."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be > 0, got {num_shards}")
    return (splitmix64(ids) % np.uint64(num_shards)).astype(np.int64)
