"""agree.py SEED TAG [TAG ...]: for each config TAG, the mean per-user Pearson correlation of
member 0's and member 1's scores over the catalogue (validation, per_user warm): how alike
the two members of a pair are (the less alike, the more the pair can gain over them)."""

import os
import sys
from pathlib import Path

import numpy as np

vecs = Path(os.environ.get("VECS", "/tmp/tune7-vecs"))
seed = int(sys.argv[1])
for tag in sys.argv[2:]:
    a, b = (np.load(vecs / f"per_user-warm-s{seed}-m{j}-{tag}.npz") for j in (0, 1))
    sa, sb = a["user"] @ a["item"][1:].T, b["user"] @ b["item"][1:].T
    sa = (sa - sa.mean(1, keepdims=True)) / sa.std(1, keepdims=True)
    sb = (sb - sb.mean(1, keepdims=True)) / sb.std(1, keepdims=True)
    print(f"seed {seed} {tag}: member 0 vs 1 score correlation {float((sa * sb).mean()):.4f}")
