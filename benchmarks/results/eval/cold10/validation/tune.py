"""tune.py '<json overrides>' split models seed [out.jsonl]: evaluate_split on VALIDATION.

The code path of `annfleet eval --validation` for one split, seed and set of models, with
TwoTowerConfig overrides; one torch thread. Appends one JSON line per run to out.jsonl.
"""

import json
import logging
import sys
import time
from dataclasses import replace

import torch

from annfleet.model.data import load_movielens
from annfleet.model.evaluate import evaluate_split
from annfleet.model.two_tower import TwoTowerConfig

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
ov = json.loads(sys.argv[1])
split, models, seed = sys.argv[2], tuple(sys.argv[3].split(",")), int(sys.argv[4])
t0 = time.time()
cfg = replace(TwoTowerConfig(), **ov)
data = load_movielens()
res = evaluate_split(
    data, split, seed=seed, config=cfg, validation=True, progress=False, models=models
)
res.update({"_config": ov, "_split": split, "_seed": seed, "_secs": round(time.time() - t0)})
line = json.dumps(res)
print(line)
if len(sys.argv) > 5:
    with open(sys.argv[5], "a") as f:
        f.write(line + "\n")
