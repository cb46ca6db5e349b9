"""test.py '<json overrides>' SPLIT SEED [MODEL ...]: the TEST split, touched once for the
round's chosen config: `annfleet eval --split SPLIT --seeds SEED --models MODEL ...` with
``TwoTowerConfig`` overrides (evaluate_split(..., validation=False)), one torch thread. Prints
one JSON line (the per-seed result as `annfleet eval --json` has it, plus the config)."""

import json
import logging
import sys
from dataclasses import asdict, replace

import torch

from annfleet.model.data import load_movielens
from annfleet.model.evaluate import evaluate_split
from annfleet.model.two_tower import TwoTowerConfig

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
ov = json.loads(sys.argv[1])
split, seed = sys.argv[2], int(sys.argv[3])
models = tuple(sys.argv[4:]) or ("two_tower", "two_tower_ann")
config = replace(TwoTowerConfig(), **ov)
out = evaluate_split(
    load_movielens(),
    split,
    seed=seed,
    config=config,
    validation=False,
    progress=False,
    models=models,
)
print(json.dumps({"split": split, "seed": seed, "overrides": ov, "config": asdict(config), **out}))
