"""`annfleet eval --json --no-progress --threads 1 --split SPLIT --seeds S --cold-seeds S
--models cold_start` with ``TwoTowerConfig(cold_loss=0.05)`` (the CLI has no flag for it):
the same ``run_eval`` call as ``annfleet eval``, only the config differs.

Usage: python coldloss.py SPLIT SEED CACHE_DIR  -> the JSON list on stdout.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from annfleet.model.evaluate import run_eval
from annfleet.model.two_tower import TwoTowerConfig

split, seed, cache = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
res = run_eval(
    splits=(split,),
    seeds=(seed,),
    config=replace(TwoTowerConfig(), cold_loss=0.05),
    cache_dir=cache,
    progress=False,
    cold_seeds=(seed,),
    threads=1,
    models=("cold_start",),
)
print(json.dumps(res, indent=2))
