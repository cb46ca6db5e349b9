"""The README's table from this directory's results.json files (run from any directory):
python table.py DIR."""

from __future__ import annotations

import glob
import json
import os
import sys

COLUMNS = [
    "run",
    "revision",
    "start (UTC)",
    "load 1-min before → after",
    "capacity /s",
    "unloaded p99 ms",
    "accepted p99 ms",
    "**p99 × unloaded**",
    "load p99 ×",
    "sent / refused / OK per s",
    "shed on queue time /s",
    "worst second's queue p99 ms",
    "worst second's probe max ms",
    "seconds at limit ≥ 16",
    "RSS growth router / max shard MiB",
]


def row(root: str, path: str, d: dict) -> list[str]:
    phases = {r["phase"]: r for r in d["rows"]}
    un = next(r for p, r in phases.items() if p.startswith("unloaded"))
    ov = next(r for p, r in phases.items() if p.startswith("4x"))
    series = [s for s in d["raw"]["client_throttle_k2"]["series"] if 0 <= s["second"] < 10]
    growth = d["rss_growth_during_overload_mib"]
    shard = max(v for k, v in growth.items() if k.startswith("shard"))
    before, after = (x.split()[0] for x in d["loadavg_before_after"])
    return [
        os.path.relpath(os.path.dirname(path), root),
        f"`{d['git_revision']}`",
        d["date"][11:16],
        f"{before} → {after}",
        f"{d['capacity_qps']:,.0f}",
        f"{un['probe_p99_ms']:.1f}",
        f"{ov['probe_p99_ms']:.1f}",
        f"**{d['accepted_p99_over_unloaded_p99']:.2f}**",
        f"{ov['load_p99_x']:.2f}",
        f"{ov['sent_qps']:.0f} / {ov['refused_qps']:.0f} / {ov['ok_qps']:.0f}",
        f"{ov['queue_shed_qps']:.0f}",
        f"{max((s['queue_p99_ms'] or 0) for s in series):g}",
        f"{max((s['probe_max_ms'] or 0) for s in series):.1f}",
        str(sum(1 for s in series if (s["limit"] or 0) >= 16)),
        f"{growth['router']:+.1f} / {shard:+.1f}",
    ]


def main(root: str) -> None:
    runs = []
    for path in glob.glob(f"{root}/*/*/results.json"):
        with open(path) as f:
            d = json.load(f)
        if d.get("generator") == "client":
            runs.append((d["date"], path, d))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for _, path, d in sorted(runs, key=lambda r: r[0]):
        print("| " + " | ".join(row(root, path, d)) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
