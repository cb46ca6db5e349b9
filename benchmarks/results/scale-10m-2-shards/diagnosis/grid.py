# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Recall@1000 and in-process CPU per query of a cached 10M bundle over an nprobe x rerank
grid: the bench's own operating-point criterion (`inprocess_capacity`, the servers'
ShardIndex, the router's per-shard k and merge), untimed (CPU time per query does not depend
on the share of the box the run gets; queries/s does, so it is printed but not used).

usage: nice -n 19 .venv/bin/python grid.py SHARDS NLIST NPROBES RERANKS [SECONDS]
"""

import sys
import time

from annfleet.benchmarks import datasets
from annfleet.benchmarks.groundtruth import cached_exact_topk
from annfleet.benchmarks.recall_latency import ensure_bundle
from annfleet.benchmarks.scale import DEFAULT_BUILD, BundleInProcess, inprocess_capacity
from annfleet.config import RouterConfig

shards, nlist = int(sys.argv[1]), int(sys.argv[2])
nprobes = [int(x) for x in sys.argv[3].split(",")]
reranks = [int(x) for x in sys.argv[4].split(",")]
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 4.0
data_dir = datasets.default_data_dir()
ds = datasets.synthetic(10_000_000, 64, queries=300, data_dir=data_dir)
truth = cached_exact_topk(
    data_dir / "groundtruth" / f"{ds.key}-k1000.npy",
    ds.vectors,
    ds.ids,
    ds.queries,
    1000,
    ds.metric,
    progress=False,
)
bundle = ensure_bundle(ds, "ivfpq", {**DEFAULT_BUILD, "nlist": nlist}, shards, data_dir, False)
print("bundle", bundle, flush=True)
index = BundleInProcess(bundle, RouterConfig().oversample)
print("shards nlist nprobe rerank recall cpu_ms_per_query qps(noisy)", flush=True)
for nprobe in nprobes:
    for rerank in reranks:
        t0 = time.time()
        c = inprocess_capacity(
            index, ds.queries, truth, 1000, {"nprobe": nprobe, "rerank": rerank}, seconds
        )
        print(
            shards,
            nlist,
            nprobe,
            rerank,
            f"{c['recall']:.4f}",
            f"{c['cpu_ms_per_query']:.2f}",
            f"{c['capacity_qps']:.0f}",
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
