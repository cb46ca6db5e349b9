"""Probe: would an item-to-next-item (transition) source add to the blend? Not a product source.

    python transition_probe.py val|test      # reads /tmp/rerank-{val,test}.npz (capture_scores.py)

From the split's train part, each user's items in time order; item j following item i
within W places counts ``decay ** (distance - 1)`` for i -> j. A query's user scores j by the
recency-weighted (0.8 per place) sum over its last 20 train items of their counts to j,
seen items left out. Printed: R@100 of that list alone, of the ANN's and its first 100
together (200 places), and of rank fusions (``w / (60 + rank + 1)`` summed, ties by id)
against the captured ANN and co-engagement lists.
"""

from __future__ import annotations

import sys

import numpy as np

from annfleet.model.data import load_movielens, make_split
from annfleet.model.features import build_queries


def recall(lists: list[np.ndarray] | np.ndarray, targets: list[set[int]], k: int = 100) -> float:
    pairs = zip(lists, targets, strict=True)
    return float(np.mean([len(set(x[:k][x[:k] >= 0].tolist()) & t) / len(t) for x, t in pairs]))


def union(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    rows = []
    for x, y in zip(a, b, strict=True):
        both = [*x[:100][x[:100] >= 0].tolist(), *y[:100][y[:100] >= 0].tolist()]
        rows.append(np.array(list(dict.fromkeys(both)), np.int64))
    return rows


def rrf(lists: list[np.ndarray], weights: list[float], c: float = 60.0) -> list[np.ndarray]:
    out = []
    for q in range(len(lists[0])):
        score: dict[int, float] = {}
        for rows, w in zip(lists, weights, strict=True):
            for r, i in enumerate(rows[q][:200].tolist()):
                if i >= 0:
                    score[i] = score.get(i, 0.0) + w / (c + r + 1)
        out.append(np.array(sorted(score, key=lambda i: (-score[i], i))[:100], np.int64))
    return out


def main(which: str) -> None:
    data = load_movielens()
    split = make_split(data, "per_user", validation=which == "val")
    queries = build_queries(data, split)
    captured = np.load(f"/tmp/rerank-{which}.npz", allow_pickle=False)
    n = len(data.item_ids) + 1
    train = np.flatnonzero(split.train)
    train = train[np.lexsort((train, data.inter_ts[train], data.inter_user[train]))]
    users, items = data.inter_user[train], data.inter_item[train]
    targets = [
        set(data.item_ids[queries.targets_of(q) - 1].tolist()) for q in range(len(queries.users))
    ]
    ann, co = captured["ann_ids"], captured["co_engagement_ids"]
    both = recall(union(ann, co), targets, 200)
    fused = recall(rrf([ann, co], [1.0, 0.5]), targets)
    print(which, f"ann {recall(ann, targets):.4f}", f"co_engagement {recall(co, targets):.4f}",
          f"ann + co_engagement first 100s {both:.4f}",
          f"rrf ann + co_engagement 0.5 {fused:.4f}")  # fmt: skip
    for window, decay in ((1, 1.0), (3, 0.5), (5, 0.7), (10, 0.8)):
        counts = np.zeros((n, n), np.float64)
        for dist in range(1, window + 1):
            same = users[dist:] == users[:-dist]
            np.add.at(counts, (items[:-dist][same], items[dist:][same]), decay ** (dist - 1))
        lists = np.full((len(queries.users), 200), -1, np.int64)
        for q in range(len(queries.users)):
            history = queries.seen[queries.seen_ptr[q] : queries.seen_ptr[q + 1]]
            last = history[-20:]
            weights = 0.8 ** np.arange(len(last) - 1, -1, -1)
            score = (weights[:, None] * counts[last]).sum(axis=0)
            score[history], score[0] = -1.0, -1.0
            top = np.argsort(-score, kind="stable")[:200]
            top = top[score[top] > 0]
            lists[q, : len(top)] = data.item_ids[top - 1]
        three = rrf([ann, co, lists], [1.0, 0.5, 0.5])
        print(f"  window {window} decay {decay}: alone {recall(lists, targets):.4f}",
              f"ann + it first 100s {recall(union(ann, lists), targets, 200):.4f}",
              f"rrf ann + it 0.5 {recall(rrf([ann, lists], [1.0, 0.5]), targets):.4f}",
              f"rrf ann + co 0.5 + it 0.5 {recall(three, targets):.4f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
