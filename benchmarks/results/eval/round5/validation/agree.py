"""agree.py SPLIT SEED CFG: how much the two members agree on cold vs warm items (saved vectors).

Per user, the Pearson correlation between member 0's and member 1's scores over the held-out
(cold) items and over the others; and the spread (std over items) of each group's pair score.
"""

import sys
from pathlib import Path

import numpy as np

from annfleet.model.data import cold_items, load_movielens

here = Path(__file__).parent
split, seed, cfg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = load_movielens()
cold = cold_items(data, 0.05, seed)
z = [np.load(here / "vecs" / f"{split}-cold-s{seed}-m{j}-{cfg}.npz") for j in (0, 1)]
s0, s1 = z[0]["user"] @ z[0]["item"].T, z[1]["user"] @ z[1]["item"].T
warm = np.setdiff1d(np.arange(1, data.num_items + 1), cold)


def corr(cols: np.ndarray) -> float:
    a, b = s0[:, cols], s1[:, cols]
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


pair = (s0 + s1) / 2
print(
    f"{split} s{seed} {cfg}: member-score correlation cold {corr(cold):.3f} warm {corr(warm):.3f};"
    f" mean score cold m0 {s0[:, cold].mean():.3f} m1 {s1[:, cold].mean():.3f} warm m0"
    f" {s0[:, warm].mean():.3f} m1 {s1[:, warm].mean():.3f}; std of pair score cold"
    f" {pair[:, cold].std(1).mean():.3f} warm {pair[:, warm].std(1).mean():.3f}; of m0 cold"
    f" {s0[:, cold].std(1).mean():.3f} warm {s0[:, warm].std(1).mean():.3f}"
)
