"""Top-k merge of per-shard results with numpy (argpartition + sort; never heapq).

Metric-aware: callers pass ``higher_is_better(metric)`` (``annfleet.validation``). Ties are
broken by the smaller item id, so the merge is deterministic whatever order the shards answer
in. Ids of -1 are padding and never returned as hits. numpy only: the router and the client's
scatter both merge with it.
"""

from __future__ import annotations

import math

import numpy as np


def _keys(scores: np.ndarray, ids: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Sort keys where smaller is better and padding sorts last."""
    keys = -scores.astype(np.float64) if higher_is_better else scores.astype(np.float64)
    return np.where(ids < 0, math.inf, keys)


def merge_topk(
    ids: np.ndarray, scores: np.ndarray, k: int, *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ids (n,) int64, scores (n,) float32 -> best k (fewer if fewer valid hits), sorted."""
    keys = _keys(scores, ids, higher_is_better)
    valid = int(np.count_nonzero(ids >= 0))
    k = min(k, valid)
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if k < len(keys):
        # Everything strictly better than the k-th key, plus every tie with it.
        kth = keys[np.argpartition(keys, k - 1)[k - 1]]
        candidates = np.flatnonzero(keys <= kth)
    else:
        candidates = np.flatnonzero(keys < math.inf)
    order = candidates[np.lexsort((ids[candidates], keys[candidates]))][:k]
    return ids[order].astype(np.int64), scores[order].astype(np.float32)


def merge_rows(
    ids: np.ndarray, scores: np.ndarray, k: int, *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ids (nq, m) int64, scores (nq, m) float32 -> (nq, k) each, -1 / worst-score padded."""
    nq = ids.shape[0]
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    worst = -math.inf if higher_is_better else math.inf
    out_scores = np.full((nq, k), worst, dtype=np.float32)
    for row in range(nq):
        best_ids, best_scores = merge_topk(
            ids[row], scores[row], k, higher_is_better=higher_is_better
        )
        out_ids[row, : len(best_ids)] = best_ids
        out_scores[row, : len(best_scores)] = best_scores
    return out_ids, out_scores


def per_shard_k(k: int, share: float, oversample: float) -> int:
    """How many hits to ask one shard for: ceil(k * share * oversample), in [1, k]."""
    return max(1, min(k, math.ceil(k * share * oversample)))
