"""Adaptive batching of concurrent searches into one shard RPC per shard.

Python gRPC costs far more per RPC than faiss costs per query at our sizes, so under load
the router spends its time on RPC overhead. Searches with the same (k, params) share a
*lane*. With no batch of its lane out, a search leaves at the end of the event loop's current
pass (with the searches that arrived in the same pass): at low load nothing waits. While
batches are out, searches wait and leave together, as one batch, either when a batch returns
or, if fewer than ``max_in_flight`` are out, once ``SLOW_BATCH`` typical batch times (the
running mean from send to the last shard's answer; at most ``MAX_SPACING_S``) have passed
since the last one left. So under load a lane sends one batch per batch time, carrying every
search that arrived meanwhile, and the further slots only keep searches moving when a batch
is slower than usual (a slow replica, a retry). Spacing them by ``1 / max_in_flight`` of a
batch's time (before) made batches half as large: 1.10x the server CPU per query in closed
loop, with a worse p99 (benchmarks/results/ab-12-coalesce-batch-time); the first arrival
leaving alone whenever a slot was free (before that) made most shard RPCs carry one query.

Deadlines are never shortened: a batch is sent with the *latest* deadline of its searches,
and each search collects its rows of whatever the shards answered by its *own* deadline
(``Scatter.collect``), so one nearly expired search cannot make the others time out.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from annfleet.errors import DeadlineExceeded
from annfleet.router.scatter import Fanout, Scatter, ScatterResult
from annfleet.v1 import common_pb2

LaneKey = tuple[int, int, int, int]
# A further batch leaves once the last one has been out this many typical batch times (at
# most MAX_SPACING_S): under load the batch out normally returns first, and everything that
# arrived meanwhile leaves with the next batch; the further slot serves a batch slower than
# usual. A slow shard (retries, hedges, timeouts) must not hold searches back with a free slot.
SLOW_BATCH = 2.0
MAX_SPACING_S = 0.05


@dataclass
class _Waiting:
    queries: np.ndarray  # (n, d) float32
    deadline: float  # time.monotonic()
    future: asyncio.Future[tuple[Fanout, slice]]  # the batch it left with, and its rows


@dataclass
class _Lane:
    k: int
    params: common_pb2.SearchParams
    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: int = 0
    due: asyncio.Handle | None = None  # a dispatch is scheduled
    last_sent: float = -math.inf  # time.monotonic() the last batch left


class Coalescer:
    """Wraps a Scatter; ``search`` has the same contract. ``max_in_flight=0`` turns it off."""

    def __init__(self, scatter: Scatter, *, max_in_flight: int, max_rows: int) -> None:
        self.scatter = scatter
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
        self.batch_s = 0.0  # running time from a batch's send to its last shard's answer
        self._lanes: dict[LaneKey, _Lane] = {}

    async def search(
        self, queries: np.ndarray, k: int, params: common_pb2.SearchParams, deadline: float
    ) -> ScatterResult:
        """queries (nq, d) float32 -> merged top-k by ``deadline`` (``time.monotonic()``)."""
        if deadline <= time.monotonic():
            raise DeadlineExceeded("deadline exceeded before the shards could be asked")
        if self.max_in_flight <= 0:
            return await self.scatter.search(queries, k, params, deadline)
        key = (k, params.ef_search, params.nprobe, params.rerank)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(k, params)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Fanout, slice]] = loop.create_future()
        lane.waiting.append(_Waiting(queries, deadline, future))
        self._schedule(key, lane)
        # A timer on the future itself (asyncio.wait_for adds a waiter future and callbacks).
        timer = loop.call_later(deadline - time.monotonic(), _too_late, future)
        try:
            fanout, rows = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result()[0].leave()
            raise
        finally:
            timer.cancel()
        try:
            return await self.scatter.collect(fanout, rows, deadline)
        finally:
            fanout.leave()

    def _schedule(self, key: LaneKey, lane: _Lane) -> None:
        """Make a dispatch due for the lane's waiting searches, if a slot is free."""
        if lane.due is not None or lane.in_flight >= self.max_in_flight or not lane.waiting:
            return
        loop = asyncio.get_running_loop()
        if lane.in_flight == 0:
            lane.due = loop.call_soon(self._dispatch_due, key, lane)
        else:  # about one batch per batch time; another slot only for a slow batch
            at = lane.last_sent + min(SLOW_BATCH * self.batch_s, MAX_SPACING_S)
            lane.due = loop.call_later(at - time.monotonic(), self._dispatch_due, key, lane)

    def _dispatch_due(self, key: LaneKey, lane: _Lane) -> None:
        lane.due = None
        if lane.in_flight < self.max_in_flight:
            self._dispatch(key, lane)

    def _dispatch(self, key: LaneKey, lane: _Lane) -> None:
        batch: list[_Waiting] = []
        rows = 0
        while lane.waiting and (not batch or rows + len(lane.waiting[0].queries) <= self.max_rows):
            item = lane.waiting.pop(0)
            if item.future.done():  # the caller gave up (deadline, cancel)
                continue
            batch.append(item)
            rows += len(item.queries)
        if not batch:
            self._idle(key, lane)
            return
        if lane.due is not None:  # the searches it was due for leave now
            lane.due.cancel()
            lane.due = None
        queries = (
            batch[0].queries if len(batch) == 1 else np.concatenate([w.queries for w in batch])
        )
        fanout = self.scatter.send(
            queries, lane.k, lane.params, max(w.deadline for w in batch), waiters=len(batch)
        )
        lane.in_flight += 1
        sent = lane.last_sent = time.monotonic()
        fanout.on_done(lambda: self._finished(key, lane, sent))
        start = 0
        for w in batch:
            end = start + len(w.queries)
            w.future.set_result((fanout, slice(start, end)))
            start = end
        self._schedule(key, lane)  # searches beyond max_rows wait for the next slot

    def _finished(self, key: LaneKey, lane: _Lane, sent: float) -> None:
        lane.in_flight -= 1
        took = time.monotonic() - sent
        self.batch_s = took if self.batch_s == 0.0 else 0.8 * self.batch_s + 0.2 * took
        if lane.waiting:
            self._dispatch(key, lane)
        else:
            self._idle(key, lane)

    def _idle(self, key: LaneKey, lane: _Lane) -> None:
        """Forget a lane with nothing out, due or waiting (lanes come and go with params)."""
        if lane.in_flight == 0 and lane.due is None and not lane.waiting:
            self._lanes.pop(key, None)


def _too_late(future: asyncio.Future[tuple[Fanout, slice]]) -> None:
    """A search's deadline passed before its batch left (the dispatch skips it)."""
    if not future.done():
        future.set_exception(
            DeadlineExceeded("deadline exceeded while waiting for a batch to the shards")
        )
