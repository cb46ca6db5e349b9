"""The router's status page (``/status`` and ``/status.json`` on its metrics port).

Built from the running router's own state: the bundle it serves (RetrievalService.state),
every shard replica as the scatter knows it, asked at page time for its health and for the
bundle and item count it serves (``IndexShard.Info``, short timeout, all at once), and a rolling
60 s window of request outcomes fed by the ``rpc`` decorator (``rpc_observer``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from annfleet.v1 import retrieval_pb2, shard_pb2, shard_pb2_grpc
from annfleet.web import Cell, fmt_share, on_loop, paragraph, section, table
from annfleet.window import RequestWindow, requests_section

if TYPE_CHECKING:
    from annfleet.bundle import Bundle
    from annfleet.router.rollout import RolloutController
    from annfleet.router.service import RetrievalService, RouterState

INDEX_SHARD = shard_pb2.DESCRIPTOR.services_by_name["IndexShard"].full_name
PROBE_TIMEOUT_S = 0.5  # a replica that has not answered its health check by then is DOWN


@dataclass(frozen=True)
class ReplicaRef:
    """One process serving a shard, as the scatter holds it."""

    shard_id: int
    index: int
    target: str
    channel: grpc.aio.Channel
    health: str | None  # what a health watch last saw; None: ask now


def replica_refs(state: RouterState) -> list[tuple[int, float, list[ReplicaRef]]]:
    """(shard id, share of the catalogue, its replicas) per shard, in shard order: the one
    place that knows how the scatter holds a shard's replicas."""
    return [
        (
            group.shard_id,
            state.scatter.shares[group.shard_id],
            [
                ReplicaRef(
                    r.shard_id,
                    r.index,
                    r.target,
                    r.channel,
                    None if r.status == "UNKNOWN" else r.status,
                )
                for r in group.replicas
            ],
        )
        for _, group in sorted(state.scatter.groups.items())
    ]


