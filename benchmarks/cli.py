"""`annfleet bench ...`: recall-latency, load, faults, scale, fuzz.

``register(subparsers)`` adds the ``bench`` command to the annfleet CLI; ``main()`` runs it
standalone (``python -m annfleet.benchmarks.cli bench recall-latency --quick``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _numbers(text: str, kind: type[int] | type[float], expected: str) -> list[Any]:
    """'100,200' -> [100, 200]; anything else is a usage error saying what was expected."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}, e.g. 100,200")
    return values


def _ints(text: str) -> list[int]:
    return _numbers(text, int, "comma-separated integers")


def _floats(text: str) -> list[float]:
    return _numbers(text, float, "comma-separated numbers")


def _kv(text: str) -> dict[str, int]:
    """'m=32,ef_construction=200' -> {"m": 32, "ef_construction": 200}."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected NAME=INTEGER pairs, comma-separated, e.g. m=32,"
                "ef_construction=200"
            ) from None
    return out


# The numeric flags of every bench command, by dest: (least value, whether it may equal it).
# Checked after parsing (one table instead of a type per flag); a list flag (--ef 100,200,
# --shards 2,4, --rates ...) has each value checked.
AT_LEAST = 1, True
ABOVE_ZERO = 0, False
NOT_NEGATIVE = 0, True
# fmt: off
NUMBER_RULES: dict[str, tuple[float, bool]] = {
    **dict.fromkeys((
        "items", "dim", "queries", "k", "concurrency", "processes", "rounds", "client_in_flight",
        "rate", "top", "step_min_requests", "load_processes", "load_concurrency", "per_service",
        "batch", "shards",
    ), AT_LEAST),
    **dict.fromkeys((
        "qps", "duration", "timeout", "throughput_seconds", "max_seconds_per_point", "step_s",
        "load_timeout", "capacity_s", "stop_for", "probe_qps", "rates", "throttle_k",
        "throughput_recall", "load_recall",
    ), ABOVE_ZERO),
    **dict.fromkeys((
        "clusters", "seed", "ef", "nprobe", "rerank", "cluster_omp_threads", "kill_shard",
        "stop_shard", "bisect", "warmup", "kill_at", "stop_at", "hang_ms", "overload", "settle",
        "unloaded_duration", "load_warmup_s", "settle_max_s",
    ), NOT_NEGATIVE),
    "replicas": (2, True),
}
# fmt: on
AT_MOST_ONE = ("throughput_recall", "load_recall")
LIST_AT_LEAST_ONE = ("ef", "nprobe", "rerank")  # as lists: search parameters, no "0 = default"


def bad_number(args: argparse.Namespace) -> str | None:
    """What is wrong with a numeric flag of a bench command (None: nothing)."""
    for dest, (least, inclusive) in NUMBER_RULES.items():
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and dest in LIST_AT_LEAST_ONE:
            least, inclusive = AT_LEAST
        for v in values:
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            low_ok = v >= least if inclusive else v > least
            if not low_ok or not math.isfinite(v):
                bound = f">= {least:g}" if inclusive else f"> {least:g}"
                return f"argument --{dest.replace('_', '-')}: {v!r}: must be {bound}"
            if dest in AT_MOST_ONE and v > 1:
                return f"argument --{dest.replace('_', '-')}: {v!r}: a recall must be in (0, 1]"
    return None


def _checked(parser: argparse.ArgumentParser) -> None:
    """Run the parser's command only when its numeric flags make sense (else: usage, exit 2)."""
    command = parser.get_default("func")

    def run(args: argparse.Namespace) -> int:
        problem = bad_number(args)
        if problem:
            parser.error(problem)
        return int(command(args) or 0)

    parser.set_defaults(func=run)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = subparsers.add_parser(
        "bench", help="benchmarks: recall vs latency, load, faults, scale, fuzz"
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)

    rl = sub.add_parser(
        "recall-latency",
        help="recall@k vs latency: in-process faiss, direct "
        "scatter, router and peers, one query at a time",
    )
    data = rl.add_argument_group("dataset (default: synthetic clustered 200000 x 64)")
    data.add_argument("--items", type=int, default=200_000)
    data.add_argument("--dim", type=int, default=64)
    data.add_argument(
        "--kind",
        choices=("clustered", "uniform"),
        default="clustered",
        help="uniform random vectors are a stress point, not for choosing defaults",
    )
    data.add_argument("--clusters", type=int, default=0, help="0: the catalogue's default (256)")
    data.add_argument("--queries", type=int, default=1000, help="number of queries")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--vectors", type=Path, help="your item vectors (n, d) .npy")
    data.add_argument(
        "--query-vectors",
        "--queries-file",
        dest="query_vectors",
        type=Path,
        help="your query vectors (nq, d) .npy (with --vectors)",
    )
    data.add_argument("--ids", type=Path, help="item ids (n,) .npy (with --vectors)")
    data.add_argument("--metric", choices=("ip", "l2"), default="ip", help="for --vectors")
    data.add_argument("--bundle", type=Path, help="an existing bundle; queries = its users")
    idx = rl.add_argument_group("index and sweep")
    idx.add_argument("--index", choices=("hnsw", "ivfpq", "flat"), default="hnsw")
    idx.add_argument(
        "--build",
        type=_kv,
        default={},
        help="build params, e.g. m=32,ef_construction=200 or nlist=1024,pq_m=16",
    )
    idx.add_argument("--ef", type=_ints, help="HNSW efSearch values, e.g. 100,200,400")
    idx.add_argument("--nprobe", type=_ints, help="IVF-PQ nprobe values")
    idx.add_argument("--rerank", type=_ints, help="IVF-PQ re-rank depths")
    idx.add_argument("--shards", type=_ints, default=[4], help="shard counts, e.g. 1,2,4")
    idx.add_argument("-k", "--k", type=int, default=100)
    idx.add_argument(
        "--systems", default="faiss,scatter,router", help="subset of faiss,scatter,router"
    )
    idx.add_argument(
        "--peers",
        default="auto",
        help="comma list of hnswlib,usearch,qdrant-edge,milvus (or milvus-lite),chroma; "
        "'auto' = all in full mode, hnswlib,usearch in --quick; 'none'",
    )
    idx.add_argument(
        "--max-seconds-per-point",
        type=float,
        default=20.0,
        help="stop a point early after this long (min 100 queries)",
    )
    idx.add_argument(
        "--cluster-omp-threads",
        type=int,
        default=0,
        help="start the cluster with OMP_NUM_THREADS=N (0: inherit the environment)",
    )
    idx.add_argument(
        "--config",
        type=Path,
        help="YAML of the local cluster (e.g. router.admission: fixed); default: built-in",
    )
    idx.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the stages of a cluster query (faiss on one shard, RPC floor, "
        "one shard, scatter, router)",
    )
    idx.add_argument(
        "--throughput",
        action="store_true",
        help="also measure closed-loop cluster QPS vs in-process faiss at the "
        "cheapest point with recall >= --throughput-recall (target P2), and the "
        "closed-loop QPS of the server peers (milvus, chroma) at theirs",
    )
    idx.add_argument("--throughput-recall", type=float, default=0.95)
    idx.add_argument("--throughput-seconds", type=float, default=10.0)
    out = rl.add_argument_group("output")
    out.add_argument("--name", help="result directory name under benchmarks/results/")
    out.add_argument("--out", type=Path, help="results root (default benchmarks/results)")
    out.add_argument(
        "--data-dir",
        type=Path,
        help="cache for datasets, bundles, ground truth "
        "(default $ANNFLEET_BENCH_DATA or ~/.cache/annfleet/bench)",
    )
    out.add_argument("--save-ids", action="store_true", help="also write found_ids.npz")
    out.add_argument(
        "--quick",
        action="store_true",
        help="<= 2 minutes: 50000 x 64, 300 queries, 2 shards, 4 points",
    )
    out.add_argument("--no-progress", action="store_true")
    rl.set_defaults(func=cmd_recall_latency)

    ld = sub.add_parser("load", help="closed/open-loop load on Search or Retrieve")
    ld.add_argument(
        "--target",
        help="router HOST:PORT (loopback); default: start a local "
        "cluster on --bundle or the default synthetic catalogue",
    )
    ld.add_argument("--bundle", type=Path)
    ld.add_argument("--items", type=int, default=200_000)
    ld.add_argument("--dim", type=int, default=64)
    ld.add_argument("--shards", type=int, default=4)
    ld.add_argument("--rpc", choices=("search", "retrieve"), default="search")
    ld.add_argument("--mode", choices=("closed", "open"), default="closed")
    ld.add_argument("--concurrency", type=int, default=32, help="in-flight requests (closed)")
    ld.add_argument("--qps", type=float, default=1000.0, help="target rate (open)")
    ld.add_argument("--duration", type=float, default=10.0, help="seconds of measurement")
    ld.add_argument("--warmup", type=float, default=1.0, help="seconds discarded at start")
    ld.add_argument("--processes", type=int, default=1, help="client processes")
    ld.add_argument("-k", "--k", type=int, default=100)
    ld.add_argument("--ef", type=int, default=0, help="ef_search per request (0: default)")
    ld.add_argument("--nprobe", type=int, default=0)
    ld.add_argument("--rerank", type=int, default=0)
    ld.add_argument("--timeout", type=float, default=1.0)
    ld.add_argument(
        "--cluster-omp-threads",
        type=int,
        default=0,
        help="start the local cluster with OMP_NUM_THREADS=N (0: inherit)",
    )
    ld.add_argument(
        "--overload",
        type=float,
        default=0.0,
        help="F > 0: measure unloaded latency and capacity (closed loop at --concurrency), "
        "then offer F x capacity open-loop: accepted p99, shed fraction, server RSS",
    )
    ld.add_argument(
        "--client-in-flight",
        type=int,
        default=4096,
        help="--overload: requests in flight per client before the schedule backs up",
    )
    ld.add_argument(
        "--generator",
        choices=("auto", "h2load", "python", "client"),
        default="auto",
        help="--overload: who sends the capacity and overload traffic (auto: h2load where "
        "installed, else annfleet's Python client; client: capacity from h2load, then the "
        "overload from annfleet's client with its adaptive throttle, from h2load, and from "
        "the client without throttle)",
    )
    ld.add_argument(
        "--throttle-k",
        type=_floats,
        default=[2.0],
        help="--overload --generator client: the client throttle's k (ThrottleConfig.k); a "
        "comma list runs one throttled overload phase per value (the first is the headline)",
    )
    ld.add_argument(
        "--report-timeout",
        choices=("on", "off", "both"),
        default="on",
        help="--overload --generator client: whether annfleet's client sends its timeout "
        "(annfleet-timeout-ms, which the router sheds on when it queued beyond "
        "router.queue_target_s); both: each throttled phase with it, then without (A/B)",
    )
    ld.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="N",
        help="--overload --generator client: run the throttled client's load processes at "
        "nice N (0-19; the probe stays at 0): callers that do not share the servers' cores, "
        "as in a deployment, on a box where they must",
    )
    ld.add_argument(
        "--cooperative-only",
        action="store_true",
        help="--overload --generator client: only the throttled client's overload phases "
        "(skip h2load's and the unthrottled client's, which no admission rule protects)",
    )
    ld.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="--overload --generator client: seconds between overload phases",
    )
    ld.add_argument(
        "--probe-qps",
        type=float,
        default=20.0,
        help="--overload with h2load: rate of the Python probe that measures accepted latency",
    )
    ld.add_argument(
        "--unloaded-duration",
        type=float,
        default=0.0,
        help="--overload with h2load or client: seconds the probe runs alone for the "
        "unloaded p99 (0: --duration); the ratio over its first --duration seconds is "
        "reported beside",
    )
    ld.add_argument("--config", type=Path, help="cluster YAML for the local cluster")
    ld.add_argument("--name", help="write results under benchmarks/results/<name>/")
    ld.add_argument("--out", type=Path)
    ld.add_argument("--data-dir", type=Path)
    ld.set_defaults(func=cmd_load)

    sc = sub.add_parser(
        "sources",
        help="Retrieve latency: ANN only vs every source vs one source hanging (issue 10)",
    )
    sc.add_argument("--bundle", type=Path, help="a bundle with a user tower (default: MovieLens)")
    sc.add_argument("--config", type=Path, help="the cluster YAML the variants start from")
    sc.add_argument("--qps", type=float, default=30.0, help="open-loop Retrieve rate")
    sc.add_argument("--duration", type=float, default=15.0, help="seconds measured per variant")
    sc.add_argument("--warmup", type=float, default=3.0)
    sc.add_argument("--rounds", type=int, default=2, help="variants interleaved this many times")
    sc.add_argument("-k", "--k", type=int, default=100)
    sc.add_argument("--timeout", type=float, default=1.0)
    sc.add_argument("--client-in-flight", type=int, default=256)
    sc.add_argument("--hang", default="content", help="the source that hangs")
    sc.add_argument("--hang-ms", type=float, default=5000.0, help="how late it answers")
    sc.add_argument("--name", help="write results under benchmarks/results/<name>/")
    sc.add_argument("--out", type=Path)
    sc.set_defaults(func=cmd_sources)

    pf = sub.add_parser(
        "profile",
        help="py-spy profiles of the router and a shard under closed-loop Search load: CPU "
        "µs per query per process split into faiss / gRPC / (de)serialisation / glue",
    )
    pf.add_argument("--bundle", type=Path)
    pf.add_argument("--items", type=int, default=200_000)
    pf.add_argument("--dim", type=int, default=64)
    pf.add_argument("--shards", type=int, default=4)
    pf.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    pf.add_argument("--processes", type=int, default=2, help="client processes")
    pf.add_argument("--duration", type=float, default=20.0, help="seconds profiled")
    pf.add_argument("--warmup", type=float, default=2.0)
    pf.add_argument("-k", "--k", type=int, default=100)
    pf.add_argument("--ef", type=int, default=200, help="ef_search per request")
    pf.add_argument("--timeout", type=float, default=1.0)
    pf.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    pf.add_argument("--top", type=int, default=15, help="places listed per profile")
    pf.add_argument("--no-spy", action="store_true", help="CPU per query only, no py-spy")
    pf.add_argument("--cluster-omp-threads", type=int, default=0)
    pf.add_argument("--config", type=Path, help="cluster YAML for the local cluster")
    pf.add_argument("--name", help="write results under benchmarks/results/<name>/")
    pf.add_argument("--out", type=Path)
    pf.add_argument("--data-dir", type=Path)
    pf.set_defaults(func=cmd_profile, target=None)

    ft = sub.add_parser(
        "faults",
        help="replica loss under open-loop load: kill -9 one replica, SIGSTOP another",
    )
    ft.add_argument("--items", type=int, default=200_000)
    ft.add_argument("--dim", type=int, default=64)
    ft.add_argument("--shards", type=int, default=4)
    ft.add_argument("--replicas", type=int, default=2, help="processes per shard (>= 2)")
    ft.add_argument("--rpc", choices=("search", "retrieve"), default="retrieve")
    ft.add_argument("--qps", type=float, default=200.0, help="open-loop rate")
    ft.add_argument("--concurrency", type=int, default=256, help="most requests in flight")
    ft.add_argument("--processes", type=int, default=1, help="client processes")
    ft.add_argument("-k", "--k", type=int, default=100)
    ft.add_argument("--timeout", type=float, default=1.0, help="client deadline (s)")
    ft.add_argument("--warmup", type=float, default=5.0, help="seconds before t = 0")
    ft.add_argument("--duration", type=float, default=70.0, help="measured seconds")
    ft.add_argument("--kill-at", type=float, default=15.0, help="SIGKILL at t (s)")
    ft.add_argument("--kill-shard", type=int, default=1, help="its replica 0 is killed")
    ft.add_argument("--stop-at", type=float, default=40.0, help="SIGSTOP at t (s)")
    ft.add_argument("--stop-for", type=float, default=10.0, help="SIGCONT this much later")
    ft.add_argument("--stop-shard", type=int, default=2, help="its last replica is stopped")
    ft.add_argument("--name", help="write results under benchmarks/results/<name>/")
    ft.add_argument("--out", type=Path, help="results root (default benchmarks/results)")
    ft.add_argument("--data-dir", type=Path)
    ft.set_defaults(func=cmd_faults)

    sc = sub.add_parser("scale", help="10M-scale recipe: IVF-PQ + re-rank over N shards")
    sc.add_argument("--items", type=int, default=10_000_000)
    sc.add_argument("--dim", type=int, default=64)
    sc.add_argument("--shards", type=int, default=4)
    sc.add_argument("--build", type=_kv, default={}, help="default nlist=2048,pq_m=16,nbits=8")
    sc.add_argument("--nprobe", type=_ints, default=[16, 32, 64])
    sc.add_argument("--rerank", type=_ints, default=[1000, 2000])
    sc.add_argument("-k", "--k", type=int, default=1000)
    sc.add_argument("--queries", type=int, default=300)
    sc.add_argument(
        "--cluster-omp-threads",
        type=int,
        default=0,
        help="start the cluster with OMP_NUM_THREADS=N (0: inherit)",
    )
    sc.add_argument(
        "--config", type=Path, help="YAML of the local cluster (e.g. shards.search_threads)"
    )
    ol = sc.add_argument_group("SLO under load (open loop)")
    ol.add_argument(
        "--open-loop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the sweep: in-process batched capacity and the highest open-loop rate "
        "holding p50 < 20, p95 < 40, p99 <= 50 ms (default: on)",
    )
    ol.add_argument(
        "--load-recall",
        type=float,
        default=0.95,
        help="operating point: the router's cheapest sweep point with this recall@k",
    )
    ol.add_argument(
        "--load-params",
        type=_kv,
        default={},
        help="operating point instead, e.g. nprobe=32,rerank=1000",
    )
    ol.add_argument(
        "--rates",
        type=_floats,
        default=None,
        help="arrival rates (requests/s) to step through; default 0.1,0.2,...,0.8,1.0 x "
        "in-process capacity",
    )
    ol.add_argument("--step-s", type=float, default=10.0, help="measured seconds per rate")
    ol.add_argument(
        "--step-min-requests",
        type=int,
        default=300,
        help="lengthen a step at a low rate until its window holds this many requests",
    )
    ol.add_argument("--load-warmup-s", type=float, default=2.0, help="warm-up per rate")
    ol.add_argument(
        "--bisect", type=int, default=2, help="steps between the last rate held and the first not"
    )
    ol.add_argument("--load-processes", type=int, default=1, help="client processes")
    ol.add_argument(
        "--load-concurrency", type=int, default=512, help="most requests in flight (client)"
    )
    ol.add_argument("--load-timeout", type=float, default=1.0, help="client deadline (s)")
    ol.add_argument(
        "--settle-max-s",
        type=float,
        default=30.0,
        help="after a step that broke the SLO: at most this long settling the router (one "
        "request at a time until a run is answered with no refusal) before the next step",
    )
    ol.add_argument(
        "--capacity-s", type=float, default=10.0, help="seconds of in-process batched search"
    )
    sc.add_argument(
        "--prepare-only",
        action="store_true",
        help="build (or find cached) dataset, ground truth and bundle, then exit",
    )
    sc.add_argument("--name", default=None)
    sc.add_argument("--out", type=Path)
    sc.add_argument("--data-dir", type=Path)
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(func=cmd_scale)

    fz = sub.add_parser(
        "fuzz", help="hostile requests to every RPC of a local cluster, counted by status code"
    )
    fz.add_argument(
        "--per-service", type=int, default=10_000, help="requests per service (split over RPCs)"
    )
    fz.add_argument("--batch", type=int, default=100, help="requests in flight per batch")
    fz.add_argument("--seed", type=int, default=None, help="derandomize hypothesis")
    fz.add_argument("--name", help="write results under benchmarks/results/<name>/")
    fz.add_argument("--out", type=Path)
    fz.add_argument("--data-dir", type=Path)
    fz.set_defaults(func=cmd_fuzz)
    for command in sub.choices.values():
        _checked(command)


