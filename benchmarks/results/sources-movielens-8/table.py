"""Tables of sources-movielens-8 from each run's results.json: per round and per build.

python table.py ab1 ab2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

per_build: dict[str, list[tuple[float, float, float]]] = {}
for run_dir in sys.argv[1:]:
    runs = sorted(
        Path(run_dir).glob("*/results.json"), key=lambda p: json.loads(p.read_text())["date"]
    )
    print(f"\n**[{Path(run_dir).name}]({Path(run_dir).name}/)**\n")
    print(
        "| run | build | ended (UTC) | hang-content p50 (ms) | p99 (ms) | p99 ≤ 22 ms "
        "| all / ann-only p50 (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in runs:
        d = json.loads(path.read_text())
        rows = {r["variant"]: r for r in d["rows"]}
        hang, all_, ann = rows["hang-content"], rows["all"], rows["ann-only"]
        p99 = hang["p99_ms"]
        ok = "yes" if p99 <= 22 else f"no (+{p99 - 22:.2f})"
        ratio = all_["p50_ms"] / ann["p50_ms"]
        name = d["name"]
        build = name.split("-")[0]
        per_build.setdefault(build, []).append((p99, hang["p50_ms"], ratio))
        print(
            f"| [{name}]({Path(run_dir).name}/{name}/README.md) | `{d['git_revision']}` | "
            f"{d['date'][11:19]} | {hang['p50_ms']:.2f} | **{p99:.2f}** | {ok} | "
            f"{all_['p50_ms']:.2f} / {ann['p50_ms']:.2f} = {ratio:.3f} |"
        )
print(
    "\n| build | hang-content p99 by round (ms) | median p99 | p99 ≤ 22 ms | median p50 "
    "| all / ann-only p50: median (range) |"
)
print("| --- | --- | --- | --- | --- | --- |")
for build, vals in per_build.items():
    p99s = [v[0] for v in vals]
    ratios = [v[2] for v in vals]
    met = sum(p <= 22 for p in p99s)
    print(
        f"| {build} | {', '.join(f'{p:.2f}' for p in p99s)} | {np.median(p99s):.2f} | "
        f"**{met} of {len(p99s)}** | {np.median([v[1] for v in vals]):.2f} | "
        f"{np.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
    )
