"""Capacity model: shards, replicas, cores and memory for a catalogue and a load.

``annfleet capacity --items N --dim D --qps Q --p99-ms L`` prints a plan (or the chart's
values with ``--format helm``). Every input below was measured on real bundles and real
clusters; the files that hold the measurements are named beside each constant, and
deploy/CAPACITY.md walks through the arithmetic and its assumptions.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
MIB = 1024**2

# Bytes per item of each shard file, a + b * dim, default index parameters (hnsw M=32;
# ivfpq nlist=1024, pq_m=16, nbits=8). benchmarks/results/capacity/results.json ("fits").
BYTES_PER_ITEM: dict[str, dict[str, tuple[float, float]]] = {
    "flat": {"index.faiss": (0.0, 4.0), "ids.npy": (8.0, 0.0), "vectors.npy": (0.0, 4.0)},
    "hnsw": {"index.faiss": (272.18, 4.0), "ids.npy": (8.0, 0.0), "vectors.npy": (0.0, 4.0)},
    "ivfpq": {"index.faiss": (24.0, 0.0), "ids.npy": (8.0, 0.0), "vectors.npy": (0.0, 4.0)},
}
# What a serving shard keeps resident: the index and the ids in RAM; vectors.npy is
# memory-mapped and read only by IVF-PQ's exact re-rank (so resident there under load).
RESIDENT_FILES = {
    "flat": ("index.faiss", "ids.npy"),
    "hnsw": ("index.faiss", "ids.npy"),
    "ivfpq": ("index.faiss", "ids.npy", "vectors.npy"),
}
# RSS of an idle process (Python, numpy, faiss, gRPC) on a 1,000-item bundle, MiB.
# benchmarks/results/capacity/results.json ("idle_rss_mib"). A router running a TorchScript
# user tower adds torch (see CAPACITY.md).
IDLE_RSS_MIB = {"shard": 86.9, "router": 65.7}


@dataclass(frozen=True)
class ShardCost:
    """CPU one shard spends on one query (k=100, default search parameters), measured.

    ``shard_ms`` is the shard process's CPU per query over a load run (gRPC, decoding,
    Python and faiss) at ``shard_items`` items per shard; ``search_ms`` is faiss alone
    (in-process, one thread) at ``search_items`` items. The search part scales with the
    shard's size (HNSW ~ log n, IVF-PQ ~ n at a fixed nlist) and the dimension; the rest
    is per-RPC overhead that does not.
    """

    shard_ms: float
    shard_items: int
    search_ms: float
    search_items: int
    dim: int
    source: str

    def search_at(self, index: str, items: int, dim: int) -> float:
        if index == "hnsw":
            size = math.log(max(items, 2)) / math.log(self.search_items)
        else:
            size = items / self.search_items
        return self.search_ms * size * dim / self.dim

    def overhead_ms(self, index: str) -> float:
        return max(0.0, self.shard_ms - self.search_at(index, self.shard_items, self.dim))

    def cpu_ms(self, index: str, items: int, dim: int) -> float:
        return self.overhead_ms(index) + self.search_at(index, items, dim)


SHARD_COST = {
    "hnsw": ShardCost(
        shard_ms=0.64,
        shard_items=50_000,
        search_ms=0.324,
        search_items=200_000,
        dim=64,
        source="benchmarks/results/load-200k-hnsw-retrieve-open-cpu (shard CPU / requests); "
        "faiss in-process ef_search=128 from benchmarks/results/foundation-200k-hnsw-quiet",
    ),
    "ivfpq": ShardCost(
        shard_ms=0.47,
        shard_items=250_000,
        search_ms=0.507,
        search_items=1_000_000,
        dim=64,
        source="benchmarks/results/p2-1m-ivfpq-router-batching (shard CPU / QPS, closed "
        "loop, nprobe=32 rerank=200); faiss in-process from the same run",
    ),
}
# Router CPU per Retrieve (embed from the user table, scatter, merge, filter, backfill), ms.
ROUTER_MS = 1.29  # benchmarks/results/load-200k-hnsw-retrieve-open-cpu (router CPU / requests)
# Retrieve p99 through router + 4 shards at low load, which every plan pays before any
# search time: RPCs, Python, merge. benchmarks/results/foundation-200k-hnsw-quiet (router,
# ef_search=128, sequential).
BASE_P99_MS = 8.4


@dataclass(frozen=True)
class Plan:
    items: int
    dim: int
    index: str
    qps: float
    avg_qps: float
    p99_ms: float
    shards: int
    replicas: int
    items_per_shard: int
    shard_cpu_ms: float
    predicted_p99_ms: float
    shard_pod_cores: int
    shard_pod_memory_bytes: int
    router_pod_cores: int
    router_pod_memory_bytes: int
    routers_peak: int
    routers_avg: int
    resident_bytes_per_item: float
    disk_bytes_per_item: float
    bundle_volume_bytes: int
    limited_by: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def shard_pods(self) -> int:
        return self.shards * self.replicas

    def totals(self) -> dict[str, float]:
        return {
            "shard_cores": self.shard_pods * self.shard_pod_cores,
            "shard_memory_gib": self.shard_pods * self.shard_pod_memory_bytes / GIB,
            "router_cores_peak": self.routers_peak * self.router_pod_cores,
            "router_cores_avg": self.routers_avg * self.router_pod_cores,
            "router_memory_gib_peak": self.routers_peak * self.router_pod_memory_bytes / GIB,
        }


def bytes_per_item(index: str, dim: int, files: tuple[str, ...] | None = None) -> float:
    table = BYTES_PER_ITEM[index]
    return sum(a + b * dim for name, (a, b) in table.items() if files is None or name in files)


def plan(
    items: int,
    dim: int,
    qps: float,
    p99_ms: float,
    *,
    index: str = "hnsw",
    avg_qps: float | None = None,
    shard_pod_cores: int = 4,
    router_pod_cores: int = 4,
    max_shard_memory_gib: float = 32.0,
    utilization: float = 0.5,
    min_replicas: int = 2,
    tail_factor: float = 4.0,
    bundles_held: int = 2,
    headroom: float = 0.25,
    max_items_per_shard: int = 2_500_000,
) -> Plan:
    """The fewest shards that fit memory and the p99 target, then replicas and routers for
    ``qps`` at ``utilization`` of each pod's cores. See deploy/CAPACITY.md."""
    if index not in SHARD_COST:
        raise ValueError(
            f"no measured QPS for index {index!r} (measured: {', '.join(SHARD_COST)}); "
            "flat is exact search, for small catalogues"
        )
    if items < 1 or dim < 1 or qps <= 0 or p99_ms <= 0:
        raise ValueError("items, dim, qps and p99-ms must be positive")
    if not 0 < utilization <= 1:
        raise ValueError("utilization must be in (0, 1]")
    cost = SHARD_COST[index]
    resident = bytes_per_item(index, dim, RESIDENT_FILES[index])
    idle = IDLE_RSS_MIB["shard"] * MIB
    # memory: a shard holds `bundles_held` bundles during a hot swap, plus headroom
    per_item_pod = resident * bundles_held * (1 + headroom)
    room = max_shard_memory_gib * GIB - idle
    if room <= per_item_pod:
        raise ValueError("max shard memory is below one process's idle footprint")
    shards_memory = math.ceil(items * per_item_pod / room)
    # latency: fixed floor + a tail of the shard's search time; smaller shards search faster
    notes: list[str] = []
    shards_latency = 1
    while (
        BASE_P99_MS + tail_factor * cost.search_at(index, math.ceil(items / shards_latency), dim)
        > p99_ms
    ):
        if shards_latency >= 4096 or p99_ms <= BASE_P99_MS:
            notes.append(
                f"p99 {p99_ms:g} ms is below what the measured floor allows "
                f"({BASE_P99_MS:g} ms before any search): plan shown for the closest reachable"
            )
            shards_latency = max(1, shards_latency if p99_ms > BASE_P99_MS else 1)
            break
        shards_latency += 1
    # the largest shard measured (benchmarks/results/scale-10m-omp1: 2.5M items per shard);
    # bigger shards also take longer to build and to load on a restart
    shards_size = math.ceil(items / max_items_per_shard)
    shards = max(shards_memory, shards_latency, shards_size, 1)
    limited_by = [
        name
        for name, n in (
            ("memory", shards_memory),
            ("latency", shards_latency),
            ("max items per shard", shards_size),
        )
        if n == shards and shards > 1
    ]
    per_shard = math.ceil(items / shards)
    cpu_ms = cost.cpu_ms(index, per_shard, dim)
    replica_qps = shard_pod_cores * utilization * 1000.0 / cpu_ms
    replicas = max(min_replicas, math.ceil(qps / replica_qps))
    avg = qps if avg_qps is None else avg_qps
    router_qps = router_pod_cores * utilization * 1000.0 / ROUTER_MS
    routers_peak = max(2, math.ceil(qps / router_qps))
    routers_avg = max(2, math.ceil(avg / router_qps))
    shard_mem = int(idle + per_shard * per_item_pod)
    router_mem = int(IDLE_RSS_MIB["router"] * MIB * (1 + headroom) + 512 * MIB)
    disk = bytes_per_item(index, dim)
    return Plan(
        items=items,
        dim=dim,
        index=index,
        qps=qps,
        avg_qps=avg,
        p99_ms=p99_ms,
        shards=shards,
        replicas=replicas,
        items_per_shard=per_shard,
        shard_cpu_ms=cpu_ms,
        predicted_p99_ms=BASE_P99_MS + tail_factor * cost.search_at(index, per_shard, dim),
        shard_pod_cores=shard_pod_cores,
        shard_pod_memory_bytes=shard_mem,
        router_pod_cores=router_pod_cores,
        router_pod_memory_bytes=router_mem,
        routers_peak=routers_peak,
        routers_avg=routers_avg,
        resident_bytes_per_item=resident,
        disk_bytes_per_item=disk,
        bundle_volume_bytes=int(items * disk * bundles_held),
        limited_by=limited_by,
        notes=notes,
    )


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _k8s_memory(n: int) -> str:
    return f"{math.ceil(n / MIB)}Mi"


