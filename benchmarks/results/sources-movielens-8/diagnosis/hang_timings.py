"""(sources-movielens-7: sources-movielens-6's script, plus the router's measured way in,
``timings_ms["inbound"]``.)

Diagnosis: where a Retrieve's time goes with `content` hanging (the sources bench's
hang-content variant), as the router itself reports it (``timings_ms``) next to what the
client sees. A local cluster on the MovieLens default bundle; open-loop Retrieve at --qps
for --duration s (after 3 s warm-up) from this process (uvloop), latency counted from the
scheduled send time as in `annfleet bench sources`. Optional py-spy of the router.

    python hang_timings.py [--qps 30] [--duration 20] [--spy out.txt] [--variant hang-content]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop
import yaml

from annfleet.benchmarks.sources import variant_configs
from annfleet.bundle import Bundle
from annfleet.cli import default_bundle
from annfleet.client import AsyncClient
from annfleet.cluster import LocalCluster
from annfleet.config import SourcesConfig, load_config


async def drive(target: str, users: np.ndarray, qps: float, duration: float, warmup: float):
    rng = np.random.default_rng(1)
    out: list[tuple[float, float, dict[str, float], dict[str, str]]] = []
    async with AsyncClient(target, timeout=1.0, retries=0, throttle=None) as client:
        start = time.time() + 0.5
        measure_from = start + warmup
        end = measure_from + duration
        interval = 1.0 / qps
        tasks = set()

        async def one(t_sched: float) -> None:
            late = time.time() - t_sched
            r = await client.retrieve(int(users[rng.integers(len(users))]), 100)
            lat = time.time() - t_sched
            if t_sched >= measure_from:
                t = dict(r.timings_ms)
                t["c_late"] = late * 1e3  # the client's own lateness in sending
                out.append((t_sched, lat * 1e3, t, dict(r.dropped_sources)))

        t = start
        while t < end:
            d = t - time.time()
            if d > 0:
                await asyncio.sleep(d)
            task = asyncio.create_task(one(t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            t += interval
        await asyncio.gather(*tasks)
    return out


def pct(values: list[float]) -> str:
    a = np.asarray(values)
    qs = " ".join(f"p{q}={np.percentile(a, q):6.2f}" for q in (50, 90, 95, 99))
    return f"{qs} max={a.max():6.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qps", type=float, default=30)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--variant", default="hang-content")
    ap.add_argument("--spy", help="py-spy record the router into this file (raw)")
    ap.add_argument("--dump", help="write every request's figures (json) here")
    ap.add_argument("--set", action="append", default=[], help="router.key=value overrides")
    args = ap.parse_args()
    bundle = default_bundle(load_config(None))
    opened = Bundle.open(bundle, verify=False)
    users = opened.load_array(opened.manifest["users"]["ids"])
    names = list(SourcesConfig().settings())
    mapping = variant_configs({}, names, "content", 5000.0)[args.variant]
    for kv in args.set:
        key, value = kv.split("=", 1)
        section, name = key.split(".", 1)
        mapping.setdefault(section, {})[name] = yaml.safe_load(value)
    work = Path(tempfile.mkdtemp(prefix="diag-hang-"))
    path = work / "c.yaml"
    path.write_text(yaml.safe_dump({**mapping, "data_dir": str(work / "data")}))
    with LocalCluster(bundle, load_config(path), config_path=path, metrics=True) as cluster:
        spy = None
        if args.spy:
            seconds = str(int(args.duration + args.warmup + 2))
            router_pid = str(cluster.pids["router"])
            command = ["py-spy", "record", "--pid", router_pid, "--rate", "1000", "--format"]
            command += ["raw", "--output", args.spy, "--duration", seconds, "--nonblocking"]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = uvloop.run(drive(cluster.router_target, users, args.qps, args.duration, args.warmup))
        if spy:
            spy.wait()
        import urllib.request

        router = next(c for c in cluster.children if c.name == "router")
        url = f"http://127.0.0.1:{router.metrics_port}/metrics"
        text = urllib.request.urlopen(url).read().decode()
        wanted = ("annfleet_gc_pause_seconds_count", "annfleet_router_reply_margin_seconds ")
        gc_lines = [ln for ln in text.splitlines() if ln.startswith(wanted)]
    print(f"{args.variant}: {len(rows)} requests at {args.qps}/s")
    print("client      ", pct([r[1] for r in rows]))
    keys = sorted({k for r in rows for k in r[2]})
    for k in keys:
        print(f"{k:12s}", pct([r[2].get(k, np.nan) for r in rows]))
    print("client-total", pct([r[1] - r[2]["total"] for r in rows]))
    # what is left outside the router once its measured way in is counted: the reply's way
    # out, the client's parsing and its own sending lateness (c_late), and the way in's
    # rounding (gRPC sends the deadline in whole ms)
    if all("inbound" in r[2] for r in rows):
        print("client-total-inbound", pct([r[1] - r[2]["total"] - r[2]["inbound"] for r in rows]))
        print("inbound+total", pct([r[2]["total"] + r[2]["inbound"] for r in rows]))
    print(
        "total-sources", pct([r[2]["total"] - r[2]["sources"] for r in rows if "sources" in r[2]])
    )
    dropped_names = {d for r in rows for d in r[3]}
    print("dropped", {d: sum(1 for r in rows if d in r[3]) for d in dropped_names})
    print("\n".join(gc_lines))
    if args.dump:
        Path(args.dump).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
