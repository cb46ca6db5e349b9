"""`annfleet bench scale` (`make bench-10m`): a 10M-item IVF-PQ + re-rank cluster on one box.

Reports build time, memory per shard server (RSS vs the faiss index file and the stored
vectors), and recall@k / latency of k=1000-candidate requests through the router and by
direct scatter, one query at a time. Then (``--open-loop``, the default) the SLO under load,
at the sweep point with recall >= ``--load-recall`` that costs the least CPU: the same
bundle's shards searched in this process, batched on every core (the box's limit), and an
open-loop rate search on the router (``bench load``'s generator: fixed arrival rate, latency
from the scheduled send) for the highest rate that holds the seeds' SLO (p50 < 20 ms, p95 <
40 ms, p99 <= 50 ms, nothing shed, timed out or degraded), with CPU per query on both sides.
A step after one that broke the SLO (or was refused) starts once the router has settled
(:func:`settle`), so it does not count the previous step's refusals.
Documented, not run in CI: it needs ~15 GiB of RAM-backed page cache and tens of minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import datasets, procstat, report
from annfleet.benchmarks.groundtruth import cached_exact_topk, recall_at_k
from annfleet.benchmarks.recall_latency import (
    SweepConfig,
    ensure_bundle,
    local_cluster,
    measure,
)
from annfleet.benchmarks.systems import RouterSystem, ScatterSystem
from annfleet.config import RouterConfig
from annfleet.router.admission import WINDOW_MIN, WINDOW_S

log = logging.getLogger(__name__)

DEFAULT_BUILD = {"nlist": 2048, "pq_m": 16, "nbits": 8}
# The seeds' SLO for one request of k candidates: p50 < 20 ms, p95 < 40 ms, p99 <= 50 ms.
SLO_MS = {"p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 50.0}
# Open-loop rates tried when --rates is not given: these fractions of in-process capacity.
DEFAULT_RATE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


@dataclass(frozen=True)
class OpenLoopConfig:
    rates: tuple[float, ...] = ()  # requests/s in ascending order; () = fractions of capacity
    step_s: float = 10.0  # measured seconds per rate (at least)
    step_min_requests: int = 300  # ... and long enough for this many requests at the rate
    warmup_s: float = 2.0  # seconds sent and discarded before each step's window
    bisect: int = 2  # extra steps halving the gap between the last rate held and the first not
    processes: int = 1  # client processes
    concurrency: int = 512  # requests in flight before the schedule backs up (CLIENT_BACKLOG)
    timeout_s: float = 1.0  # client deadline per request
    settle_max_s: float = 30.0  # at most this long settling the router after a broken step
    capacity_s: float = 10.0  # seconds of in-process batched search (split over two modes)


def uptime() -> str:
    """`uptime` (load averages) as the shell prints it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def prepare(
    args: argparse.Namespace, progress: bool
) -> tuple[datasets.Dataset, np.ndarray, Path, dict[str, float]]:
    """Dataset, exact ground truth and bundle, each built once and cached under the data dir
    -> (dataset, truth (nq, k) int64, bundle path, timings)."""
    data_dir = args.data_dir or datasets.default_data_dir()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = datasets.synthetic(args.items, args.dim, queries=args.queries, data_dir=data_dir)
    timings["dataset_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    truth = cached_exact_topk(
        data_dir / "groundtruth" / f"{ds.key}-k{args.k}.npy",
        ds.vectors,
        ds.ids,
        ds.queries,
        args.k,
        ds.metric,
        progress=progress,
    )
    timings["ground_truth_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bundle = ensure_bundle(
        ds, "ivfpq", {**DEFAULT_BUILD, **args.build}, args.shards, data_dir, progress
    )
    timings["bundle_ready_s"] = time.perf_counter() - t0  # ~0 when cached
    sidecar = bundle.with_name(bundle.name + ".build.json")
    if sidecar.is_file():
        timings["bundle_build_s"] = json.loads(sidecar.read_text())["build_seconds"]
    return ds, truth, bundle, timings


