"""Where a cluster query's time goes: faiss on one shard vs RPC floor vs fan-out vs router.

Measured on a running cluster, one query per call, p50 over the same queries:

- ``faiss_one_shard``: ShardIndex.search on shard 0's index loaded in this process, at the
  per-shard k the router asks for (``annfleet.merge.per_shard_k`` under the cluster's
  ``router.topk_probability`` and ``router.oversample``);
- ``rpc_floor``: IndexShard.Search on shard 0 with k=1 and the cheapest params (RPC +
  (de)serialisation + executor hop, almost no faiss);
- ``rpc_one_shard``: IndexShard.Search on shard 0 at the real k and params;
- ``scatter_all``: the client fanning out to every shard and merging;
- ``router``: Retrieval.Search through the router (one more hop + its scatter + merge).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from annfleet.benchmarks import report
from annfleet.merge import per_shard_k


def _p50(fn: Any, queries: np.ndarray, warmup: int = 20) -> dict[str, float]:
    for q in queries[:warmup]:
        fn(q)
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t0)
    p = report.percentiles(lat)
    return {"p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"]}


def breakdown(cluster: Any, queries: np.ndarray, k: int, params: dict[str, int]) -> dict[str, Any]:
    from annfleet.benchmarks.systems import _cores
    from annfleet.bundle import Bundle
    from annfleet.client import Client, ScatterClient
    from annfleet.server.index import IndexSpec, ShardIndex, set_threads

    bundle = Bundle.open(cluster.bundle.path, verify=False)
    shard = bundle.shard(0)
    share = shard["num_items"] / max(1, bundle.manifest.get("num_items", 1))
    router = cluster.config.router  # shard 0 asked for what the cluster's router asks it for
    k_shard = per_shard_k(
        k,
        share,
        shards=bundle.num_shards,
        oversample=router.oversample,
        probability=router.topk_probability,
    )
    spec = IndexSpec(shard["index"]["type"], shard["index"]["params"])
    index = ShardIndex.load(bundle.shard_dir(0), bundle.metric, spec)
    set_threads(1)
    queries = queries[:300]
    cheap = {key: 1 for key in params}
    out: dict[str, Any] = {
        "k": k,
        "k_per_shard": k_shard,
        "params": params,
        "shards": bundle.num_shards,
    }
    out["faiss_one_shard"] = _p50(lambda q: index.search(q[None, :], k_shard, **params), queries)
    one = ScatterClient(cluster.shard_targets[:1], timeout=5.0)
    every = ScatterClient(cluster.shard_targets, timeout=5.0)
    router = Client(cluster.router_target, timeout=5.0)
    try:
        out["rpc_floor"] = _p50(lambda q: one.search(q, 1, **cheap), queries)
        out["rpc_one_shard"] = _p50(lambda q: one.search(q, k_shard, **params), queries)
        out["scatter_all"] = _p50(lambda q: every.search(q, k, **params), queries)
        out["router"] = _p50(lambda q: router.search(q, k, **params), queries)
    finally:
        one.close()
        every.close()
        router.close()
        set_threads(_cores())
    return out


def lines(b: dict[str, Any]) -> list[str]:
    rows = [
        {"stage": name, **b[name]}
        for name in ("faiss_one_shard", "rpc_floor", "rpc_one_shard", "scatter_all", "router")
        if name in b
    ]
    return [
        f"k={b['k']} (per shard {b['k_per_shard']}), {b['params']}, {b['shards']} shards",
        report.format_table(rows, ["stage", "p50_ms", "p99_ms"]),
    ]
