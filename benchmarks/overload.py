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

Generators (``--generator``). ``python``: the load comes from annfleet's own Python gRPC
client processes, which on a 2-core box share the cores with the cluster: at 4x capacity
they fall behind their schedule, and their backlog, not the router, sets the accepted p99.
``h2load`` (the default where it is installed, Debian package ``nghttp2-client``): the
capacity and overload traffic come from h2load (C, a few µs of CPU per request, see
``h2load.py``) and a light Python *probe* (``--probe-qps``, open loop, the real client)
measures what an accepted request sees, unloaded and then beside the overload; the
router's own ``annfleet_requests_total`` counts answers and refusals.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import h2load, procstat, report
from annfleet.benchmarks.load import LoadSpec, run_load


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    return {n: round(procstat.memory_kib(p).get("VmRSS", 0) / 1024, 1) for n, p in pids.items()}


@contextlib.contextmanager
def _cluster(
    args: argparse.Namespace,
) -> Iterator[tuple[str, dict[str, int], np.ndarray, int | None]]:
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
            Path(bundle), load_config(config_path), config_path=config_path, metrics=True
        ).start()
    finally:
        if args.cluster_omp_threads > 0:
            os.environ.pop("OMP_NUM_THREADS", None)
            if saved is not None:
                os.environ["OMP_NUM_THREADS"] = saved
    try:
        router = next(c for c in cluster.children if c.name == "router")
        yield cluster.router_target, dict(cluster.pids), ds.queries, router.metrics_port
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


def generator(args: argparse.Namespace) -> str:
    """``--generator`` resolved: ``auto`` is h2load where installed, else python."""
    if args.generator == "auto":
        return "h2load" if h2load.available() else "python"
    return str(args.generator)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if generator(args) == "h2load":
        return run_h2load(args)
    with _cluster(args) as (target, pids, queries, _):
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
    return {
        **summary("python", rows, rss, peak, unloaded, overload, capacity["achieved_qps"]),
        "cpu": {"capacity": capacity["cpu"], "overload": overload["cpu"]},
        "raw": {"unloaded": unloaded, "capacity": capacity, "overload": overload},
    }


def summary(
    generator: str,
    rows: list[dict[str, Any]],
    rss: dict[str, dict[str, float]],
    peak: dict[str, float],
    unloaded: dict[str, Any],
    accepted: dict[str, Any],
    capacity_qps: float,
) -> dict[str, Any]:
    """What both generators report: the rows, memory, and accepted p99 over unloaded p99
    (``unloaded`` and ``accepted``: run_load results)."""
    ratio = accepted["p99_ms"] / unloaded["p99_ms"] if unloaded["p99_ms"] else float("nan")
    growth = {
        n: round(rss["after overload"][n] - rss["after capacity"][n], 1) for n in rss["start"]
    }
    return {
        "generator": generator,
        "rows": rows,
        "rss_mib": rss,
        "peak_rss_mib": peak,
        "rss_growth_during_overload_mib": growth,
        "accepted_p99_over_unloaded_p99": round(ratio, 2),
        "capacity_qps": round(capacity_qps, 1),
    }


def router_requests(metrics_port: int | None, method: str = "Search") -> dict[str, float]:
    """The router's ``annfleet_requests_total`` for ``Retrieval.<method>``, by status code."""
    from prometheus_client.parser import text_string_to_metric_families

    if metrics_port is None:
        raise RuntimeError("the router serves no metrics: the h2load generator needs them")
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "annfleet_requests_total"
        and sample.labels.get("service") == "Retrieval"
        and sample.labels.get("method") == method
    }


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {c: int(v - before.get(c, 0.0)) for c, v in after.items() if v > before.get(c, 0.0)}


def h2load_row(
    name: str,
    codes: dict[str, int],
    wall_s: float,
    offered_qps: float | None,
    gen: h2load.H2LoadResult | None,
    probe: dict[str, Any],
) -> dict[str, Any]:
    """One phase: the router's answers and refusals, the probe's accepted latency."""
    answered = sum(codes.values())
    shed = codes.get("RESOURCE_EXHAUSTED", 0)
    others = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    probe_errors = {k: v for k, v in probe["errors"].items() if k != "CLIENT_BACKLOG"}
    return {
        "phase": name,
        "offered_qps": round(offered_qps, 1) if offered_qps else None,
        "router_answered_qps": round(answered / wall_s, 1),
        "router_ok_qps": round(codes.get("OK", 0) / wall_s, 1),
        "shed_fraction": round(shed / answered, 4) if answered else 0.0,
        "router_other_codes": others or "",
        "probe_ok": probe["ok"],
        "probe_p50_ms": round(probe["p50_ms"], 2),
        "probe_p99_ms": round(probe["p99_ms"], 2),
        "probe_errors": probe_errors or "",
        "h2load_us_per_req": (
            round(1e6 * gen.cpu_s / max(1, gen.requests), 1) if gen is not None else None
        ),
    }


