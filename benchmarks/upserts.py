"""Live item updates: search latency with 0, 1k, 10k, 100k upserted items in the delta, and
upsert throughput, through a local cluster (shard processes, router, admin ports).

Items are upserted the way ``annfleet items upsert`` does it (``admin_cli.upsert``: ids
routed by ``splitmix64(id) mod N``, one Upsert per shard and batch, each logged and fsynced
before it returns). At every delta size, ``--requests`` Search calls are sent one after the
other through the router (k = ``--k``) and their client-side latency recorded; the queries
are drawn from the same clustered distribution as the items, so delta items compete for
the top k.

    python -m annfleet.benchmarks.upserts --bundle DIR --name upserts-200k-hnsw
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.admin_cli import Fleet, upsert
from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.cluster import LocalCluster
from annfleet.config import load_config
from annfleet.synthetic import make_catalogue

NEW_IDS = 2_000_000_000  # upserted ids start here (never in the bundle)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _latency(client: Client, queries: np.ndarray, k: int, n: int) -> dict[str, float]:
    client.search(queries[0], k)  # warm
    times = []
    hits_from_delta = 0
    for i in range(n):
        started = time.perf_counter()
        r = client.search(queries[i % len(queries)], k)
        times.append(time.perf_counter() - started)
        hits_from_delta += int(np.count_nonzero(np.asarray(r.ids) >= NEW_IDS))
    arr = np.asarray(times) * 1e3
    return {
        "n": n,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "delta_hits_per_query": hits_from_delta / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--sizes", default="0,1000,10000,100000")
    ap.add_argument("--batch", type=int, default=1000, help="ids per upsert call (all shards)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--name", default="upserts")
    ap.add_argument("--work", default="")
    args = ap.parse_args()

    bundle = Bundle.open(Path(args.bundle), verify=False)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="annfleet-upserts-"))
    work = work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    token = work / "token"
    token.write_text("upserts-bench-token\n")
    # The cluster's processes read their config from a file (LocalCluster passes it on):
    # update logs go to the work dir, never beside the (shared, cached) bundle.
    config_path = work / "cluster.yaml"
    config_path.write_text(
        json.dumps(
            {
                "data_dir": str(work / "data"),
                "admin": {"token_file": str(token), "token_env": ""},
                "shards": {"updates_dir": str(work / "updates"), "max_delta_items": max(sizes)},
            }
        )
    )
    config = load_config(config_path)
    rng = np.random.default_rng(11)
    # Items and queries from one clustered distribution (seed of the bundle's catalogue
    # unknown here: a fresh one, so delta items sit among the bundle's as new items would).
    cat = make_catalogue(max(sizes) + 2000, bundle.dim, users=10, seed=5)
    vectors = cat.vectors[: max(sizes)]
    queries = cat.vectors[max(sizes) :]
    ids = NEW_IDS + rng.permutation(max(sizes)).astype(np.int64)
    uptime_before = _uptime()
    levels: list[dict[str, Any]] = []
    batches: list[dict[str, float]] = []
    with LocalCluster(
        bundle.path, config, config_path=config_path, rollout_state=work / "data" / "rollout.json"
    ) as cl:
        targets = [s.admin_target for s in cl.shards]
        fleet = Fleet.connect(targets, "upserts-bench-token")
        client = Client(cl.router_target, timeout=10.0, retries=0)
        done = 0
        for size in sizes:
            while done < size:
                end = min(size, done + args.batch)
                started = time.perf_counter()
                tally = upsert(fleet, ids[done:end], vectors[done:end])
                seconds = time.perf_counter() - started
                if tally.failures:
                    raise SystemExit(f"upsert failed: {tally.failures}")
                batches.append({"from": done, "items": end - done, "seconds": seconds})
                done = end
            levels.append({"delta_items": size, **_latency(client, queries, args.k, args.requests)})
            print(levels[-1], flush=True)
        client.close()
        fleet.close()
    uptime_after = _uptime()
    seconds = sum(b["seconds"] for b in batches)
    items = sum(b["items"] for b in batches)
    per_batch = np.asarray([b["seconds"] for b in batches]) * 1e3
    result = {
        "command": "python -m annfleet.benchmarks.upserts "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "work"),
        "git_revision": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        "shared with other jobs",
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "bundle": {"id": bundle.id, "path": str(bundle.path), "num_shards": bundle.num_shards},
        "levels": levels,
        "upsert": {
            "items": items,
            "seconds": seconds,
            "items_per_s": items / seconds if seconds else float("nan"),
            "batch_ms_p50": float(np.percentile(per_batch, 50)) if len(per_batch) else 0.0,
            "batch_ms_p99": float(np.percentile(per_batch, 99)) if len(per_batch) else 0.0,
        },
    }
    out = Path(__file__).parent / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    up: dict[str, float] = result["upsert"]  # type: ignore[assignment]
    lines = [
        f"# {args.name}",
        "",
        f"- command: `{result['command']}`",
        f"- git revision: `{result['git_revision']}`, date {result['date']}",
        f"- machine: {result['machine']}",
        f"- uptime before: {uptime_before}",
        f"- uptime after: {uptime_after}",
        f"- bundle {bundle.id}: {bundle.manifest.get('num_items')} x {bundle.dim}, "
        f"{bundle.num_shards} shards, {bundle.shard(0)['index']['type']}; one replica per shard",
        f"- upserts: {items} items in batches of {args.batch} ids (routed to their shards, "
        f"logged + fsynced per call): {up['items_per_s']:.0f} items/s; per batch p50 "
        f"{up['batch_ms_p50']:.1f} ms, p99 {up['batch_ms_p99']:.1f} ms",
        f"- search: {args.requests} sequential Search calls through the router per level, "
        f"k={args.k}, client-side latency",
        "",
        "| items in the delta (all shards) | p50 ms | p99 ms | mean ms | delta hits per query |",
        "|---|---|---|---|---|",
    ]
    for level in levels:
        lines.append(
            f"| {level['delta_items']} | {level['p50_ms']:.2f} | {level['p99_ms']:.2f} | "
            f"{level['mean_ms']:.2f} | {level['delta_hits_per_query']:.1f} |"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
