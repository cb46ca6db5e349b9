"""Adaptive batching of concurrent searches into one shard RPC per shard.

Python gRPC costs far more per RPC than faiss costs per query at our sizes, so under load
the router spends its time on RPC overhead. Searches with the same (k, params) share a
*lane*: a search is sent while fewer than ``max_in_flight`` batches of its lane are out
(at the end of the event loop's current pass, so searches that arrived together leave as one
batch); otherwise it waits and leaves with every other waiting search as one batch when a
batch returns. At low load nothing waits; at high load batches grow with the load.

Deadlines are never shortened: a batch is sent with the *latest* deadline of its searches,
and each search collects its rows of whatever the shards answered by its *own* deadline
(``Scatter.collect``), so one nearly expired search cannot make the others time out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from annfleet.errors import DeadlineExceeded
from annfleet.router.scatter import Fanout, Scatter, ScatterResult
from annfleet.v1 import common_pb2

LaneKey = tuple[int, int, int, int]


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
    scheduled: bool = False  # a dispatch is due at the end of this pass of the event loop


class Coalescer:
    """Wraps a Scatter; ``search`` has the same contract. ``max_in_flight=0`` turns it off."""

    def __init__(self, scatter: Scatter, *, max_in_flight: int, max_rows: int) -> None:
        self.scatter = scatter
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
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
        future: asyncio.Future[tuple[Fanout, slice]] = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(queries, deadline, future))
        if lane.in_flight < self.max_in_flight and not lane.scheduled:
            lane.scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch_due, key, lane)
        try:
            fanout, rows = await asyncio.wait_for(future, deadline - time.monotonic())
        except TimeoutError:
            raise DeadlineExceeded(
                "deadline exceeded while waiting for a batch to the shards"
            ) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result()[0].leave()
            raise
        try:
            return await self.scatter.collect(fanout, rows, deadline)
        finally:
            fanout.leave()

    def _dispatch_due(self, key: LaneKey, lane: _Lane) -> None:
        lane.scheduled = False
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
            if lane.in_flight == 0 and not lane.scheduled and not lane.waiting:
                self._lanes.pop(key, None)
            return
        queries = (
            batch[0].queries if len(batch) == 1 else np.concatenate([w.queries for w in batch])
        )
        fanout = self.scatter.send(
            queries, lane.k, lane.params, max(w.deadline for w in batch), waiters=len(batch)
        )
        lane.in_flight += 1
        fanout.on_done(lambda: self._finished(key, lane))
        start = 0
        for w in batch:
            end = start + len(w.queries)
            w.future.set_result((fanout, slice(start, end)))
            start = end

    def _finished(self, key: LaneKey, lane: _Lane) -> None:
        lane.in_flight -= 1
        if lane.waiting:
            self._dispatch(key, lane)
        elif lane.in_flight == 0 and not lane.scheduled:
            self._lanes.pop(key, None)
