"""`annfleet bench recall-latency`: recall@k vs exact and single-query latency, per system.

For one dataset and one index type it sweeps the search parameters (HNSW efSearch; IVF-PQ
nprobe x re-rank depth) and the shard count, and measures, on the same queries in the same
run: (a) faiss in this process on the whole catalogue, (b) the client scattering directly to
the shard servers, (c) the router; plus optional peers (HNSW libraries and servers).
Every query is one request, issued one after the other (latency, not throughput). With
``peer_throughput``, each server peer also gets a closed-loop QPS run at its cheapest point
with recall >= ``throughput_recall`` (as ``--throughput`` does for the cluster).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import report
from annfleet.benchmarks.datasets import Dataset, default_data_dir, params_key
from annfleet.benchmarks.groundtruth import cached_exact_topk, recall_at_k
from annfleet.benchmarks.systems import (
    CACHED_PEERS,
    InProcessFaiss,
    RouterSystem,
    ScatterSystem,
    System,
    make_peer,
    peer_key,
)

log = logging.getLogger(__name__)

CLUSTER_SYSTEMS = ("scatter", "router")
ALL_SYSTEMS = ("faiss", "scatter", "router")
RECALL_LEVELS = tuple(round(0.90 + 0.01 * i, 2) for i in range(10))  # 0.90 .. 0.99


@dataclass
class SweepConfig:
    index_type: str = "hnsw"
    build_params: dict[str, int] = field(default_factory=dict)
    search_points: list[dict[str, int]] = field(default_factory=list)
    shard_counts: list[int] = field(default_factory=lambda: [4])
    k: int = 100
    systems: list[str] = field(default_factory=lambda: list(ALL_SYSTEMS))
    peers: list[str] = field(default_factory=list)
    warmup: int = 20
    max_seconds_per_point: float = 20.0
    min_queries_per_point: int = 100
    save_ids: bool = False
    breakdown: bool = False
    cluster_omp_threads: int = 0  # >0: OMP_NUM_THREADS for the cluster's processes
    cluster_config: Path | None = None  # YAML of the local cluster (default: built-in)
    # Closed-loop QPS of the server peers (milvus-lite, chroma), as --throughput for the cluster.
    peer_throughput: bool = False
    throughput_recall: float = 0.95
    throughput_seconds: float = 10.0
    throughput_concurrency: int = 32


def default_points(index_type: str, k: int, quick: bool = False) -> list[dict[str, int]]:
    """The default sweep: efSearch for HNSW, nprobe x rerank for IVF-PQ, nothing for Flat."""
    if index_type == "hnsw":
        efs = [1.0, 1.5, 2.5, 4.0] if quick else [1.0, 1.28, 1.6, 2.0, 2.56, 3.84, 5.12, 8.0]
        return [{"ef_search": max(k, round(k * f))} for f in efs]
    if index_type == "ivfpq":
        nprobes = [8, 32] if quick else [4, 8, 16, 32, 64]
        reranks = [2 * k, 4 * k] if quick else [k, 2 * k, 4 * k, 8 * k]
        return [{"nprobe": n, "rerank": r} for n, r in itertools.product(nprobes, reranks)]
    return [{}]


# ---------------------------------------------------------------- measurement


def measure(
    system: System,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    params: dict[str, int],
    cfg: SweepConfig,
    *,
    desc: str = "",
    progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray]:
    """One sweep point: each query as one request, in sequence -> (row, found ids (nq, k))."""
    for q in queries[: cfg.warmup]:
        system.search(q, k, params)
    nq = len(queries)
    found = np.full((nq, k), -1, dtype=np.int64)
    lat = np.empty(nq, dtype=np.float64)
    bar = _bar(nq, desc, progress)
    t_start = time.perf_counter()
    done = 0
    for i in range(nq):
        t0 = time.perf_counter()
        ids = system.search(queries[i], k, params)
        lat[i] = time.perf_counter() - t0
        n = min(k, len(ids))
        found[i, :n] = ids[:n]
        done = i + 1
        bar.update(1)
        if (
            done >= cfg.min_queries_per_point
            and time.perf_counter() - t_start > cfg.max_seconds_per_point
        ):
            break
    bar.close()
    row = {
        "nq": done,
        "recall": recall_at_k(found[:done], truth[:done], k),
        **report.percentiles(lat[:done]),
    }
    row["qps_single_client"] = 1e3 / row["mean_ms"] if row["mean_ms"] > 0 else float("nan")
    return row, found[:done]


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q", leave=False, disable=not enabled)


# ---------------------------------------------------------------- bundles and clusters


def ensure_bundle(
    dataset: Dataset,
    index_type: str,
    build_params: dict[str, int],
    num_shards: int,
    data_dir: Path,
    progress: bool = True,
) -> Path:
    """The dataset's bundle for this index and shard count, built once and cached."""
    from annfleet.bundle import Bundle
    from annfleet.server.builder import build_bundle

    if dataset.bundle_path is not None:
        existing = Bundle.open(dataset.bundle_path, verify=False)
        shard0 = existing.shard(0)["index"]
        if (
            existing.num_shards == num_shards
            and shard0.get("type") == index_type
            and all(shard0.get("params", {}).get(key) == v for key, v in build_params.items())
        ):
            return dataset.bundle_path
    key = params_key(
        {
            "data": dataset.description,
            "index": index_type,
            "params": build_params,
            "shards": num_shards,
        }
    )
    out = data_dir / "bundles" / f"{dataset.name}-{index_type}-s{num_shards}-{key}"
    if (out / "manifest.json").is_file():
        return out
    users: dict[str, Any] = {}
    if dataset.query_ids is not None:
        users = {"user_ids": dataset.query_ids, "user_vectors": dataset.queries}
    log.info("building bundle %s", out)
    t0 = time.perf_counter()
    build_bundle(
        out,
        dataset.ids,
        dataset.vectors,
        num_shards=num_shards,
        index_type=index_type,
        index_params=build_params,
        metric=dataset.metric,
        progress=progress,
        overwrite=True,
        **users,
    )
    # Beside the bundle, not in it: the build time survives cache hits.
    report.write_json(
        out.with_name(out.name + ".build.json"),
        {
            "build_seconds": round(time.perf_counter() - t0, 1),
            "date": report.header("build")["date"],
        },
    )
    return out


