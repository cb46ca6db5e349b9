"""summary.py [DIR]: the test figures of a round (per_user-s{0,1,2}.json, global-s0.json,
per_user-s0-cold.json in DIR, default here) as text: per-seed and mean ± std (population
std, as `annfleet eval`), ratios to popularity 0.205 and MF-BPR 0.370 / 0.117."""

import json
import sys
from pathlib import Path

import numpy as np

d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
files = [d / f"per_user-s{s}.json" for s in (0, 1, 2)]
pu = [json.loads(f.read_text()) for f in files if f.stat().st_size]
for key in ("recall@10", "recall@50", "recall@100", "ndcg@50"):
    v = np.array([r["two_tower"][key] for r in pu])
    print(f"per_user {key}: {' / '.join(f'{x:.4f}' for x in v)} -> {v.mean():.4f} ± {v.std():.4f}")
print("ANN recall@100:", [r["two_tower_ann"]["ann_recall@100"] for r in pu])
r50 = np.mean([r["two_tower"]["recall@50"] for r in pu])
r10 = np.mean([r["two_tower"]["recall@10"] for r in pu])
print(f"R@50 / popularity 0.205 = {r50 / 0.205:.3f}x; / MF-BPR 0.370 = {r50 / 0.370:.3f}x")
print(f"R@10 / MF-BPR 0.117 = {r10 / 0.117:.3f}x")
for name in ("global-s0.json", "per_user-s0-cold.json"):
    p = d / name
    if p.exists() and p.stat().st_size:
        r = json.loads(p.read_text())
        print(name, {k: r[k] for k in ("two_tower", "two_tower_ann", "cold_start") if k in r})
