"""A deterministic synthetic catalogue: clustered, L2-normalised item and user vectors.

Clustered data behaves like real embeddings for graph indexes; uniform random vectors are
close to the worst case and are only a stress point (``clusters=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRST_ITEM_ID = 1_000_000


@dataclass(frozen=True)
class Catalogue:
    ids: np.ndarray  # (n,) int64 item ids
    vectors: np.ndarray  # (n, d) float32, unit norm
    user_ids: np.ndarray  # (u,) int64
    user_vectors: np.ndarray  # (u, d) float32, unit norm
    popular_ids: np.ndarray  # (p,) int64 item ids, most popular first


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_catalogue(
    items: int = 200_000,
    dim: int = 64,
    *,
    clusters: int = 256,
    users: int = 10_000,
    seed: int = 0,
    spread: float = 0.35,
) -> Catalogue:
    """Items around ``clusters`` random centres (``clusters=0``: uniform on the sphere).

    Users (ids 1..users) lie near a mixture of two centres, so each has real neighbours.
    Popularity is Zipf-like over a random order of items.
    """
    rng = np.random.default_rng(seed)
    if clusters > 0:
        centres = _normalise(rng.standard_normal((clusters, dim)))
        assign = rng.integers(0, clusters, size=items)
        noise = rng.standard_normal((items, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        vectors = _normalise(centres[assign] + noise)
        pair = rng.integers(0, clusters, size=(users, 2))
        mix = rng.uniform(0.2, 0.8, size=(users, 1)).astype(np.float32)
        user_noise = rng.standard_normal((users, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        user_vectors = _normalise(
            mix * centres[pair[:, 0]] + (1 - mix) * centres[pair[:, 1]] + user_noise
        )
    else:
        vectors = _normalise(rng.standard_normal((items, dim)))
        user_vectors = _normalise(rng.standard_normal((users, dim)))
    ids = np.arange(FIRST_ITEM_ID, FIRST_ITEM_ID + items, dtype=np.int64)
    popular_ids = ids[rng.permutation(items)[: min(items, 10_000)]]
    return Catalogue(
        ids=ids,
        vectors=vectors,
        user_ids=np.arange(1, users + 1, dtype=np.int64),
        user_vectors=user_vectors,
        popular_ids=popular_ids,
    )