@contextmanager
def local_cluster(
    bundle_path: Path, omp_threads: int = 0, config_path: Path | None = None
) -> Iterator[Any]:
    """annfleet.cluster.LocalCluster over a bundle: shard servers + router on free ports.

    ``omp_threads`` > 0 starts the children with OMP_NUM_THREADS set (the default thread
    count of every thread's OpenMP, including the servers' executor threads); 0 leaves the
    environment as it is. ``config_path``: the cluster's YAML (e.g. router admission).
    """
    import os

    from annfleet.cluster import LocalCluster
    from annfleet.config import load_config

    saved = os.environ.get("OMP_NUM_THREADS")
    if omp_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(omp_threads)
    try:
        cluster = (
            LocalCluster(bundle_path)
            if config_path is None
            else LocalCluster(
                bundle_path, load_config(config_path.resolve()), config_path=config_path.resolve()
            )
        ).start()
    finally:
        if omp_threads > 0:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
    try:
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------- the run


def run(
    dataset: Dataset,
    cfg: SweepConfig,
    *,
    name: str,
    out_root: Path | None = None,
    data_dir: Path | None = None,
    progress: bool = True,
    throughput: Callable[..., dict[str, Any]] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the sweep, write the result directory, return the result dict."""
    data_dir = data_dir or default_data_dir()
    k = cfg.k
    points = cfg.search_points or default_points(cfg.index_type, k)
    header = report.header(name, argv)
    t_run = time.perf_counter()
    truth = cached_exact_topk(
        data_dir / "groundtruth" / f"{dataset.key}-k{k}.npy",
        dataset.vectors,
        dataset.ids,
        dataset.queries,
        k,
        dataset.metric,
        progress=progress,
    )
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    builds: dict[str, float] = {}
    saved: dict[str, np.ndarray] = {}

    def record(
        series: str,
        system: str,
        shards: int | None,
        params: dict[str, int],
        row: dict[str, Any],
        found: np.ndarray,
    ) -> None:
        full = {
            "series": series,
            "system": system,
            "index": cfg.index_type,
            "shards": shards,
            "params": params,
            "k": k,
            **row,
        }
        rows.append(full)
        if cfg.save_ids:
            saved[f"{len(rows) - 1}"] = found
        log.info(
            "%s %s recall=%.4f p50=%.3fms p99=%.3fms",
            series,
            params,
            row["recall"],
            row["p50_ms"],
            row["p99_ms"],
        )

    if "faiss" in cfg.systems:
        cache = (
            data_dir
            / "indexes"
            / f"{dataset.key}-{cfg.index_type}-{params_key(cfg.build_params)}.faiss"
        )
        t0 = time.perf_counter()
        faiss_sys = InProcessFaiss(
            dataset.ids,
            dataset.vectors,
            dataset.metric,
            cfg.index_type,
            cfg.build_params,
            cache=cache,
        )
        builds["faiss-inprocess"] = time.perf_counter() - t0
        for p in points:
            row, found = measure(
                faiss_sys, dataset.queries, truth, k, p, cfg, desc=f"faiss {p}", progress=progress
            )
            record("faiss in-process", "faiss", 1, p, row, found)
        if throughput is None:
            del faiss_sys

    cluster_systems = [s for s in cfg.systems if s in CLUSTER_SYSTEMS]
    throughput_result: dict[str, Any] | None = None
    breakdown_result: dict[str, Any] | None = None
    for shards in cfg.shard_counts if cluster_systems else []:
        t0 = time.perf_counter()
        bundle = ensure_bundle(
            dataset, cfg.index_type, cfg.build_params, shards, data_dir, progress
        )
        builds[f"bundle-{shards}-shards"] = time.perf_counter() - t0
        with local_cluster(bundle, cfg.cluster_omp_threads, cfg.cluster_config) as cluster:
            systems: dict[str, System] = {}
            if "scatter" in cluster_systems:
                systems["scatter"] = ScatterSystem(list(cluster.shard_targets))
            if "router" in cluster_systems:
                systems["router"] = RouterSystem(cluster.router_target)
            try:
                for p in points:
                    # Same queries, same params, back to back: the P1 comparison.
                    for sname, system in systems.items():
                        row, found = measure(
                            system,
                            dataset.queries,
                            truth,
                            k,
                            p,
                            cfg,
                            desc=f"{sname} x{shards} {p}",
                            progress=progress,
                        )
                        record(f"{sname} ({shards} shards)", sname, shards, p, row, found)
                if cfg.breakdown and shards == cfg.shard_counts[-1]:
                    from annfleet.benchmarks.breakdown import breakdown

                    pick = _breakdown_point(rows, shards, points)
                    breakdown_result = breakdown(cluster, dataset.queries, k, pick)
                if throughput is not None and shards == cfg.shard_counts[-1]:
                    throughput_result = throughput(
                        cluster=cluster,
                        dataset=dataset,
                        truth=truth,
                        rows=rows,
                        cfg=cfg,
                        data_dir=data_dir,
                    )
            finally:
                for system in systems.values():
                    system.close()

    peer_tp: dict[str, dict[str, Any]] = {}
    if cfg.peers:
        hnsw = cfg.build_params if cfg.index_type == "hnsw" else {}
        peer_points = points if cfg.index_type == "hnsw" else default_points("hnsw", k)
        for peer_name in cfg.peers:
            t0 = time.perf_counter()
            peer_hnsw = {"m": 32, "ef_construction": 200, **hnsw}
            extra: dict[str, Any] = {}
            if peer_key(peer_name) in CACHED_PEERS:  # built once, beside the bundles
                extra["cache"] = (
                    data_dir
                    / "peers"
                    / f"{peer_key(peer_name)}-{dataset.key}-{params_key(peer_hnsw)}"
                )
            peer, why = make_peer(
                peer_name,
                dataset.ids,
                dataset.vectors,
                dataset.metric,
                peer_hnsw,
                progress=progress,
                **extra,
            )
            if peer is None:
                notes.append(f"skipped {why}")
                continue
            builds[peer.name] = time.perf_counter() - t0
            notes += peer.notes
            try:
                for p in peer_points:
                    row, found = measure(
                        peer,
                        dataset.queries,
                        truth,
                        k,
                        p,
                        cfg,
                        desc=f"{peer.name} {p}",
                        progress=progress,
                    )
                    record(f"{peer.name} (peer)", peer.name, 1, p, row, found)
                if cfg.peer_throughput and peer.pids:
                    peer_tp[peer.name] = peer_closed_loop(peer, dataset.queries, rows, cfg)
            finally:
                peer.close()

    result: dict[str, Any] = {
        **header,
        "dataset": {
            "name": dataset.name,
            "items": len(dataset.ids),
            "dim": dataset.dim,
            "queries": len(dataset.queries),
            "metric": dataset.metric,
            **dataset.description,
        },
        "config": {**asdict(cfg), "search_points": points},
        "build_seconds": builds,
        "rows": rows,
        "summary": summarise(rows, k),
        "notes": notes,
        "wall_seconds": round(time.perf_counter() - t_run, 1),
    }
    if throughput_result is not None:
        result["throughput"] = throughput_result
    if peer_tp:
        result["peer_throughput"] = compare_closed_loop(peer_tp, throughput_result)
    if breakdown_result is not None:
        result["breakdown"] = breakdown_result
    out = report.result_dir(name, out_root)
    write_outputs(out, result)
    if cfg.save_ids:
        np.savez(out / "found_ids.npz", **saved)  # type: ignore[arg-type]
    return result


def peer_closed_loop(
    peer: System, queries: np.ndarray, rows: Sequence[dict[str, Any]], cfg: SweepConfig
) -> dict[str, Any]:
    """Closed-loop QPS of a server peer at its cheapest point with recall >= the target
    (its highest-recall point if none reaches it, flagged ``below_recall_target``)."""
    from annfleet.benchmarks.closed_loop import closed_loop

    mine = [r for r in rows if r["system"] == peer.name]
    ok = [r for r in mine if r["recall"] >= cfg.throughput_recall]
    pick = min(ok, key=lambda r: r["p50_ms"]) if ok else max(mine, key=lambda r: r["recall"])
    log.info("%s closed loop at %s (recall %.4f)", peer.name, pick["params"], pick["recall"])
    res = closed_loop(
        peer,
        queries,
        cfg.k,
        dict(pick["params"]),
        concurrency=cfg.throughput_concurrency,
        duration=cfg.throughput_seconds,
    )
    return {
        "recall": pick["recall"],
        "recall_target": cfg.throughput_recall,
        "below_recall_target": not ok,
        **res,
    }


def compare_closed_loop(
    peer_tp: dict[str, dict[str, Any]], cluster: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Each peer's closed loop, with cluster QPS / peer QPS when the cluster was measured."""
    out = {}
    for name, tp in peer_tp.items():
        entry = dict(tp)
        cl = (cluster or {}).get("cluster_closed_loop")
        if cl is not None and tp["achieved_qps"] > 0:
            entry["cluster_qps"] = cl["achieved_qps"]
            entry["cluster_recall"] = cl["recall"]
            entry["cluster_vs_peer_qps"] = cl["achieved_qps"] / tp["achieved_qps"]
        out[name] = entry
    return out


# ---------------------------------------------------------------- analysis


def _breakdown_point(
    rows: Sequence[dict[str, Any]], shards: int, points: Sequence[dict[str, int]]
) -> dict[str, int]:
    """The cheapest router point with recall >= 0.95, else the last point."""
    ok = [
        r for r in rows if r["system"] == "router" and r["shards"] == shards and r["recall"] >= 0.95
    ]
    return dict(min(ok, key=lambda r: r["p50_ms"])["params"]) if ok else dict(points[-1])


def cheapest_at(
    rows: Sequence[dict[str, Any]], series: str, level: float, metric: str = "p50_ms"
) -> float:
    """Lowest latency among the series' points with recall >= level (the Pareto frontier)."""
    vals = [r[metric] for r in rows if r["series"] == series and r["recall"] >= level]
    return min(vals) if vals else float("nan")


def summarise(rows: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    """Target ratios: P1 (router/scatter p50 at each point), P3 (cluster vs in-process p50
    at recall 0.90..0.99 on the frontier), P6 (router vs each peer, p50 and p99)."""
    summary: dict[str, Any] = {"recall_levels": list(RECALL_LEVELS)}
    by_key = {(r["series"], _pkey(r["params"])): r for r in rows}
    p1 = []
    for r in rows:
        if r["system"] != "router":
            continue
        s = by_key.get((f"scatter ({r['shards']} shards)", _pkey(r["params"])))
        if s:
            p1.append(
                {
                    "shards": r["shards"],
                    "params": r["params"],
                    "router_p50_ms": r["p50_ms"],
                    "scatter_p50_ms": s["p50_ms"],
                    "ratio": r["p50_ms"] / s["p50_ms"],
                }
            )
    if p1:
        ratios = [x["ratio"] for x in p1]
        summary["P1_router_vs_scatter_p50"] = {
            "target": "<= 1.25",
            "max": max(ratios),
            "median": float(np.median(ratios)),
            "met": max(ratios) <= 1.25,
            "points": p1,
        }
    series = sorted({r["series"] for r in rows})
    frontier = {
        s: {
            str(lv): {
                "p50_ms": cheapest_at(rows, s, lv),
                "p99_ms": cheapest_at(rows, s, lv, "p99_ms"),
            }
            for lv in RECALL_LEVELS
        }
        for s in series
    }
    summary["frontier"] = frontier
    if "faiss in-process" in series:
        for cl in (s for s in series if s.startswith(("router", "scatter"))):
            levels = {}
            for lv in RECALL_LEVELS:
                a = frontier[cl][str(lv)]["p50_ms"]
                b = frontier["faiss in-process"][str(lv)]["p50_ms"]
                levels[str(lv)] = a / b if not (math.isnan(a) or math.isnan(b)) else None
            known = [v for v in levels.values() if v is not None]
            summary.setdefault("P3_cluster_vs_inprocess_p50", {})[cl] = {
                "target": "<= 1.5 at every recall 0.90-0.99",
                "ratios": levels,
                "max": max(known) if known else None,
                "met": bool(known) and max(known) <= 1.5 and len(known) == len(levels),
            }
    peers = [s for s in series if s.endswith("(peer)")]
    routers = [s for s in series if s.startswith("router")]
    for rt, peer in itertools.product(routers, peers):
        comp = {}
        for lv in RECALL_LEVELS:
            mine, theirs = frontier[rt][str(lv)], frontier[peer][str(lv)]
            if math.isnan(mine["p50_ms"]) or math.isnan(theirs["p50_ms"]):
                continue
            comp[str(lv)] = {
                "p50_ratio": mine["p50_ms"] / theirs["p50_ms"],
                "p99_ratio": mine["p99_ms"] / theirs["p99_ms"],
            }
        summary.setdefault("P6_router_vs_peer", {})[f"{rt} vs {peer}"] = {
            "target": "router p50 and p99 < peer's at the same recall",
            "levels": comp,
            "met": bool(comp)
            and all(v["p50_ratio"] < 1 and v["p99_ratio"] < 1 for v in comp.values()),
        }
    return summary


def _pkey(params: dict[str, int]) -> str:
    return ",".join(f"{a}={b}" for a, b in sorted(params.items()))


# ---------------------------------------------------------------- output

TABLE_COLUMNS = [
    "series",
    "params",
    "nq",
    "recall",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "qps_single_client",
]


def table(result: dict[str, Any]) -> str:
    return report.format_table(result["rows"], TABLE_COLUMNS)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    k = result["config"]["k"]
    report.write_json(out / "results.json", result)
    report.write_csv(out / "results.csv", [{k2: v for k2, v in r.items()} for r in result["rows"]])
    ds = result["dataset"]
    title = (
        f"{result['name']}: {ds['name']} ({ds['items']}x{ds['dim']}, {ds['metric']}), "
        f"{result['config']['index_type']}, k={k} — {result['git_revision']}, "
        f"{result['machine']['cores']} cores"
    )
    if result["rows"]:
        report.plot_recall_latency(out / "recall_latency.png", result["rows"], title, k)
    (out / "README.md").write_text(readme(result))


def readme(result: dict[str, Any]) -> str:
    ds, cfg, m = result["dataset"], result["config"], result["machine"]
    lines = [
        f"# {result['name']}",
        "",
        f"- command: `{result['command']}`",
        f"- git revision: `{result['git_revision']}`, date {result['date']}",
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}",
        f"- dataset: {ds['name']}: {ds['items']} items x {ds['dim']} dims, "
        f"{ds['queries']} queries, metric {ds['metric']}",
        f"- index: {cfg['index_type']} {cfg['build_params'] or '(defaults)'}, k={cfg['k']}, "
        f"shards {cfg['shard_counts']}",
        f"- wall time: {result['wall_seconds']} s",
        "",
        "Each query is one request, sent one after the other; latency is the client-observed",
        "time of one call. Recall is recall@k of the returned ids against exact search.",
        "",
        "![recall vs latency](recall_latency.png)",
        "",
        "Files: [results.json](results.json) (everything, incl. target ratios under `summary`),",
        "[results.csv](results.csv) (one row per system x parameter point).",
        "",
        "```",
        table(result),
        "```",
        "",
    ]
    lines += summary_lines(result)
    if result.get("breakdown"):
        from annfleet.benchmarks.breakdown import lines as breakdown_lines

        lines += [
            "",
            "## Where the time goes (p50 per stage, one query per call)",
            "",
            "```",
            *breakdown_lines(result["breakdown"]),
            "```",
        ]
    if result.get("throughput"):
        lines += ["", "## Throughput (target P2)", "", *throughput_lines(result["throughput"])]
    if result.get("peer_throughput"):
        lines += [
            "",
            "## Closed-loop QPS of the server peers",
            "",
            *peer_throughput_lines(result["peer_throughput"]),
        ]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _json_block(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)


def throughput_lines(t: dict[str, Any]) -> list[str]:
    if "skipped" in t:
        return [f"- skipped: {t['skipped']}"]
    ip, cl, b = t["inprocess"], t["cluster_closed_loop"], t["cluster_batched_rpc"]
    return [
        f"- in-process faiss {ip['params']} recall {ip['recall']:.3f}: "
        f"{ip['batch_all_cores_qps']:.0f} QPS batched on all cores, "
        f"{ip['one_query_per_call_1_thread_qps']:.0f} QPS one query per call on one thread",
        f"- cluster ({cl['shards']} shards) {cl['params']} recall {cl['recall']:.3f}: "
        f"{cl['achieved_qps']:.0f} QPS closed loop, {cl['concurrency']} in flight, "
        f"one query per RPC, p50 {cl['p50_ms']:.1f} ms, p99 {cl['p99_ms']:.1f} ms, "
        f"errors {cl['errors'] or 'none'}",
        f"- cluster, {b['batch']} queries per RPC: {b['qps']:.0f} QPS (recall {b['recall']:.3f})",
        f"- P2 ratio (closed loop / in-process batched): {t['P2_ratio_closed_loop']:.3f}; "
        f"with batched RPCs: {t['P2_ratio_batched_rpc']:.3f} (target >= 0.3): "
        f"{'met' if t['P2_met'] else 'NOT met'}",
        "- CPU (cores used during the window): "
        + ", ".join(f"{n} {c['cores_used']}" for n, c in cl["cpu"].items()),
    ]


def peer_throughput_lines(peers: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, t in peers.items():
        below = " (below the recall target: its best point)" if t["below_recall_target"] else ""
        cpu = ", ".join(f"{n} {c['cores_used']}" for n, c in t["cpu"].items())
        out.append(
            f"- {name} {t['params']} recall {t['recall']:.3f}{below}: "
            f"{t['achieved_qps']:.0f} QPS closed loop, {t['concurrency']} in flight "
            f"(threads of the benchmark process), p50 {t['p50_ms']:.1f} ms, "
            f"p99 {t['p99_ms']:.1f} ms, errors {t['errors'] or 'none'}; server CPU "
            f"{t['server_cpu_ms_per_query']:.2f} ms per query; cores used: {cpu}"
        )
        if "cluster_vs_peer_qps" in t:
            out.append(
                f"  - cluster closed loop {t['cluster_qps']:.0f} QPS (recall "
                f"{t['cluster_recall']:.3f}) / {name}: {t['cluster_vs_peer_qps']:.2f}x"
            )
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    out = ["## Targets", ""]
    if "P1_router_vs_scatter_p50" in s:
        p1 = s["P1_router_vs_scatter_p50"]
        out.append(
            f"- P1 router p50 / direct scatter p50: max {p1['max']:.3f}, "
            f"median {p1['median']:.3f} (target <= 1.25): "
            f"{'met' if p1['met'] else 'NOT met'}"
        )
    for cl, v in s.get("P3_cluster_vs_inprocess_p50", {}).items():
        ratios = ", ".join(
            f"{lv}: {'-' if r is None else f'{r:.2f}'}" for lv, r in v["ratios"].items()
        )
        out.append(
            f"- P3 {cl} p50 / in-process faiss p50 by recall level: {ratios} "
            f"(target <= 1.5 at every level): {'met' if v['met'] else 'NOT met'}"
        )
    for pair, v in s.get("P6_router_vs_peer", {}).items():
        levels = ", ".join(
            f"{lv}: {x['p50_ratio']:.2f}/{x['p99_ratio']:.2f}" for lv, x in v["levels"].items()
        )
        out.append(
            f"- P6 {pair} (p50/p99 ratios by recall): {levels or 'no common recall'}: "
            f"{'met' if v['met'] else 'NOT met'}"
        )
    return out
