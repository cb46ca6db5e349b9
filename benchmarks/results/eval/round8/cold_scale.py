"""Tuning round 8: scale the vectors of items with no training interaction (cold items).

    python cold_scale.py SPLIT val|test COLD_SEED|none OUT.json [smoke]

One MODEL_VERSION 7 model (the defaults, training seed = COLD_SEED, or 0 with ``none``) is
trained once; then for every scale s of ``SCALES`` the cold items' served vectors (content
only) are multiplied by s and the ranking is scored. With a cold seed, ``annfleet eval``'s
cold-start protocol (``cold_start_eval``: 5% of the items held out of training entirely;
R@50 over the held-out test items, random = a random ranking's R@50) plus R@10 / R@50 /
R@100 over every test item; with ``none``, the standard protocol (no hold-out; the items
with no train interaction in the split are the cold ones) and its R@10 / R@50 / R@100.
s = 1 is ``annfleet eval``'s figure.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from annfleet.model.data import Split, cold_items, load_movielens, make_split
from annfleet.model.evaluate import COLD_FRACTION
from annfleet.model.features import build_queries
from annfleet.model.metrics import mask_seen, ranking_metrics, topk
from annfleet.model.two_tower import (
    TwoTowerConfig,
    items_without_interactions,
    served_item_vectors,
    train_two_tower,
    user_vectors,
)

SCALES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0, 2.5, 3.0)


def main(split_name: str, which: str, cold_seed: str, out: str, smoke: str = "") -> None:
    torch.set_num_threads(1)
    t0 = time.time()
    data = load_movielens()
    split = make_split(data, split_name, validation=which == "val")
    seed = 0 if cold_seed == "none" else int(cold_seed)
    config = replace(TwoTowerConfig(), seed=seed)
    if smoke:  # a quick check of the script itself: one epoch, one member
        config = replace(config, epochs=1, members=1)
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    train = split.train
    if cold_seed != "none":
        is_cold[cold_items(data, COLD_FRACTION, seed)] = True
        train = split.train & ~is_cold[data.inter_item]
    queries = build_queries(data, Split(split.name, train, split.test), config.recent_len)
    model = train_two_tower(data, train, config, progress=False)
    ivecs = served_item_vectors(model, data, train)
    uvecs = user_vectors(model, queries.user, queries.recent, queries.time)
    untrained = items_without_interactions(data, train)
    rows = []
    for s in SCALES:
        scaled = ivecs.copy()
        scaled[untrained] *= s
        top = topk(mask_seen(uvecs @ scaled.T, queries), 100)
        row: dict[str, float] = {"scale": s, "untrained_items": float(len(untrained))}
        overall = ranking_metrics(top, queries, ks=(10, 50, 100))
        row |= {k: overall[k] for k in ("recall@10", "recall@50", "recall@100")}
        if cold_seed != "none":
            cold = ranking_metrics(top[:, :50], queries, ks=(50,), relevant=is_cold)
            warm = ranking_metrics(top[:, :50], queries, ks=(50,), relevant=~is_cold)
            users = [q for q in range(len(queries)) if is_cold[queries.targets_of(q)].any()]
            unseen = data.num_items - np.diff(queries.seen_ptr)[users]
            random = float(np.mean(np.minimum(1.0, 50.0 / unseen))) if users else 0.0
            row |= {
                "cold_recall@50": cold["recall@50"],
                "random_recall@50": random,
                "lift": cold["recall@50"] / random if random else 0.0,
                "cold_share@50": float(is_cold[top[:, :50]].mean()),
                "warm_recall@50": warm["recall@50"],
                "cold_users": float(cold["num_queries"]),
            }
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "split": split_name,
        "which": which,
        "cold_seed": cold_seed,
        "config": asdict(config),
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:6])
