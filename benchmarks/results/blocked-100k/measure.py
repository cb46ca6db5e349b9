"""Retrieve latency and the router's CPU per Retrieve through a running local cluster
(MovieLens): 400 Retrieves of k = 100, each with a distinct exclude id (no cache hit).

    python measure.py HOST:PORT N_BLOCKED ROUTER_PID
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from annfleet.client import Client


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def main() -> None:
    target, n_blocked, router_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    users = np.arange(1, 944)
    with Client(target, timeout=10) as client:
        for user in users[:50]:  # warm
            client.retrieve(int(user), 100)
        latencies = []
        cpu0 = cpu_seconds(router_pid)
        for i in range(400):
            start = time.perf_counter()
            result = client.retrieve(int(users[(i * 7) % 943]), 100, exclude=[i])
            latencies.append((time.perf_counter() - start) * 1e3)
        cpu1 = cpu_seconds(router_pid)
    summary = {
        "blocked": n_blocked,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "router_cpu_ms_per_retrieve": round((cpu1 - cpu0) / 400 * 1e3, 2),
        "k": len(result.ids),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
