"""Adaptive batching of concurrent searches into one shard RPC per shard.

Python gRPC costs far more per RPC than faiss costs per query at our sizes, so under load
the router spends its time on RPC overhead. Searches with the same (k, params) share a
*lane*: a search is sent at once while fewer than ``max_in_flight`` batches of its lane are
out; otherwise it waits and leaves with every other waiting search as one batch when a batch
returns. At low load nothing waits; at high load batches grow with the load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from annfleet.router.scatter import Scatter, ScatterResult
from annfleet.v1 import common_pb2

LaneKey = tuple[int, int, int, int]


@dataclass
class _Waiting:
    queries: np.ndarray  # (n, d) float32
    deadline: float  # time.monotonic()
    future: asyncio.Future[ScatterResult]


@dataclass
class _Lane:
    k: int
    params: common_pb2.SearchParams
    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: int = 0


class Coalescer:
    """Wraps a Scatter; ``search`` has the same contract. ``max_in_flight=0`` turns it off."""

    def __init__(self, scatter: Scatter, *, max_in_flight: int, max_rows: int) -> None:
        self.scatter = scatter
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
        self._lanes: dict[LaneKey, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def search(
        self, queries: np.ndarray, k: int, params: common_pb2.SearchParams, timeout: float
    ) -> ScatterResult:
        if self.max_in_flight <= 0:
            return await self.scatter.search(queries, k, params, timeout)
        key = (k, params.ef_search, params.nprobe, params.rerank)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(k, params)
        future: asyncio.Future[ScatterResult] = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(queries, time.monotonic() + timeout, future))
        if lane.in_flight < self.max_in_flight:
            self._dispatch(key, lane)
        return await future

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
            if lane.in_flight == 0:
                self._lanes.pop(key, None)
            return
        lane.in_flight += 1
        task = asyncio.create_task(self._run(key, lane, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: LaneKey, lane: _Lane, batch: list[_Waiting]) -> None:
        try:
            queries = (
                batch[0].queries if len(batch) == 1 else np.concatenate([w.queries for w in batch])
            )
            timeout = max(min(w.deadline for w in batch) - time.monotonic(), 0.001)
            result = await self.scatter.search(queries, lane.k, lane.params, timeout)
            start = 0
            for w in batch:
                end = start + len(w.queries)
                if not w.future.done():
                    w.future.set_result(
                        ScatterResult(
                            result.ids[start:end],
                            result.scores[start:end],
                            result.answered,
                            result.failures,
                        )
                    )
                start = end
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            lane.in_flight -= 1
            if lane.waiting:
                self._dispatch(key, lane)
            elif lane.in_flight == 0:
                self._lanes.pop(key, None)