def run(args: argparse.Namespace) -> dict[str, Any]:
    progress = not args.no_progress
    size = f"{args.items // 1_000_000}m" if args.items >= 1_000_000 else str(args.items)
    name = args.name or f"scale-{size}"
    header = report.header(name)
    uptime_before = uptime()
    ds, truth, bundle, timings = prepare(args, progress)
    build = {**DEFAULT_BUILD, **args.build}
    vectors_gib = round(ds.vectors.nbytes / 2**30, 2)
    # The shard servers hold their own copies: drop ours so RSS figures are not skewed.
    ds.vectors = np.empty((0, ds.dim), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    open_loop: dict[str, Any] | None = None
    cfg = SweepConfig(index_type="ivfpq", k=args.k, warmup=10, max_seconds_per_point=60.0)
    t0 = time.perf_counter()
    with local_cluster(bundle, args.cluster_omp_threads, args.config) as cluster:
        timings["cluster_start_s"] = time.perf_counter() - t0
        pids = cluster.pids
        mem_before = {n: procstat.memory_kib(p) for n, p in pids.items()}
        systems = {
            "router": RouterSystem(cluster.router_target, timeout=10.0),
            "scatter": ScatterSystem(list(cluster.shard_targets), timeout=10.0),
        }
        try:
            for nprobe in args.nprobe:
                for rerank in args.rerank:
                    p = {"nprobe": nprobe, "rerank": rerank}
                    for sname, system in systems.items():
                        row, _ = measure(
                            system,
                            ds.queries,
                            truth,
                            args.k,
                            p,
                            cfg,
                            desc=f"{sname} {p}",
                            progress=progress,
                        )
                        rows.append(
                            {
                                "series": f"{sname} ({args.shards} shards)",
                                "system": sname,
                                "index": "ivfpq",
                                "shards": args.shards,
                                "params": p,
                                "k": args.k,
                                **row,
                            }
                        )
                        log.info("%s %s %s", sname, p, row)
        finally:
            for system in systems.values():
                system.close()
        mem_after = {n: procstat.memory_kib(p) for n, p in pids.items()}
        if args.open_loop:
            open_loop = slo_under_load(
                bundle,
                cluster.router_target,
                dict(pids),
                ds.queries,
                truth,
                args.k,
                rows,
                open_loop_config(args),
                recall=args.load_recall,
                params=args.load_params or None,
                router=_router_config(args.config),
            )
    from annfleet.bundle import Bundle

    b = Bundle.open(bundle, verify=False)
    for s in range(b.num_shards):
        d = b.shard_dir(s)
        name_s = f"shard-{s:02d}"
        memory.append(
            {
                "shard": s,
                "num_items": b.shard(s)["num_items"],
                "index_faiss_mib": round((d / "index.faiss").stat().st_size / 2**20, 1),
                "vectors_npy_mib": round((d / "vectors.npy").stat().st_size / 2**20, 1),
                "ids_npy_mib": round((d / "ids.npy").stat().st_size / 2**20, 1),
                "rss_after_load_mib": round(mem_before.get(name_s, {}).get("VmRSS", 0) / 1024, 1),
                "rss_after_queries_mib": round(mem_after.get(name_s, {}).get("VmRSS", 0) / 1024, 1),
                "rss_file_backed_mib": round(mem_after.get(name_s, {}).get("RssFile", 0) / 1024, 1),
                "peak_rss_mib": round(mem_after.get(name_s, {}).get("VmHWM", 0) / 1024, 1),
            }
        )
    router_mem = mem_after.get("router", {})
    result = {
        **header,
        "uptime": {"before": uptime_before, "after": uptime()},
        "dataset": {
            "name": f"synthetic-clustered-{args.items}x{args.dim}",
            "items": args.items,
            "dim": args.dim,
            "queries": args.queries,
            "vectors_gib": vectors_gib,
        },
        "config": {
            "index_type": "ivfpq",
            "build_params": build,
            "shards": args.shards,
            "k": args.k,
            "nprobe": args.nprobe,
            "rerank": args.rerank,
            "bundle_manifest_params": b.shard(0)["index"]["params"],
            "cluster_config": str(args.config) if args.config else "built-in defaults",
        },
        "timings": timings,
        "timings_note": "bundle_build_s: the bundle's build (recorded when it was built, so "
        "it survives cache hits); bundle_ready_s: this run's wait for it",
        "memory_per_shard": memory,
        "router_rss_mib": round(router_mem.get("VmRSS", 0) / 1024, 1),
        "rows": rows,
    }
    target = [r for r in rows if r["system"] == "router"]
    if target:
        best = min(target, key=lambda r: (r["p99_ms"] > 50, -r["recall"]))
        result["P4"] = {
            "target": f"k={args.k} candidates at p99 <= 50 ms",
            "best_point": best["params"],
            "recall": best["recall"],
            "p99_ms": best["p99_ms"],
            "met": best["p99_ms"] <= 50,
        }
    if open_loop is not None:
        result["open_loop"] = open_loop
    return result


def open_loop_config(args: argparse.Namespace) -> OpenLoopConfig:
    return OpenLoopConfig(
        rates=tuple(sorted(args.rates or ())),
        step_s=args.step_s,
        step_min_requests=args.step_min_requests,
        warmup_s=args.load_warmup_s,
        bisect=args.bisect,
        processes=args.load_processes,
        concurrency=args.load_concurrency,
        timeout_s=args.load_timeout,
        settle_max_s=args.settle_max_s,
        capacity_s=args.capacity_s,
    )


def _router_config(config_path: Path | None) -> RouterConfig:
    """The router's section of the cluster's config (built-in defaults without one)."""
    from annfleet.config import load_config

    if config_path is None:
        return RouterConfig()
    return load_config(config_path.resolve()).router


# ---------------------------------------------------------------- SLO under load


class BundleInProcess:
    """A bundle's shards loaded in this process and searched as the router searches them:
    each shard asked for as many hits as the router's ``Scatter.shard_k`` asks for (``router``:
    its ``topk_probability`` and ``oversample``) with the same parameters
    (the servers' own ``ShardIndex``), the rows merged with the router's ``merge_rows``."""

    def __init__(self, bundle_path: Path, router: RouterConfig) -> None:
        from annfleet.bundle import Bundle
        from annfleet.router.scatter import shard_shares
        from annfleet.server.index import IndexSpec, ShardIndex
        from annfleet.validation import higher_is_better

        bundle = Bundle.open(bundle_path, verify=False)
        self.shards = []
        for s in range(bundle.num_shards):
            index = bundle.shard(s)["index"]
            spec = IndexSpec(index["type"], index["params"])
            self.shards.append(ShardIndex.load(bundle.shard_dir(s), bundle.metric, spec))
        shares = shard_shares(bundle)
        self.shares = [shares[s] for s in range(bundle.num_shards)]
        self.router = router
        self.higher_is_better = higher_is_better(bundle.metric)

    def shard_k(self, k: int, share: float) -> int:
        """Hits asked of a shard holding ``share`` of the items, as the router asks."""
        from annfleet.merge import per_shard_k

        return per_shard_k(
            k,
            share,
            shards=len(self.shares),
            oversample=self.router.oversample,
            probability=self.router.topk_probability,
        )

    def search(self, queries: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        """queries (nq, d) float32 -> ids (nq, k) int64, -1 padded, best first."""
        from annfleet.merge import merge_rows

        parts = [
            shard.search(queries, self.shard_k(k, share), **params)
            for shard, share in zip(self.shards, self.shares, strict=True)
        ]
        ids, _ = merge_rows(
            np.concatenate([p[0] for p in parts], axis=1),
            np.concatenate([p[1] for p in parts], axis=1),
            k,
            higher_is_better=self.higher_is_better,
        )
        return ids


def inprocess_capacity(
    index: BundleInProcess,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    params: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    """Queries/s of ``index`` batched on every core, two ways (half of ``seconds`` each):
    the whole query set per call with faiss on all cores, and one Python thread per core
    each searching its share of the queries with one faiss thread (re-rank and merge are
    numpy, which one faiss call does not spread). The capacity is the better of the two."""
    from annfleet.server.index import set_threads

    cores = os.cpu_count() or 1
    set_threads(cores)
    try:
        n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        found = index.search(queries, k, params)
        n += len(queries)
        while time.perf_counter() - t0 < seconds / 2:
            index.search(queries, k, params)
            n += len(queries)
        faiss_threads_qps = n / (time.perf_counter() - t0)
        faiss_threads_cpu = (time.process_time() - cpu0) / n
    finally:
        set_threads(1)
    chunks = [c for c in np.array_split(np.arange(len(queries)), cores) if len(c)]

    def worker(rows: np.ndarray, stop: float) -> int:
        set_threads(1)
        done = 0
        while done == 0 or time.perf_counter() < stop:
            index.search(queries[rows], k, params)
            done += len(rows)
        return done

    t0, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(len(chunks)) as pool:
        total = sum(pool.map(worker, chunks, [t0 + seconds / 2] * len(chunks)))
    threads_qps = total / (time.perf_counter() - t0)
    threads_cpu = (time.process_time() - cpu0) / total
    return {
        "params": params,
        "recall": recall_at_k(found, truth, k),
        "cores": cores,
        "batch": len(queries),
        "faiss_threads_qps": faiss_threads_qps,
        "python_threads_qps": threads_qps,
        "capacity_qps": max(faiss_threads_qps, threads_qps),
        # CPU time (all threads of this process) per query: unlike queries/s, it does not
        # depend on how much of the shared box the run got
        "cpu_ms_per_query": 1e3 * min(faiss_threads_cpu, threads_cpu),
    }


def step_seconds(cfg: OpenLoopConfig, rate: float) -> float:
    """Measured seconds at ``rate``: ``step_s``, longer at low rates so the window holds
    ``step_min_requests`` requests (a p99 of fewer is one or two samples)."""
    return max(cfg.step_s, cfg.step_min_requests / rate) if rate > 0 else cfg.step_s


def recovery_windows(router: RouterConfig) -> int:
    """Admission windows without a refusal that the router's adaptive in-flight limit needs
    to grow from its lowest, the overload floor (``overload_min_in_flight``), back to
    ``min_in_flight`` (router/admission.py: by sqrt(limit) per window); 0 with fixed
    admission (the limit does not move)."""
    if router.admission != "adaptive":
        return 0
    floor = min(router.min_in_flight, router.max_in_flight)
    limit, windows = float(min(router.overload_min_in_flight, floor)), 0
    while limit < floor:
        limit = min(float(floor), limit + math.sqrt(limit))
        windows += 1
    return windows


def settle_windows(router: RouterConfig) -> int:
    """The run of answered requests :func:`settle` waits for, in admission windows: twice
    (recovery + 1), so that the windows closed inside the run cover the recovery even when
    they close on time rather than on count, and after one window that still carried an
    earlier refusal."""
    return 2 * (recovery_windows(router) + 1)


# a step after one that held the SLO with no refusal: nothing to settle
NO_SETTLE = {
    "settle_s": 0.0,
    "settle_sent": 0,
    "settle_refused": 0,
    "settle_errors": 0,
    "settled": True,
}


def settle(
    target: str,
    queries: np.ndarray,
    k: int,
    params: dict[str, int],
    windows: int,
    max_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Bring the router back to its settled state after an overloaded step, before the next
    step counts anything: requests one at a time (the step's request, no retries, no client
    throttle) until a run of them spanning ``windows`` admission windows' worth
    (``windows`` x WINDOW_MIN answers and ``windows`` x WINDOW_S seconds) was answered with
    no refusal or error, at most ``max_s`` seconds. One at a time, none is refused for the
    in-flight limit itself; each window of answers lets the adaptive limit, shrunk in the
    overload, grow back (router/admission.py: an idle pause closes no window, so the limit
    would still be small when the next step starts). Refusals seen here are the router still
    shedding (queue time, or the previous step's requests still in flight).
    -> settle_s, settle_sent, settle_refused (RESOURCE_EXHAUSTED), settle_errors (other
    failures), settled (the run was reached within ``max_s``)."""
    from annfleet.client import AnnfleetError, Client, ResourceExhausted

    need_n, need_s = windows * WINDOW_MIN, windows * WINDOW_S
    sent = refused = errors = run = 0
    t0 = run_from = time.perf_counter()
    with Client(target, timeout=timeout_s, retries=0, throttle=None) as client:
        while True:
            now = time.perf_counter()
            settled = run >= need_n and now - run_from >= need_s
            if settled or now - t0 >= max_s:
                break
            query = queries[sent % len(queries)]
            sent += 1
            try:
                client.search(query, k, **params)
            except ResourceExhausted:
                refused += 1
            except AnnfleetError:
                errors += 1
            else:
                run += 1
                continue
            run, run_from = 0, time.perf_counter()
    return {
        "settle_s": round(time.perf_counter() - t0, 2),
        "settle_sent": sent,
        "settle_refused": refused,
        "settle_errors": errors,
        "settled": settled,
    }


def slo_breaches(step: dict[str, Any]) -> list[str]:
    """What broke the SLO in one open-loop step (empty: held)."""
    out = []
    if step["ok"] == 0:
        out.append("nothing answered")
    else:
        if not step["p50_ms"] < SLO_MS["p50_ms"]:
            out.append(f"p50 {step['p50_ms']:.1f} >= {SLO_MS['p50_ms']:.0f}")
        if not step["p95_ms"] < SLO_MS["p95_ms"]:
            out.append(f"p95 {step['p95_ms']:.1f} >= {SLO_MS['p95_ms']:.0f}")
        if not step["p99_ms"] <= SLO_MS["p99_ms"]:
            out.append(f"p99 {step['p99_ms']:.1f} > {SLO_MS['p99_ms']:.0f}")
    failed = sum(step["errors"].values()) + step["unfinished"]
    if failed:
        out.append(f"{failed} not answered")
    if step.get("degraded"):
        out.append(f"{step['degraded']} degraded (shards missing)")
    return out


def _step_row(
    phase: str,
    rate: float,
    load: dict[str, Any],
    window: tuple[float, float],
    idle_cores: float = 0.0,
) -> dict[str, Any]:
    """One open-loop step's row; ``window``: the measured (start, end) in ``time.time()``,
    to count the answers in it that the router marked degraded (shards missing);
    ``idle_cores``: the servers' CPU when idle, left out of the marginal CPU per query."""
    spec = load["spec"]
    server_cpu = sum(c["cpu_seconds"] for n, c in load["cpu"].items() if not n.startswith("client"))
    start, end = window
    degraded = sum(1 for t, _, _, deg in load.get("records", ()) if deg and start <= t < end)
    row = {
        "phase": phase,
        "offered_qps": rate,
        "sent_in_window": load["sent_in_window"],
        "ok": load["ok"],
        "achieved_qps": load["achieved_qps"],
        "p50_ms": load["p50_ms"],
        "p95_ms": load["p95_ms"],
        "p99_ms": load["p99_ms"],
        "p999_ms": load["p999_ms"],
        "errors": load["errors"],
        "unfinished": load["unfinished"],
        "degraded": degraded,
        "server_cores": round(
            sum(c["cores_used"] for n, c in load["cpu"].items() if not n.startswith("client")), 2
        ),
        "server_cpu_ms_per_query": 1e3 * server_cpu / max(1, load["ok"]),
        "marginal_cpu_ms_per_query": 1e3
        * (server_cpu - idle_cores * spec["duration"])
        / max(1, load["ok"]),
        "duration_s": spec["duration"],
    }
    breaches = slo_breaches(row)
    row["slo_met"] = not breaches
    row["breaches"] = "; ".join(breaches)
    return row


def rate_search(
    step: Callable[[float], dict[str, Any]],
    rates: Sequence[float],
    bisect: int,
) -> dict[str, Any]:
    """The highest arrival rate that holds the SLO: ``rates`` in ascending order until the
    first that breaks it, then ``bisect`` steps halving the gap between the last rate held
    and that one. ``step(rate)`` runs one open-loop step -> a row of :func:`_step_row`."""
    steps: list[dict[str, Any]] = []
    held, broke = 0.0, None
    for rate in rates:
        row = step(rate)
        steps.append(row)
        if not row["slo_met"]:
            broke = rate
            break
        held = rate
    for _ in range(bisect if broke is not None else 0):
        assert broke is not None
        if broke - held <= max(1.0, 0.02 * broke):
            break
        rate = round((held + broke) / 2, 1)
        row = step(rate)
        row["phase"] = "bisect"
        steps.append(row)
        if row["slo_met"]:
            held = rate
        else:
            broke = rate
    best = max((s for s in steps if s["slo_met"]), key=lambda s: s["offered_qps"], default=None)
    return {
        "steps": steps,
        "max_sustained_qps": best["offered_qps"] if best else 0.0,
        "max_sustained_step": best,
        "first_broken_qps": broke,
        "upper_bound_found": broke is not None,
    }


def slo_under_load(
    bundle: Path,
    target: str,
    pids: dict[str, int],
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    rows: Sequence[dict[str, Any]],
    cfg: OpenLoopConfig,
    *,
    recall: float,
    params: dict[str, int] | None,
    router: RouterConfig,
) -> dict[str, Any]:
    """In-process capacity and the open-loop rate search at one operating point: ``params``,
    else, of the router's sweep points with recall >= ``recall``, the one in-process search
    spends the least CPU per query on (latency and queries/s on a shared box are noisy costs),
    else the router's highest-recall point. ``router``: the cluster's router config (its
    oversampling, and its admission, which :func:`settle` waits for after a broken step)."""
    from annfleet.benchmarks.load import LoadSpec, run_load

    notes: list[str] = []
    router_rows = [r for r in rows if r["system"] == "router"]
    t0 = time.perf_counter()
    index = BundleInProcess(bundle, router)
    load_s = time.perf_counter() - t0
    costs: list[dict[str, Any]] = []
    chosen: dict[str, Any] | None
    if params:
        point = dict(params)
        chosen = next((r for r in router_rows if r["params"] == point), None)
        how = "given (--load-params)"
    else:
        for r in (r for r in router_rows if r["recall"] >= recall):
            c = inprocess_capacity(index, queries, truth, k, r["params"], cfg.capacity_s / 4)
            costs.append(
                {
                    "params": r["params"],
                    "router_recall": r["recall"],
                    "router_p50_ms": r["p50_ms"],
                    "router_p99_ms": r["p99_ms"],
                    "inprocess_qps": c["capacity_qps"],
                    "inprocess_cpu_ms_per_query": c["cpu_ms_per_query"],
                    "inprocess_recall": c["recall"],
                }
            )
        if costs:
            best = min(costs, key=lambda c: c["inprocess_cpu_ms_per_query"])
            chosen = next(r for r in router_rows if r["params"] == best["params"])
            how = (
                f"of the router's sweep points with recall@{k} >= {recall}, the one in-process "
                "search spends the least CPU on"
            )
        else:
            chosen = max(router_rows, key=lambda r: r["recall"])
            how = f"no sweep point reached recall@{k} {recall}: the router's highest-recall point"
            notes.append(how)
        point = dict(chosen["params"])
    # The servers' CPU while idle (timers, polling), over the in-process run: a step's
    # marginal CPU per query leaves it out.
    idle0, t_idle = sum(procstat.cpu_seconds(p) for p in pids.values()), time.time()
    capacity = inprocess_capacity(index, queries, truth, k, point, cfg.capacity_s)
    idle_cores = (sum(procstat.cpu_seconds(p) for p in pids.values()) - idle0) / (
        time.time() - t_idle
    )
    capacity["load_s"] = load_s
    capacity["per_shard_k"] = [index.shard_k(k, s) for s in index.shares]
    del index
    rates = list(cfg.rates) or [
        round(f * capacity["capacity_qps"], 1) for f in DEFAULT_RATE_FRACTIONS
    ]
    windows = settle_windows(router)
    unsettled = False  # the last step broke the SLO or was refused: settle before the next

    def step(rate: float) -> dict[str, Any]:
        nonlocal unsettled
        settling = (
            settle(target, queries, k, point, windows, cfg.settle_max_s, cfg.timeout_s)
            if unsettled
            else NO_SETTLE
        )
        spec = LoadSpec(
            target=target,
            rpc="search",
            mode="open",
            concurrency=cfg.concurrency,
            qps=rate,
            duration=step_seconds(cfg, rate),
            warmup=cfg.warmup_s,
            processes=cfg.processes,
            k=k,
            nprobe=point.get("nprobe", 0),
            rerank=point.get("rerank", 0),
            timeout=cfg.timeout_s,
            record=True,  # every answer's degraded flag
        )
        start_at = time.time() + 2.0 + 0.5 * cfg.processes  # time for the spawns to import
        window = (start_at + spec.warmup, start_at + spec.warmup + spec.duration)
        load = run_load(spec, queries, None, pids, start_at)
        row = {**_step_row("step", rate, load, window, idle_cores), **settling}
        log.info("open loop %.1f/s: %s", rate, row)
        # refused anywhere (warm-up included) or broken: the router may be in an overload
        unsettled = not row["slo_met"] or any(
            code == "RESOURCE_EXHAUSTED" for _, _, code, _ in load["records"]
        )
        return row

    search = rate_search(step, rates, cfg.bisect)
    ratio = search["max_sustained_qps"] / capacity["capacity_qps"]
    answered = [s for s in search["steps"] if s["ok"]]
    cluster_cpu = (
        float(np.median([s["server_cpu_ms_per_query"] for s in answered]))
        if answered
        else float("nan")
    )
    marginal_cpu = (
        float(np.median([s["marginal_cpu_ms_per_query"] for s in answered]))
        if answered
        else float("nan")
    )
    return {
        "config": asdict(cfg),
        "settle_windows": windows,
        "settle_run": {"answers": windows * WINDOW_MIN, "seconds": round(windows * WINDOW_S, 2)},
        "slo_ms": SLO_MS,
        "point": point,
        "point_chosen": how,
        "point_sequential": chosen,
        "point_costs": costs,
        "rates": rates,
        "inprocess": capacity,
        **search,
        "ratio_to_inprocess": ratio,
        "cluster_cpu_ms_per_query": cluster_cpu,  # servers, median over the steps
        "cpu_ratio": capacity["cpu_ms_per_query"] / cluster_cpu,  # in-process / cluster
        "idle_server_cores": idle_cores,
        "cluster_marginal_cpu_ms_per_query": marginal_cpu,  # less the idle CPU, median
        "marginal_cpu_ratio": capacity["cpu_ms_per_query"] / marginal_cpu,
        "target": {
            "text": f"recall@{k} >= 0.95 and the SLO held at an open-loop rate >= 0.5 x "
            "in-process batched capacity",
            "recall": chosen["recall"] if chosen else capacity["recall"],
            "ratio": ratio,
            "met": bool(
                ratio >= 0.5 and (chosen["recall"] if chosen else capacity["recall"]) >= 0.95
            ),
        },
        "notes": notes,
    }


def write(result: dict[str, Any], out_root: Path | None) -> Path:
    out = report.result_dir(result["name"], out_root)
    report.write_json(out / "results.json", result)
    report.write_csv(out / "results.csv", result["rows"])
    report.write_csv(out / "memory.csv", result["memory_per_shard"])
    cols = ["series", "params", "nq", "recall", "p50_ms", "p95_ms", "p99_ms"]
    mcols = [
        "shard",
        "num_items",
        "index_faiss_mib",
        "vectors_npy_mib",
        "rss_after_load_mib",
        "rss_after_queries_mib",
        "rss_file_backed_mib",
        "peak_rss_mib",
    ]
    m = result["machine"]
    lines = [
        f"# {result['name']}",
        "",
        f"- command: `{result['command']}`",
        f"- git revision: `{result['git_revision']}`, date {result['date']}",
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}",
        f"- {result['dataset']['items']} x {result['dataset']['dim']} float32 "
        f"({result['dataset']['vectors_gib']} GiB), IVF-PQ {result['config']['build_params']} "
        f"+ exact re-rank, {result['config']['shards']} shards, k={result['config']['k']}",
        f"- timings (s): { ({k: round(v, 1) for k, v in result['timings'].items()}) }",
        f"- uptime before: `{result['uptime']['before']}`",
        f"- uptime after: `{result['uptime']['after']}`",
        "- the box (2 cores) is shared with other jobs: absolute latencies depend on their "
        "load; the ratios below are measured within this run",
        "",
        "## Latency (one query per request, sequential)",
        "",
        "```",
        report.format_table(result["rows"], cols),
        "```",
        "",
        "## Memory per shard server (MiB)",
        "",
        "RSS includes the file-backed pages of the memory-mapped vectors.npy touched by re-rank.",
        "",
        "```",
        report.format_table(result["memory_per_shard"], mcols),
        "```",
    ]
    if "P4" in result:
        p4 = result["P4"]
        lines += [
            "",
            f"P4 ({p4['target']}): {p4['best_point']} recall {p4['recall']:.3f}, "
            f"p99 {p4['p99_ms']:.1f} ms: {'met' if p4['met'] else 'NOT met'}",
        ]
    if "open_loop" in result:
        lines += ["", *open_loop_lines(result["open_loop"])]
        report.write_csv(out / "open_loop.csv", result["open_loop"]["steps"])
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return out


STEP_COLUMNS = [
    "phase",
    "offered_qps",
    "achieved_qps",
    "sent_in_window",
    "ok",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "errors",
    "degraded",
    "server_cores",
    "server_cpu_ms_per_query",
    "marginal_cpu_ms_per_query",
    "settle_s",
    "settle_refused",
    "slo_met",
    "breaches",
]


def open_loop_lines(ol: dict[str, Any]) -> list[str]:
    cap, cfg, t = ol["inprocess"], ol["config"], ol["target"]
    slo = ol["slo_ms"]
    best = ol["max_sustained_step"]
    lines = [
        "## SLO under load (open loop through the router)",
        "",
        f"Operating point {ol['point']} ({ol['point_chosen']}); one query per request, "
        f"{cfg['processes']} client process(es) on the same box, arrivals at a fixed rate, "
        "latency from each request's scheduled send time (no coordinated omission), "
        f"{cfg['step_s']:g} s measured per rate (longer where needed for "
        f"{cfg['step_min_requests']} requests) after {cfg['warmup_s']:g} s warm-up, "
        f"client deadline {cfg['timeout_s']:g} s, at most {cfg['concurrency']} in flight. "
        f"SLO: p50 < {slo['p50_ms']:g} ms, p95 < {slo['p95_ms']:g} ms, "
        f"p99 <= {slo['p99_ms']:g} ms, every request answered (no shed, no timeout) from every "
        "shard (none degraded). A step after one that broke the SLO or was refused starts once "
        "the router has settled (its adaptive admission limit, shrunk in an overload, grows "
        "back only as windows of answered requests close): requests one at a time until "
        f"{ol['settle_run']['answers']} in a row over at least "
        f"{ol['settle_run']['seconds']:g} s were answered with no refusal, at most "
        f"{cfg['settle_max_s']:g} s; `settle_s` and `settle_refused` are that phase's seconds "
        "and refusals (0: no settle needed).",
        "",
        "```",
        report.format_table(ol["steps"], STEP_COLUMNS),
        "```",
        "",
        *(
            [
                "Cost of each sweep point with the recall (in-process, a short run each: "
                "queries/s on every core and CPU per query; the operating point spends the "
                "least CPU):",
                "",
                "```",
                report.format_table(
                    ol["point_costs"],
                    [
                        "params",
                        "router_recall",
                        "router_p50_ms",
                        "router_p99_ms",
                        "inprocess_qps",
                        "inprocess_cpu_ms_per_query",
                        "inprocess_recall",
                    ],
                ),
                "```",
                "",
            ]
            if ol["point_costs"]
            else []
        ),
        f"In-process (the same bundle's {len(cap['per_shard_k'])} shards loaded in the "
        f"benchmark process, each asked for {cap['per_shard_k'][0]} hits as the router asks, "
        f"merged as the router merges; {cap['batch']} queries per batch, recall@k "
        f"{cap['recall']:.3f}): {cap['faiss_threads_qps']:.0f} queries/s with faiss on "
        f"{cap['cores']} threads, {cap['python_threads_qps']:.0f} queries/s with "
        f"{cap['cores']} Python threads x 1 faiss thread; capacity "
        f"**{cap['capacity_qps']:.0f} queries/s**; {cap['cpu_ms_per_query']:.1f} ms of CPU per "
        "query (the cheaper mode).",
        "",
    ]
    if not np.isnan(ol["cluster_cpu_ms_per_query"]):
        lines += [
            f"CPU per query (independent of how much of the shared box a run gets): the "
            f"cluster's servers {ol['cluster_cpu_ms_per_query']:.1f} ms (median over the "
            f"steps), in-process {cap['cpu_ms_per_query']:.1f} ms: **{ol['cpu_ratio']:.2f}x** "
            "(the share of in-process capacity the cluster could reach if CPU were the limit). "
            f"Idle, the servers use {ol['idle_server_cores']:.2f} cores (timers, polling; "
            f"measured during the in-process run); less that, the cluster's marginal CPU is "
            f"{ol['cluster_marginal_cpu_ms_per_query']:.1f} ms per query: "
            f"**{ol['marginal_cpu_ratio']:.2f}x**.",
            "",
        ]
    if best is not None:
        lines.append(
            f"Highest rate holding the SLO: **{ol['max_sustained_qps']:g} requests/s** "
            f"(p50 {best['p50_ms']:.1f} / p95 {best['p95_ms']:.1f} / p99 {best['p99_ms']:.1f} ms)"
            + (
                f"; broken at {ol['first_broken_qps']:g}/s"
                if ol["upper_bound_found"]
                else "; every rate tried held it (upper bound not found)"
            )
            + f" = **{ol['ratio_to_inprocess']:.2f}x** in-process capacity."
        )
    else:
        lines.append(
            f"No rate tried held the SLO (the lowest, {ol['steps'][0]['offered_qps']:g}/s, "
            f"broke it: {ol['steps'][0]['breaches']})."
        )
    lines += [
        "",
        f"Target ({t['text']}): recall {t['recall']:.3f}, ratio {t['ratio']:.2f}: "
        + ("met" if t["met"] else "**NOT met**"),
    ]
    lines += [f"- note: {n}" for n in ol["notes"]]
    return lines


def cmd(args: argparse.Namespace) -> int:
    if args.prepare_only:
        _, _, bundle, timings = prepare(args, not args.no_progress)
        print(f"bundle: {bundle}")
        print(f"timings (s): { ({k: round(v, 1) for k, v in timings.items()}) }")
        return 0
    result = run(args)
    out = write(result, args.out)
    print((out / "README.md").read_text())
    return 0
