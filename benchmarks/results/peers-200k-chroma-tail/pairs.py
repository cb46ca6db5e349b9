# ruff: noqa  (a diagnostic script kept as it was run; see README.md)
# mypy: ignore-errors
import json, sys
from pathlib import Path
import numpy as np

root = Path(sys.argv[1])
a, b = sys.argv[2], sys.argv[3]


def pts(p, sysname):
    r = json.loads((p / "results.json").read_text())
    return {
        row["params"]["ef_search"]: (row["p50_ms"], row["p99_ms"])
        for row in r["rows"]
        if row["series"].startswith(sysname)
    }


for sysname in ("router", "chroma"):
    r50, r99 = [], []
    for i in range(1, 5):
        A = pts(root / f"{a}-{i}", sysname)
        B = pts(root / f"{b}-{i}", sysname)
        for ef in A:
            r50.append(A[ef][0] / B[ef][0])
            r99.append(A[ef][1] / B[ef][1])
    print(
        f"{sysname}: {a}/{b} per point (20): p50 median {np.median(r50):.2f} ({min(r50):.2f}-{max(r50):.2f}), p99 median {np.median(r99):.2f} ({min(r99):.2f}-{max(r99):.2f}), p99 lower at {sum(x < 1 for x in r99)} of {len(r99)}"
    )
