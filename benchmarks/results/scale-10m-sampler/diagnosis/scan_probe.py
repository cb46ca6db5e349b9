# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Untimed (nice 19): page faults and CPU of one exact scan of shard 0 of the 2-shard 10M bundle
(k 100, one faiss thread), and whether the GIL is released during it (a Python counter thread
advances during the scan). usage: nice -n 19 .venv/bin/python scan_probe.py"""

import os, time, threading, resource, numpy as np
from annfleet.server.index import set_threads, exact_search, ExactPacing

set_threads(1)
v = np.load(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s2-dd4ef732c63a/shard-00/vectors.npy"
    ),
    mmap_mode="r",
)
q = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)


def scan(p=None):
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    t0 = time.perf_counter()
    exact_search(v, q, 100, "ip", p)
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    return f"wall {1e3 * (time.perf_counter() - t0):.0f} ms minflt {r1.ru_minflt - r0.ru_minflt} majflt {r1.ru_majflt - r0.ru_majflt} cpu {1e3 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime):.0f} ms (sys {1e3 * (r1.ru_stime - r0.ru_stime):.0f})"


for i in range(3):
    print("scan", scan(), flush=True)
time.sleep(5)
print("after 5 s idle", scan(), flush=True)
# GIL: does a Python counter advance during one unchunked scan?
n = [0]
stop = [False]


def count():
    while not stop[0]:
        n[0] += 1


t = threading.Thread(target=count)
t.start()
time.sleep(0.2)
a = n[0]
t0 = time.perf_counter()
exact_search(v, q, 100, "ip")
dt = time.perf_counter() - t0
b = n[0]
time.sleep(dt)
c = n[0]
stop[0] = True
t.join()
print(f"counter during a scan {b - a} vs the same time after {c - b}", flush=True)
