"""Exact ground truth (faiss Flat, batched) and recall@k."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

# faiss switches from its own kernels to BLAS above this many queries x items; the default
# makes batched exact search several times slower at our sizes.
faiss.cvar.distance_compute_blas_threshold = 20

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def exact_topk(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    *,
    batch: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """vectors (n, d) float32, ids (n,) int64, queries (nq, d) -> exact top-k ids (nq, k) int64."""
    index = faiss.IndexFlat(vectors.shape[1], _METRICS[metric])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    out = np.empty((len(queries), k), dtype=np.int64)
    starts = range(0, len(queries), batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="exact ground truth", unit="batch")
    for start in starts:
        q = np.ascontiguousarray(queries[start : start + batch], dtype=np.float32)
        _, pos = index.search(q, k)
        out[start : start + len(q)] = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    return out


def cached_exact_topk(
    cache: Path,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    *,
    progress: bool = False,
) -> np.ndarray:
    """exact_topk, stored as ``cache`` (.npy) and reused when its shape matches."""
    if cache.is_file():
        gt = np.load(cache, allow_pickle=False)
        if gt.shape == (len(queries), k):
            return gt
    gt = exact_topk(vectors, ids, queries, k, metric, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, gt, allow_pickle=False)
    return gt


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """found (nq, >=k) ids, truth (nq, >=k) exact ids -> mean |found[:k] ∩ truth[:k]| / k."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        hits += len(np.intersect1d(f[f >= 0], t, assume_unique=False))
    return hits / (k * len(truth)) if len(truth) else 0.0
