# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""CPU per query of each server process and thread under an open-loop load (not timed: run
at nice 19), the mean shard batch (router requests / shard Search RPCs), optionally py-spy
profiles of the router and shard-00 over the load.

usage: [BUNDLE=dir] [NPROBE=32] [RERANK=1000] load_cpu.py RATE|cN SECONDS [CONFIG.yaml|default] [spy]

Copied from ../../scale-10m-open-loop-3/diagnosis/load_cpu.py; the bundle and the operating
point are taken from the environment (default: the 4-shard bundle at nprobe 32 / rerank 1000).
"""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from annfleet.benchmarks import datasets
from annfleet.benchmarks.load import LoadSpec, run_load
from annfleet.cluster import LocalCluster
from annfleet.config import load_config

B = Path(
    os.path.expanduser(
        os.environ.get(
            "BUNDLE",
            "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s4-60c88f63bb49",
        )
    )
)
NPROBE = int(os.environ.get("NPROBE", "32"))
RERANK = int(os.environ.get("RERANK", "1000"))
TCK = os.sysconf("SC_CLK_TCK")
SPY = str(Path(sys.executable).parent / "py-spy")
OUT = Path("/tmp/tenm2")


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
            name = st[st.index("(") + 1 : st.rindex(")")]
            f = st[st.rindex(")") + 2 :].split()
            out[t] = (name, (int(f[11]) + int(f[12])) / TCK)
        except OSError:
            pass
    return out


def search_calls(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    n = 0.0
    for line in text.splitlines():
        if line.startswith("annfleet_requests_total") and 'method="Search"' in line:
            n += float(line.rsplit(" ", 1)[1])
    return n


def main():
    closed = sys.argv[1].startswith("c")  # cN: a closed loop of N in flight
    rate, seconds = float(sys.argv[1].lstrip("c")), float(sys.argv[2])
    cfg = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "default" else None
    spy = "spy" in sys.argv[4:]
    perf = "perf" in sys.argv[4:]  # perf record -e cpu-clock (on-CPU samples only)
    tag = (Path(cfg).stem if cfg else "default") + f"-{sys.argv[1]}"
    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.array(ds.queries)
    del ds
    cluster = (
        LocalCluster(B, metrics=True)
        if cfg is None
        else LocalCluster(
            B, load_config(Path(cfg).resolve()), metrics=True, config_path=Path(cfg).resolve()
        )
    ).start()
    try:
        pids = dict(cluster.pids)
        shard_ports = {
            c.name: c.metrics_port for c in cluster.children if c.name.startswith("shard")
        }
        spec = LoadSpec(
            target=cluster.router_target,
            rpc="search",
            mode="closed" if closed else "open",
            concurrency=int(rate) if closed else 512,
            qps=0 if closed else rate,
            duration=20,
            warmup=3,
            k=1000,
            nprobe=NPROBE,
            rerank=RERANK,
            timeout=1.0,
        )
        run_load(spec, queries, None, pids)  # warm: page in the mmaps, fill running means
        import dataclasses

        spec = dataclasses.replace(spec, duration=seconds)
        start_at = time.time() + 3.0
        procs = []
        if perf:

            def spawn_perf():
                time.sleep(max(0.0, start_at + spec.warmup - time.time()))
                for name in ("router", "shard-00"):
                    procs.append(
                        subprocess.Popen(
                            [
                                "nice",
                                "-n",
                                "19",
                                "perf",
                                "record",
                                "-e",
                                "cpu-clock",
                                "-F",
                                "997",
                                "-g",
                                "-p",
                                str(pids[name]),
                                "-o",
                                str(OUT / f"{tag}-{name}.perf"),
                                "--",
                                "sleep",
                                str(int(seconds)),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                        )
                    )

            import threading

            threading.Thread(target=spawn_perf, daemon=True).start()
        if spy:

            def spawn():
                time.sleep(max(0.0, start_at + spec.warmup - time.time()))
                for name in ("router", "shard-00"):
                    procs.append(
                        subprocess.Popen(
                            [
                                "nice",
                                "-n",
                                "19",
                                SPY,
                                "record",
                                "--pid",
                                str(pids[name]),
                                "--duration",
                                str(int(seconds)),
                                "--rate",
                                "200",
                                "--nonblocking",
                                "--format",
                                "raw",
                                "--output",
                                str(OUT / f"{tag}-{name}.txt"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                        )
                    )

            import threading

            threading.Thread(target=spawn, daemon=True).start()
        snap = {}

        def snapshots():
            for key, at in (("0", start_at + spec.warmup), ("1", start_at + spec.warmup + seconds)):
                time.sleep(max(0.0, at - time.time()))
                snap["t" + key] = {k: threads(p) for k, p in pids.items()}
                snap["c" + key] = {s: search_calls(p) for s, p in shard_ports.items()}

        import threading

        snapper = threading.Thread(target=snapshots, daemon=True)
        snapper.start()
        res = run_load(spec, queries, None, pids, start_at)
        snapper.join()
        before, after, c0, c1 = snap["t0"], snap["t1"], snap["c0"], snap["c1"]
        for p in procs:
            p.wait()
        keys = {
            k: res[k]
            for k in res
            if k in ("achieved_qps", "p50_ms", "p95_ms", "p99_ms", "errors", "ok", "sent_in_window")
        }
        print(f"== {tag}: {keys}")
        n = (
            res["ok"] if closed else res["sent_in_window"]
        ) or 1  # the snapshots bracket the window
        print(
            f"  requests sent {n}; shard Search RPCs {[c1[s] - c0[s] for s in sorted(c1)]}; "
            f"mean batch {n / max(1.0, np.mean([c1[s] - c0[s] for s in c1])):.2f}"
        )
        tot = 0
        for k in pids:
            per = {}
            for t, (name, s) in after[k].items():
                per[name] = per.get(name, 0) + s - before[k].get(t, (name, 0))[1]
            c = sum(per.values())
            tot += c
            print(
                f"  {k}: {1e3 * c / n:.2f} ms/q ",
                {
                    a: round(1e3 * b / n, 2)
                    for a, b in sorted(per.items(), key=lambda x: -x[1])
                    if b > 0
                },
            )
        print(f"  servers total {1e3 * tot / n:.2f} ms/q", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
