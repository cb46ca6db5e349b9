"""member.py '<json overrides>' SPLIT MODE SEED J: train ONE ensemble member on VALIDATION, save
its vectors (round 7: copied from round6/validation/member.py; the queries' recent items are
``recent_len`` long, as the tower is trained; vectors go to VECS, default /tmp/tune7-vecs, not
committed).

The code path of `annfleet eval --validation` (evaluate_split / cold_start_eval), one member at
a time: member J of the ensemble of eval seed SEED is a one-member two-tower seeded
SEED + 1000 * J (TwoTowerConfig.member_seed), so saved members combine (score.py) into exactly
the ensemble `members=K` would train. MODE: warm (the split's train set, its queries) or cold
(the cold-start protocol: 5% of the items, chosen by SEED, held out of training entirely and
served from content). One torch thread. Writes VECS/<name>.npz (user vectors, served item
vectors) and appends one line to members.jsonl (config, seconds).
"""

import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from annfleet.model.data import Split, cold_items, load_movielens, make_split
from annfleet.model.evaluate import COLD_FRACTION
from annfleet.model.features import build_queries
from annfleet.model.two_tower import (
    TwoTowerConfig,
    served_item_vectors,
    train_two_tower,
    user_vectors,
)

torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
here = Path(__file__).parent
vecs = Path(os.environ.get("VECS", "/tmp/tune7-vecs"))
ov = json.loads(sys.argv[1])
split_name, mode, seed, j = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tag = "_".join(f"{k}={v}" for k, v in sorted(ov.items())) or "default"
name = f"{split_name}-{mode}-s{seed}-m{j}-{tag}"
t0 = time.time()
data = load_movielens()
split = make_split(data, split_name, validation=True)
train = split.train
if mode == "cold":
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold_items(data, COLD_FRACTION, seed)] = True
    train = split.train & ~is_cold[data.inter_item]
cfg = replace(TwoTowerConfig(), **ov, members=1, seed=TwoTowerConfig(seed=seed).member_seed(j))
queries = build_queries(data, Split(split.name, train, split.test), cfg.recent_len)
t1 = time.process_time()
model = train_two_tower(data, train, cfg, progress=False)
cpu = time.process_time() - t1
ivecs = served_item_vectors(model, data, train)
uvecs = user_vectors(model, queries.user, queries.recent, queries.time)
vecs.mkdir(exist_ok=True)
np.savez(vecs / f"{name}.npz", user=uvecs, item=ivecs)
line = json.dumps(
    {
        "name": name,
        "config": ov,
        "split": split_name,
        "mode": mode,
        "seed": seed,
        "member": j,
        "train_cpu_s": round(cpu),
        "wall_s": round(time.time() - t0),
    }
)
print(line)
with open(here / "members.jsonl", "a") as f:
    f.write(line + "\n")
