# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Where the router's event-loop thread spends its CPU per request: a local 10M cluster's
shards, and a second router over them in a child process under cProfile with a CPU-time
clock (time.thread_time: immune to the box's load); a closed loop of CONCURRENCY searches
(k=1000, nprobe 32, rerank 1000) through the real client. Not timed: run at nice 19.

usage: cprof_router.py CONCURRENCY [N]
"""

import asyncio
import cProfile
import os
import pstats
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
    import uvloop
    from annfleet.config import RouterConfig
    from annfleet.router.main import start_router

    prof = cProfile.Profile(time.thread_time)

    async def main():
        server = await start_router(B, shards.split(","), RouterConfig(), port=port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, prof.enable)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        prof.disable()
        prof.dump_stats(out)
        await server.stop(0)

    uvloop.run(main())


async def ask(target, queries, concurrency):
    from annfleet.client import AsyncClient

    async with AsyncClient(target, timeout=30.0, retries=0) as client:
        it = iter(range(len(queries)))

        async def slot():
            for i in it:
                await client.search(queries[i], 1000, nprobe=32, rerank=1000)

        await asyncio.gather(*(slot() for _ in range(concurrency)))


def main():
    if sys.argv[1] == "child":
        return child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    c = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    from annfleet.benchmarks import datasets
    from annfleet.cluster import LocalCluster, free_port, health_status

    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.array(ds.queries)
    queries = np.concatenate([queries] * (n // 300 + 1))[:n]
    del ds
    cluster = LocalCluster(B).start()
    try:
        shards = ",".join(ch.target for ch in cluster.children if ch.name.startswith("shard"))
        port = free_port()
        out = str(OUT / f"cprof-router-c{c}.pstats")
        proc = subprocess.Popen([sys.executable, __file__, "child", str(port), shards, out])
        target = f"127.0.0.1:{port}"
        try:
            while health_status(target, 2.0) != "SERVING":
                time.sleep(0.5)
            asyncio.run(ask(target, queries[:300], c))
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            asyncio.run(ask(target, queries, c))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    finally:
        cluster.stop()
    st = pstats.Stats(out)
    total = st.total_tt
    print(
        f"concurrency {c}: {n} requests, loop thread CPU {1e3 * total / n:.3f} ms/request "
        "(cProfile's own overhead inflates small calls)"
    )
    st.sort_stats("tottime").print_stats(35)
    st.sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
