# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""tail12 driver: one query at a time against a local 2-shard cluster; per request: client
send/recv (monotonic), per-thread schedstat deltas of every cluster process and this one,
client GC pauses. Usage: drive.py OUTDIR [efs] [n] [systems]"""

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
os.environ["TAIL12_OUT"] = str(out)
efs = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "200,800").split(",")]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
SYSTEMS = (sys.argv[4] if len(sys.argv) > 4 else "router,scatter").split(",")
CONFIG = Path(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] else None
from annfleet.benchmarks import datasets
from annfleet.benchmarks.recall_latency import local_cluster
from annfleet.benchmarks.systems import RouterSystem, ScatterSystem

ds = datasets.synthetic(200000, 64)
bundle = (
    Path.home() / ".cache/annfleet/bench/bundles/synthetic-clustered-200000x64-hnsw-s2-7a4b8ba15e3d"
)
cgc = []
_st = []


def _cb(phase, info):
    if phase == "start":
        _st.append(time.monotonic())
    elif _st:
        t0 = _st.pop()
        cgc.append((t0, time.monotonic() - t0, info.get("generation")))


gc.callbacks.append(_cb)


def threads(pids):
    ts = []
    for name, pid in pids.items():
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            except OSError:
                continue
            ts.append(
                (name, int(tid), comm, os.open(f"/proc/{pid}/task/{tid}/schedstat", os.O_RDONLY))
            )
    return ts


_last = {}
STAT = os.open("/proc/stat", os.O_RDONLY)


def snap(ts):
    v = np.empty((len(ts) + 1, 3), np.int64)
    for i, (_, _, _, fd) in enumerate(ts):
        try:
            a = os.pread(fd, 100, 0).split()
            v[i] = _last[fd] = (int(a[0]), int(a[1]), int(a[2]))
        except OSError:
            v[i] = _last.get(fd, (0, 0, 0))
    st = os.pread(STAT, 200, 0).split(b"\n")[0].split()
    v[-1] = (int(st[2]), int(st[3]), int(st[8]))  # nice, system, steal (USER_HZ)
    return v


cfg = str(CONFIG.resolve()) if CONFIG else None
with local_cluster(bundle, 0, CONFIG) as cluster:
    pids = dict(cluster.pids)
    pids["client"] = os.getpid()
    systems = {}
    if "router" in SYSTEMS:
        systems["router"] = RouterSystem(cluster.router_target)
    if "scatter" in SYSTEMS:
        systems["scatter"] = ScatterSystem(list(cluster.shard_targets))
    for sname, system in systems.items():
        for ef in efs:
            p = {"ef_search": ef}
            for q in ds.queries[:20]:
                system.search(q, 100, p)
            ts = threads(pids)  # threads may appear lazily: re-list per point
            meta = [(n, tid, comm) for n, tid, comm, _ in ts]
            snaps = np.empty((N + 1, len(ts) + 1, 3), np.int64)
            tt = np.empty((N, 2))
            gc0 = len(cgc)
            perf = None
            if os.environ.get("TAIL12_PERF") and ef == efs[0]:
                import subprocess

                perf = subprocess.Popen(
                    ["perf", "sched", "record", "-a", "-o", str(out / f"perf-{sname}-ef{ef}.data")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            snaps[0] = snap(ts)
            for i in range(N):
                q = ds.queries[i % len(ds.queries)]
                t0 = time.monotonic()
                system.search(q, 100, p)
                t1 = time.monotonic()
                snaps[i + 1] = snap(ts)
                tt[i] = (t0, t1)
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            for *_, fd in ts:
                os.close(fd)
            tag = f"{sname}-ef{ef}"
            np.savez(out / f"{tag}.npz", snaps=snaps, tt=tt)
            (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "client_gc": cgc[gc0:]}))
            lat = (tt[:, 1] - tt[:, 0]) * 1e3
            print(
                tag,
                "p50 %.2f p99 %.2f max %.2f"
                % (np.percentile(lat, 50), np.sort(lat)[-10], lat.max()),
                flush=True,
            )
    for name, pid in cluster.pids.items():
        os.kill(pid, signal.SIGUSR2)
    time.sleep(1.0)
    (out / "pids.json").write_text(json.dumps(pids))
