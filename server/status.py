"""A shard server's status page (``/status`` and ``/status.json`` on its metrics port): the
shard it serves, every bundle it holds (the active one and any prepared for a rollout), and
its requests over the last minute."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from annfleet.server.service import ShardService, shard_info
from annfleet.web import Cell, on_loop, paragraph, section, table
from annfleet.window import RequestWindow, requests_section


class ShardStatus:
    """The shard's ``StatusSource``: ``status()`` (from an HTTP thread) reads the holdings
    on the server's event loop; ``observe`` is the service's ``rpc_observer``."""

    def __init__(self, service: ShardService, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop
        self.window = RequestWindow()
        self.started = time.time()
        self.address = ""

    def observe(
        self, method: str, code: grpc.StatusCode, seconds: float, response: Any | None
    ) -> None:
        self.window.record(method, code.name, seconds)

    def status(self) -> dict[str, Any]:
        return on_loop(self.collect(), self.loop)

    async def collect(self) -> dict[str, Any]:
        info = shard_info(self.service.holdings, self.service.config)
        out: dict[str, Any] = {
            "title": f"annfleet shard {self.address}".strip(),
            "role": "shard",
            "address": self.address,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uptime_s": round(time.time() - self.started, 1),
            "loaded": bool(info.bundle_id),
            "shard_id": info.shard_id,
            "num_shards": info.num_shards,
            "bundle_id": info.bundle_id,
            "num_items": info.num_items,
            "dim": info.dim,
            "metric": info.metric,
            "index_type": info.index_type,
            "index_params": info.index_params,
            "queue": self.service.queue.admitted,  # searches queued or running now
            "max_queue": self.service.queue.max_queue,
            "bundles": [
                {f.name: getattr(b, f.name) for f in b.DESCRIPTOR.fields} for b in info.bundles
            ],
        }
        out.update(self.window.snapshot())
        return out

    def html(self, status: dict[str, Any]) -> str:
        parts = []
        if not status["loaded"]:
            parts.append(paragraph("Shard is starting: no bundle active yet.", "bad"))
        else:
            parts.append(
                section(
                    "Serving",
                    table(
                        [
                            "shard",
                            "active bundle",
                            "items",
                            "index",
                            "dim",
                            "metric",
                            "queue",
                            "up",
                        ],
                        [
                            [
                                f"{status['shard_id']} of {status['num_shards']}",
                                Cell(status["bundle_id"], "ok"),
                                Cell(status["num_items"], "num"),
                                f"{status['index_type']} {status['index_params']}",
                                Cell(status["dim"], "num"),
                                status["metric"],
                                Cell(f"{status['queue']} / {status['max_queue']}", "num"),
                                Cell(f"{status['uptime_s']:.0f} s", "num"),
                            ]
                        ],
                    ),
                )
            )
        parts.append(
            section(
                "Bundles held",
                table(
                    [
                        "bundle",
                        "state",
                        "searchable",
                        "in bundle",
                        "upserted",
                        "deleted",
                        "memory",
                        "loaded",
                        "path",
                    ],
                    [
                        [
                            b["bundle_id"],
                            Cell("active", "ok") if b["active"] else "held",
                            Cell(b["num_items"], "num"),
                            Cell(b["bundle_items"], "num"),
                            Cell(b["upserted_items"], "num"),
                            Cell(b["deleted_items"], "num"),
                            Cell(f"{b['memory_bytes'] / 2**20:.1f} MiB", "num"),
                            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b["loaded_at"])),
                            b["path"],
                        ]
                        for b in status["bundles"]
                    ],
                )
                if status["bundles"]
                else paragraph("No bundle held.", "muted"),
            )
        )
        parts.append(requests_section(status))
        return "\n".join(parts)
