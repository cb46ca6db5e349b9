"""ShardAdmin: what a shard process holds and serves, and live item updates.

Served on the shard's admin port behind the bearer-token interceptor (``annfleet.auth``);
a thin edge like ``service.py``: protobuf <-> numpy, exceptions <-> status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor

import grpc
import numpy as np

from annfleet.arrays import I64, decode_ids, decode_matrix, to_bytes
from annfleet.bundle import bundle_path
from annfleet.errors import InvalidArgument
from annfleet.metrics import SHARD_ITEMS
from annfleet.server.holdings import Holding, Holdings, open_bundle
from annfleet.server.service import ShardService, held_bundle, shard_info
from annfleet.serving import deadline_of, rpc
from annfleet.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)


def export_gauges(holdings: Holdings) -> None:
    """annfleet_shard_items{bundle, kind} for every held bundle."""
    for holding in holdings.all():
        delta = holding.delta
        for kind, value in (
            ("bundle", len(holding.index.ids)),
            ("upserted", delta.upserted),
            ("deleted", delta.deleted),
            ("searchable", delta.num_items),
        ):
            SHARD_ITEMS.labels(holding.id, kind).set(value)


def forget_gauges(bundle_id: str) -> None:
    for kind in ("bundle", "upserted", "deleted", "searchable"):
        with contextlib.suppress(KeyError):
            SHARD_ITEMS.remove(bundle_id, kind)


class ShardAdminService(shard_pb2_grpc.ShardAdminServicer):
    """``loader`` runs Prepare's blocking load (one at a time); ``updater`` the log writes."""

    def __init__(self, shards: ShardService, loader: Executor, updater: Executor) -> None:
        self.shards = shards
        self.holdings: Holdings = shards.holdings
        self.config = shards.config
        self.loader = loader
        self.updater = updater
        self._prepare_lock = asyncio.Lock()

    async def prepare(
        self, source: str, expect_num_shards: int = 0, expect_dim: int = 0
    ) -> Holding:
        """Load and hold a bundle off the event loop (idempotent); nothing changes on error."""
        path = bundle_path(source)
        loop = asyncio.get_running_loop()
        async with self._prepare_lock:
            bundle = await loop.run_in_executor(self.loader, open_bundle, path)
            if self.holdings.is_held(bundle.id):
                return self.holdings.get(bundle.id)
            holding = await loop.run_in_executor(
                self.loader, self.holdings.load, path, expect_num_shards, expect_dim
            )
            held = self.holdings.add(holding)
        export_gauges(self.holdings)
        return held

    @rpc("ShardAdmin")
    async def Prepare(
        self, request: shard_pb2.PrepareRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.HeldBundle:
        holding = await self.prepare(request.bundle, request.expect_num_shards, request.expect_dim)
        return held_bundle(holding, holding is self.holdings.active)

    @rpc("ShardAdmin")
    async def Commit(
        self, request: shard_pb2.CommitRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardInfo:
        self.holdings.commit(request.bundle_id)
        return shard_info(self.holdings, self.config)

    @rpc("ShardAdmin")
    async def Release(
        self, request: shard_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardInfo:
        self.holdings.release(request.bundle_id)
        forget_gauges(request.bundle_id)
        return shard_info(self.holdings, self.config)

    @rpc("ShardAdmin")
    async def Upsert(
        self, request: shard_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.UpdateResponse:
        holding = self.holdings.get(request.bundle_id)
        if request.dim != holding.index.dim:
            raise InvalidArgument(
                f"dim {request.dim} does not match the bundle's dim {holding.index.dim}"
            )
        ids = decode_ids(request.ids)
        vectors = decode_matrix(request.vectors, request.dim, name="vectors")
        loop = asyncio.get_running_loop()
        inserted, replaced = await loop.run_in_executor(
            self.updater, holding.delta.upsert, ids, vectors
        )
        return self._updated(holding, inserted=inserted, replaced=replaced)

    @rpc("ShardAdmin")
    async def Delete(
        self, request: shard_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.UpdateResponse:
        holding = self.holdings.get(request.bundle_id)
        ids = decode_ids(request.ids)
        loop = asyncio.get_running_loop()
        deleted, missing = await loop.run_in_executor(
            self.updater, lambda: holding.delta.delete(ids, missing_ok=request.missing_ok)
        )
        return self._updated(holding, deleted=deleted, missing=missing)

    def _updated(self, holding: Holding, **counts: int) -> shard_pb2.UpdateResponse:
        export_gauges(self.holdings)
        return shard_pb2.UpdateResponse(
            bundle_id=holding.id,
            shard_id=holding.shard_id,
            bundle=held_bundle(holding, holding is self.holdings.active),
            **counts,
        )

    @rpc("ShardAdmin")
    async def Describe(
        self, request: shard_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardInfo:
        return shard_info(self.holdings, self.config)

    @rpc("ShardAdmin")
    async def ExactSearch(
        self, request: shard_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardSearchResponse:
        return await self.shards.answer(request, exact=True, deadline=deadline_of(context))

    @rpc("ShardAdmin")
    async def CarryUpdates(
        self, request: shard_pb2.CarryUpdatesRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.CarryUpdatesResponse:
        if not request.from_bundle_id or not request.to_bundle_id:
            raise InvalidArgument("from_bundle_id and to_bundle_id: both must name held bundles")
        if request.from_bundle_id == request.to_bundle_id:
            raise InvalidArgument(f"from and to are the same bundle {request.to_bundle_id}")
        source = self.holdings.get(request.from_bundle_id)
        target = self.holdings.get(request.to_bundle_id)
        loop = asyncio.get_running_loop()

        def carry() -> tuple[int, int, int, np.ndarray]:
            upserted, deleted = source.delta.updates()
            applied = skipped = 0
            if len(deleted):
                applied, skipped = target.delta.delete(deleted, missing_ok=True)
            present = target.delta.has(upserted)
            return applied, skipped, int(present.sum()), upserted[~present]

        applied, skipped, present, missing = await loop.run_in_executor(self.updater, carry)
        export_gauges(self.holdings)
        return shard_pb2.CarryUpdatesResponse(
            shard_id=target.shard_id,
            deleted=applied,
            deletes_skipped=skipped,
            upserted_present=present,
            missing_ids=to_bytes(missing, I64),
            bundle=held_bundle(target, target is self.holdings.active),
        )
