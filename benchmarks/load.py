"""`annfleet bench load`: closed- and open-loop load on Retrieval.Search / Retrieval.Retrieve.

N concurrent asyncio requests spread over P client processes (spawned, so one Python
process's GIL is not the bottleneck), for a bounded duration. Closed loop: each of the N
in-flight slots sends its next request as soon as the previous one returns. Open loop: each
process sends at rate QPS/P on a fixed schedule, and latency is measured from the scheduled
send time (no coordinated omission); requests the schedule could not start because N were
already in flight are counted as ``CLIENT_BACKLOG`` errors. The client's adaptive throttle
is off unless ``LoadSpec.throttle_k`` > 0 (the load measures the servers); its local
rejections are counted as ``THROTTLED``. Loopback targets only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import procstat, report

log = logging.getLogger(__name__)

LOOPBACK = ("127.", "localhost", "[::1]", "::1")


@dataclass(frozen=True)
class LoadSpec:
    target: str
    rpc: str = "search"  # "search" | "retrieve"
    mode: str = "closed"  # "closed" | "open"
    concurrency: int = 32
    qps: float = 1000.0
    duration: float = 10.0
    warmup: float = 1.0
    processes: int = 1
    k: int = 100
    ef_search: int = 0
    nprobe: int = 0
    rerank: int = 0
    timeout: float = 1.0
    record: bool = False  # keep every request's outcome (time series, e.g. `bench faults`)
    throttle_k: float = 0.0  # > 0: the client's adaptive throttle with this k (0: off)
    report_timeout: bool = True  # the client sends annfleet-timeout-ms (queue-time shedding)
    nice: int = 0  # > 0: the load processes lower their CPU priority by this much (os.nice)


@dataclass
class WorkerResult:
    latencies: np.ndarray  # (n,) float64 seconds, successful requests in the window
    errors: dict[str, int]
    sent: int
    cpu_seconds: float
    pid: int
    records: list[tuple[float, float, str, bool]] | None = None  # with spec.record
    sent_in_window: int = 0  # requests sent with a scheduled time in the measured window


Record = tuple[float, float, str, bool]  # (scheduled time.time(), latency s, "OK" | code, degraded)


def _check_loopback(target: str) -> None:
    if not target.startswith(LOOPBACK):
        raise ValueError(f"load targets must be loopback addresses, got {target!r}")


async def _worker_async(
    spec: LoadSpec, queries: np.ndarray, user_ids: np.ndarray, seed: int, start_at: float
) -> WorkerResult:
    from annfleet.client import AnnfleetError, AsyncClient, ThrottleConfig, Throttled
    from annfleet.client.errors import RETRY_BACKOFF_S

    rng = np.random.default_rng(seed)
    per_proc = max(1, spec.concurrency // spec.processes)
    measure_from = start_at + spec.warmup
    end_at = measure_from + spec.duration
    lat: list[float] = []
    errors: Counter[str] = Counter()
    records: list[Record] = []
    sent = sent_in_window = 0
    params = {"ef_search": spec.ef_search, "nprobe": spec.nprobe, "rerank": spec.rerank}

    throttle = ThrottleConfig(k=spec.throttle_k) if spec.throttle_k > 0 else None
    async with AsyncClient(
        spec.target,
        timeout=spec.timeout,
        retries=0,
        throttle=throttle,
        report_timeout=spec.report_timeout,
    ) as client:

        async def one(t_sched: float) -> str:
            nonlocal sent, sent_in_window
            sent += 1
            sent_in_window += t_sched >= measure_from
            try:
                if spec.rpc == "search":
                    result: Any = await client.search(
                        queries[rng.integers(len(queries))], spec.k, **params
                    )
                else:
                    result = await client.retrieve(
                        int(user_ids[rng.integers(len(user_ids))]), spec.k
                    )
            except Throttled:
                code = "THROTTLED"  # rejected by the client's own throttle, never sent
            except AnnfleetError as exc:
                code = getattr(exc.code, "name", str(exc.code))
            except Exception as exc:  # transport-level surprises are reported, not fatal
                code = type(exc).__name__
            else:
                code = ""
            latency = time.time() - t_sched
            if spec.record:
                degraded = bool(not code and result.coverage.degraded)
                records.append((t_sched, latency, code or "OK", degraded))
            if t_sched >= measure_from:
                if code:
                    errors[code] += 1
                else:
                    lat.append(latency)
            return code

        await asyncio.sleep(max(0.0, start_at - time.time()))
        if spec.mode == "closed":

            async def slot() -> None:
                while (now := time.time()) < end_at:
                    if await one(now) in ("RESOURCE_EXHAUSTED", "THROTTLED"):
                        # shed: back off as the client's own retry would, rather than
                        # spending the router's time on an immediate resend
                        await asyncio.sleep(RETRY_BACKOFF_S)

            await asyncio.gather(*(slot() for _ in range(per_proc)))
        else:
            interval = spec.processes / spec.qps
            inflight: set[asyncio.Task[str]] = set()
            t_next = start_at + rng.uniform(0, interval)
            while t_next < end_at:
                delay = t_next - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(inflight) >= per_proc:
                    if t_next >= measure_from:
                        errors["CLIENT_BACKLOG"] += 1
                    if spec.record:
                        records.append((t_next, float("nan"), "CLIENT_BACKLOG", False))
                else:
                    task = asyncio.create_task(one(t_next))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                t_next += interval
            if inflight:
                await asyncio.wait(inflight, timeout=spec.timeout + 1)
    return WorkerResult(
        np.asarray(lat),
        dict(errors),
        sent,
        procstat.own_cpu_seconds(),
        os.getpid(),
        records if spec.record else None,
        sent_in_window,
    )


def _worker(
    spec: LoadSpec, queries: np.ndarray, user_ids: np.ndarray, seed: int, start_at: float, out: Any
) -> None:
    if spec.nice:
        os.nice(spec.nice)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(_worker_async(spec, queries, user_ids, seed, start_at))
        out.put(("ok", result))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def run_load(
    spec: LoadSpec,
    queries: np.ndarray,
    user_ids: np.ndarray | None = None,
    server_pids: dict[str, int] | None = None,
    start_at: float | None = None,
) -> dict[str, Any]:
    """Run the load; returns QPS, latency percentiles, errors by code and CPU per process.

    ``start_at`` (``time.time()``, default: in a few seconds, once the client processes are
    up) is when sending starts; measuring starts ``spec.warmup`` later. With
    ``spec.record`` the result also has ``records``: every request's (scheduled time,
    latency, "OK" or status code, degraded), sorted by time.
    """
    _check_loopback(spec.target)
    if spec.rpc == "retrieve" and (user_ids is None or len(user_ids) == 0):
        raise ValueError("retrieve load needs user ids")
    uids = user_ids if user_ids is not None else np.zeros(1, dtype=np.int64)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    if start_at is None:
        start_at = time.time() + 2.0 + 0.5 * spec.processes  # time for the spawns to import
    procs = [
        ctx.Process(target=_worker, args=(spec, queries, uids, i, start_at, out), daemon=True)
        for i in range(spec.processes)
    ]
    for p in procs:
        p.start()
    server_pids = server_pids or {}
    # Server CPU over the measured window only.
    time.sleep(max(0.0, start_at + spec.warmup - time.time()))
    cpu0 = {n: procstat.cpu_seconds(p) for n, p in server_pids.items()}
    t0 = time.time()
    time.sleep(max(0.0, start_at + spec.warmup + spec.duration - time.time()))
    cpu1 = {n: procstat.cpu_seconds(p) for n, p in server_pids.items()}
    window = time.time() - t0
    results: list[WorkerResult] = []
    failures: list[str] = []
    for _ in procs:
        status, value = out.get(timeout=spec.timeout + spec.duration + 60)
        if status == "ok":
            results.append(value)
        else:
            failures.append(value)
    for p in procs:
        p.join(10)
    if failures:
        raise RuntimeError(f"load worker failed: {failures[0]}")
    lat = np.concatenate([r.latencies for r in results]) if results else np.empty(0)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    n_ok, n_err = len(lat), sum(errors.values())
    sent_in_window = sum(r.sent_in_window for r in results)
    cpu: dict[str, dict[str, float | str]] = {
        name: {
            "cpu_seconds": round(cpu1[name] - cpu0[name], 2),
            "cores_used": round((cpu1[name] - cpu0[name]) / window, 2),
        }
        for name in server_pids
    }
    for i, r in enumerate(results):
        # Client processes: whole-life CPU (includes start-up and warm-up), for scale only.
        cpu[f"client-{i}"] = {
            "cpu_seconds": round(r.cpu_seconds, 2),
            "cores_used": round(r.cpu_seconds / (spec.duration + spec.warmup + 1.0), 2),
            "note": "whole process life incl. import and warm-up",
        }
    records = sorted(r for w in results for r in (w.records or ()))
    return {
        **({"records": records} if spec.record else {}),
        "spec": asdict(spec),
        "achieved_qps": n_ok / spec.duration,
        "ok": n_ok,
        "errors": dict(errors),
        "error_rate": n_err / max(1, n_ok + n_err),
        # sent in the window = ok + errors other than CLIENT_BACKLOG + unfinished (still in
        # flight when the client gave up waiting, timeout + 1 s after the window)
        "sent_in_window": sent_in_window,
        "unfinished": sent_in_window - n_ok - (n_err - errors.get("CLIENT_BACKLOG", 0)),
        **report.percentiles(lat),
        "cpu": cpu,
    }


@contextlib.contextmanager
def _cluster_for(
    args: argparse.Namespace,
) -> Iterator[tuple[str, dict[str, int], np.ndarray, np.ndarray]]:
    """(target, server pids, query vectors, user ids): the given target or a local cluster."""
    from annfleet.benchmarks import datasets
    from annfleet.benchmarks.recall_latency import ensure_bundle, local_cluster

    data_dir = args.data_dir or datasets.default_data_dir()
    if args.bundle:
        ds = datasets.from_bundle(args.bundle)
    else:
        ds = datasets.synthetic(args.items, args.dim, queries=1000, data_dir=data_dir)
    qids = ds.query_ids if ds.query_ids is not None else np.zeros(0, dtype=np.int64)
    if args.target:
        yield args.target, {}, ds.queries, qids
        return
    bundle = args.bundle or ensure_bundle(ds, "hnsw", {}, args.shards, data_dir)
    config = getattr(args, "config", None)  # --config: the local cluster's YAML
    with local_cluster(Path(bundle), args.cluster_omp_threads, config) as cluster:
        yield cluster.router_target, dict(cluster.pids), ds.queries, qids


def table_row(result: dict[str, Any]) -> dict[str, Any]:
    s = result["spec"]
    return {
        "rpc": s["rpc"],
        "mode": s["mode"],
        "concurrency": s["concurrency"],
        "target_qps": s["qps"] if s["mode"] == "open" else None,
        "processes": s["processes"],
        "achieved_qps": result["achieved_qps"],
        "p50_ms": result["p50_ms"],
        "p95_ms": result["p95_ms"],
        "p99_ms": result["p99_ms"],
        "p999_ms": result["p999_ms"],
        "errors": result["errors"] or "",
        "server_cores": round(
            sum(v["cores_used"] for n, v in result["cpu"].items() if not n.startswith("client")), 2
        ),
    }


def readme(head: dict[str, Any], result: dict[str, Any]) -> str:
    m = head["machine"]
    cpu = "\n".join(
        f"- {n}: {c['cpu_seconds']} CPU s, {c['cores_used']} cores"
        + (f" ({c['note']})" if "note" in c else "")
        for n, c in result["cpu"].items()
    )
    return (
        f"# {head['name']}\n\n- command: `{head['command']}`\n"
        f"- git revision: `{head['git_revision']}`, date {head['date']}\n"
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}\n"
        f"- target: {result['spec']['target']}; loopback; achieved QPS counts successful "
        f"requests in the {result['spec']['duration']} s window after "
        f"{result['spec']['warmup']} s warm-up\n\n```\n"
        + report.format_table([table_row(result)], list(table_row(result)))
        + f"\n```\n\nCPU over the window (servers) / process life (clients):\n\n{cpu}\n"
    )


def cmd(args: argparse.Namespace) -> int:
    with _cluster_for(args) as (target, pids, queries, user_ids):
        spec = LoadSpec(
            target=target,
            rpc=args.rpc,
            mode=args.mode,
            concurrency=args.concurrency,
            qps=args.qps,
            duration=args.duration,
            warmup=args.warmup,
            processes=args.processes,
            k=args.k,
            ef_search=args.ef,
            nprobe=args.nprobe,
            rerank=args.rerank,
            timeout=args.timeout,
        )
        result = run_load(spec, queries, user_ids, pids)
    print(report.format_table([table_row(result)], list(table_row(result))))
    for name, c in result["cpu"].items():
        print(f"cpu {name}: {c['cpu_seconds']} s, {c['cores_used']} cores")
    if args.name:
        out = report.result_dir(args.name, args.out)
        head = report.header(args.name)
        report.write_json(out / "results.json", {**head, **result})
        report.write_csv(out / "results.csv", [table_row(result)])
        (out / "README.md").write_text(readme(head, result))
        print(f"results: {out}")
    return 1 if result["ok"] == 0 else 0
