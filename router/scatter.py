"""Fan-out of one search to every shard, with deadlines, partial results and backfill.

A shard that fails or times out never fails the request by itself: the result says which
shards answered, and the service decides against ``min_coverage``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.merge import merge_rows, per_shard_k
from annfleet.metrics import SHARD_FAILURES
from annfleet.serving import GRPC_OPTIONS
from annfleet.v1 import common_pb2, shard_pb2, shard_pb2_grpc
from annfleet.validation import higher_is_better

log = logging.getLogger(__name__)


@dataclass
class ShardEndpoint:
    shard_id: int
    target: str
    share: float  # this shard's fraction of the catalogue
    channel: grpc.aio.Channel = field(repr=False)
    stub: shard_pb2_grpc.IndexShardStub = field(repr=False)
    admin: shard_pb2_grpc.ShardAdminStub = field(repr=False)

    @classmethod
    def connect(
        cls,
        shard_id: int,
        target: str,
        share: float,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ShardEndpoint:
        channel = (
            grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=GRPC_OPTIONS)
        )
        return cls(
            shard_id,
            target,
            share,
            channel,
            shard_pb2_grpc.IndexShardStub(channel),
            shard_pb2_grpc.ShardAdminStub(channel),
        )


@dataclass(frozen=True)
class ScatterResult:
    ids: np.ndarray  # (nq, k) int64, -1 padded
    scores: np.ndarray  # (nq, k) float32
    answered: list[int]  # shard ids that answered
    failures: dict[int, str]  # shard id -> reason

    @property
    def asked(self) -> int:
        return len(self.answered) + len(self.failures)


class Scatter:
    """Scatter-gather over one bundle's shards."""

    def __init__(
        self, endpoints: Sequence[ShardEndpoint], bundle_id: str, metric: str, oversample: float
    ) -> None:
        self.endpoints = list(endpoints)
        self.bundle_id = bundle_id
        self.higher_is_better = higher_is_better(metric)
        self.oversample = oversample

    async def _one(
        self,
        endpoint: ShardEndpoint,
        queries: np.ndarray,
        k: int,
        params: common_pb2.SearchParams,
        timeout: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        request = shard_pb2.ShardSearchRequest(
            queries=to_bytes(queries, F32),
            dim=queries.shape[1],
            k=k,
            params=params,
            bundle_id=self.bundle_id,
        )
        response = await endpoint.stub.Search(request, timeout=timeout)
        nq, width = response.num_queries, response.k
        return (
            decode_rows(response.ids, I64, nq, width, name="shard ids"),
            decode_rows(response.scores, F32, nq, width, name="shard scores"),
        )

    async def _gather(
        self,
        endpoints: Sequence[ShardEndpoint],
        ks: Sequence[int],
        queries: np.ndarray,
        params: common_pb2.SearchParams,
        timeout: float,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int], dict[int, str]]:
        outcomes = await asyncio.gather(
            *(
                self._one(ep, queries, k, params, timeout)
                for ep, k in zip(endpoints, ks, strict=True)
            ),
            return_exceptions=True,
        )
        hits, answered, failures = [], [], {}
        for endpoint, outcome in zip(endpoints, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, grpc.aio.AioRpcError):
                    code = outcome.code()
                    reason = f"{code.name}: {outcome.details()}"
                else:
                    code, reason = None, repr(outcome)
                failures[endpoint.shard_id] = reason
                SHARD_FAILURES.labels(str(endpoint.shard_id), code.name if code else "ERROR").inc()
                log.warning("shard %d (%s) failed: %s", endpoint.shard_id, endpoint.target, reason)
            else:
                hits.append(outcome)
                answered.append(endpoint.shard_id)
        return hits, answered, failures

    async def search(
        self, queries: np.ndarray, k: int, params: common_pb2.SearchParams, timeout: float
    ) -> ScatterResult:
        """queries (nq, d) float32 -> merged top-k over the shards that answer within ``timeout``.

        When a shard fails and the survivors returned fewer than k hits for some query, the
        survivors are asked once more for k each (inside the same deadline) so k stays full.
        """
        deadline = time.monotonic() + timeout
        ks = [per_shard_k(k, ep.share, self.oversample) for ep in self.endpoints]
        hits, answered, failures = await self._gather(self.endpoints, ks, queries, params, timeout)
        if failures and hits and any(kk < k for kk in ks):
            found = sum(np.count_nonzero(h[0] >= 0, axis=1) for h in hits)  # (nq,)
            remaining = deadline - time.monotonic()
            if int(np.min(found)) < k and remaining > 0:
                survivors = [ep for ep in self.endpoints if ep.shard_id in answered]
                more, more_answered, _ = await self._gather(
                    survivors, [k] * len(survivors), queries, params, remaining
                )
                if len(more_answered) == len(survivors):
                    hits = more
        if not hits:
            empty = np.full((len(queries), k), -1, dtype=np.int64)
            return ScatterResult(empty, np.zeros((len(queries), k), np.float32), [], failures)
        ids, scores = merge_rows(
            np.concatenate([h[0] for h in hits], axis=1),
            np.concatenate([h[1] for h in hits], axis=1),
            k,
            higher_is_better=self.higher_is_better,
        )
        return ScatterResult(ids, scores, sorted(answered), failures)

    async def close(self) -> None:
        await asyncio.gather(*(ep.channel.close(None) for ep in self.endpoints))
