"""posthoc.py SEED NAME [NAME ...]: the ensemble of saved members (as score.py) with a
popularity prior added to every score: u.v + beta * log(1 + train count of the item), for
several beta (a post-hoc probe, not in the model code: it would be one more dimension of the
served vectors). Prints one JSON line per beta (per_user warm, validation)."""

import json
import os
import sys
from pathlib import Path

import numpy as np

from annfleet.model.data import Split, load_movielens, make_split
from annfleet.model.features import build_queries
from annfleet.model.metrics import evaluate_scores

seed, names = int(sys.argv[1]), sys.argv[2:]
data = load_movielens()
split = make_split(data, "per_user", validation=True)
queries = build_queries(data, Split(split.name, split.train, split.test))
vecs = Path(os.environ.get("VECS", "/tmp/tune7-vecs"))
loaded = [np.load(vecs / f"{n}.npz", allow_pickle=False) for n in names]
u = np.concatenate([z["user"] for z in loaded], axis=1) / np.sqrt(len(loaded))
v = np.concatenate([z["item"] for z in loaded], axis=1) / np.sqrt(len(loaded))
counts = np.bincount(data.inter_item[split.train], minlength=data.num_items + 1)
prior = np.log1p(counts).astype(np.float32)
base = u @ v.T
BETAS = [float(b) for b in os.environ.get("BETAS", "-0.01,0,0.005,0.01,0.02,0.04").split(",")]
for beta in BETAS:
    m = evaluate_scores(base + beta * prior[None, :], queries)
    print(
        json.dumps(
            {
                "seed": seed,
                "members": names,
                "pop_beta": beta,
                **{a: round(float(b), 4) for a, b in m.items() if a != "num_queries"},
            }
        )
    )
