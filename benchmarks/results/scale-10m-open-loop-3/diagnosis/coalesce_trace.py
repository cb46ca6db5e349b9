# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""How the router's coalescer sends batches under an open-loop load: a local 10M cluster's
shards and a second router over them in a child process whose Coalescer counts, per batch
sent, how many batches of its lane were already out and why it left (idle lane / a batch
came back / the slow-batch timer). Not timed: run at nice 19.

usage: coalesce_trace.py RATE SECONDS [REVISION-LABEL]
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s4-60c88f63bb49"
    )
)
OUT = Path("/tmp/tenm12")


def child(port, shards, out):
    import asyncio
    import uvloop
    from annfleet.config import RouterConfig
    from annfleet.router import coalesce
    from annfleet.router.main import start_router

    stats = collections.Counter()
    rows_by = collections.Counter()
    orig_dispatch = coalesce.Coalescer._dispatch
    orig_finished = coalesce.Coalescer._finished
    orig_due = coalesce.Coalescer._dispatch_due
    cause = {"now": "idle"}

    def dispatch(self, key, lane):
        out_before = lane.in_flight
        n = sum(len(w.queries) for w in lane.waiting if not w.future.done())
        orig_dispatch(self, key, lane)
        if lane.in_flight > out_before:
            stats[(cause["now"], out_before)] += 1
            rows_by[(cause["now"], out_before)] += min(n, self.max_rows)

    def finished(self, key, lane, sent):
        cause["now"] = "returned"
        try:
            orig_finished(self, key, lane, sent)
        finally:
            cause["now"] = "idle"

    def due(self, key, lane):
        cause["now"] = "timer" if lane.in_flight else "idle"
        try:
            orig_due(self, key, lane)
        finally:
            cause["now"] = "idle"

    coalesce.Coalescer._dispatch = dispatch
    coalesce.Coalescer._finished = finished
    coalesce.Coalescer._dispatch_due = due

    async def main():
        server = await start_router(
            B, shards.split(","), RouterConfig(recall_sample_rate=0), port=port
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: (stats.clear(), rows_by.clear()))
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        Path(out).write_text(
            json.dumps([[c, o, n, rows_by[(c, o)]] for (c, o), n in sorted(stats.items())])
        )
        await server.stop(0)

    uvloop.run(main())


def main():
    if sys.argv[1] == "child":
        return child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    rate, seconds = float(sys.argv[1]), float(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else "run"
    from annfleet.benchmarks import datasets
    from annfleet.benchmarks.load import LoadSpec, run_load
    from annfleet.cluster import LocalCluster, free_port, health_status

    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.array(ds.queries)
    del ds
    cluster = LocalCluster(B).start()
    try:
        shards = ",".join(ch.target for ch in cluster.children if ch.name.startswith("shard"))
        port = free_port()
        out = str(OUT / f"coalesce-{label}-{rate:g}.json")
        proc = subprocess.Popen([sys.executable, __file__, "child", str(port), shards, out])
        target = f"127.0.0.1:{port}"
        try:
            while health_status(target, 2.0) != "SERVING":
                time.sleep(0.5)
            spec = LoadSpec(
                target=target,
                rpc="search",
                mode="open",
                concurrency=512,
                qps=rate,
                duration=10,
                warmup=2,
                k=1000,
                nprobe=32,
                rerank=1000,
                timeout=1.0,
            )
            run_load(spec, queries, None, {})  # warm
            import dataclasses

            spec = dataclasses.replace(spec, duration=seconds, warmup=0.0)
            proc.send_signal(signal.SIGUSR1)
            res = run_load(spec, queries, None, {})
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    finally:
        cluster.stop()
    print(
        f"== {label} {rate:g}/s: ok {res['ok']}, errors {res['errors']}, p50 {res['p50_ms']:.1f} "
        f"p99 {res['p99_ms']:.1f} ms"
    )
    rows = json.loads(Path(out).read_text())
    total = sum(r[2] for r in rows)
    queries_sent = sum(r[3] for r in rows)
    for c, o, n, q in rows:
        print(
            f"  left because {c:8s} with {o} batch(es) of the lane out: {n:5d} batches "
            f"({100 * n / total:4.1f}%), mean {q / n:.2f} queries"
        )
    print(f"  all: {total} batches, mean {queries_sent / max(1, total):.2f} queries per batch")


if __name__ == "__main__":
    main()
