"""gRPC edge of a shard server: protobuf <-> numpy, exceptions <-> status codes (via ``rpc``)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc

from annfleet.arrays import F32, I64, check_k, decode_ids, decode_matrix, to_bytes
from annfleet.config import ShardsConfig
from annfleet.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    status_of,
)
from annfleet.metrics import SHARD_DROPPED
from annfleet.server.holdings import Holding, Holdings
from annfleet.server.index import ExactPacing, set_threads
from annfleet.serving import CallRecorder, RpcObserver, deadline_of, rpc, short_message
from annfleet.v1 import shard_pb2, shard_pb2_grpc
from annfleet.validation import check_params

T = TypeVar("T")

log = logging.getLogger(__name__)


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
# 4 ms sent many of a loaded closed loop's batches (~14 queries at ~0.3 ms each) to the
# executor: 16 ms gave 0.97x the server CPU per query (ab-13-inline-16ms). The price: the
# loop (other streams' messages, replies) waits up to this long behind an inline search.
INLINE_MAX_S = 0.016
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
        waiter: asyncio.Future[tuple[T, float]] = loop.create_future()
        future = self.executor.submit(job)
        # One hand-back to the loop per job (asyncio.wrap_future would add a second one).
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, f, waiter))
        try:
            result, seconds = await waiter
        except asyncio.CancelledError:  # the caller went away (typically its deadline)
            if future.cancel():  # still queued: it never reaches the index
                SHARD_DROPPED.labels("cancelled").inc()
            raise
        self._observe(kind, seconds, rows)
        return result

    def _finish(
        self,
        future: concurrent.futures.Future[tuple[T, float]],
        waiter: asyncio.Future[tuple[T, float]],
    ) -> None:
        """On the loop: the job has ended; release its place and hand its outcome over."""
        self.admitted -= 1
        if waiter.done():  # the caller went away
            return
        if future.cancelled():
            waiter.cancel()
        elif (exc := future.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(future.result())


class SearchStream:
    """One IndexShard.SearchStream: each request searched as Search would be (its own
    deadline, its own status), concurrently; replies written one at a time, in the order
    they are ready. Every request is counted and observed as a Search call."""

    def __init__(self, service: ShardService, context: grpc.aio.ServicerContext) -> None:
        self.service = service
        self.context = context
        self.running: dict[int, asyncio.Task[None]] = {}  # request id -> its search
        self.outbox: collections.deque[shard_pb2.ShardStreamReply] = collections.deque()
        self.writing = False
        self.flushed = asyncio.Event()  # set whenever nothing is being written
        self.flushed.set()
        self.closing = False
        self._close: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def serve(self, requests: AsyncIterator[shard_pb2.ShardStreamRequest]) -> None:
        """Until the caller closes its side (or goes away), or :meth:`close`; then answer
        what was taken and return (the stream ends OK)."""
        reader = asyncio.ensure_future(self._read(requests))
        try:
            await asyncio.wait((reader, self._close), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller went away: nobody to answer
            for task in self.running.values():
                task.cancel()
            raise
        finally:
            if not reader.done():
                reader.cancel()
            else:
                reader.result()  # a malformed message aborts the stream (INVALID_ARGUMENT)
            if not self._close.done():
                self._close.set_result(None)
        if self.running:
            await asyncio.wait(list(self.running.values()))
        await self.flushed.wait()

    def close(self) -> None:
        """The server is stopping: answer what was taken, refuse the rest, end the stream."""
        self.closing = True
        if not self._close.done():
            self._close.set_result(None)

    async def _read(self, requests: AsyncIterator[shard_pb2.ShardStreamRequest]) -> None:
        async for message in requests:
            self._take(message)

    def _take(self, message: shard_pb2.ShardStreamRequest) -> None:
        request_id = message.request_id
        if message.cancel:
            task = self.running.pop(request_id, None)
            if task is not None:
                task.cancel()
            return
        deadline = time.monotonic() + message.timeout_s if message.timeout_s > 0 else None
        self.running[request_id] = asyncio.create_task(self._answer(message, deadline))

    async def _answer(self, message: shard_pb2.ShardStreamRequest, deadline: float | None) -> None:
        request_id = message.request_id
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        response = None
        try:
            if self.closing:
                raise Unavailable("the shard is shutting down")
            response = await self.service.answer(message.search, deadline=deadline)
            reply = shard_pb2.ShardStreamReply(request_id=request_id, search=response)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, text = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("IndexShard.SearchStream failed")
            reply = shard_pb2.ShardStreamReply(
                request_id=request_id, code=code.value[0], message=short_message(text)
            )
        finally:
            if self.running.get(request_id) is asyncio.current_task():
                del self.running[request_id]
            self.service.record_search(code, time.perf_counter() - start, response)
        await self._write(reply)

    async def _write(self, reply: shard_pb2.ShardStreamReply) -> None:
        """Queue a reply; the first writer writes until the queue is empty (a call takes
        one write at a time)."""
        self.outbox.append(reply)
        if self.writing:
            return
        self.writing = True
        self.flushed.clear()
        try:
            while self.outbox:
                await self.context.write(self.outbox.popleft())
        except Exception as exc:  # the caller is gone: nobody to answer
            log.debug("SearchStream write failed: %s", exc)
            self.outbox.clear()
        finally:
            self.writing = False
            self.flushed.set()


class ShardService(shard_pb2_grpc.IndexShardServicer):
    """``exact_executor`` runs exact brute-force searches (ShardAdmin.ExactSearch, the live
    recall samples) through a queue of their own: one scans every stored vector (~130 ms of
    CPU per 2.5M x 64 shard), and in the search queue it would hold a place that keeps quick
    searches off the event loop thread for as long. None: the search executor. They scan in
    chunks with pauses (``shards.exact_chunk_items``, ``shards.exact_duty``)."""

    def __init__(
        self,
        config: ShardsConfig,
        executor: Executor,
        holdings: Holdings,
        exact_executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.holdings = holdings
        self.queue = SearchQueue(executor, config.max_queue)
        self.exact_queue = SearchQueue(exact_executor or executor, config.max_queue)
        self.exact_pacing = ExactPacing(config.exact_chunk_items, config.exact_duty)
        self.rpc_observer: RpcObserver | None = None  # the status page's window
        self._search_calls = CallRecorder("IndexShard", "Search")
        self.streams: set[SearchStream] = set()
        self.closing = False  # close_streams was called
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
        queue = self.exact_queue if exact else self.queue
        ids, scores = await queue.run(
            deadline,
            lambda: (
                holding.exact(queries, k, exclude, self.exact_pacing)
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

    def record_search(
        self, code: grpc.StatusCode, seconds: float, response: shard_pb2.ShardSearchResponse | None
    ) -> None:
        """Count and observe one search that came on a stream, as a Search call."""
        self._search_calls(self, code, seconds, response)

    async def SearchStream(
        self,
        requests: AsyncIterator[shard_pb2.ShardStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = SearchStream(self, context)
        if self.closing:  # opened while the server stops: refuse its requests, end it
            stream.close()
        self.streams.add(stream)
        try:
            await stream.serve(requests)
        finally:
            self.streams.discard(stream)

    def close_streams(self) -> None:
        """Shutting down: every SearchStream answers what it took and ends."""
        self.closing = True
        for stream in list(self.streams):
            stream.close()

    @rpc("IndexShard")
    async def Info(
        self, request: shard_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardInfo:
        self.holdings.get()  # UNAVAILABLE before a bundle is active
        return shard_info(self.holdings, self.config)