# ---------------------------------------------------------------- commands


def cmd_recall_latency(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks import datasets
    from annfleet.benchmarks.recall_latency import SweepConfig, default_points, run, table

    if args.peers == "auto":
        peers = (
            ["hnswlib", "usearch"]
            if args.quick
            else ["hnswlib", "usearch", "qdrant-edge", "milvus", "chroma"]
        )
    elif args.peers == "none":
        peers = []
    else:
        from annfleet.benchmarks.systems import peer_key

        peers = [p for p in args.peers.split(",") if p]
        try:
            for p in peers:
                peer_key(p)
        except ValueError as exc:
            print(f"--peers: {exc}", file=sys.stderr)
            return 2
    data_dir = args.data_dir or datasets.default_data_dir()
    if args.quick:
        args.items, args.queries = min(args.items, 50_000), min(args.queries, 300)
        if args.shards == [4]:
            args.shards = [2]
        args.max_seconds_per_point = min(args.max_seconds_per_point, 5.0)
    if args.bundle:
        ds = datasets.from_bundle(args.bundle, limit_queries=args.queries, seed=args.seed)
    elif args.vectors:
        if not args.query_vectors:
            print("--vectors needs --query-vectors Q.npy", file=sys.stderr)
            return 2
        ds = datasets.from_files(
            args.vectors,
            args.query_vectors,
            ids=args.ids,
            metric=args.metric,
            limit_queries=args.queries,
        )
    else:
        ds = datasets.synthetic(
            args.items,
            args.dim,
            queries=args.queries,
            kind=args.kind,
            clusters=args.clusters,
            seed=args.seed,
            data_dir=data_dir,
        )
    points = default_points(args.index, args.k, quick=args.quick)
    if args.index == "hnsw" and args.ef:
        points = [{"ef_search": e} for e in args.ef]
    if args.index == "ivfpq" and (args.nprobe or args.rerank):
        nprobes = args.nprobe or sorted({p["nprobe"] for p in points})
        reranks = args.rerank or sorted({p["rerank"] for p in points})
        points = [{"nprobe": n, "rerank": r} for n in nprobes for r in reranks]
    cfg = SweepConfig(
        index_type=args.index,
        build_params=args.build,
        search_points=points,
        shard_counts=args.shards,
        k=args.k,
        systems=[s for s in args.systems.split(",") if s],
        peers=peers,
        max_seconds_per_point=args.max_seconds_per_point,
        save_ids=args.save_ids,
        breakdown=args.breakdown,
        cluster_omp_threads=args.cluster_omp_threads,
        cluster_config=args.config,
        peer_throughput=args.throughput,
        throughput_recall=args.throughput_recall,
        throughput_seconds=args.throughput_seconds,
    )
    name = args.name or ("quick" if args.quick else f"{ds.name}-{args.index}")
    throughput = None
    if args.throughput:
        from annfleet.benchmarks.throughput import make_throughput

        throughput = make_throughput(args.throughput_recall, args.throughput_seconds)
    result = run(
        ds,
        cfg,
        name=name,
        out_root=args.out,
        data_dir=data_dir,
        progress=not args.no_progress,
        throughput=throughput,
    )
    print(table(result))
    from annfleet.benchmarks.recall_latency import summary_lines

    print("\n".join(summary_lines(result)))
    if result.get("breakdown"):
        from annfleet.benchmarks.breakdown import lines as breakdown_lines

        print("\n".join(breakdown_lines(result["breakdown"])))
    if result.get("throughput"):
        from annfleet.benchmarks.recall_latency import throughput_lines

        print("\n".join(throughput_lines(result["throughput"])))
    if result.get("peer_throughput"):
        from annfleet.benchmarks.recall_latency import peer_throughput_lines

        print("\n".join(peer_throughput_lines(result["peer_throughput"])))
    for note in result["notes"]:
        print(f"note: {note}")
    from annfleet.benchmarks.report import result_dir

    print(f"results: {result_dir(name, args.out)}")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks.sources import cmd

    return cmd(args)


def cmd_load(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    if args.overload > 0:
        from annfleet.benchmarks.overload import cmd as overload

        return overload(args)
    from annfleet.benchmarks.load import cmd

    return cmd(args)


def cmd_profile(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks.profile import cmd

    return cmd(args)


def cmd_faults(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks.faults import cmd

    return cmd(args)


def cmd_scale(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks.scale import cmd

    return cmd(args)


def cmd_fuzz(args: argparse.Namespace) -> int:
    _exit_on_sigterm()
    from annfleet.benchmarks.fuzz import cmd

    return cmd(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="annfleet")
    parser.add_argument("-v", "--verbose", action="store_true")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Any = args.func
    return int(func(args))


def _exit_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so context managers stop the clusters and peer servers."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
