"""baseline.py MODEL [MODEL ...]: validation figures of the baselines (per-user split, seed 0),
the code path of `annfleet eval --validation --models ...`; one torch thread. Prints one JSON
line per call (appended to baselines.jsonl by the caller)."""

import json
import logging
import sys

import torch

from annfleet.model.data import load_movielens
from annfleet.model.evaluate import evaluate_split

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
out = evaluate_split(
    load_movielens(),
    "per_user",
    seed=0,
    validation=True,
    progress=False,
    models=tuple(sys.argv[1:]),
)
print(json.dumps({"split": "per_user", "validation": True, "seed": 0, **out}))
