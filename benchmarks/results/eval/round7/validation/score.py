"""score.py SPLIT MODE SEED NAME [NAME ...]: score saved members (VECS/NAME.npz) as one ensemble
(round 7: copied from round6/validation/score.py; vectors read from VECS, default
/tmp/tune7-vecs).

User and item vectors concatenated, each member's scaled by 1/sqrt(K) (TwoTowerEnsemble): the
score is the mean of the members' scores. Metrics as `annfleet eval --validation`: warm ->
two_tower R@10/50/100, NDCG@50; cold -> cold_start lift, held-out share of the top 50, the
other items' R@50 (cold_start_eval). Prints one JSON line.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

from annfleet.model.data import Split, cold_items, load_movielens, make_split
from annfleet.model.evaluate import COLD_FRACTION
from annfleet.model.features import build_queries
from annfleet.model.metrics import evaluate_scores, mask_seen, ranking_metrics, topk
from annfleet.model.two_tower import items_without_interactions

here = Path(__file__).parent
args = sys.argv[1:]
scale = 1.0  # --cold-scale A: items with no training interaction served with A x their vector
if args[0] == "--cold-scale":
    scale, args = float(args[1]), args[2:]
split_name, mode, seed, names = args[0], args[1], int(args[2]), args[3:]
data = load_movielens()
split = make_split(data, split_name, validation=True)
train = split.train
is_cold = np.zeros(data.num_items + 1, dtype=bool)
if mode == "cold":
    is_cold[cold_items(data, COLD_FRACTION, seed)] = True
    train = split.train & ~is_cold[data.inter_item]
queries = build_queries(data, Split(split.name, train, split.test))
vecs = Path(os.environ.get("VECS", "/tmp/tune7-vecs"))
loaded = [np.load(vecs / f"{n}.npz", allow_pickle=False) for n in names]
k = len(loaded)
u = np.concatenate([z["user"] for z in loaded], axis=1) / np.sqrt(k)
v = np.concatenate([z["item"] for z in loaded], axis=1) / np.sqrt(k)
v[items_without_interactions(data, train)] *= scale
scores = u @ v.T
if mode == "warm":
    m = evaluate_scores(scores, queries)
else:
    top = topk(mask_seen(scores, queries), 50)
    c = ranking_metrics(top, queries, ks=(50,), relevant=is_cold)
    w = ranking_metrics(top, queries, ks=(50,), relevant=~is_cold)
    rows = [q for q in range(len(queries)) if is_cold[queries.targets_of(q)].any()]
    unseen = data.num_items - np.diff(queries.seen_ptr)[rows]
    rnd = float(np.mean(np.minimum(1.0, 50.0 / unseen)))
    m = {
        "recall@50": c["recall@50"],
        "lift": c["recall@50"] / rnd,
        "cold_share@50": float(is_cold[top].mean()),
        "warm_recall@50": w["recall@50"],
    }
print(
    json.dumps(
        {
            "cold_scale": scale,
            "split": split_name,
            "mode": mode,
            "seed": seed,
            "members": names,
            **{a: round(float(b), 4) for a, b in m.items() if a != "num_queries"},
        }
    )
)
