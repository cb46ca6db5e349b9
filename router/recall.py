"""Live recall monitoring: a sampled share of live requests, re-run off the request path.

``offer`` is the only call on the request path: a coin flip and, for a sampled request, a
``put_nowait`` of its query vector on a bounded queue (a full queue drops the sample; it never
waits). One background task takes samples one at a time and, against the bundle the request
was answered from (its ``RouterState``), asks every shard for

- its ANN top-k (``IndexShard.Search`` through the replica group, pinned to the bundle, the
  request's search params, k = ``router.recall_k`` from every shard),
- its exact top-k (``ShardAdmin.ExactSearch``: Flat over exactly the vectors Search sees),
- and the router's merged top-k as a live request gets it (``Scatter.search``, per-shard k
  from ``router.topk_probability``),

then records recall@k per shard (shard ANN vs shard exact) and per bundle (merged ANN vs the
merge of the shards' exact top-k). A gauge is the mean of the last ``router.recall_window``
samples. ``rollout --promote`` reads the canary bundle's merged recall from here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.auth import metadata
from annfleet.config import RouterConfig
from annfleet.merge import merge_rows
from annfleet.metrics import RECALL, RECALL_SAMPLES
from annfleet.router.background import SampledBackground
from annfleet.router.replicas import ShardFailure
from annfleet.v1 import admin_pb2, common_pb2, shard_pb2

if TYPE_CHECKING:
    from annfleet.router.rollout import AdminReplica
    from annfleet.router.service import RouterState

log = logging.getLogger(__name__)

QUEUE_SIZE = 16  # samples waiting to be measured; beyond, a sample is dropped
MEASURE_TIMEOUT_S = 10.0  # one sample's calls (ANN + exact on every shard)
MERGED = -1  # the shard key of the router's merged top-k over every shard

Hits = tuple[np.ndarray, np.ndarray]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids (ignoring -1 padding) that ``found`` contains."""
    truth = truth[truth >= 0]
    if len(truth) == 0:
        return 1.0
    return float(np.isin(truth, found[found >= 0]).sum()) / len(truth)


@dataclass(frozen=True)
class Sample:
    state: RouterState
    query: np.ndarray  # (1, d) float32
    params: common_pb2.SearchParams


