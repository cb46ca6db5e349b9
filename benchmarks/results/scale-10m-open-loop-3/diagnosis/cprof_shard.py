# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""Where a shard's event-loop thread spends its CPU per request: shard 0 of the 10M bundle
served in a child process under cProfile with a CPU-time clock (time.thread_time: immune
to the box's load), asked BATCH-query requests one at a time over the router's stream
transport (k=500, nprobe 32, rerank 1000). Not timed: run at nice 19.

usage: cprof_shard.py BATCH [N]
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


def child(port, out):
    import uvloop
    from annfleet.server.main import start_shard_server

    prof = cProfile.Profile(time.thread_time)

    async def main():
        server = await start_shard_server(B, 0, port=port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, prof.enable)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        prof.disable()
        prof.dump_stats(out)
        await server.stop(0)

    uvloop.run(main())


async def ask(target, queries, b, bundle_id):
    import grpc
    from annfleet.arrays import F32, to_bytes
    from annfleet.router.streams import SearchStreams
    from annfleet.v1 import common_pb2, shard_pb2

    channel = grpc.aio.insecure_channel(target)
    streams = SearchStreams(channel, target)
    params = common_pb2.SearchParams(nprobe=32, rerank=1000)
    for i in range(0, len(queries) - b + 1, b):
        q = queries[i : i + b]
        req = shard_pb2.ShardSearchRequest(
            queries=to_bytes(q, F32), dim=q.shape[1], k=500, params=params, bundle_id=bundle_id
        )
        await streams.search(req, 30.0)
    await streams.close()
    await channel.close()


def main():
    if sys.argv[1] == "child":
        return child(int(sys.argv[2]), sys.argv[3])
    b = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    from annfleet.benchmarks import datasets
    from annfleet.bundle import Bundle
    from annfleet.cluster import free_port, health_status

    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.array(ds.queries)
    queries = np.concatenate([queries] * (n // 300 + 1))[:n]
    del ds
    bundle = Bundle.open(B, verify=False)
    port = free_port()
    out = str(OUT / f"cprof-shard-b{b}.pstats")
    proc = subprocess.Popen([sys.executable, __file__, "child", str(port), out])
    target = f"127.0.0.1:{port}"
    try:
        while health_status(target, 2.0) != "SERVING":
            time.sleep(0.5)
        asyncio.run(ask(target, queries[:300], 1, bundle.id))  # page in, fill running means
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        asyncio.run(ask(target, queries, b, bundle.id))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    st = pstats.Stats(out)
    total = st.total_tt
    print(
        f"batch {b}: {n // b} requests, loop thread CPU {1e3 * total / (n // b):.3f} ms/request "
        f"({1e3 * total / n:.3f} ms/query; cProfile's own overhead inflates small calls)"
    )
    st.sort_stats("tottime").print_stats(28)
    st.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
