# ruff: noqa  (a diagnostic script kept as it was run; see README.md)
# mypy: ignore-errors
"""Tables for the A/B: per run, router (2 shards) / Chroma at recall 0.90 and >= 0.96 (each at
its cheapest point reaching it, p50 and p99 separately); per pair, branch/base router p99 per
efSearch point; medians."""

import json, sys
from pathlib import Path
import numpy as np

root = Path(sys.argv[1])
runs = sorted([p for p in root.iterdir() if (p / "results.json").is_file()], key=lambda p: p.name)


def load(p):
    r = json.loads((p / "results.json").read_text())
    rows = {}
    for row in r["rows"]:
        sys_ = (
            "router"
            if row["series"].startswith("router")
            else "chroma"
            if row["series"].startswith("chroma")
            else None
        )
        if sys_:
            rows.setdefault(sys_, []).append(
                (row["params"]["ef_search"], row["recall"], row["p50_ms"], row["p99_ms"])
            )
    return r, rows


def cheapest(points, level, col):
    vals = [(pt[col], pt[0]) for pt in points if pt[1] >= level - 1e-9]
    return min(vals) if vals else (float("nan"), None)


res = {}
print("| run | rev | recall | router p50 / p99 ms | Chroma p50 / p99 ms | p50 ratio | p99 ratio |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for p in runs:
    r, rows = load(p)
    res[p.name] = rows
    for lv, label in ((0.90, "0.90"), (0.96, "0.91–0.96")):
        a50, e1 = cheapest(rows["router"], lv, 2)
        a99, e2 = cheapest(rows["router"], lv, 3)
        c50, e3 = cheapest(rows["chroma"], lv, 2)
        c99, e4 = cheapest(rows["chroma"], lv, 3)
        print(
            f"| {p.name} | {r['git_revision'][:8]} | {label} | {a50:.2f} (ef {e1}) / {a99:.2f} (ef {e2}) | {c50:.2f} (ef {e3}) / {c99:.2f} (ef {e4}) | {a50 / c50:.2f} | {a99 / c99:.2f} |"
        )
print()
for kind in sorted({n.rsplit("-", 1)[0] for n in res}):
    r99 = [pt[3] for n, rows in res.items() if n.startswith(kind) for pt in rows["router"]]
    r50 = [pt[2] for n, rows in res.items() if n.startswith(kind) for pt in rows["router"]]
    c99 = [pt[3] for n, rows in res.items() if n.startswith(kind) for pt in rows["chroma"]]
    c50 = [pt[2] for n, rows in res.items() if n.startswith(kind) for pt in rows["chroma"]]
    print(
        f"{kind}: router p50 median {np.median(r50):.2f} p99 median {np.median(r99):.2f} (n {len(r99)}) | chroma p50 median {np.median(c50):.2f} p99 median {np.median(c99):.2f}"
    )
