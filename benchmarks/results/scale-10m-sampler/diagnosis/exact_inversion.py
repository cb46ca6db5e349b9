# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Why does a niced exact scan still delay searches? Two processes stand in for the two shard
servers of the 2-shard 10M bundle (shard 0 and shard 1, mmap'd as a server does, one faiss
thread): each runs open-loop searches (k 1000, nprobe 56, rerank 2000) at RATE/s on its main
thread and, in a second thread, an exact scan (k 100, the recall sampler's) every PERIOD s in
the MODE under test; a third process burns BURN of a core at nice 0 in 1 ms slices (the
router's share). Latency is measured from each query's scheduled arrival (no coordinated
omission). Timed (hold the bench lock); prints one line per process and mode.

usage: python exact_inversion.py SECONDS RATE MODE[,MODE...]
MODE: none | nice10 | nice0 | idle | chunkN-nice10 | chunkN-nice0 | chunkN-idle (chunks of N rows, paced to a
      duty of DUTY (env, default 0.25) of the scan's wall time)
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s2-dd4ef732c63a"
    )
)
PERIOD = float(os.environ.get("PERIOD", "2.0"))
DUTY = float(os.environ.get("DUTY", "0.25"))


def burner(share):
    end = time.monotonic() + 1e9
    while True:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.001:
            pass
        time.sleep(0.001 * (1 - share) / share)


def shard_proc(shard_no, seconds, rate, mode):
    from annfleet.benchmarks import datasets
    from annfleet.bundle import Bundle
    from annfleet.server.index import ExactPacing, IndexSpec, ShardIndex, set_threads

    set_threads(1)
    bundle = Bundle.open(B, verify=False)
    idx = bundle.shard(shard_no)["index"]
    shard = ShardIndex.load(
        bundle.shard_dir(shard_no), bundle.metric, IndexSpec(idx["type"], idx["params"])
    )
    rng = np.random.default_rng(shard_no)
    queries = rng.standard_normal((300, 64)).astype(np.float32)
    for i in range(100):  # warm
        shard.search(queries[i % 300][None, :], 1000, nprobe=56, rerank=2000)
    stop = threading.Event()
    scans = []

    def exact_loop():
        set_threads(1)
        tid = threading.get_native_id()
        chunk = 0
        if mode.startswith("chunk"):
            chunk = int(mode[5:].split("-")[0])
        if mode.endswith("nice10"):
            os.setpriority(os.PRIO_PROCESS, tid, 10)
        elif mode.endswith("idle"):
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        j = 0
        while not stop.is_set():
            t0, c0 = time.perf_counter(), time.thread_time()
            q = queries[j % 300][None, :]
            if chunk:  # the product's chunked, paced scan (server/index.py)
                shard.exact(q, 100, pacing=ExactPacing(chunk, DUTY))
            else:
                shard.exact(q, 100)
            scans.append((time.perf_counter() - t0, time.thread_time() - c0))
            j += 1
            stop.wait(max(0.5, PERIOD - (time.perf_counter() - t0)))

    if mode != "none":
        t = threading.Thread(target=exact_loop, daemon=True)
        t.start()
    lat = []
    start = time.perf_counter()
    n = int(seconds * rate)
    for i in range(n):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        shard.search(queries[i % 300][None, :], 1000, nprobe=56, rerank=2000)
        lat.append(1e3 * (time.perf_counter() - due))
    stop.set()
    a = np.array(lat)
    w = np.array(scans) if scans else np.zeros((1, 2))
    print(
        f"{mode:>14} shard {shard_no}: n {n} p50 {np.percentile(a, 50):5.1f} p99 {np.percentile(a, 99):6.1f} "
        f"p99.9 {np.percentile(a, 99.9):6.1f} max {a.max():6.1f} ms, >50ms {np.mean(a > 50):.2%}; "
        f"scans {len(scans)} wall p50 {1e3 * np.median(w[:, 0]):.0f} ms CPU p50 {1e3 * np.median(w[:, 1]):.0f} ms",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] == "_shard":
        shard_proc(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        sys.exit()
    if sys.argv[1] == "_burn":
        burner(float(sys.argv[2]))
    seconds, rate, modes = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3].split(",")
    burn = subprocess.Popen([sys.executable, __file__, "_burn", os.environ.get("BURN", "0.4")])
    try:
        for mode in modes:
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "_shard", str(s), str(seconds), str(rate), mode]
                )
                for s in (0, 1)
            ]
            for p in procs:
                p.wait()
    finally:
        burn.kill()