class RecallMonitor(SampledBackground):
    """Samples live requests (``offer``) and measures them in a background task (``start``)."""

    def __init__(
        self,
        config: RouterConfig,
        admin_replicas: Callable[[], Awaitable[Sequence[AdminReplica]]],
        token: str,
        *,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.rate = config.recall_sample_rate
        self.min_spacing_s = 1.0 / config.recall_max_per_s if config.recall_max_per_s > 0 else 0.0
        self.max_share = config.recall_max_share
        self._last_sample = -math.inf
        self._resume_at = -math.inf  # router.recall_max_share: no sample before this
        self.k = config.recall_k
        self._admin_replicas = admin_replicas
        self._token = token
        self._random = random.Random(seed)
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        # (bundle_id, shard or MERGED) -> recent recall values
        self._windows: dict[tuple[str, int], collections.deque[float]] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._forgotten: set[str] = set()  # released bundles: samples still queued are ignored
        self.measured = 0

    # ------------------------------------------------------------------ request path
    def offer(
        self, state: RouterState, queries: np.ndarray, params: common_pb2.SearchParams
    ) -> None:
        """Maybe sample a live request (its first query row). Never waits, never raises."""
        if self.rate <= 0 or self._task is None or self._random.random() >= self.rate:
            return
        now = time.monotonic()
        if now - self._last_sample < self.min_spacing_s or now < self._resume_at:
            return  # router.recall_max_per_s, router.recall_max_share
        self._last_sample = now
        self._forgotten.discard(state.bundle.id)  # it serves again
        try:
            self._queue.put_nowait(Sample(state, np.array(queries[:1], dtype=np.float32), params))
        except asyncio.QueueFull:
            RECALL_SAMPLES.labels("dropped").inc()

    # ------------------------------------------------------------------ background task
    async def _run(self) -> None:
        while True:
            sample = await self._queue.get()
            started = time.monotonic()
            if self.max_share > 0:
                self._resume_at = math.inf  # none queued while this one is measured
            try:
                await self.measure(sample)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RECALL_SAMPLES.labels("failed").inc()
                log.info("recall sample not measured: %s", exc)
            finally:
                if self.max_share > 0:
                    took = time.monotonic() - started
                    self._resume_at = started + took / self.max_share

    async def measure(self, sample: Sample) -> None:
        """ANN and exact top-k of one sample on every shard; record the recalls."""
        state, k = sample.state, self.k
        bundle_id = state.bundle.id
        deadline = time.monotonic() + MEASURE_TIMEOUT_S
        replicas = await self._admin_replicas()
        by_shard: dict[int, list[AdminReplica]] = collections.defaultdict(list)
        for r in replicas:
            by_shard[r.shard_id].append(r)
        request = shard_pb2.ShardSearchRequest(
            queries=to_bytes(sample.query, F32),
            dim=sample.query.shape[1],
            k=k,
            params=sample.params,
            bundle_id=bundle_id,
        )
        shard_ids = sorted(state.scatter.groups)
        merged_task = asyncio.ensure_future(
            state.scatter.search(sample.query, k, sample.params, deadline)
        )
        try:
            outcomes = await asyncio.gather(
                *(self._ann(state, s, request, deadline) for s in shard_ids),
                *(self._exact(by_shard.get(s, []), s, request, deadline) for s in shard_ids),
                return_exceptions=True,
            )
            merged = await merged_task
        finally:
            merged_task.cancel()
        ann, exact = outcomes[: len(shard_ids)], outcomes[len(shard_ids) :]
        failed = [
            f"shard {s}: {o}"
            for s, o in zip(shard_ids * 2, outcomes, strict=True)
            if isinstance(o, BaseException)
        ]
        for shard_id, a, e in zip(shard_ids, ann, exact, strict=True):
            if not isinstance(a, BaseException) and not isinstance(e, BaseException):
                self._record(bundle_id, shard_id, recall_at_k(a[0][0], e[0][0]))
        if failed or merged.failures:
            raise RuntimeError("; ".join(failed) or f"merged search degraded: {merged.failures}")
        exact_hits = [e for e in exact if not isinstance(e, BaseException)]
        truth, _ = merge_rows(
            np.concatenate([h[0] for h in exact_hits], axis=1),
            np.concatenate([h[1] for h in exact_hits], axis=1),
            k,
            higher_is_better=state.scatter.higher_is_better,
        )
        self._record(bundle_id, MERGED, recall_at_k(merged.ids[0], truth[0]))
        self.measured += 1
        RECALL_SAMPLES.labels("measured").inc()

    async def _ann(
        self,
        state: RouterState,
        shard_id: int,
        request: shard_pb2.ShardSearchRequest,
        deadline: float,
    ) -> Hits:
        group = state.scatter.groups[shard_id]
        try:
            response = await group.search(request, deadline, MEASURE_TIMEOUT_S)
        except ShardFailure as exc:
            raise RuntimeError(f"Search: {exc.reason}") from exc
        return _hits(response)

    async def _exact(
        self,
        replicas: Sequence[AdminReplica],
        shard_id: int,
        request: shard_pb2.ShardSearchRequest,
        deadline: float,
    ) -> Hits:
        if not replicas:
            raise RuntimeError(f"no admin address of shard {shard_id} (ExactSearch)")
        errors = []
        for replica in self._random.sample(list(replicas), len(replicas)):
            try:
                response = await replica.stub.ExactSearch(
                    request,
                    metadata=metadata(self._token),
                    timeout=max(deadline - time.monotonic(), 0.001),
                )
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{replica.target}: {exc.code().name}: {exc.details()}")
                continue
            return _hits(response)
        raise RuntimeError("ExactSearch: " + "; ".join(errors))

    # ------------------------------------------------------------------ gauges
    def _record(self, bundle_id: str, shard: int, value: float) -> None:
        if bundle_id in self._forgotten:
            return
        key = (bundle_id, shard)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = collections.deque(maxlen=self.config.recall_window)
        window.append(value)
        self._counts[key] = self._counts.get(key, 0) + 1
        RECALL.labels(bundle_id, _label(shard), str(self.k)).set(float(np.mean(window)))

    def recall(self, bundle_id: str, shard: int = MERGED) -> tuple[float, int]:
        """(mean recall@k over the window, samples measured in all); (nan, 0) if none."""
        window = self._windows.get((bundle_id, shard))
        if not window:
            return float("nan"), 0
        return float(np.mean(window)), self._counts[(bundle_id, shard)]

    def gauges(self) -> list[admin_pb2.RecallGauge]:
        """Every (bundle, shard) measured, merged first, for RouterAdmin.Status."""
        out = []
        for (bundle_id, shard), window in sorted(self._windows.items()):
            out.append(
                admin_pb2.RecallGauge(
                    bundle_id=bundle_id,
                    shard_id=max(shard, 0),
                    merged=shard == MERGED,
                    k=self.k,
                    recall=float(np.mean(window)),
                    samples=self._counts[(bundle_id, shard)],
                )
            )
        return out

    def forget(self, bundle_id: str) -> None:
        """Drop a released bundle's windows and gauges."""
        self._forgotten.add(bundle_id)
        for key in [key for key in self._windows if key[0] == bundle_id]:
            del self._windows[key]
            self._counts.pop(key, None)
            with contextlib.suppress(KeyError):
                RECALL.remove(bundle_id, _label(key[1]), str(self.k))


def _label(shard: int) -> str:
    return "all" if shard == MERGED else str(shard)


def _hits(response: shard_pb2.ShardSearchResponse) -> Hits:
    nq, width = response.num_queries, response.k
    return (
        decode_rows(response.ids, I64, nq, width, name="shard ids"),
        decode_rows(response.scores, F32, nq, width, name="shard scores"),
    )
