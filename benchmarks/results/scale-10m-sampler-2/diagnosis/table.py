"""Summary row and per-step table of each run directory (results.json), as markdown.

usage: table.py RUN_DIR...
"""

import json
import sys
from pathlib import Path

for d in map(Path, sys.argv[1:]):
    r = json.loads((d / "results.json").read_text())
    ol = r["open_loop"]
    best = ol["max_sustained_step"] or {}
    pt = ol["point"]
    rec = ol["target"]["recall"]
    broken = [s for s in ol["steps"] if not s["slo_met"]]
    first = min(broken, key=lambda s: s["offered_qps"]) if broken else None
    cap = ol["inprocess"]
    print(
        f"| {d.name} | {r['git_revision']} | {len(r['memory_per_shard'])} | "
        f"{pt.get('nprobe')} / {pt.get('rerank')} ({rec:.3f}) | {cap['capacity_qps']:.0f} q/s "
        f"({cap['cpu_ms_per_query']:.1f} ms) | **{ol['max_sustained_qps']:.1f}/s** "
        f"({best.get('p50_ms', float('nan')):.1f} / {best.get('p95_ms', float('nan')):.1f} / "
        f"{best.get('p99_ms', float('nan')):.1f}) | **{ol['ratio_to_inprocess']:.2f} ×** | "
        + (
            f"{first['offered_qps']:.1f}/s: {first['breaches']}, {first['server_cores']:.2f} cores"
            if first
            else "–"
        )
        + f" | {ol['cluster_cpu_ms_per_query']:.1f} ms | "
        f"{'met' if ol['target']['met'] else 'not met'} | "
        f"{r['uptime']['before'].split('average: ')[1]} → "
        f"{r['uptime']['after'].split('average: ')[1]} |"
    )
print()
for d in map(Path, sys.argv[1:]):
    r = json.loads((d / "results.json").read_text())
    ol = r["open_loop"]
    print(f"{d.name}:\n")
    print(
        "| phase | offered req/s | p50 / p95 / p99 / p99.9 ms | errors | servers' cores "
        "| CPU/query | SLO |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in ol["steps"]:
        err = json.dumps(s["errors"]) if s["errors"] else ""
        print(
            f"| {s['phase']} | {s['offered_qps']:.1f} | {s['p50_ms']:.1f} / {s['p95_ms']:.1f} / "
            f"{s['p99_ms']:.1f} / {s['p999_ms']:.1f} | {err} | {s['server_cores']:.2f} | "
            f"{s['server_cpu_ms_per_query']:.1f} ms | "
            + ("held" if s["slo_met"] else f"broken: {s['breaches']}")
            + " |"
        )
    print()
