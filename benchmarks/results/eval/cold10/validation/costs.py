"""CPU seconds of one training epoch, cold_loss 0 vs 0.05 (one member, 1 thread)."""

import time
from dataclasses import replace

import numpy as np
import torch

from annfleet.model.data import load_movielens
from annfleet.model.two_tower import TwoTowerConfig, train_two_tower

torch.set_num_threads(1)
d = load_movielens()
everything = np.ones(d.num_interactions, bool)
for cl in (0.0, 0.05, 0.0, 0.05):
    t = time.process_time()
    cfg = replace(TwoTowerConfig(), members=1, epochs=1, cold_loss=cl)
    train_two_tower(d, everything, cfg, progress=False)
    print("cold_loss", cl, "cpu s per epoch %.1f" % (time.process_time() - t), flush=True)
