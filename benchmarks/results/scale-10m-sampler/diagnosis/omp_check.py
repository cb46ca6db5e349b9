# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Untimed (nice 19): does one exact scan (nq 1, 5M x 64) run OpenMP workers? Thread CPU vs
process CPU at 2 and at 1 faiss threads. usage: nice -n 19 .venv/bin/python omp_check.py"""

import os, time, threading, numpy as np, faiss, resource
from annfleet.server.index import set_threads, exact_search

v = np.load(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s2-dd4ef732c63a/shard-00/vectors.npy"
    ),
    mmap_mode="r",
)
q = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
for nt in (2, 1):
    set_threads(nt)
    for rep in range(2):
        t0 = time.perf_counter()
        c0 = time.thread_time()
        p0 = time.process_time()
        exact_search(v, q, 100, "ip")
        print(
            nt,
            f"wall {1e3 * (time.perf_counter() - t0):.0f} thread {1e3 * (time.thread_time() - c0):.0f} proc {1e3 * (time.process_time() - p0):.0f} ms threads {threading.active_count()} os-threads {len(os.listdir('/proc/self/task'))}",
            flush=True,
        )
