"""gRPC edge of a shard server: protobuf <-> numpy, exceptions <-> status codes (via ``rpc``)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc

from annfleet.arrays import F32, I64, check_k, decode_ids, decode_matrix, to_bytes
from annfleet.config import ShardsConfig
from annfleet.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from annfleet.metrics import SHARD_DROPPED
from annfleet.server.holdings import Holding, Holdings
from annfleet.server.index import set_threads
from annfleet.serving import RpcObserver, deadline_of, rpc
from annfleet.v1 import shard_pb2, shard_pb2_grpc
from annfleet.validation import check_params

T = TypeVar("T")


def held_bundle(holding: Holding, active: bool) -> shard_pb2.HeldBundle:
    delta = holding.delta
    return shard_pb2.HeldBundle(
        bundle_id=holding.id,
        active=active,
        path=str(holding.bundle.path),
        num_shards=holding.bundle.num_shards,
        dim=holding.index.dim,
        metric=holding.index.metric,
        index_type=holding.index.spec.type,
        bundle_items=len(holding.index.ids),
        upserted_items=delta.upserted,
        deleted_items=delta.deleted,
        num_items=delta.num_items,
        memory_bytes=holding.memory_bytes + delta.rows.vectors.nbytes,
        loaded_at=holding.loaded_at,
        updates_log=str(delta.log.directory) if delta.log else "",
        update_records=delta.log.records if delta.log else 0,
    )


def shard_info(holdings: Holdings, config: ShardsConfig) -> shard_pb2.ShardInfo:
    """What a shard process serves (the active bundle) and every bundle it holds."""
    info = shard_pb2.ShardInfo(
        shard_id=holdings.shard_id or 0, max_k=config.max_k, max_batch=config.max_batch
    )
    active = holdings.active
    for holding in holdings.all():
        info.bundles.append(held_bundle(holding, holding is active))
    if active is not None:
        info.bundle_id = active.id
        info.num_shards = active.bundle.num_shards
        info.num_items = active.delta.num_items
        info.dim = active.index.dim
        info.metric = active.index.metric
        info.index_type = active.index.spec.type
        info.index_params = json.dumps(active.index.spec.params)
    return info


# A search faiss is expected to finish within this many seconds runs on the event loop
# thread when nothing else is queued or running: handing it to an executor thread and back
# (submit, wake-up, GIL hand-off, call_soon_threadsafe) costs more CPU than that at our sizes.
INLINE_MAX_S = 0.001
COST_DECAY = 0.9  # weight of the past in the running estimate of seconds per query row


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class SearchQueue:
    """The shard's bounded queue in front of faiss: at most ``max_queue`` searches queued or
    running; beyond it RESOURCE_EXHAUSTED at once. Work whose deadline (absolute,
    ``time.monotonic()``) has passed is dropped before it reaches the index: on arrival, and
    again when an executor thread picks it up. A search expected to take less than
    ``INLINE_MAX_S`` (``rows`` x the running cost per row) runs inline when nothing else is
    queued or running. Used from the event loop thread only.
    """

    def __init__(self, executor: Executor, max_queue: int) -> None:
        self.executor = executor
        self.max_queue = max_queue
        self.admitted = 0  # queued + running, released when the executor job ends
        self.row_seconds: dict[str, float] = {}  # kind of work -> running seconds per row
        self.inline_max_s = INLINE_MAX_S
        self.inline = 0  # searches run on the event loop thread

    def _observe(self, kind: str, seconds: float, rows: int) -> None:
        per_row = seconds / max(1, rows)
        past = self.row_seconds.get(kind, per_row)
        self.row_seconds[kind] = COST_DECAY * past + (1.0 - COST_DECAY) * per_row

    async def run(
        self, deadline: float | None, work: Callable[[], T], rows: int = 1, kind: str = "search"
    ) -> T:
        if _expired(deadline):
            SHARD_DROPPED.labels("deadline").inc()
            raise DeadlineExceeded("deadline passed before the search was queued")
        if self.admitted >= self.max_queue:
            SHARD_DROPPED.labels("queue_full").inc()
            raise ResourceExhausted(
                f"{self.admitted} searches queued or running (max_queue {self.max_queue}); "
                "retry later or on another replica"
            )
        queued_at = time.monotonic()
        if self.admitted == 0 and self.row_seconds.get(kind, math.inf) * rows <= self.inline_max_s:
            self.inline += 1
            self.admitted += 1
            try:
                result = work()
            finally:
                self.admitted -= 1
            self._observe(kind, time.monotonic() - queued_at, rows)
            return result
        loop = asyncio.get_running_loop()

        def job() -> tuple[T, float]:
            if _expired(deadline):
                SHARD_DROPPED.labels("deadline").inc()
                raise DeadlineExceeded(
                    f"deadline passed after {(time.monotonic() - queued_at) * 1e3:.1f} ms "
                    "in the shard's queue"
                )
            started = time.monotonic()
            return work(), time.monotonic() - started

        self.admitted += 1
        future = self.executor.submit(job)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        try:
            result, seconds = await asyncio.wrap_future(future, loop=loop)
        except asyncio.CancelledError:  # the caller went away (typically its deadline)
            if future.cancel():  # still queued: it never reaches the index
                SHARD_DROPPED.labels("cancelled").inc()
            raise
        self._observe(kind, seconds, rows)
        return result

    def _release(self) -> None:
        self.admitted -= 1


class ShardService(shard_pb2_grpc.IndexShardServicer):
    def __init__(self, config: ShardsConfig, executor: Executor, holdings: Holdings) -> None:
        self.config = config
        self.executor = executor
        self.holdings = holdings
        self.queue = SearchQueue(executor, config.max_queue)
        self.rpc_observer: RpcObserver | None = None  # the status page's window
        # OpenMP's thread count is per thread, and quick searches run on this (the event
        # loop's) thread: give it the executor threads' count, not OpenMP's default (all cores).
        set_threads(config.search_threads)

    async def answer(
        self,
        request: shard_pb2.ShardSearchRequest,
        *,
        exact: bool = False,
        deadline: float | None = None,
    ) -> shard_pb2.ShardSearchResponse:
        """Search (or brute-force) the bundle the request pins, through the bounded queue;
        ``deadline`` is absolute (``time.monotonic()``)."""
        holding = self.holdings.get(request.bundle_id)
        if request.dim != holding.index.dim:
            raise InvalidArgument(
                f"dim {request.dim} does not match the index dim {holding.index.dim}"
            )
        queries = decode_matrix(request.queries, request.dim, max_rows=self.config.max_batch)
        k = check_k(request.k, self.config.max_k)
        check_params(request.params)
        exclude = (
            decode_ids(request.exclude_ids, name="exclude_ids") if request.exclude_ids else None
        )
        ids, scores = await self.queue.run(
            deadline,
            lambda: (
                holding.exact(queries, k, exclude)
                if exact
                else holding.search(
                    queries,
                    k,
                    ef_search=request.params.ef_search,
                    nprobe=request.params.nprobe,
                    rerank=request.params.rerank,
                    exclude=exclude,
                )
            ),
            rows=len(queries),
            kind="exact" if exact else "search",
        )
        return shard_pb2.ShardSearchResponse(
            ids=to_bytes(ids, I64),
            scores=to_bytes(scores, F32),
            num_queries=len(queries),
            k=k,
            shard_id=holding.shard_id,
            bundle_id=holding.id,
            metric=holding.index.metric,
        )

    @rpc("IndexShard")
    async def Search(
        self, request: shard_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardSearchResponse:
        return await self.answer(request, deadline=deadline_of(context))

    @rpc("IndexShard")
    async def Info(
        self, request: shard_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardInfo:
        self.holdings.get()  # UNAVAILABLE before a bundle is active
        return shard_info(self.holdings, self.config)
