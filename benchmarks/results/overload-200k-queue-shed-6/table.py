"""The README's tables from this directory's results.json files: python table.py DIR.
Runs are DIR/HOLD/ARM-NAME (ARM: k2, k1.1, ... = main's build at that --throttle-k; bk2,
bk1.1, ... = the branch's build with --unloaded-duration 30). The second table puts the runs
of one HOLD/NAME side by side: p99 x unloaded per arm (for the bk arms the old 10 s
unloaded figure, then the 30 s one)."""

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
    "unloaded p99 ms (10 s / 30 s)",
    "accepted p99 ms",
    "**p99 × unloaded** (10 s / 30 s)",
    "load p99 ×",
    "sent / refused / OK per s",
    "throttled /s",
    "shed fraction (refused / sent)",
    "shed on queue time /s",
    "worst second's queue p99 ms",
    "worst second's probe max ms",
    "RSS growth router / max shard MiB",
]


def ratios(d: dict) -> tuple[float, float | None]:
    """(p99 x unloaded over the first 10 s of the unloaded phase, over all of it or None)."""
    if "accepted_p99_over_unloaded_first_window_p99" in d:
        first = d["accepted_p99_over_unloaded_first_window_p99"]
        whole = d["accepted_p99_over_unloaded_p99"]
        return first, whole if d["raw"]["unloaded"]["spec"]["duration"] > 10 else None
    return d["accepted_p99_over_unloaded_p99"], None


def row(root: str, path: str, d: dict) -> list[str]:
    phases = {r["phase"]: r for r in d["rows"]}
    un = next(r for p, r in phases.items() if p.startswith("unloaded"))
    ov = next(r for p, r in phases.items() if p.startswith("4x"))
    k = d["throttle_k"][0]
    series = [s for s in d["raw"][f"client_throttle_k{k:g}"]["series"] if 0 <= s["second"] < 10]
    growth = d["rss_growth_during_overload_mib"]
    shard = max(v for k, v in growth.items() if k.startswith("shard"))
    before, after = (x.split()[0] for x in d["loadavg_before_after"])
    first, whole = ratios(d)
    if whole is None:
        unloaded = f"{un['probe_p99_ms']:.1f}"
        ratio = f"**{first:.2f}**"
    else:
        unloaded = f"{d['unloaded_first_window']['p99_ms']:.1f} / {un['probe_p99_ms']:.1f}"
        ratio = f"**{first:.2f} / {whole:.2f}**"
    sent = ov["sent_qps"]
    return [
        os.path.relpath(os.path.dirname(path), root),
        f"`{d['git_revision']}`",
        d["date"][11:16],
        f"{before} → {after}",
        f"{d['capacity_qps']:,.0f}",
        unloaded,
        f"{ov['probe_p99_ms']:.1f}",
        ratio,
        f"{ov['load_p99_x']:.2f}",
        f"{sent:.0f} / {ov['refused_qps']:.0f} / {ov['ok_qps']:.0f}",
        f"{ov['throttled_qps']:.0f}",
        f"{ov['refused_qps'] / sent:.2f}" if sent else "",
        f"{ov['queue_shed_qps']:.0f}",
        f"{max((s['queue_p99_ms'] or 0) for s in series):g}",
        f"{max((s['probe_max_ms'] or 0) for s in series):.1f}",
        f"{growth['router']:+.1f} / {shard:+.1f}",
    ]


def main(root: str) -> None:
    runs = []
    for path in glob.glob(f"{root}/*/*/results.json"):
        with open(path) as f:
            d = json.load(f)
        if d.get("generator") == "client":
            runs.append((d["date"], path, d))
    runs.sort(key=lambda r: r[0])
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for _, path, d in runs:
        print("| " + " | ".join(row(root, path, d)) + " |")
    arms: list[str] = []
    pairs: dict[str, dict[str, str]] = {}
    tally: dict[tuple[str, str], list[float]] = {}
    for _, path, d in runs:
        hold = os.path.basename(os.path.dirname(os.path.dirname(path)))
        arm, name = os.path.basename(os.path.dirname(path)).split("-", 1)
        if arm not in arms:
            arms.append(arm)
        first, whole = ratios(d)
        cell = f"{first:.2f}" + (f" / {whole:.2f}" if whole is not None else "")
        pairs.setdefault(f"{hold}/{name}", {})[arm] = cell
        deadline = name.split("-")[0]
        tally.setdefault((deadline, arm), []).append(first)
        if whole is not None:
            tally.setdefault((deadline, arm + " (30 s unloaded)"), []).append(whole)
    print()
    print("| runs | " + " | ".join(arms) + " |")
    print("|" + " --- |" * (len(arms) + 1))
    for name, by_arm in pairs.items():
        print(f"| {name} | " + " | ".join(by_arm.get(a, "") for a in arms) + " |")
    print()
    for (deadline, arm), got in sorted(tally.items()):
        met = sum(1 for x in got if x <= 2.0)
        got_s = ", ".join(f"{x:.2f}" for x in got)
        print(f"- {deadline} {arm}: met {met} of {len(got)}, worst {max(got):.2f} ({got_s})")


if __name__ == "__main__":
    main(sys.argv[1])
