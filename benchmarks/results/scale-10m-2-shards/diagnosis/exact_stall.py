# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Does a shard's exact scan (the live recall sample, 5M vectors at 2 shards) stall its
searches in the same process? One ShardIndex (shard 0 of the 2-shard bundle); the main thread
searches one query at a time (k 1000, nprobe 56, rerank 2000) for SECONDS, first alone, then
with a second thread at nice +10 running exact(k=1000) in a loop. Prints search latency
percentiles and the exact scan's duration. Not timed: run at nice 19; compare the two phases'
max/p99 with the scan's duration (a scan holding the GIL would stall searches by about that).

usage: nice -n 19 .venv/bin/python exact_stall.py [SECONDS]
"""

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from annfleet.benchmarks import datasets
from annfleet.bundle import Bundle
from annfleet.server.index import IndexSpec, ShardIndex, set_threads

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s2-dd4ef732c63a"
    )
)
set_threads(1)
bundle = Bundle.open(B, verify=False)
idx = bundle.shard(0)["index"]
shard = ShardIndex.load(bundle.shard_dir(0), bundle.metric, IndexSpec(idx["type"], idx["params"]))
ds = datasets.synthetic(10_000_000, 64, queries=300)
queries = np.array(ds.queries)
del ds


def searches(seconds):
    lat, i, t_end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        shard.search(queries[i % len(queries)][None, :], 1000, nprobe=56, rerank=2000)
        lat.append(1e3 * (time.perf_counter() - t0))
        i += 1
    a = np.array(lat)
    return f"n {len(a)} p50 {np.percentile(a, 50):.2f} p99 {np.percentile(a, 99):.2f} max {a.max():.1f} ms"


searches(3.0)  # warm: page in
print("alone:          ", searches(SECONDS), flush=True)
stop, scans = threading.Event(), []


def exact_loop():
    set_threads(1)
    os.setpriority(
        os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + 10
    )
    j = 0
    while not stop.is_set():
        t0, c0 = time.perf_counter(), time.thread_time()
        shard.exact(queries[j % len(queries)][None, :], 1000)
        scans.append((1e3 * (time.perf_counter() - t0), 1e3 * (time.thread_time() - c0)))
        j += 1


t = threading.Thread(target=exact_loop, daemon=True)
t.start()
print("with exact scans:", searches(SECONDS), flush=True)
stop.set()
t.join()
w = np.array(scans)
print(
    f"exact scans: {len(w)}, wall p50 {np.median(w[:, 0]):.0f} ms, CPU p50 {np.median(w[:, 1]):.0f} ms",
    flush=True,
)
