"""Markdown table of the closed-loop QPS (router vs Chroma) and the P6 ratios of each run."""
import json, sys
from pathlib import Path
rows = []
for d in sys.argv[1:]:
    r = json.loads((Path(d) / "results.json").read_text())
    t = r["throughput"]["cluster_closed_loop"]
    c = r["peer_throughput"]["chroma"]
    cores = sum(v["cores_used"] for k, v in t["cpu"].items() if not k.startswith("client"))
    p6 = r["summary"]["P6_router_vs_peer"]["router (2 shards) vs chroma (peer)"]["levels"]
    l90, l95 = p6.get("0.9", {}), p6.get("0.95", {})
    print(f"| {Path(d).name} | `{r['git_revision']}` | {t['achieved_qps']:.0f} (ef {t['params']['ef_search']}, recall {t['recall']:.3f}, p50 {t['p50_ms']:.1f} / p99 {t['p99_ms']:.1f} ms, servers {cores:.2f} cores) "
          f"| {c['achieved_qps']:.0f} (ef {c['params']['ef_search']}, recall {c['recall']:.3f}, p50 {c['p50_ms']:.1f} / p99 {c['p99_ms']:.1f} ms, {c['server_cpu_ms_per_query']:.2f} ms server CPU/query, {c['cpu']['chroma-server']['cores_used']:.2f} core) "
          f"| **{c['cluster_vs_peer_qps']:.2f}×** | {l90.get('p50_ratio', float('nan')):.2f} / {l90.get('p99_ratio', float('nan')):.2f} | {l95.get('p50_ratio', float('nan')):.2f} / {l95.get('p99_ratio', float('nan')):.2f} |")
