"""Swap benchmark: open-loop load at a fixed rate through a local cluster while
`annfleet rollout` swaps to a second bundle and then rolls back.

Synthetic (default): two bundles with disjoint item ids (the second's are the first's +
10^9), so every response is checked for mixing: its ids must all belong to the bundle it
names. ``--bundle-a A --bundle-b B`` swaps between two existing bundles (e.g. two MovieLens
trainings, ``annfleet train --seed 0/1``); their ids are the same catalogue, so mixing is
checked only as far as each response's ids belong to the bundle it names. ``--load
retrieve`` sends Retrieve for the bundle's users (user tower + scatter) instead of Search.
Peak RSS of every shard process is sampled every 50 ms (two bundles are held from prepare
until the release after the rollback). Writes
``benchmarks/results/<name>/README.md`` and ``results.json``: p50/p99 per second, per phase
(before / during the swap / after / after the rollback), the swap and rollback durations.

    python -m annfleet.benchmarks.swap --items 200000 --shards 4 --qps 200 --name swap-200k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from annfleet.auth import metadata
from annfleet.benchmarks.procstat import memory_kib
from annfleet.bundle import Bundle
from annfleet.client import AnnfleetError, Client
from annfleet.cluster import LocalCluster
from annfleet.config import load_config
from annfleet.server.builder import build_bundle
from annfleet.synthetic import make_catalogue
from annfleet.v1 import admin_pb2, admin_pb2_grpc

OFFSET = 1_000_000_000


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    arr = np.asarray(latencies) * 1e3
    return {
        "n": len(arr),
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
    }


def cache_lookups(metrics_port: int | None) -> dict[str, float]:
    """The router's ``annfleet_router_cache_lookups`` counters, as ``{cache}_{result}``."""
    from prometheus_client.parser import text_string_to_metric_families

    if metrics_port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "annfleet_router_cache_lookups_total":
                key = f"{sample.labels['cache']}_{sample.labels['result']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--index", default="flat")
    ap.add_argument("--qps", type=float, default=200.0)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--before-s", type=float, default=10.0)
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--name", default="swap-200k")
    ap.add_argument("--work", default="")
    ap.add_argument("--bundle-a", default="", help="an existing bundle to start on")
    ap.add_argument("--bundle-b", default="", help="an existing bundle to swap to")
    ap.add_argument("--load", choices=["search", "retrieve"], default="search")
    ap.add_argument("--load-nice", type=int, default=None, help="shards.load_nice")
    ap.add_argument(
        "--admission",
        choices=["adaptive", "fixed"],
        default=None,
        help="router.admission (fixed: max_in_flight only, nothing shed at these rates)",
    )
    ap.add_argument("--tower-threads", type=int, default=None, help="router.tower_threads")
    ap.add_argument(
        "--warm-users", type=int, default=None, help="router.rollout_warm_users (0 = off)"
    )
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="annfleet-swap-"))
    work = work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    uptime_before = _uptime()
    bundles = []
    for seed, offset in ((0, 0), (1, OFFSET)):
        given = args.bundle_b if seed else args.bundle_a
        if given:
            bundles.append(Path(given).absolute())
            continue
        path = work / f"bundle-{seed}"
        if not (path / "manifest.json").exists():
            cat = make_catalogue(args.items, args.dim, users=1000, seed=seed)
            build_bundle(
                path,
                cat.ids + offset,
                cat.vectors,
                num_shards=args.shards,
                index_type=args.index,
                index_params={},
                user_ids=cat.user_ids,
                user_vectors=cat.user_vectors,
                progress=False,
            )
        bundles.append(path)
    id_sets = []
    for path in bundles:
        ids = set()
        bundle = Bundle.open(path, verify=False)
        for sid in range(bundle.num_shards):
            ids.update(np.load(bundle.shard_dir(sid) / "ids.npy", allow_pickle=False).tolist())
        id_sets.append(ids)
    opened = [Bundle.open(p, verify=False) for p in bundles]
    bundle_ids = [b.id for b in opened]
    sets = dict(zip(bundle_ids, id_sets, strict=True))
    shards = opened[0].num_shards
    dim = opened[0].dim
    users = None
    if args.load == "retrieve":
        known = opened[0].manifest.get("users")
        users = opened[0].load_array(known["ids"]) if known else np.arange(1, 944)

    token = work / "token"
    token.write_text("swap-bench-token\n")
    # The cluster's processes read their config from a file (LocalCluster passes it on).
    router_keys = {"release_grace_s": 600.0}
    if args.admission is not None:
        router_keys["admission"] = args.admission  # type: ignore[assignment]
    if args.tower_threads is not None:
        router_keys["tower_threads"] = args.tower_threads
    if args.warm_users is not None:
        router_keys["rollout_warm_users"] = args.warm_users
    shard_keys = {} if args.load_nice is None else {"load_nice": args.load_nice}
    config_path = work / "cluster.yaml"
    config_path.write_text(
        json.dumps(
            {
                "data_dir": str(work / "data"),
                "admin": {"token_file": str(token), "token_env": ""},
                "router": router_keys,
                "shards": shard_keys,
            }
        )
    )
    config = load_config(config_path)
    queries = make_catalogue(2000, dim, users=10, seed=7).vectors
    records: list[tuple[float, float, str, str]] = []  # (sent, latency, bundle, error)
    lock = threading.Lock()
    mixed = 0

    with LocalCluster(
        bundles[0],
        config,
        config_path=config_path,
        rollout_state=work / "data" / "rollout.json",
        metrics=True,  # the router's cache counters
    ) as cl:
        client = Client(cl.router_target, timeout=5.0, retries=0)
        client.search(queries[0], args.k)
        shard_pids = [c.pid for c in cl.shards]
        rss_peak = {pid: 0 for pid in shard_pids}
        rss_base = {pid: memory_kib(pid).get("VmRSS", 0) for pid in shard_pids}
        sampling = threading.Event()

        def sample_rss() -> None:
            while not sampling.is_set():
                for pid in shard_pids:
                    rss_peak[pid] = max(rss_peak[pid], memory_kib(pid).get("VmRSS", 0))
                time.sleep(0.05)

        rss_thread = threading.Thread(target=sample_rss, daemon=True)
        rss_thread.start()

        def call(i: int) -> Any:
            if users is not None:
                return client.retrieve(int(users[i % len(users)]), args.k)
            return client.search(queries[i % len(queries)], args.k)

        def one(i: int, sent: float) -> None:
            nonlocal mixed
            try:
                r = call(i)
                latency = time.perf_counter() - sent
                ids = {int(x) for x in np.asarray(r.ids).ravel() if x >= 0}
                bad = bool(ids - sets.get(r.bundle_id, set()))
                with lock:
                    mixed += bad
                    records.append((sent, latency, r.bundle_id, ""))
            except AnnfleetError as exc:
                with lock:
                    records.append((sent, time.perf_counter() - sent, "", exc.code.name))

        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=64)

        def generate() -> None:
            interval, i = 1.0 / args.qps, 0
            start = time.perf_counter()
            while not stop.is_set():
                due = start + i * interval
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                pool.submit(one, i, due)  # open loop: latency counted from the due time
                i += 1

        gen = threading.Thread(target=generate, daemon=True)
        t0 = time.perf_counter()
        gen.start()
        time.sleep(args.before_s)
        channel = grpc.insecure_channel(cl.router_admin_target)
        stub = admin_pb2_grpc.RouterAdminStub(channel)
        auth = metadata("swap-bench-token")
        metrics_port = cl.router.metrics_port
        lookups_before = cache_lookups(metrics_port)
        swap_start = time.perf_counter()
        progress = list(
            stub.Rollout(
                admin_pb2.RolloutRequest(bundle=str(bundles[1]), holder="bench"),
                metadata=auth,
                timeout=600,
            )
        )
        swap_end = time.perf_counter()
        flip_at = swap_start + next(
            p.elapsed_s for p in progress if p.phase == admin_pb2.PHASE_FLIP
        )
        lookups_swap_end = cache_lookups(metrics_port)
        time.sleep(min(1.0, args.after_s))
        lookups_first_s = cache_lookups(metrics_port)
        time.sleep(max(args.after_s - 1.0, 0.0))
        rb_start = time.perf_counter()
        stub.Rollback(admin_pb2.RollbackRequest(), metadata=auth, timeout=30)
        rb_end = time.perf_counter()
        time.sleep(args.after_s)
        stop.set()
        gen.join()
        pool.shutdown(wait=True)
        sampling.set()
        rss_thread.join()
        channel.close()
        client.close()
    uptime_after = _uptime()

    # first request sent after the rollback call returned that was answered by the old bundle
    after_rb = [r for r in records if r[0] >= rb_start]
    first_old = next((r[0] for r in sorted(after_rb) if r[2] == bundle_ids[0]), float("nan"))
    last_new = max((r[0] for r in after_rb if r[2] == bundle_ids[1]), default=rb_start)
    n_new_after_rb = sum(1 for r in after_rb if r[2] == bundle_ids[1])
    phases = {
        "before": [r for r in records if r[0] < swap_start],
        "during_swap": [r for r in records if swap_start <= r[0] < swap_end],
        "after_swap": [r for r in records if swap_end <= r[0] < rb_start],
        "after_rollback": [r for r in records if r[0] >= rb_end],
    }
    # The first second on the new bundle (every user's first request on it), and every
    # request sent from 1 s before the Rollout call to 2 s after the flip, for a look at
    # which requests a swap delays.
    first_second = [r for r in records if flip_at <= r[0] < flip_at + 1.0]
    around_flip = [
        (round(r[0] - flip_at, 4), round(r[1] * 1e3, 2), r[2][:8], r[3])
        for r in sorted(records)
        if swap_start - 1.0 <= r[0] < flip_at + 2.0
    ]
    per_second: list[dict[str, Any]] = []
    for sec in range(int(max(r[0] for r in records) - t0) + 1):
        rows = [r for r in records if t0 + sec <= r[0] < t0 + sec + 1]
        ok = [r[1] for r in rows if not r[3]]
        per_second.append(
            {
                "second": sec,
                **_percentiles(ok),
                "errors": sum(1 for r in rows if r[3]),
                "bundles": sorted({r[2][:8] for r in rows if r[2]}),
            }
        )
    result = {
        "command": "python -m annfleet.benchmarks.swap "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k != "work" and v not in ("", None)
        ),
        "git_revision": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        "shared with other jobs",
        "bundles": bundle_ids,
        "requests": len(records),
        "errors": sum(1 for r in records if r[3]),
        "error_codes": sorted({r[3] for r in records if r[3]}),
        "mixed_responses": mixed,
        "swap_duration_s": swap_end - swap_start,
        "flip_after_s": flip_at - swap_start,
        "rollback_call_s": rb_end - rb_start,
        "load": args.load,
        "bundle_paths": [str(p) for p in bundles],
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "shard_rss_mib": {
            "before": [rss_base[p] / 1024 for p in shard_pids],
            "peak": [rss_peak[p] / 1024 for p in shard_pids],
        },
        "rollback_effective_s": (last_new - rb_start) if after_rb else float("nan"),
        "first_old_after_rollback_s": first_old - rb_start,
        "phases": {
            k: {**_percentiles([r[1] for r in v if not r[3]]), "errors": sum(1 for r in v if r[3])}
            for k, v in phases.items()
        },
        "first_second_after_flip": {
            **_percentiles([r[1] for r in first_second if not r[3]]),
            "errors": sum(1 for r in first_second if r[3]),
        },
        "cache_lookups": {
            "during_swap": _delta(lookups_swap_end, lookups_before),
            "first_second_after_swap": _delta(lookups_first_s, lookups_swap_end),
        },
        "per_second": per_second,
        "around_flip": around_flip,
        "progress": [
            {
                "phase": admin_pb2.RolloutPhase.Name(p.phase),
                "elapsed_s": p.elapsed_s,
                "message": p.message,
            }
            for p in progress
        ],
    }
    out = Path(__file__).parent / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# {args.name}",
        "",
        f"- command: `{result['command']}`",
        f"- git revision: `{result['git_revision']}`, date {result['date']}",
        f"- machine: {result['machine']}",
        (
            f"- catalogue: {args.items} x {args.dim} clustered, {args.shards} shards, index "
            f"{args.index}, k={args.k}; two bundles with disjoint ids"
            if not args.bundle_a
            else f"- bundles: {bundles[0]} -> {bundles[1]} ({shards} shards, dim {dim}, "
            f"k={args.k}; same catalogue ids: mixing checked as ids of the named bundle only)"
        )
        + f"; open-loop {args.load.capitalize()} at {args.qps:g} qps through the router "
        "(latency from each request's due time)",
        f"- uptime before: {uptime_before}",
        f"- uptime after: {uptime_after}",
        "- shard RSS MiB before the swap: "
        + ", ".join(f"{v:.0f}" for v in result["shard_rss_mib"]["before"])
        + "; peak during the run (two bundles held from prepare until the release): "
        + ", ".join(f"{v:.0f}" for v in result["shard_rss_mib"]["peak"]),
        "",
        f"- requests: {result['requests']}, errors: {result['errors']} "
        f"{result['error_codes']}, mixed responses: {mixed}",
        f"- swap (Rollout call, prepare on every shard -> flip -> commit): "
        f"{result['swap_duration_s']:.2f} s, flip at {result['flip_after_s']:.2f} s",
        f"- rollback call: {result['rollback_call_s'] * 1e3:.1f} ms; requests sent after the "
        f"call started answered by the rolled-back bundle: {n_new_after_rb} (the flip is the "
        "first thing the call does; shards are re-committed after it)",
        "",
        "| phase | requests | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for k, v in result["phases"].items():
        lines.append(f"| {k} | {v['n']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['errors']} |")
    first = result["first_second_after_flip"]
    lines.append(
        f"| first second after the flip | {first['n']} | {first['p50_ms']:.2f} | "
        f"{first['p99_ms']:.2f} | {first['errors']} |"
    )
    lookups = result["cache_lookups"]["first_second_after_swap"]
    if lookups:
        hits, misses = lookups.get("embedding_hit", 0), lookups.get("embedding_miss", 0)
        lines += [
            "",
            f"- user-embedding cache in the first second after the swap: {hits:.0f} hits, "
            f"{misses:.0f} misses (router /metrics)",
        ]
    timeline = ", ".join(
        f"{admin_pb2.RolloutPhase.Name(p.phase).removeprefix('PHASE_').lower()} "
        f"{p.elapsed_s * 1e3:.0f}"
        for p in progress
    )
    lines.append(f"- rollout progress, ms after the call: {timeline}")
    lines += [
        "",
        "| second | n | p50 ms | p99 ms | errors | bundles |",
        "|---|---|---|---|---|---|",
    ]
    for row in per_second:
        lines.append(
            f"| {row['second']} | {row['n']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['errors']} | {' '.join(row['bundles'])} |"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
