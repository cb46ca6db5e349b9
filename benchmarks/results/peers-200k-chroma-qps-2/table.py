"""Markdown rows: closed-loop QPS (router, 2 shards, vs Chroma) and the P6 ratios of each run.

usage: python table.py RUN_DIR...
"""

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    r = json.loads((run / "results.json").read_text())
    t = r["throughput"]["cluster_closed_loop"]
    c = r["peer_throughput"]["chroma"]
    cores = sum(v["cores_used"] for k, v in t["cpu"].items() if not k.startswith("client"))
    p6 = r["summary"]["P6_router_vs_peer"]["router (2 shards) vs chroma (peer)"]["levels"]
    nan = float("nan")
    l90, l95 = p6.get("0.9", {}), p6.get("0.95", {})
    router = (
        f"{t['achieved_qps']:.0f} (ef {t['params']['ef_search']}, recall {t['recall']:.3f}, "
        f"p50 {t['p50_ms']:.1f} / p99 {t['p99_ms']:.1f} ms, servers {cores:.2f} cores)"
    )
    chroma = (
        f"{c['achieved_qps']:.0f} (ef {c['params']['ef_search']}, recall {c['recall']:.3f}, "
        f"p50 {c['p50_ms']:.1f} / p99 {c['p99_ms']:.1f} ms, "
        f"{c['server_cpu_ms_per_query']:.2f} ms server CPU/query, "
        f"{c['cpu']['chroma-server']['cores_used']:.2f} core)"
    )
    return (
        f"| {run.name} | `{r['git_revision']}` | {router} | {chroma} "
        f"| **{c['cluster_vs_peer_qps']:.2f}×** "
        f"| {l90.get('p50_ratio', nan):.2f} / {l90.get('p99_ratio', nan):.2f} "
        f"| {l95.get('p50_ratio', nan):.2f} / {l95.get('p99_ratio', nan):.2f} |"
    )


if __name__ == "__main__":
    for d in sys.argv[1:]:
        print(row(Path(d)))