async def _health(ref: ReplicaRef) -> tuple[str, str]:
    """(health, error): what the watch saw, else a Check now; DOWN when it fails."""
    if ref.health is not None:
        return ref.health, ""
    request = health_pb2.HealthCheckRequest(service=INDEX_SHARD)
    try:
        reply = await health_pb2_grpc.HealthStub(ref.channel).Check(
            request, timeout=PROBE_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        return "DOWN", _reason(exc)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""


async def _info(ref: ReplicaRef) -> shard_pb2.ShardInfo | str:
    """What the replica serves and holds (IndexShard.Info), or why it did not say."""
    stub = shard_pb2_grpc.IndexShardStub(ref.channel)
    try:
        return await stub.Info(shard_pb2.InfoRequest(), timeout=PROBE_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return _reason(exc)


async def probe(ref: ReplicaRef) -> dict[str, Any]:
    """A replica's health, active bundle, item count and other bundles held, asked now (at
    most PROBE_TIMEOUT_S)."""
    (health, error), info = await asyncio.gather(_health(ref), _info(ref))
    row: dict[str, Any] = {"replica": ref.index, "target": ref.target, "health": health}
    if isinstance(info, str):
        error = error or info
    else:
        row["bundle_id"] = info.bundle_id
        row["num_items"] = int(info.num_items)
        row["index_type"] = info.index_type
        row["held"] = [b.bundle_id for b in info.bundles if not b.active]
    if error:
        row["error"] = error
    return row


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


def bundle_info(bundle: Bundle, role: str) -> dict[str, Any]:
    """A bundle the router holds, as a row of the page: ``role`` active (the stable
    bundle), canary (a second live bundle for a share of users) or previous (kept for a
    rollback until it is released)."""
    manifest = bundle.manifest
    model = manifest.get("model", {})
    return {
        "bundle_id": bundle.id,
        "role": role,
        "model": f"{model.get('name', '')} {model.get('version', '')}".strip(),
        "dim": bundle.dim,
        "metric": bundle.metric,
        "num_items": int(
            manifest.get("num_items") or sum(s["num_items"] for s in manifest["shards"])
        ),
        "num_shards": bundle.num_shards,
        "created": manifest.get("created", ""),
        "path": str(bundle.path),
    }


class RouterStatus:
    """The router's ``StatusSource``: ``status()`` (from an HTTP thread) runs ``collect()``
    on the router's event loop; ``observe`` is the service's ``rpc_observer``."""

    def __init__(
        self,
        service: RetrievalService,
        loop: asyncio.AbstractEventLoop,
        rollouts: RolloutController | None = None,
    ) -> None:
        self.service = service
        self.loop = loop
        self.rollouts = rollouts
        self.window = RequestWindow()
        self.started = time.time()
        self.address = ""

    def observe(
        self, method: str, code: grpc.StatusCode, seconds: float, response: Any | None
    ) -> None:
        coverage = None
        degraded = False
        sources = None
        if isinstance(response, retrieval_pb2.SearchResponse | retrieval_pb2.RetrieveResponse):
            coverage = (response.coverage.shards_answered, response.coverage.shards_asked)
            degraded = response.coverage.degraded
        if isinstance(response, retrieval_pb2.RetrieveResponse):
            sources = dict(response.source_counts)
        self.window.record(
            method, code.name, seconds, coverage=coverage, degraded=degraded, sources=sources
        )

    def status(self) -> dict[str, Any]:
        return on_loop(self.collect(), self.loop)

    async def collect(self) -> dict[str, Any]:
        state = self.service.state
        config = self.service.config
        out: dict[str, Any] = {
            "title": f"annfleet router {self.address}".strip(),
            "role": "router",
            "address": self.address,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uptime_s": round(time.time() - self.started, 1),
            "loaded": state is not None,
            "min_coverage": config.min_coverage,
            "bundles": [],
            "shards": [],
        }
        if state is not None:
            bundle = state.bundle
            out["bundles"] = [bundle_info(bundle, "active")]
            canary = self.service.canary
            if canary is not None:
                out["bundles"][0]["percent"] = 100.0 - canary.percent
                out["bundles"].append(bundle_info(canary.state.bundle, "canary"))
                out["bundles"][1]["percent"] = canary.percent
            if self.rollouts is not None:
                rollout = await self.rollouts.status(describe=False)
                out["rollout"] = {
                    "holder": rollout.rollout_holder,
                    "started_at": rollout.rollout_started_at,
                    "variants": [
                        {"name": v.name, "bundle_id": v.bundle_id, "percent": v.percent}
                        for v in rollout.variants
                    ],
                }
                previous = self.rollouts.previous
                if previous is not None and previous.bundle.id != bundle.id:
                    row = bundle_info(previous.bundle, "previous")
                    row["release_at"] = rollout.previous_release_at
                    out["bundles"].append(row)
            shards = replica_refs(state)
            probes = await asyncio.gather(*(probe(r) for _, _, refs in shards for r in refs))
            rows = iter(probes)
            for shard_id, share, refs in shards:
                replicas = [next(rows) for _ in refs]
                for replica in replicas:
                    replica["same_bundle"] = replica.get("bundle_id") == bundle.id
                up = sum(r["health"] == "SERVING" for r in replicas)
                out["shards"].append(
                    {
                        "shard_id": shard_id,
                        "share": share,
                        "manifest_items": int(bundle.shard(shard_id)["num_items"]),
                        "replicas_up": up,
                        "state": "up" if up == len(replicas) else "degraded" if up else "down",
                        "replicas": replicas,
                    }
                )
        out["shards_up"] = sum(s["state"] != "down" for s in out["shards"])
        out.update(self.window.snapshot())
        return out

    def html(self, status: dict[str, Any]) -> str:
        return render(status)


def _state_cell(state: str) -> Cell:
    return Cell(state, {"up": "ok", "SERVING": "ok", "degraded": "warn"}.get(state, "bad"))


def render(status: dict[str, Any]) -> str:
    """The page body (HTML, every value escaped) for a ``RouterStatus.collect()`` dict."""
    parts = []
    shards = status["shards"]
    if not status["loaded"]:
        parts.append(paragraph("Router is starting: no bundle loaded yet.", "bad"))
    up, total = status["shards_up"], len(shards)
    parts.append(
        paragraph(
            f"Shards up: {up} of {total}. Up {status['uptime_s']:.0f} s; "
            f"min_coverage {status['min_coverage']}.",
            "ok" if up == total and total else "bad",
        )
    )
    bundle_rows = []
    for b in status["bundles"]:
        share = f" ({b['percent']:g}% of users)" if "percent" in b else ""
        if b["role"] == "previous":
            until = time.strftime("%H:%M:%S", time.localtime(b.get("release_at", 0)))
            role = Cell(f"previous: rollback until {until}", "muted")
        else:
            role = Cell(b["role"] + share, "ok" if b["role"] == "active" else "warn")
        bundle_rows.append(
            [
                b["bundle_id"],
                role,
                b["model"],
                Cell(b["num_items"], "num"),
                Cell(b["num_shards"], "num"),
                Cell(b["dim"], "num"),
                b["metric"],
                b["created"],
                b["path"],
            ]
        )
    parts.append(
        section(
            "Bundles served",
            table(
                ["bundle", "role", "model", "items", "shards", "dim", "metric", "created", "path"],
                bundle_rows,
            ),
        )
    )
    rollout = status.get("rollout") or {}
    if rollout.get("holder"):
        started = time.strftime("%H:%M:%S", time.localtime(rollout["started_at"]))
        parts.append(
            paragraph(f"Rollout running since {started} (by {rollout['holder']}).", "warn")
        )
    rows = []
    for shard in shards:
        for r in shard["replicas"]:
            bundle_id = r.get("bundle_id", "")
            rows.append(
                [
                    Cell(f"shard {shard['shard_id']}"),
                    _state_cell(shard["state"]),
                    Cell(r["replica"], "num"),
                    r["target"],
                    _state_cell(r["health"]),
                    Cell(bundle_id or "–", "" if r.get("same_bundle") else "bad"),
                    Cell(r.get("num_items", "–"), "num"),
                    Cell(shard["manifest_items"], "num"),
                    ", ".join(r.get("held", [])),
                    Cell(fmt_share(shard["share"]), "num"),
                    Cell(r.get("error", ""), "muted"),
                ]
            )
    parts.append(
        section(
            "Shards and replicas",
            table(
                [
                    "shard",
                    "shard state",
                    "replica",
                    "address",
                    "health",
                    "bundle",
                    "items",
                    "items (manifest)",
                    "also held",
                    "share",
                    "error",
                ],
                rows,
            ),
        )
    )
    window = status["window_s"]
    parts.append(requests_section(status))
    cov = status["coverage"]
    parts.append(
        section(
            f"Coverage, last {window} s",
            table(
                ["answers", "mean coverage", "lowest", "degraded", "degraded rate"],
                [
                    [
                        Cell(cov["responses"], "num"),
                        Cell(
                            fmt_share(cov["mean"]),
                            "ok" if cov["mean"] in (None, 1.0) else "warn",
                        ),
                        Cell(fmt_share(cov["min"]), "num"),
                        Cell(cov["degraded"], "num"),
                        Cell(
                            fmt_share(cov["degraded_rate"]),
                            "warn" if cov["degraded_rate"] else "num",
                        ),
                    ]
                ],
            ),
        )
    )
    sources = status["sources"]
    parts.append(
        section(
            f"Candidates by source, last {window} s",
            table(
                ["source", "candidates", "share"],
                [
                    [name, Cell(s["candidates"], "num"), Cell(fmt_share(s["share"]), "num")]
                    for name, s in sources.items()
                ],
            )
            if sources
            else paragraph(f"No Retrieve answers in the last {window} s.", "muted"),
        )
    )
    return "\n".join(parts)
