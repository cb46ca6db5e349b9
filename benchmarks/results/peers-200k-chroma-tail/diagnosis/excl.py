# ruff: noqa  (a diagnostic script kept as it was run; see README.md)
# mypy: ignore-errors
import json, sys
from pathlib import Path
import numpy as np

for d in sys.argv[1:]:
    d = Path(d)
    for f in sorted(d.glob("*-ef*.npz")):
        z = np.load(f)
        m = json.loads(f.with_suffix(".json").read_text())["meta"]
        delta = np.diff(z["snaps"], axis=0)
        tt = z["tt"]
        lat = (tt[:, 1] - tt[:, 0]) * 1e3
        nt = len(m)
        shard = [i for i, x in enumerate(m) if x[0].startswith("shard")]
        sc = delta[:, shard, 0].sum(1) / 1e6
        hot = sc > np.median(sc) * 2.5
        p99 = np.sort(lat)[-10]
        p99x = np.sort(lat[~hot])[-10] if (~hot).sum() > 100 else float("nan")
        rank = np.argsort(np.argsort(-lat))
        print(
            f"{d.name}/{f.stem}: p50 {np.median(lat):.2f} p99 {p99:.2f} | hot(sampling) reqs {hot.sum()} in top10 {(rank[hot] < 10).sum()} | p99 without them {p99x:.2f}"
        )
