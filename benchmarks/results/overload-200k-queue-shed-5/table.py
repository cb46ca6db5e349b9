"""The README's tables from this directory's results.json files (run from any directory):
python table.py DIR. The second table puts the runs of one name (ROUND/ARM-NAME, e.g.
ab1/base-1s-a, ab1/branch-1s-a) side by side: p99 x unloaded per arm."""

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
    arms = ["base", "branch", "client", "combo"]
    pairs: dict[str, dict[str, float]] = {}
    for _, path, d in sorted(runs, key=lambda r: r[0]):
        arm, name = os.path.basename(os.path.dirname(path)).split("-", 1)
        pairs.setdefault(name, {})[arm] = d["accepted_p99_over_unloaded_p99"]
    print()
    print("| runs | " + " | ".join(arms) + " |")
    print("|" + " --- |" * (len(arms) + 1))
    for name, by_arm in sorted(pairs.items(), key=lambda p: (not p[0].startswith("1s"), p[0])):
        cells = [f"{by_arm[a]:.2f}" if a in by_arm else "" for a in arms]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for deadline in ("1s", "100ms"):
        for arm in arms:
            got = [v[arm] for n, v in pairs.items() if n.startswith(deadline + "-") and arm in v]
            if got:
                met = sum(1 for x in got if x <= 2.0)
                print(f"\n{deadline} {arm}: met {met} of {len(got)}, worst {max(got):.2f}", end="")
    print()


if __name__ == "__main__":
    main(sys.argv[1])
