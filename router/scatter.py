"""Fan-out of one search to every shard, with one absolute deadline, partial results and backfill.

A search is sent once (:meth:`Scatter.send`, one task per shard) and collected by each of its
callers at the caller's own deadline (:meth:`Scatter.collect`): the coalescer sends several
callers' queries as one batch with the latest of their deadlines, and each caller takes its
rows of whatever the shards answered by its deadline. A shard that fails or has not answered
never fails the request by itself: the result says which shards answered, and the service
decides against ``min_coverage``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.bundle import Bundle
from annfleet.errors import BundleError
from annfleet.merge import merge_rows, per_shard_k
from annfleet.metrics import SHARD_FAILURES
from annfleet.partition import shard_of
from annfleet.router.replicas import ReplicaGroup, ShardFailure
from annfleet.v1 import common_pb2, shard_pb2
from annfleet.validation import higher_is_better

log = logging.getLogger(__name__)

Hits = tuple[np.ndarray, np.ndarray]  # ids (nq, k) int64, scores (nq, k) float32


@dataclass(frozen=True)
class ScatterResult:
    ids: np.ndarray  # (nq, k) int64, -1 padded
    scores: np.ndarray  # (nq, k) float32
    answered: list[int]  # shard ids that answered
    failures: dict[int, str]  # shard id -> reason
    expired: bool = False  # some shard had not answered when the request's deadline passed

    @property
    def asked(self) -> int:
        return len(self.answered) + len(self.failures)


class Fanout:
    """One batch of queries in flight to every shard (one task per shard).

    ``waiters`` callers share it; when the last one leaves, calls still running are
    cancelled. ``on_done`` callbacks run once every shard task has finished.
    """

    def __init__(
        self,
        queries: np.ndarray,
        k: int,
        params: common_pb2.SearchParams,
        tasks: dict[int, asyncio.Task[Hits]],
        waiters: int,
        exclude: np.ndarray | None = None,
    ) -> None:
        self.queries = queries
        self.k = k
        self.params = params
        self.exclude = exclude
        self.tasks = tasks
        self.waiters = waiters
        self.merged: Hits | None = None  # every row merged, once all shards have answered
        self.all_answered = False  # every shard task has finished with hits
        self._running = len(tasks)
        self._done_callbacks: list[Callable[[], None]] = []
        for task in tasks.values():
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Hits]) -> None:
        if not task.cancelled():
            task.exception()  # looked at by the waiters, or by nobody when all have left
        self._running -= 1
        if self._running == 0:
            self.all_answered = not any(
                t.cancelled() or t.exception() is not None for t in self.tasks.values()
            )
            for callback in self._done_callbacks:
                callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        if self._running == 0:
            callback()
        else:
            self._done_callbacks.append(callback)

    async def wait(self, deadline: float) -> None:
        """Until every shard task has finished or ``deadline`` (``time.monotonic()``) passed
        (one future and one timer: asyncio.wait adds a callback to every task)."""
        if self._running == 0:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        self._done_callbacks.append(wake)
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), wake)
        try:
            await done
        finally:
            timer.cancel()

    def leave(self) -> None:
        """A caller has what it needs; cancel the shard calls when nobody else waits."""
        self.waiters -= 1
        if self.waiters <= 0:
            for task in self.tasks.values():
                task.cancel()


def shard_shares(bundle: Bundle) -> dict[int, float]:
    """Each shard's fraction of the bundle's items (how many hits it is asked for)."""
    counts = [int(bundle.shard(i)["num_items"]) for i in range(bundle.num_shards)]
    total = int(bundle.manifest.get("num_items") or sum(counts)) or 1
    return {i: n / total for i, n in enumerate(counts)}


class Scatter:
    """Scatter-gather over one bundle's shards.

    The replica groups (channels, health, balancing and hedging state) belong to the
    router's shard connections and outlive a bundle: :meth:`for_bundle` gives another
    bundle's Scatter over the same groups (a rollout's flip). Bundle id, metric and shard
    shares belong to the bundle.
    """

    def __init__(
        self,
        groups: Sequence[ReplicaGroup],
        bundle: Bundle,
        oversample: float,
        attempt_cap: float,
        topk_probability: float = 1.0,
    ) -> None:
        self.groups = {g.shard_id: g for g in groups}
        if sorted(self.groups) != list(range(bundle.num_shards)):
            raise BundleError(
                f"bundle {bundle.id} has {bundle.num_shards} shards, the router is connected "
                f"to shards {sorted(self.groups)}"
            )
        self.bundle_id = bundle.id
        self.higher_is_better = higher_is_better(bundle.metric)
        self.shares = shard_shares(bundle)
        self.oversample = oversample
        self.attempt_cap = attempt_cap
        self.topk_probability = topk_probability

    def for_bundle(self, bundle: Bundle) -> Scatter:
        """The same shard connections (replica groups, their health and hedging state)
        serving ``bundle``."""
        return Scatter(
            list(self.groups.values()),
            bundle,
            self.oversample,
            self.attempt_cap,
            self.topk_probability,
        )

    def shard_k(self, k: int, shard_id: int) -> int:
        """How many hits shard ``shard_id`` is asked for when the merge wants k
        (``annfleet.merge.per_shard_k``: ``router.topk_probability``, ``router.oversample``)."""
        return per_shard_k(
            k,
            self.shares[shard_id],
            shards=len(self.shares),
            oversample=self.oversample,
            probability=self.topk_probability,
        )

    async def _one(
        self, group: ReplicaGroup, request: shard_pb2.ShardSearchRequest, deadline: float
    ) -> Hits:
        try:
            response = await group.search(request, deadline, self.attempt_cap)
        except ShardFailure as exc:
            SHARD_FAILURES.labels(str(group.shard_id), exc.code).inc()
            log.warning("shard %d failed: %s", group.shard_id, exc.reason)
            raise
        nq, width = response.num_queries, response.k
        return (
            decode_rows(response.ids, I64, nq, width, name="shard ids"),
            decode_rows(response.scores, F32, nq, width, name="shard scores"),
        )

    def send(
        self,
        queries: np.ndarray,
        k: int,
        params: common_pb2.SearchParams,
        deadline: float,
        *,
        waiters: int = 1,
        shards: Sequence[int] | None = None,
        full_k: bool = False,
        exclude: np.ndarray | None = None,
    ) -> Fanout:
        """Start one call per shard (``shards``: a subset) for queries (nq, d) float32.

        Each shard is asked for ``per_shard_k`` (k itself with ``full_k``) and may use the
        time up to ``deadline`` (``time.monotonic()``), one attempt at most ``attempt_cap``;
        its replica group balances, retries and hedges inside that. ``exclude`` (e,) int64:
        ids never to return, for every query; each shard is sent the ones it owns
        (splitmix64 mod the number of shards, as the bundle partitions items).
        """
        owner = shard_of(exclude, len(self.groups)) if exclude is not None else None
        data = to_bytes(queries, F32)  # encoded once; shards with the same k share a request
        requests: dict[int, shard_pb2.ShardSearchRequest] = {}
        tasks: dict[int, asyncio.Task[Hits]] = {}
        for shard_id in self.groups if shards is None else shards:
            group = self.groups[shard_id]
            kk = k if full_k else self.shard_k(k, shard_id)
            request = requests.get(kk)
            if request is None:
                request = requests[kk] = shard_pb2.ShardSearchRequest(
                    queries=data,
                    dim=queries.shape[1],
                    k=kk,
                    params=params,
                    bundle_id=self.bundle_id,
                )
            if exclude is not None and owner is not None:
                own = shard_pb2.ShardSearchRequest()
                own.CopyFrom(request)
                own.exclude_ids = to_bytes(exclude[owner == shard_id], I64)
                request = own
            tasks[shard_id] = asyncio.create_task(self._one(group, request, deadline))
        return Fanout(queries, k, params, tasks, waiters, exclude)

    async def collect(self, fanout: Fanout, rows: slice, deadline: float) -> ScatterResult:
        """Rows ``rows`` of ``fanout``, merged over the shards that answered by ``deadline``.

        When a shard failed and the survivors returned fewer than k hits for some row, the
        survivors are asked once more for k each (inside the same deadline) so k stays full.
        """
        await fanout.wait(deadline)
        if fanout.all_answered and fanout.tasks:  # the batch is merged once, callers take rows
            ids, scores = self._merged(fanout)
            return ScatterResult(ids[rows], scores[rows], sorted(fanout.tasks), {}, False)
        hits, answered, failures, expired = await self._gather(fanout, rows, deadline)
        if not failures and fanout.tasks:  # all answered meanwhile
            ids, scores = self._merged(fanout)
            return ScatterResult(ids[rows], scores[rows], sorted(answered), failures, expired)
        k = fanout.k
        if hits and not expired:
            found = sum(np.count_nonzero(h[0] >= 0, axis=1) for h in hits)  # (nq,)
            short = int(np.min(found)) < k and any(h[0].shape[1] < k for h in hits)
            if short and deadline > time.monotonic():
                again = self.send(
                    fanout.queries[rows],
                    k,
                    fanout.params,
                    deadline,
                    shards=answered,
                    full_k=True,
                    exclude=fanout.exclude,
                )
                try:
                    more, more_answered, _, _ = await self._gather(again, slice(None), deadline)
                finally:
                    again.leave()
                if len(more_answered) == len(answered):
                    hits = more
        nq = len(range(*rows.indices(len(fanout.queries))))
        if not hits:
            empty = np.full((nq, k), -1, dtype=np.int64)
            return ScatterResult(empty, np.zeros((nq, k), np.float32), [], failures, expired)
        ids, scores = merge_rows(
            np.concatenate([h[0] for h in hits], axis=1),
            np.concatenate([h[1] for h in hits], axis=1),
            k,
            higher_is_better=self.higher_is_better,
        )
        return ScatterResult(ids, scores, sorted(answered), failures, expired)

    def _merged(self, fanout: Fanout) -> Hits:
        """Top-k of every row of a fanout whose shards all answered, merged once."""
        if fanout.merged is None:
            hits = [task.result() for task in fanout.tasks.values()]
            fanout.merged = merge_rows(
                np.concatenate([h[0] for h in hits], axis=1),
                np.concatenate([h[1] for h in hits], axis=1),
                fanout.k,
                higher_is_better=self.higher_is_better,
            )
        return fanout.merged

    async def _gather(
        self, fanout: Fanout, rows: slice, deadline: float
    ) -> tuple[list[Hits], list[int], dict[int, str], bool]:
        await fanout.wait(deadline)
        hits: list[Hits] = []
        answered: list[int] = []
        failures: dict[int, str] = {}
        expired = False
        for shard_id, task in fanout.tasks.items():
            if not task.done():
                failures[shard_id] = "DEADLINE_EXCEEDED: no answer before the request's deadline"
                expired = True
            elif task.cancelled():
                failures[shard_id] = "CANCELLED"
            elif (exc := task.exception()) is not None:
                if isinstance(exc, ShardFailure):
                    failures[shard_id] = exc.reason
                    expired |= exc.expired
                else:
                    failures[shard_id] = repr(exc)
            else:
                ids, scores = task.result()
                hits.append((ids[rows], scores[rows]))
                answered.append(shard_id)
        return hits, answered, failures, expired

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        params: common_pb2.SearchParams,
        deadline: float,
        exclude: np.ndarray | None = None,
    ) -> ScatterResult:
        """queries (nq, d) float32 -> merged top-k over the shards that answer by ``deadline``;
        ``exclude`` (e,) int64 filtered inside the shards."""
        fanout = self.send(queries, k, params, deadline, exclude=exclude)
        try:
            return await self.collect(fanout, slice(None), deadline)
        finally:
            fanout.leave()

    async def close(self) -> None:
        await asyncio.gather(*(g.close() for g in self.groups.values()))