def run_h2load(args: argparse.Namespace) -> dict[str, Any]:
    """The three phases with h2load as the load and a Python probe as the measurement."""
    from annfleet.v1 import retrieval_pb2

    with _cluster(args) as (target, pids, queries, metrics_port):
        query = np.ascontiguousarray(queries[:1], dtype="<f4")
        message = retrieval_pb2.SearchRequest(
            queries=query.tobytes(), dim=query.shape[1], k=args.k
        ).SerializeToString()
        gen = h2load.H2Load(target, "annfleet.v1.Retrieval/Search", message)
        probe_spec = LoadSpec(
            target=target,
            rpc="search",
            mode="open",
            qps=args.probe_qps,
            concurrency=args.client_in_flight,
            duration=args.duration,
            warmup=args.warmup,
            k=args.k,
            timeout=args.timeout,
        )
        try:
            rss = {"start": rss_mib(pids)}
            before = router_requests(metrics_port)
            unloaded = run_load(probe_spec, queries, server_pids=pids)
            unloaded_codes = _delta(router_requests(metrics_port), before)
            unloaded_wall = args.duration + args.warmup

            before = router_requests(metrics_port)
            capacity = gen.closed(args.concurrency, args.warmup + args.duration)
            capacity_codes = _delta(router_requests(metrics_port), before)
            capacity_qps = capacity_codes.get("OK", 0) / capacity.wall_s
            rss["after capacity"] = rss_mib(pids)

            offered = args.overload * capacity_qps
            lead = 3.0  # the probe's process spawns and imports meanwhile
            start_at = time.time() + lead
            before = router_requests(metrics_port)
            with ThreadPoolExecutor(1) as pool:
                flood = pool.submit(gen.open, offered, lead + args.warmup + args.duration + 1)
                loaded = run_load(probe_spec, queries, server_pids=pids, start_at=start_at)
                overload = flood.result()
            overload_codes = _delta(router_requests(metrics_port), before)
            rss["after overload"] = rss_mib(pids)
            peak = {
                n: round(procstat.memory_kib(p).get("VmHWM", 0) / 1024, 1) for n, p in pids.items()
            }
        finally:
            gen.close()
    no_probe = {"ok": 0, "errors": {}, "p50_ms": float("nan"), "p99_ms": float("nan")}
    rows = [
        h2load_row("unloaded (probe alone)", unloaded_codes, unloaded_wall, None, None, unloaded),
        h2load_row(
            f"capacity (h2load closed, {args.concurrency} in flight)",
            capacity_codes,
            capacity.wall_s,
            None,
            capacity,
            no_probe,
        ),
        h2load_row(
            f"overload (h2load open, {args.overload:g}x capacity) + probe",
            overload_codes,
            overload.wall_s,
            offered,
            overload,
            loaded,
        ),
    ]
    return {
        **summary("h2load", rows, rss, peak, unloaded, loaded, capacity_qps),
        "cpu": {"probe_unloaded": unloaded["cpu"], "probe_overload": loaded["cpu"]},
        "h2load": {"capacity": capacity.summary(), "overload": overload.summary()},
        "raw": {"unloaded": unloaded, "overload_probe": loaded},
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


def _generator_line(args: argparse.Namespace, result: dict[str, Any]) -> str:
    if result["generator"] == "h2load":
        return (
            "h2load (4 HTTP/2 connections, one query repeated; CPU per request in "
            "`h2load_us_per_req`) for the capacity and overload traffic; the probe, "
            f"annfleet's Python client, open loop at {args.probe_qps:g}/s with varied queries, "
            "measures accepted latency; answers and refusals are the router's own counters"
        )
    return f"annfleet's Python client, {args.processes} process(es)"


def cmd(args: argparse.Namespace) -> int:
    if args.target:
        print(
            "--overload starts its own local cluster (it reads the servers' memory); drop --target"
        )
        return 2
    load_before = report.loadavg()
    result = run(args)
    result["loadavg_before_after"] = [load_before, report.loadavg()]
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
            f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; the load "
            "generator runs on the same 2 cores as the cluster; load average (1/5/15 min) "
            f"before {result['loadavg_before_after'][0]}, after "
            f"{result['loadavg_before_after'][1]}\n"
            f"- Retrieval.Search, k={args.k}, {args.duration:g} s per phase after "
            f"{args.warmup:g} s warm-up, client timeout {args.timeout:g} s\n"
            f"- generator: {_generator_line(args, result)}\n\n```\n{text}\n```\n"
        )
        print(f"results: {out}")
    return 0