def format_text(p: Plan) -> str:
    t = p.totals()
    lines = [
        f"{p.items:,} items x {p.dim} dims, {p.index}; {p.qps:,.0f} QPS peak"
        f" ({p.avg_qps:,.0f} average), p99 target {p.p99_ms:g} ms",
        "",
        f"shards            {p.shards}  ({p.items_per_shard:,} items each"
        f"{'; set by ' + ' and '.join(p.limited_by) if p.limited_by else ''})",
        f"replicas/shard    {p.replicas}  (each {p.shard_pod_cores} cores:"
        f" {p.shard_cpu_ms:.2f} ms CPU per query per shard ->"
        f" {p.shard_pod_cores * 1000 / p.shard_cpu_ms:,.0f} QPS at 100%)",
        f"shard pods        {p.shard_pods}  x {p.shard_pod_cores} cores,"
        f" {_gib(p.shard_pod_memory_bytes)} memory"
        f" ({p.resident_bytes_per_item:.0f} B/item resident, two bundles during a swap)",
        f"routers           {p.routers_avg} at average, {p.routers_peak} at peak"
        f"  x {p.router_pod_cores} cores, {_gib(p.router_pod_memory_bytes)}",
        f"predicted p99     {p.predicted_p99_ms:.1f} ms",
        "",
        f"total at peak     {t['shard_cores'] + t['router_cores_peak']:,.0f} cores"
        f" ({t['shard_cores']:,.0f} shards + {t['router_cores_peak']:,.0f} routers),"
        f" {t['shard_memory_gib'] + t['router_memory_gib_peak']:,.1f} GiB memory",
        f"bundle volume     {_gib(p.bundle_volume_bytes)}"
        f" ({p.disk_bytes_per_item:.0f} B/item on disk, two bundles kept)",
    ]
    lines += [f"note: {n}" for n in p.notes]
    lines.append("inputs and assumptions: deploy/CAPACITY.md")
    return "\n".join(lines)


