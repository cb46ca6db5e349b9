"""`annfleet bench load --overload F`: what the cluster does when offered F x its capacity.

Against a local cluster (one process per shard + router), in four phases of ``--duration``:

1. unloaded: closed loop, one request in flight -> the unloaded p50 / p99;
2. capacity: closed loop at ``--concurrency`` -> the achieved QPS is the capacity (with
   router admission, what the router admits: a shed client backs off 50 ms, as the client
   library's retry would, instead of resending at once);
3. overload: open loop at F x capacity (arrivals on a fixed schedule, latency from the
   scheduled send time, in-flight unbounded on the client) -> accepted p99, shed fraction
   (RESOURCE_EXHAUSTED / requests sent), other errors;
4. the servers' resident memory (VmRSS) before phase 1, after phase 2 and after phase 3.

An open loop is what overload means: a closed loop never offers more than it gets back.
Targets (issue 8): RSS flat, accepted p99 within 2x the unloaded p99.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import procstat, report
from annfleet.benchmarks.load import LoadSpec, run_load


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    return {n: round(procstat.memory_kib(p).get("VmRSS", 0) / 1024, 1) for n, p in pids.items()}


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, int], np.ndarray]]:
    from annfleet.benchmarks import datasets
    from annfleet.benchmarks.recall_latency import ensure_bundle
    from annfleet.cluster import LocalCluster
    from annfleet.config import load_config

    data_dir = args.data_dir or datasets.default_data_dir()
    ds = (
        datasets.from_bundle(args.bundle)
        if args.bundle
        else datasets.synthetic(args.items, args.dim, queries=1000, data_dir=data_dir)
    )
    bundle = args.bundle or ensure_bundle(ds, "hnsw", {}, args.shards, data_dir)
    config_path = Path(args.config).resolve() if args.config else None
    saved = os.environ.get("OMP_NUM_THREADS")
    if args.cluster_omp_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.cluster_omp_threads)
    try:
        cluster = LocalCluster(
            Path(bundle), load_config(config_path), config_path=config_path
        ).start()
    finally:
        if args.cluster_omp_threads > 0:
            os.environ.pop("OMP_NUM_THREADS", None)
            if saved is not None:
                os.environ["OMP_NUM_THREADS"] = saved
    try:
        yield cluster.router_target, dict(cluster.pids), ds.queries
    finally:
        cluster.stop()


def phase_row(name: str, result: dict[str, Any], offered_qps: float | None) -> dict[str, Any]:
    errors = {k: v for k, v in result["errors"].items() if k != "CLIENT_BACKLOG"}
    sent = result["ok"] + sum(errors.values())
    shed = errors.get("RESOURCE_EXHAUSTED", 0)
    return {
        "phase": name,
        "offered_qps": round(offered_qps, 1) if offered_qps else None,
        "sent_qps": round(sent / result["spec"]["duration"], 1),
        "ok_qps": round(result["achieved_qps"], 1),
        "shed_fraction": round(shed / sent, 4) if sent else 0.0,
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "p999_ms": round(result["p999_ms"], 2),
        "errors": errors or "",
        "client_backlog": result["errors"].get("CLIENT_BACKLOG", 0),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with _cluster(args) as (target, pids, queries):
        base = LoadSpec(
            target=target,
            rpc="search",
            duration=args.duration,
            warmup=args.warmup,
            k=args.k,
            timeout=args.timeout,
        )
        rss = {"start": rss_mib(pids)}
        unloaded = run_load(
            dataclasses.replace(base, mode="closed", concurrency=1, processes=1), queries
        )
        capacity = run_load(
            dataclasses.replace(
                base, mode="closed", concurrency=args.concurrency, processes=args.processes
            ),
            queries,
            server_pids=pids,
        )
        rss["after capacity"] = rss_mib(pids)
        offered = args.overload * capacity["achieved_qps"]
        overload = run_load(
            dataclasses.replace(
                base,
                mode="open",
                qps=offered,
                concurrency=args.client_in_flight,
                processes=args.processes,
            ),
            queries,
            server_pids=pids,
        )
        rss["after overload"] = rss_mib(pids)
        peak = {n: round(procstat.memory_kib(p).get("VmHWM", 0) / 1024, 1) for n, p in pids.items()}
    rows = [
        phase_row("unloaded (closed, 1 in flight)", unloaded, None),
        phase_row(f"capacity (closed, {args.concurrency} in flight)", capacity, None),
        phase_row(f"overload (open, {args.overload:g}x capacity)", overload, offered),
    ]
    ratio = overload["p99_ms"] / unloaded["p99_ms"] if unloaded["p99_ms"] else float("nan")
    growth = {
        n: round(rss["after overload"][n] - rss["after capacity"][n], 1) for n in rss["start"]
    }
    return {
        "rows": rows,
        "rss_mib": rss,
        "peak_rss_mib": peak,
        "rss_growth_during_overload_mib": growth,
        "accepted_p99_over_unloaded_p99": round(ratio, 2),
        "capacity_qps": round(capacity["achieved_qps"], 1),
        "cpu": {"capacity": capacity["cpu"], "overload": overload["cpu"]},
        "raw": {"unloaded": unloaded, "capacity": capacity, "overload": overload},
    }


def lines(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    out = [report.format_table(rows, list(rows[0]))]
    out.append(
        f"accepted p99 / unloaded p99 = {result['accepted_p99_over_unloaded_p99']} (target <= 2)"
    )
    out.append("RSS MiB per process (start / after capacity / after overload / peak):")
    for name in result["rss_mib"]["start"]:
        values = [result["rss_mib"][phase][name] for phase in result["rss_mib"]]
        out.append(
            f"  {name:<10} "
            + " / ".join(f"{v:.1f}" for v in values)
            + f" / {result['peak_rss_mib'][name]:.1f}"
            + f"  (overload growth {result['rss_growth_during_overload_mib'][name]:+.1f})"
        )
    return out


def cmd(args: argparse.Namespace) -> int:
    if args.target:
        print(
            "--overload starts its own local cluster (it reads the servers' memory); drop --target"
        )
        return 2
    result = run(args)
    text = "\n".join(lines(result))
    print(text)
    if args.name:
        out = report.result_dir(args.name, args.out)
        head = report.header(args.name)
        report.write_json(out / "results.json", {**head, **result})
        m = head["machine"]
        (out / "README.md").write_text(
            f"# {head['name']}\n\n- command: `{head['command']}`\n"
            f"- git revision: `{head['git_revision']}`, date {head['date']}\n"
            f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; shared with "
            "other jobs, and the load generator runs on the same 2 cores as the cluster\n"
            f"- Retrieval.Search, k={args.k}, {args.duration:g} s per phase after "
            f"{args.warmup:g} s warm-up, client timeout {args.timeout:g} s, "
            f"{args.processes} client process(es)\n\n```\n{text}\n```\n"
        )
        print(f"results: {out}")
    return 0
