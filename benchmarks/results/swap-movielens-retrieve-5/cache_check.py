"""The cache check of swap-movielens-retrieve-5: python cache_check.py WARM_USERS TOWER_THREADS."""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from annfleet.auth import metadata
from annfleet.benchmarks.swap import _delta, cache_lookups
from annfleet.client import Client
from annfleet.cluster import LocalCluster
from annfleet.config import load_config
from annfleet.v1 import admin_pb2, admin_pb2_grpc

B = Path("/work/wt/swap9/.bench")
warm = int(sys.argv[1])
threads = int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="swap9-hits-"))
(work / "token").write_text("t0k\n")
cfg = work / "c.yaml"
cfg.write_text(
    json.dumps(
        {
            "data_dir": str(work / "data"),
            "admin": {"token_file": str(work / "token"), "token_env": ""},
            "router": {
                "release_grace_s": 600.0,
                "admission": "fixed",
                "rollout_warm_users": warm,
                "tower_threads": threads,
            },
        }
    )
)
with LocalCluster(
    B / "ml-v0",
    load_config(cfg),
    config_path=cfg,
    rollout_state=work / "data" / "rollout.json",
    metrics=True,
) as cl:
    c = Client(cl.router_target, timeout=10.0, retries=0)
    users = range(1, 301)
    for u in users:
        c.retrieve(u, 100)
    l0 = cache_lookups(cl.router.metrics_port)
    stub = admin_pb2_grpc.RouterAdminStub(grpc.insecure_channel(cl.router_admin_target))
    prog = list(
        stub.Rollout(
            admin_pb2.RolloutRequest(bundle=str(B / "ml-v1"), holder="x"),
            metadata=metadata("t0k"),
            timeout=60,
        )
    )
    print([p.message for p in prog if p.phase == admin_pb2.PHASE_ROUTER_LOAD])
    l1 = cache_lookups(cl.router.metrics_port)
    lat = []
    for u in users:
        s = time.perf_counter()
        r = c.retrieve(u, 100)
        lat.append((time.perf_counter() - s) * 1e3)
    l2 = cache_lookups(cl.router.metrics_port)
    median, p90 = statistics.median(lat), sorted(lat)[int(0.9 * len(lat))]
    print(
        f"warm={warm} threads={threads}: after flip lookups {_delta(l2, l1)}; "
        f"sequential latency median {median:.2f} ms, p90 {p90:.2f}"
    )
    c.close()
