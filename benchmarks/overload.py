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
router's own ``annfleet_requests_total`` counts answers and refusals. ``client``: capacity
as with h2load (its closed loop is the honest capacity figure), then the overload three
ways in one run: annfleet's asyncio client with its adaptive throttle on (``--processes``
processes, open loop, ``--throttle-k``; what a cooperative caller sends), h2load with the
probe (an uncooperative caller that never backs off), and annfleet's client with the
throttle off (the same generator, A/B). Each row: offered, rejected locally by the
client's throttle, sent, refused by the server, OK, and the accepted (OK) p99 over the
unloaded p99.
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

from annfleet.benchmarks import h2load, overload_series, procstat, report
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


def client_row(
    name: str,
    load: dict[str, Any] | None,
    probe: dict[str, Any] | None,
    codes: dict[str, int],
    wall_s: float,
    offered_qps: float | None,
    unloaded_p99_ms: float,
    sent_qps: float | None = None,
) -> dict[str, Any]:
    """One phase of ``--generator client``. ``load``: the run_load of annfleet's client when
    it was the load (its own counts over the measured window, and its accepted latency,
    which includes its own event loop's lag at thousands of arrivals per second);
    ``probe``: the light probe beside it (the accepted latency, measured as the unloaded
    one was). ``codes``: the router's answers by status over ``wall_s``. ``sent_qps``:
    what h2load sent, when it was the load."""
    answered = sum(codes.values())
    row: dict[str, Any] = {
        "phase": name,
        "offered_qps": round(offered_qps, 1) if offered_qps else None,
        "throttled_qps": None,
        "sent_qps": round(sent_qps, 1) if sent_qps is not None else None,
        "refused_qps": round(codes.get("RESOURCE_EXHAUSTED", 0) / wall_s, 1),
        "ok_qps": round(codes.get("OK", 0) / wall_s, 1),
        "other_codes": {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
        or "",
        "load_p99_ms": None,
        "load_p99_x": None,
        "probe_p50_ms": None,
        "probe_p99_ms": None,
        "probe_p99_x": None,
        "probe_ok": None,
        "router_answered_qps": round(answered / wall_s, 1),
    }
    if probe is not None:
        row["probe_p50_ms"] = round(probe["p50_ms"], 2)
        row["probe_p99_ms"] = round(probe["p99_ms"], 2)
        row["probe_p99_x"] = round(probe["p99_ms"] / unloaded_p99_ms, 2)
        probe_errors = {c: n for c, n in probe["errors"].items() if c != "CLIENT_BACKLOG"}
        row["probe_ok"] = f"{probe['ok']}/{probe['ok'] + sum(probe_errors.values())}"
    if load is not None:  # annfleet's client was the load: its own counts, per window second
        row["load_p99_ms"] = round(load["p99_ms"], 2)
        row["load_p99_x"] = round(load["p99_ms"] / unloaded_p99_ms, 2)
        duration = load["spec"]["duration"]
        errors = load["errors"]
        local = ("THROTTLED", "CLIENT_BACKLOG")
        sent = load["ok"] + sum(n for c, n in errors.items() if c not in local)
        row["throttled_qps"] = round(errors.get("THROTTLED", 0) / duration, 1)
        row["sent_qps"] = round(sent / duration, 1)
        row["refused_qps"] = round(errors.get("RESOURCE_EXHAUSTED", 0) / duration, 1)
        row["ok_qps"] = round(load["ok"] / duration, 1)
        others = {c: n for c, n in errors.items() if c not in (*local, "RESOURCE_EXHAUSTED")}
        if errors.get("CLIENT_BACKLOG"):
            others["CLIENT_BACKLOG"] = errors["CLIENT_BACKLOG"]
        row["other_codes"] = others or ""
    return row


def local_reject_us(dim: int, k: int, n: int = 20_000) -> dict[str, float]:
    """CPU µs of one call the client's throttle rejects (nothing is sent: the target is a
    closed port): ``AdaptiveThrottle.admit`` alone, and a whole ``AsyncClient.search``
    (request built, admitted, ``Throttled`` raised and caught), ``n`` of each in a loop."""
    import asyncio

    from annfleet.client import AsyncClient, Throttled
    from annfleet.cluster import free_port

    def reject_all(throttle: Any) -> None:
        for _ in range(100):
            throttle.record(True)
        throttle._draw = lambda: 0.0  # every p > 0 rejects

    async def measure() -> dict[str, float]:
        async with AsyncClient(f"127.0.0.1:{free_port()}", retries=0) as client:
            assert client.throttle is not None
            reject_all(client.throttle)
            query = np.zeros(dim, np.float32)
            t0 = time.process_time()
            for _ in range(n):
                with contextlib.suppress(Throttled):
                    client.throttle.admit()
            t1 = time.process_time()
            for _ in range(n):
                with contextlib.suppress(Throttled):
                    await client.search(query, k)
            t2 = time.process_time()
        return {
            "admit_us": round(1e6 * (t1 - t0) / n, 2),
            "async_search_us": round(1e6 * (t2 - t1) / n, 2),
        }

    return asyncio.run(measure())


def run(args: argparse.Namespace) -> dict[str, Any]:
    if generator(args) in ("h2load", "client"):
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


def unloaded_duration(args: argparse.Namespace) -> float:
    """Seconds the probe runs alone for the unloaded p99: ``--unloaded-duration``, or
    ``--duration`` when 0 or not given."""
    return float(getattr(args, "unloaded_duration", 0.0) or args.duration)


def window_p99(
    records: list[tuple[float, float, str, bool]], start: float, seconds: float
) -> dict[str, Any]:
    """The p99 (ms) and count of the OK calls scheduled in ``[start, start + seconds)``
    (``run_load`` records: scheduled time, latency s, code, degraded)."""
    lat = [r[1] for r in records if start <= r[0] < start + seconds and r[2] == "OK"]
    return {"ok": len(lat), "p99_ms": report.percentiles(lat)["p99_ms"]}


def unloaded_windows(
    records: list[tuple[float, float, str, bool]], start: float, seconds: float, slowest: int = 20
) -> dict[str, Any]:
    """The unloaded phase in windows of ``seconds`` from ``start``: the first window's p99
    and count (what a phase of ``--duration`` measured before ``--unloaded-duration``),
    every whole window's p99, and the ``slowest`` OK calls as (seconds from ``start``, ms),
    to show whether the slow calls of a longer phase come together (a disturbance) or
    spread out."""
    measured = [r for r in records if r[0] >= start and r[2] == "OK"]
    end = max((r[0] for r in measured), default=start)
    n = max(1, round((end - start) / seconds))
    top = sorted(measured, key=lambda r: r[1], reverse=True)[:slowest]
    return {
        **window_p99(records, start, seconds),
        "windows_p99_ms": [
            round(window_p99(records, start + i * seconds, seconds)["p99_ms"], 2) for i in range(n)
        ],
        "slowest": [(round(r[0] - start, 2), round(1e3 * r[1], 1)) for r in top],
    }


def first_window_summary(
    first: dict[str, Any], accepted: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The unloaded p99 over the unloaded phase's first ``seconds`` (what a phase of
    ``--duration`` measured before ``--unloaded-duration``) and the accepted p99 over it."""
    ratio = accepted["p99_ms"] / first["p99_ms"] if first["p99_ms"] else float("nan")
    return {
        "unloaded_first_window": {"seconds": seconds, **first},
        "accepted_p99_over_unloaded_first_window_p99": round(ratio, 2),
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


def router_admission(metrics_port: int | None) -> dict[str, Any]:
    """The router's admission state: requests shed on queue time (counter), the in-flight
    limit now, and the queue-time histogram's cumulative buckets ({le: count})."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"queue_shed": 0.0, "limit": None, "queue_buckets": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "annfleet_router_queue_shed_total":
                out["queue_shed"] = sample.value
            elif sample.name == "annfleet_router_in_flight_limit":
                out["limit"] = sample.value
            elif sample.name == "annfleet_router_queue_seconds_bucket":
                out["queue_buckets"][float(sample.labels["le"])] = sample.value
    return out


def admission_columns(
    before: dict[str, Any], after: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    """Per phase: queue-time sheds per second, the queue time's p50/p99 (the histogram
    bucket it falls in, ms) over the requests that sent their timeout, the limit at the end."""
    buckets = {
        le: after["queue_buckets"][le] - before["queue_buckets"].get(le, 0.0)
        for le in sorted(after["queue_buckets"])
    }
    total = buckets.get(float("inf"), 0.0)

    def quantile(q: float) -> float | None:
        if total <= 0:
            return None
        return next(le * 1e3 for le, n in buckets.items() if n >= q * total)

    return {
        "queue_shed_qps": round((after["queue_shed"] - before["queue_shed"]) / wall_s, 1),
        "queue_p50_ms": quantile(0.5),
        "queue_p99_ms": quantile(0.99),
        "limit_at_end": after["limit"],
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


def client_phases(args: argparse.Namespace) -> list[tuple[float, bool]]:
    """The throttled client phases: (k, the client sends its timeout) per phase; with
    ``--report-timeout both`` each k with, then without, as an A/B in one run."""
    reports = {"on": [True], "off": [False], "both": [True, False]}[args.report_timeout]
    return [(k, report) for k in args.throttle_k for report in reports]


def phase_label(k: float, report: bool, mode: str) -> str:
    label = f"throttle k={k:g}"
    if mode == "both":
        label += ", timeout sent" if report else ", no timeout sent"
    return label


def key(label: str) -> str:
    """A phase label as a results.json key: ``throttle k=2, timeout sent`` ->
    ``throttle_k2_timeout_sent``."""
    return label.replace("=", "").replace(",", "").replace(" ", "_")


def run_h2load(args: argparse.Namespace) -> dict[str, Any]:
    """Unloaded (the probe alone) and capacity (h2load closed loop), then the overload:
    h2load + probe (``--generator h2load``) or, with ``--generator client``, annfleet's
    client with its throttle, h2load + probe, and the client without throttle."""
    from annfleet.v1 import retrieval_pb2

    with_client = generator(args) == "client"
    # --cooperative-only: the throttled client's phases alone (no h2load / unthrottled flood)
    cooperative_only = with_client and getattr(args, "cooperative_only", False)
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

        admission: list[dict[str, Any]] = []  # per counted phase, in the rows' order

        def counted(run: Any) -> tuple[Any, dict[str, int], float]:
            """run() with the router's answers by status over its wall time."""
            before, t0 = router_requests(metrics_port), time.perf_counter()
            state = router_admission(metrics_port)
            out = run()
            wall = time.perf_counter() - t0
            admission.append(admission_columns(state, router_admission(metrics_port), wall))
            return out, _delta(router_requests(metrics_port), before), wall

        def flood(offered: float) -> tuple[h2load.H2LoadResult, dict[str, Any]]:
            lead = 3.0  # the probe's process spawns and imports meanwhile
            start_at = time.time() + lead
            with ThreadPoolExecutor(1) as pool:
                sent = pool.submit(gen.open, offered, lead + args.warmup + args.duration + 1)
                probe = run_load(probe_spec, queries, server_pids=pids, start_at=start_at)
                return sent.result(), probe

        def client(
            offered: float, throttle_k: float, report: bool
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            """annfleet's client as the load (throttled with ``throttle_k``, 0: not), and
            the probe beside it (never throttled, so that its few calls all sample the
            accepted latency; both send their timeout if ``report``): (load, probe)."""
            spec = dataclasses.replace(
                probe_spec,
                qps=offered,
                processes=args.processes,
                concurrency=args.client_in_flight * args.processes,
                throttle_k=throttle_k,
                report_timeout=report,
                record=True,
                nice=args.generator_nice,
            )
            start_at = time.time() + 3.0 + 0.5 * args.processes  # spawns and imports
            sampler = overload_series.RouterSampler(target, lambda: router_admission(metrics_port))
            with ThreadPoolExecutor(1) as pool, sampler:
                load = pool.submit(run_load, spec, queries, server_pids=pids, start_at=start_at)
                probe = run_load(
                    dataclasses.replace(probe_spec, report_timeout=report, record=True),
                    queries,
                    start_at=start_at,
                )
                loaded = load.result()
            # the per-second series replaces the records (too many to keep)
            loaded["series"] = overload_series.per_second(
                loaded.pop("records"),
                probe.pop("records"),
                sampler.samples,
                start_at + args.warmup,
            )
            return loaded, probe

        try:
            rss = {"start": rss_mib(pids)}
            # the probe alone for --unloaded-duration (default --duration) seconds; its
            # first --duration seconds are also kept apart, as the shorter phase measured
            unloaded_spec = dataclasses.replace(
                probe_spec, duration=unloaded_duration(args), record=True
            )
            unloaded_start = time.time() + 2.5  # run_load's default for one process
            unloaded, unloaded_codes, unloaded_wall = counted(
                lambda: run_load(unloaded_spec, queries, server_pids=pids, start_at=unloaded_start)
            )
            unloaded_first = unloaded_windows(
                unloaded.pop("records"), unloaded_start + args.warmup, args.duration
            )
            capacity, capacity_codes, _ = counted(
                lambda: gen.closed(args.concurrency, args.warmup + args.duration)
            )
            capacity_qps = capacity_codes.get("OK", 0) / capacity.wall_s
            rss["after capacity"] = rss_mib(pids)
            offered = args.overload * capacity_qps
            throttled: list[
                tuple[str, tuple[dict[str, Any], dict[str, Any]], dict[str, int], float]
            ] = []
            for k, report in client_phases(args) if with_client else ():
                label = phase_label(k, report, args.report_timeout)
                throttled.append((label, *counted(lambda: client(offered, k, report))))  # noqa: B023
                rss["after overload" if len(throttled) == 1 else f"after {label}"] = rss_mib(pids)
                time.sleep(args.settle)
            if not cooperative_only:
                (overload, loaded), overload_codes, _ = counted(lambda: flood(offered))
                rss["after h2load overload" if with_client else "after overload"] = rss_mib(pids)
            if with_client and not cooperative_only:
                time.sleep(args.settle)
                report = args.report_timeout != "off"
                plain, plain_codes, plain_wall = counted(lambda: client(offered, 0.0, report))
                rss["after unthrottled overload"] = rss_mib(pids)
            peak = {
                n: round(procstat.memory_kib(p).get("VmHWM", 0) / 1024, 1) for n, p in pids.items()
            }
        finally:
            gen.close()
    h2load_summary = {"capacity": capacity.summary()}
    if not cooperative_only:
        h2load_summary["overload"] = overload.summary()
    if with_client:
        u99 = unloaded["p99_ms"]
        name = f"{args.overload:g}x capacity"
        rows = [
            client_row(
                "unloaded (probe alone)", None, unloaded, unloaded_codes, unloaded_wall, None, u99
            ),
            client_row(
                f"capacity (h2load closed, {args.concurrency} in flight)",
                None,
                None,
                capacity_codes,
                capacity.wall_s,
                None,
                u99,
                sent_qps=capacity.requests / capacity.wall_s,
            ),
            *(
                client_row(f"{name}: annfleet client, {label}", *r, c, w, offered, u99)
                for label, r, c, w in throttled
            ),
        ]
        cpu = {
            "probe_unloaded": unloaded["cpu"],
            **{f"client_{key(label)}": r[0]["cpu"] for label, r, _, _ in throttled},
        }
        raw = {
            "unloaded": unloaded,
            **{f"client_{key(label)}": r[0] for label, r, _, _ in throttled},
            **{f"probe_{key(label)}": r[1] for label, r, _, _ in throttled},
        }
        if not cooperative_only:
            rows += [
                client_row(
                    f"{name}: h2load (never backs off)",
                    None,
                    loaded,
                    overload_codes,
                    overload.wall_s,
                    offered,
                    u99,
                    sent_qps=overload.requests / overload.wall_s,
                ),
                client_row(
                    f"{name}: annfleet client, no throttle",
                    plain[0],
                    plain[1],
                    plain_codes,
                    plain_wall,
                    offered,
                    u99,
                ),
            ]
            cpu.update({"probe_h2load": loaded["cpu"], "client_unthrottled": plain[0]["cpu"]})
            raw.update(
                {
                    "h2load_probe": loaded,
                    "client_unthrottled": plain[0],
                    "probe_unthrottled": plain[1],
                }
            )
        rows = [{**row, **cols} for row, cols in zip(rows, admission, strict=True)]
        accepted = throttled[0][1][1]
        return {
            **summary("client", rows, rss, peak, unloaded, accepted, capacity_qps),
            **first_window_summary(unloaded_first, accepted, args.duration),
            "throttle_k": args.throttle_k,
            "report_timeout": args.report_timeout,
            "local_reject_cpu_us": local_reject_us(queries.shape[1], args.k),
            "cpu": cpu,
            "h2load": h2load_summary,
            "raw": raw,
        }
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
        **first_window_summary(unloaded_first, loaded, args.duration),
        "cpu": {"probe_unloaded": unloaded["cpu"], "probe_overload": loaded["cpu"]},
        "h2load": h2load_summary,
        "raw": {"unloaded": unloaded, "overload_probe": loaded},
    }


def lines(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    out = [report.format_table(rows, list(rows[0]))]
    out.append(
        f"accepted p99 / unloaded p99 = {result['accepted_p99_over_unloaded_p99']} (target <= 2)"
    )
    if "unloaded_first_window" in result:
        first = result["unloaded_first_window"]
        out.append(
            f"  over the unloaded phase's first {first['seconds']:g} s alone ({first['ok']} "
            f"calls, p99 {first['p99_ms']:.2f} ms): "
            f"{result['accepted_p99_over_unloaded_first_window_p99']}"
        )
        if len(first.get("windows_p99_ms", ())) > 1:
            windows = " / ".join(f"{v:.2f}" for v in first["windows_p99_ms"])
            slow = ", ".join(f"{ms:g} ms at {t:g} s" for t, ms in first["slowest"][:10])
            out.append(f"  unloaded p99 per {first['seconds']:g} s: {windows}; slowest: {slow}")
    if "local_reject_cpu_us" in result:
        cost = result["local_reject_cpu_us"]
        out.append(
            f"a call the throttle rejects: {cost['async_search_us']} µs of CPU per "
            f"AsyncClient.search, {cost['admit_us']} µs of it the throttle's admit"
        )
    for name, raw in result.get("raw", {}).items():
        if name.startswith("client_") and raw.get("series"):
            out.append(f"per second, {name} (second 0: the measured window's first):")
            series = raw["series"]
            out.append(report.format_table(series, list(series[0])))
    out.append(f"RSS MiB per process ({' / '.join(result['rss_mib'])} / peak):")
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
    if result["generator"] == "client":
        ks = ", ".join(f"{k:g}" for k in args.throttle_k)
        return (
            "capacity from h2load's closed loop (4 HTTP/2 connections, one query repeated); "
            f"the overload from annfleet's AsyncClient in {args.processes} process(es), open "
            f"loop, retries 0, its adaptive throttle at k = {ks} "
            "(one phase each, 2 s window; the client sends its timeout in annfleet-timeout-ms: "
            f"{args.report_timeout}); then h2load open loop; then annfleet's client "
            "without throttle. Beside every overload phase the probe (annfleet's client, "
            f"{args.probe_qps:g}/s open loop, not throttled, so that all its calls sample "
            "the accepted latency; it sends its timeout as the load does) measures accepted "
            "latency as it measured the unloaded one (`probe_*`: p99 over the calls the "
            "server answered OK, from their scheduled send time; `probe_p99_x`: over the "
            "unloaded p99). Client rows count over the measured window (offered, locally "
            "throttled, sent, refused, OK), and `load_p99_*` is the load's own accepted p99 "
            "(including its event loop's lag). `router_answered_qps`: the router's own "
            "count over the phase's wall time (drain included)"
        )
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
            f"- Retrieval.Search, k={args.k}, {args.duration:g} s per phase "
            f"(the unloaded one {unloaded_duration(args):g} s) after "
            f"{args.warmup:g} s warm-up, client timeout {args.timeout:g} s\n"
            f"- generator: {_generator_line(args, result)}\n\n```\n{text}\n```\n"
        )
        print(f"results: {out}")
    return 0
