"""What each cold seed holds out on the test split (no training): per split and seed, the
held-out items' test interactions, how many distinct held-out items have one, the share of the
most-watched held-out item, and the held-out items' share of all test interactions.

Usage: python heldout.py SEED... -> heldout.txt lines on stdout.
"""

import sys

import numpy as np

from annfleet.model.data import cold_items, load_movielens, make_split
from annfleet.model.evaluate import COLD_FRACTION

data = load_movielens(None)
titles = getattr(data, "item_title", None)
for split_name in ("global", "per_user"):
    split = make_split(data, split_name)
    te = np.flatnonzero(split.test)
    for seed in map(int, sys.argv[1:]):
        cold = cold_items(data, COLD_FRACTION, seed)
        items = data.inter_item[te]
        hit = np.isin(items, cold)
        ids, counts = np.unique(items[hit], return_counts=True)
        order = np.argsort(-counts)
        top3 = ", ".join(f"{ids[i]}:{counts[i]}" for i in order[:3])
        print(
            f"{split_name} seed {seed}: {hit.sum()} held-out test interactions "
            f"({hit.mean():.3f} of the split's test), {len(ids)} distinct held-out items, "
            f"top item {counts[order[0]] / hit.sum():.2f} of them, top 3 (item:count) {top3}"
        )
