"""Closed-loop QPS of a server peer (milvus-lite, chroma), measured as the cluster's is.

The cluster's closed loop (``load.run_load``, used by ``--throughput``) keeps N requests in
flight from one client process for a fixed duration after a warm-up, draws queries at random,
counts requests started inside the window, and reads the servers' CPU from ``/proc`` over the
window. A peer's client is a blocking Python library, so here the N in-flight requests are N
threads of this process calling ``System.search`` (the peers' clients are thread-safe);
everything else is the same: 32 in flight, same warm-up and window, same accounting.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from annfleet.benchmarks import procstat, report
from annfleet.benchmarks.systems import System


def closed_loop(
    system: System,
    queries: np.ndarray,
    k: int,
    params: dict[str, int],
    *,
    concurrency: int = 32,
    duration: float = 10.0,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """``concurrency`` threads each send the next query as soon as the last one returns.

    Returns achieved QPS (requests started in the window that succeeded / duration), latency
    percentiles, errors by exception type, and CPU per process over the window (the system's
    server processes and this client process).
    """
    # Apply the parameters once before the threads start (a peer may reload its index).
    system.search(queries[0], k, params)
    start_at = time.perf_counter() + 0.05
    measure_from = start_at + warmup
    end_at = measure_from + duration
    go = threading.Event()

    def slot(seed: int) -> tuple[list[float], Counter[str]]:
        rng = np.random.default_rng(seed)
        lat: list[float] = []
        errors: Counter[str] = Counter()
        go.wait()
        while (t0 := time.perf_counter()) < end_at:
            q = queries[rng.integers(len(queries))]
            try:
                system.search(q, k, params)
            except Exception as exc:  # reported, not fatal, as in the cluster's load
                if t0 >= measure_from:
                    errors[type(exc).__name__] += 1
                continue
            if t0 >= measure_from:
                lat.append(time.perf_counter() - t0)
        return lat, errors

    pids = {**system.pids}
    with ThreadPoolExecutor(concurrency, thread_name_prefix="closed-loop") as pool:
        futures = [pool.submit(slot, i) for i in range(concurrency)]
        time.sleep(max(0.0, start_at - time.perf_counter()))
        go.set()
        time.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu0 = {n: procstat.cpu_seconds(p) for n, p in pids.items()}
        own0, t_window = procstat.own_cpu_seconds(), time.perf_counter()
        time.sleep(max(0.0, end_at - time.perf_counter()))
        cpu1 = {n: procstat.cpu_seconds(p) for n, p in pids.items()}
        own1, window = procstat.own_cpu_seconds(), time.perf_counter() - t_window
        results = [f.result() for f in futures]
    lat = np.concatenate([np.asarray(r[0], dtype=np.float64) for r in results])
    errors: Counter[str] = Counter()
    for _, e in results:
        errors.update(e)
    n_ok, n_err = len(lat), sum(errors.values())
    cpu: dict[str, dict[str, float | str]] = {
        name: {
            "cpu_seconds": round(cpu1[name] - cpu0[name], 2),
            "cores_used": round((cpu1[name] - cpu0[name]) / window, 2),
        }
        for name in pids
    }
    cpu["client"] = {
        "cpu_seconds": round(own1 - own0, 2),
        "cores_used": round((own1 - own0) / window, 2),
        "note": f"the benchmark process ({concurrency} client threads) over the window",
    }
    server_cpu = sum(cpu1[n] - cpu0[n] for n in pids)
    return {
        "params": params,
        "concurrency": concurrency,
        "duration": duration,
        "warmup": warmup,
        "achieved_qps": n_ok / duration,
        "ok": n_ok,
        "errors": dict(errors),
        "error_rate": n_err / max(1, n_ok + n_err),
        **report.percentiles(lat),
        "server_cpu_ms_per_query": server_cpu / n_ok * 1e3 if n_ok else float("nan"),
        "cpu": cpu,
    }
