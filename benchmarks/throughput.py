"""Target P2: cluster throughput vs in-process faiss at the same recall (>= 0.95).

At the cheapest sweep point where each system reaches the recall target:
- in-process faiss: one batched ``search`` over all queries with every core (faiss's own
  throughput limit on this box), and one query per call on one thread;
- cluster: closed-loop load on ``Retrieval.Search`` (one query per RPC, N in flight, client
  processes on the same box), and the same queries sent as batches of B per RPC — what
  coalescing concurrent queries into one shard RPC would buy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from annfleet.benchmarks.groundtruth import recall_at_k

log = logging.getLogger(__name__)


def _cheapest(
    rows: Sequence[dict[str, Any]], system: str, recall: float, shards: int | None = None
) -> dict[str, Any] | None:
    cands = [
        r
        for r in rows
        if r["system"] == system
        and r["recall"] >= recall
        and (shards is None or r["shards"] == shards)
    ]
    return min(cands, key=lambda r: r["p50_ms"]) if cands else None


def make_throughput(
    recall: float, seconds: float, concurrency: int = 32, processes: int = 1, batch: int = 32
) -> Callable[..., dict[str, Any]]:
    def measure(
        *,
        cluster: Any,
        dataset: Any,
        truth: np.ndarray,
        rows: list[dict[str, Any]],
        cfg: Any,
        data_dir: Any,
    ) -> dict[str, Any]:
        from annfleet.benchmarks.datasets import params_key
        from annfleet.benchmarks.load import LoadSpec, run_load
        from annfleet.benchmarks.systems import InProcessFaiss, _cores
        from annfleet.client import Client
        from annfleet.server.index import set_threads

        shards = len(cluster.shard_targets)
        out: dict[str, Any] = {"recall_target": recall, "k": cfg.k}
        f_row = _cheapest(rows, "faiss", recall)
        r_row = _cheapest(rows, "router", recall, shards)
        if f_row is None or r_row is None:
            out["skipped"] = "no sweep point reached the recall target on both systems"
            return out
        queries = dataset.queries
        cache = (
            data_dir
            / "indexes"
            / f"{dataset.key}-{cfg.index_type}-{params_key(cfg.build_params)}.faiss"
        )
        faiss_sys = InProcessFaiss(
            dataset.ids,
            dataset.vectors,
            dataset.metric,
            cfg.index_type,
            cfg.build_params,
            cache=cache,
        )
        set_threads(_cores())
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            found = faiss_sys.search_batch(queries, cfg.k, f_row["params"])
            n += len(queries)
        batch_qps = n / (time.perf_counter() - t0)
        set_threads(1)
        out["inprocess"] = {
            "params": f_row["params"],
            "recall": f_row["recall"],
            "batch_all_cores_qps": batch_qps,
            "batch_recall": recall_at_k(found, truth, cfg.k),
            "one_query_per_call_1_thread_qps": f_row["qps_single_client"],
        }
        spec = LoadSpec(
            target=cluster.router_target,
            rpc="search",
            mode="closed",
            concurrency=concurrency,
            duration=seconds,
            warmup=1.0,
            processes=processes,
            k=cfg.k,
            timeout=2.0,
            **r_row["params"],
        )
        load = run_load(spec, queries, None, dict(cluster.pids))
        out["cluster_closed_loop"] = {
            "params": r_row["params"],
            "recall": r_row["recall"],
            "shards": shards,
            "concurrency": concurrency,
            "processes": processes,
            **load,
        }
        # Coalescing: the same queries, B per RPC, sequentially.
        with Client(cluster.router_target, timeout=10.0) as client:
            n, t0 = 0, time.perf_counter()
            got = []
            while time.perf_counter() - t0 < seconds / 2:
                for start in range(0, len(queries), batch):
                    res = client.search(queries[start : start + batch], cfg.k, **r_row["params"])
                    if n < len(queries):
                        got.append(np.asarray(res.ids))
                    n += len(res.ids)
            b_qps = n / (time.perf_counter() - t0)
        found_b = np.concatenate(got)[: len(queries)]
        out["cluster_batched_rpc"] = {
            "batch": batch,
            "qps": b_qps,
            "recall": recall_at_k(found_b, truth[: len(found_b)], cfg.k),
        }
        out["P2_ratio_closed_loop"] = load["achieved_qps"] / batch_qps
        out["P2_ratio_batched_rpc"] = b_qps / batch_qps
        out["P2_met"] = out["P2_ratio_closed_loop"] >= 0.3
        return out

    return measure
