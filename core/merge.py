"""Top-k merge of per-shard results with numpy (partition + sort; never heapq).

Metric-aware: callers pass ``higher_is_better(metric)`` (``annfleet.validation``). Ties are
broken by the smaller item id, so the merge is deterministic whatever order the shards answer
in. Ids of -1 are padding and never returned as hits. numpy only: the router and the client's
scatter both merge with it.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def merge_topk(
    ids: np.ndarray, scores: np.ndarray, k: int, *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ids (n,) int64, scores (n,) float32 -> best k (fewer if fewer valid hits), sorted."""
    out_ids, out_scores = merge_rows(
        np.asarray(ids, dtype=np.int64)[None, :],
        np.asarray(scores, dtype=np.float32)[None, :],
        k,
        higher_is_better=higher_is_better,
    )
    found = int(np.count_nonzero(out_ids[0] >= 0))
    return out_ids[0, :found], out_scores[0, :found]


_ID_BITS = 32
_LOW = np.uint64((1 << _ID_BITS) - 1)
_PAD = np.uint64(np.iinfo(np.uint64).max)


def _orderable(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the merge order (best first)."""
    # + 0.0 turns -0.0 into 0.0: equal scores must tie (and be broken by id)
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    flip = np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    ascending = bits ^ flip  # unsigned order == float order
    return ~ascending if higher_is_better else ascending


def _from_orderable(keys: np.ndarray, higher_is_better: bool) -> np.ndarray:
    ascending = ~keys if higher_is_better else keys
    flip = np.where(ascending >> np.uint32(31), np.uint32(0x80000000), np.uint32(0xFFFFFFFF))
    return (ascending ^ flip).view(np.float32)


def merge_rows(
    ids: np.ndarray, scores: np.ndarray, k: int, *, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ids (nq, m) int64, scores (nq, m) float32 -> (nq, k) each, -1 / worst-score padded.

    Row by row the same answer as ``merge_topk``, for all rows at once (no Python loop over
    rows: a coalesced batch is merged in one pass). Item ids below 2**32 (the usual case) are
    packed with their score into one uint64 per hit, so one partition + sort per row orders
    by score and breaks ties by id; larger ids take a lexsort.
    """
    nq, m = ids.shape
    worst = -math.inf if higher_is_better else math.inf
    if m == 0 or nq == 0:
        return np.full((nq, k), -1, np.int64), np.full((nq, k), worst, np.float32)
    padding = ids < 0
    if int(ids.max()) >> _ID_BITS:
        return _merge_rows_lexsort(ids, scores, k, padding, worst, higher_is_better)
    keys = (_orderable(scores, higher_is_better).astype(np.uint64) << np.uint64(_ID_BITS)) | (
        ids.astype(np.uint64) & _LOW
    )
    keys[padding] = _PAD
    width = min(k, m)
    if width < m:
        keys = np.partition(keys, width - 1, axis=1)[:, :width]
    keys.sort(axis=1)
    out_ids = (keys & _LOW).astype(np.int64)
    out_scores = _from_orderable((keys >> np.uint64(_ID_BITS)).astype(np.uint32), higher_is_better)
    pad = keys == _PAD
    out_ids[pad] = -1
    out_scores[pad] = worst
    return _pad_to(out_ids, out_scores, k, worst)


def _merge_rows_lexsort(
    ids: np.ndarray,
    scores: np.ndarray,
    k: int,
    padding: np.ndarray,
    worst: float,
    higher_is_better: bool,
) -> tuple[np.ndarray, np.ndarray]:
    keys = -scores.astype(np.float64) if higher_is_better else scores.astype(np.float64)
    # lexsort: last key first: real hits before padding, then by key, ties by the smaller id.
    order = np.lexsort((ids, keys, padding), axis=1)[:, :k]
    out_ids = np.take_along_axis(ids, order, axis=1).astype(np.int64)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    pad = np.take_along_axis(padding, order, axis=1)
    out_ids[pad] = -1
    out_scores[pad] = worst
    return _pad_to(out_ids, out_scores, k, worst)


def _pad_to(
    ids: np.ndarray, scores: np.ndarray, k: int, worst: float
) -> tuple[np.ndarray, np.ndarray]:
    short = k - ids.shape[1]
    if short <= 0:
        return ids, scores
    return (
        np.pad(ids, ((0, 0), (0, short)), constant_values=-1),
        np.pad(scores, ((0, 0), (0, short)), constant_values=worst),
    )


def per_shard_k(
    k: int, share: float, *, shards: int = 1, oversample: float = 1.0, probability: float = 1.0
) -> int:
    """How many hits to ask one shard of ``shards`` holding ``share`` of the items for, so that
    the merge of every shard's answer holds the global top k with probability at least
    ``probability`` (Vespa's ``top-k-probability``): items are placed on shards by a hash
    (``annfleet.partition``), so how many of a query's global top k one shard holds is
    Binomial(k, share); each shard is asked for the smallest m with P(X > m) <= (1 -
    probability) / shards (a union bound over the shards), at least ceil(k * share *
    oversample), at most k, at least 1. ``probability`` 1: every shard is asked for k (an
    exact merge)."""
    if probability >= 1.0 or share >= 1.0:
        return k
    floor = math.ceil(k * share * oversample - 1e-9)
    cut = binomial_cut(k, round(share, 9), (1.0 - probability) / max(shards, 1))
    return max(1, min(k, max(floor, cut)))


# Terms of the tail below eps * e**-40 are skipped: fewer than n of them, together < n * eps *
# 4e-18, far below what the cut can resolve.
SKIP_LOG = 40.0


@functools.lru_cache(maxsize=4096)
def binomial_cut(n: int, p: float, eps: float) -> int:
    """The smallest m in [0, n] with P(Binomial(n, p) > m) <= eps: the tail summed down in log
    space (no underflow at n in the thousands) from where its terms become noticeable (found by
    bisection past the mode: ~0.2 ms at n = 4096 instead of ~4 ms summing from n)."""
    if p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    log_p, log_q = math.log(p), math.log1p(-p)
    head = math.lgamma(n + 1)

    def log_mass(m: int) -> float:
        return head - math.lgamma(m + 1) - math.lgamma(n - m + 1) + m * log_p + (n - m) * log_q

    floor = math.log(eps) - SKIP_LOG if eps > 0.0 else -math.inf
    lo, hi = min(n, math.floor((n + 1) * p)), n  # the mode; terms fall past it
    while lo < hi:  # the largest m past the mode whose term is still above the floor
        mid = (lo + hi + 1) // 2
        if log_mass(mid) >= floor:
            lo = mid
        else:
            hi = mid - 1
    tail, m = 0.0, lo  # tail = P(X > m), the skipped terms left out
    while m > 0:
        mass = math.exp(log_mass(m))
        if tail + mass > eps:
            break
        tail += mass
        m -= 1
    return m
