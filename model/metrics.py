"""Ranking metrics over full-catalogue scores, with the user's train items excluded."""

from __future__ import annotations

import numpy as np

from annfleet.model.features import Queries

KS = (10, 50, 100)


def mask_seen(scores: np.ndarray, queries: Queries) -> np.ndarray:
    """scores (Q, N + 1) float32 (column 0 = padding) -> a copy with padding and seen = -inf."""
    out = np.array(scores, dtype=np.float32, copy=True)
    out[:, 0] = -np.inf
    rows = np.repeat(np.arange(len(queries)), np.diff(queries.seen_ptr))
    out[rows, queries.seen] = -np.inf
    return out


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """scores (Q, M) float32 -> (Q, k) int64 column indices, best first, ties by lower index."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def ranking_metrics(
    top: np.ndarray,
    queries: Queries,
    ks: tuple[int, ...] = KS,
    rows: np.ndarray | None = None,
    relevant: np.ndarray | None = None,
) -> dict[str, float]:
    """top (Q, K) int64 ranked item indices -> mean Recall@k and NDCG@50 over queries.

    Recall@k = |top k ∩ targets| / |targets|. ``rows`` restricts to some queries; ``relevant``
    (N + 1,) bool restricts targets to some items (queries left without targets are skipped).
    """
    rows = np.arange(len(queries)) if rows is None else rows
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    ndcgs = []
    discounts = 1.0 / np.log2(np.arange(2, 52))
    for q in rows:
        targets = queries.targets_of(int(q))
        if relevant is not None:
            targets = targets[relevant[targets]]
        if len(targets) == 0:
            continue
        hit = np.isin(top[q], targets)
        for k in ks:
            recalls[k].append(hit[:k].sum() / len(targets))
        dcg = float((hit[:50] * discounts[: len(hit[:50])]).sum())
        idcg = float(discounts[: min(len(targets), 50)].sum())
        ndcgs.append(dcg / idcg)
    out = {f"recall@{k}": float(np.mean(v)) if v else 0.0 for k, v in recalls.items()}
    out["ndcg@50"] = float(np.mean(ndcgs)) if ndcgs else 0.0
    out["num_queries"] = float(len(ndcgs))
    return out


def evaluate_scores(scores: np.ndarray, queries: Queries, **kw: object) -> dict[str, float]:
    """scores (Q, N + 1) -> metrics, seen items excluded."""
    return ranking_metrics(topk(mask_seen(scores, queries), max(KS)), queries, **kw)  # type: ignore[arg-type]
