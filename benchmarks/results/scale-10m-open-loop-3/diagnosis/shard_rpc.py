# ruff: noqa  (a diagnostic script kept as it was run; see ../README.md)
# mypy: ignore-errors
"""One 10M bundle shard (shard 0, 2.5M items) as a server process, asked one batch at a time
over the router's stream transport for k=500, nprobe 32, rerank 1000 (as the router asks
at k=1000): the shard process's CPU per query and per RPC, against the same search in this
process (ShardIndex.search, CPU time). Not timed: run at nice 19.

usage: shard_rpc.py [perf]
"""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from annfleet.arrays import F32, to_bytes
from annfleet.benchmarks import datasets, procstat
from annfleet.bundle import Bundle
from annfleet.cluster import free_port, health_status
from annfleet.router.streams import SearchStreams
from annfleet.server.index import IndexSpec, ShardIndex, set_threads
from annfleet.v1 import common_pb2, shard_pb2

B = Path(
    os.path.expanduser(
        "~/.cache/annfleet/bench/bundles/synthetic-clustered-10000000x64-ivfpq-s4-60c88f63bb49"
    )
)
OUT = Path("/tmp/tenm12")
N = int(os.environ.get("N", "240"))  # queries per batch size


async def rpc_run(target, queries, b, bundle_id):
    channel = grpc.aio.insecure_channel(target)
    streams = SearchStreams(channel, target)
    params = common_pb2.SearchParams(nprobe=32, rerank=1000)
    for i in range(0, N, b):
        q = queries[i : i + b]
        req = shard_pb2.ShardSearchRequest(
            queries=to_bytes(q, F32), dim=q.shape[1], k=500, params=params, bundle_id=bundle_id
        )
        await streams.search(req, 10.0)
    await streams.close()
    await channel.close()


def main():
    perf = "perf" in sys.argv[1:]
    ds = datasets.synthetic(10_000_000, 64, queries=300)
    queries = np.concatenate([np.array(ds.queries)] * (N // 300 + 1))[:N]
    del ds
    bundle = Bundle.open(B, verify=False)
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "annfleet.cli",
            "serve-shard",
            "--bundle",
            str(B),
            "--shard",
            "0",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        while health_status(target, 2.0) != "SERVING":
            time.sleep(0.5)
        info = bundle.shard(0)["index"]
        index = ShardIndex.load(
            bundle.shard_dir(0), bundle.metric, IndexSpec(info["type"], info["params"])
        )
        set_threads(1)
        for _ in range(2):  # page the mmap in, both sides
            asyncio.run(rpc_run(target, queries, 1, bundle.id))
            for i in range(N):
                index.search(queries[i : i + 1], 500, nprobe=32, rerank=1000)
        for b in [int(x) for x in os.environ.get("BATCHES", "1,2,4,8,16").split(",")]:
            pf = None
            if perf and b in (1, 4):
                pf = subprocess.Popen(
                    [
                        "perf",
                        "record",
                        "-e",
                        "cpu-clock",
                        "-F",
                        "1999",
                        "--call-graph",
                        "dwarf,16384",
                        "-p",
                        str(proc.pid),
                        "-o",
                        str(OUT / f"shard-rpc-b{b}.perf"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
                time.sleep(1.0)
            c0 = procstat.cpu_seconds(proc.pid)
            asyncio.run(rpc_run(target, queries, b, bundle.id))
            server = procstat.cpu_seconds(proc.pid) - c0
            if pf:
                pf.send_signal(2)
                pf.wait()
            t0 = time.thread_time()
            for i in range(0, N, b):
                index.search(queries[i : i + b], 500, nprobe=32, rerank=1000)
            local = time.thread_time() - t0
            rpcs = N // b
            print(
                f"batch {b:2d}: shard process {1e3 * server / N:.3f} ms/query, in-process search "
                f"{1e3 * local / N:.3f} ms/query; overhead {1e3 * (server - local) / rpcs:.3f} ms/RPC",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