def format_helm(p: Plan) -> str:
    """Values for deploy/helm/annfleet (helm install -f)."""
    import yaml

    values = {
        "config": {"shards": {"count": p.shards, "replicas": p.replicas}},
        "shards": {
            "resources": {
                "requests": {
                    "cpu": str(p.shard_pod_cores),
                    "memory": _k8s_memory(p.shard_pod_memory_bytes),
                },
                "limits": {"memory": _k8s_memory(p.shard_pod_memory_bytes)},
            }
        },
        "router": {
            "resources": {
                "requests": {
                    "cpu": str(p.router_pod_cores),
                    "memory": _k8s_memory(p.router_pod_memory_bytes),
                },
                "limits": {"memory": _k8s_memory(p.router_pod_memory_bytes)},
            },
            "autoscaling": {
                "enabled": True,
                "minReplicas": p.routers_avg,
                "maxReplicas": max(p.routers_peak * 3 // 2, p.routers_avg + 1),
                "targetCPUUtilizationPercentage": 50,
            },
        },
        "bundles": {"persistence": {"size": f"{math.ceil(p.bundle_volume_bytes / GIB * 1.2)}Gi"}},
    }
    head = (
        f"# annfleet capacity --items {p.items} --dim {p.dim} --qps {p.qps:g}"
        f" --p99-ms {p.p99_ms:g} --index {p.index}\n"
    )
    return head + yaml.safe_dump(values, sort_keys=False)


def cmd_capacity(args: argparse.Namespace) -> int:
    try:
        p = plan(
            args.items,
            args.dim,
            args.qps,
            args.p99_ms,
            index=args.index,
            avg_qps=args.avg_qps,
            shard_pod_cores=args.shard_cores,
            router_pod_cores=args.router_cores,
            max_shard_memory_gib=args.max_shard_memory_gib,
            utilization=args.utilization,
            min_replicas=args.min_replicas,
            max_items_per_shard=args.max_items_per_shard,
        )
    except ValueError as exc:
        raise SystemExit(f"annfleet capacity: {exc}") from exc
    if args.format == "json":
        out: dict[str, Any] = {**asdict(p), "shard_pods": p.shard_pods, "totals": p.totals()}
        print(json.dumps(out, indent=2))
    elif args.format == "helm":
        print(format_helm(p), end="")
    else:
        print(format_text(p))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "capacity",
        help="shards, replicas, cores and memory for a catalogue and a load (deploy/CAPACITY.md)",
    )
    p.add_argument("--items", type=int, required=True, help="catalogue size")
    p.add_argument("--dim", type=int, required=True, help="vector dimension")
    p.add_argument("--qps", type=float, required=True, help="peak Retrieve QPS to serve")
    p.add_argument("--p99-ms", type=float, required=True, help="p99 latency target (ms)")
    p.add_argument("--avg-qps", type=float, help="average QPS (routers autoscale down to it)")
    p.add_argument("--index", choices=tuple(BYTES_PER_ITEM), default="hnsw")
    p.add_argument("--shard-cores", type=int, default=4, help="cores per shard pod")
    p.add_argument("--router-cores", type=int, default=4, help="cores per router pod")
    p.add_argument("--max-shard-memory-gib", type=float, default=32.0)
    p.add_argument(
        "--max-items-per-shard",
        type=int,
        default=2_500_000,
        help="largest shard to plan (the largest measured: 2.5M items)",
    )
    p.add_argument(
        "--utilization", type=float, default=0.5, help="CPU share used at peak (headroom)"
    )
    p.add_argument("--min-replicas", type=int, default=2, help="per shard (2 = survive a loss)")
    p.add_argument("--format", choices=("text", "json", "helm"), default="text")
    p.set_defaults(func=cmd_capacity)
