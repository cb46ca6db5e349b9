"""asyncio clients: ``AsyncClient`` (the router) and ``AsyncScatterClient`` (shards directly)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from annfleet.client import results as r
from annfleet.client.channels import open_aio_channel
from annfleet.client.errors import from_rpc_error, overloaded, retry_backoff
from annfleet.client.throttle import (
    DEFAULT_THROTTLE,
    AdaptiveThrottle,
    ThrottleConfig,
    ThrottleStats,
)
from annfleet.queue_time import no_metadata, timeout_metadata
from annfleet.return_time import Attempts, ReturnTime
from annfleet.v1 import retrieval_pb2_grpc, shard_pb2, shard_pb2_grpc

T = TypeVar("T")


async def call_with_retry(
    call: Callable[[float], Awaitable[T]],
    timeout: float,
    retries: int,
    throttle: AdaptiveThrottle | None = None,
) -> T:
    """Async twin of ``annfleet.client.sync.call_with_retry`` (same retry and throttle rules)."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        if throttle is not None and attempt == 0:
            throttle.admit()
        try:
            result = await call(max(deadline - time.monotonic(), 0.001))
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if throttle is not None:
                throttle.record(overloaded(error))
            await asyncio.sleep(retry_backoff(error, attempt, retries, deadline))
            attempt += 1
        else:
            if throttle is not None:
                throttle.record(False)
            return result


class AsyncClient:
    """Calls the router from asyncio code; same methods as ``Client``, as coroutines."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        credentials: grpc.ChannelCredentials | None = None,
        throttle: ThrottleConfig | None = DEFAULT_THROTTLE,
        report_timeout: bool = True,
        report_return: bool = True,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.throttle = AdaptiveThrottle(throttle) if throttle is not None else None
        # each call's timeout in annfleet-timeout-ms: the router sheds a call that queued
        # beyond its queue target at once (RESOURCE_EXHAUSTED) instead of serving it late
        self._metadata = timeout_metadata if report_timeout else no_metadata
        # the recent return time of its Retrieves (whole time less the router's inbound and
        # total) in annfleet-return-ms: the router keeps it back from each source's budget
        self.return_time = ReturnTime() if report_return else None
        self._channel = open_aio_channel(target, credentials)
        self._stub = retrieval_pb2_grpc.RetrievalStub(self._channel)

    @property
    def throttle_stats(self) -> ThrottleStats | None:
        """Requests, accepts, server refusals and local rejections so far (None: no throttle)."""
        return self.throttle.stats() if self.throttle is not None else None

    async def search(
        self,
        vectors: np.ndarray | Sequence[float],
        k: int,
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        rerank: int = 0,
        timeout: float | None = None,
    ) -> r.SearchResult:
        request = r.search_request(
            r.as_queries(vectors), k, r.search_params(ef_search, nprobe, rerank)
        )
        response = await call_with_retry(
            lambda t: self._stub.Search(request, timeout=t, metadata=self._metadata(t)),
            timeout or self.timeout,
            self.retries,
            self.throttle,
        )
        return r.search_result(response)

    async def retrieve(
        self,
        user_id: int,
        k: int,
        *,
        recent_items: Iterable[int] = (),
        timestamp: int = 0,
        exclude: Iterable[int] = (),
        include_titles: bool = False,
        timeout: float | None = None,
        **context: Any,
    ) -> r.RetrieveResult:
        request = r.retrieve_request(
            user_id,
            k,
            recent_items=recent_items,
            timestamp=timestamp,
            exclude=exclude,
            include_titles=include_titles,
            **context,
        )
        attempts = Attempts(
            lambda t, sent: self._stub.Retrieve(request, timeout=t, metadata=sent),
            self._metadata,
            self.return_time,
        )
        response = await call_with_retry(
            attempts, timeout or self.timeout, self.retries, self.throttle
        )
        result = r.retrieve_result(response)
        attempts.answered(result.timings_ms)
        return result

    async def record_engagement(
        self,
        events: Iterable[r.Engagement | tuple[int, int] | tuple[int, int, str | int]],
        *,
        timeout: float | None = None,
    ) -> int:
        """Record a batch of engagement events (``Engagement`` or ``(user_id, item_id[,
        type])``), all or none; returns how many were applied. A bad event raises
        InvalidArgument naming ``events[i]``, and nothing of the batch is applied. Retried
        like every call on UNAVAILABLE: a batch whose reply was lost may count twice."""
        request = r.engagement_request(events)
        response = await call_with_retry(
            lambda t: self._stub.RecordEngagement(request, timeout=t, metadata=self._metadata(t)),
            timeout or self.timeout,
            self.retries,
            self.throttle,
        )
        return int(response.applied)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncScatterClient:
    """asyncio twin of ``ScatterClient``: all shards concurrently, merged client-side."""

    def __init__(
        self,
        shard_targets: Sequence[str],
        *,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._channels = [open_aio_channel(t, credentials) for t in shard_targets]
        self._stubs = [shard_pb2_grpc.IndexShardStub(c) for c in self._channels]

    async def search(
        self,
        vectors: np.ndarray | Sequence[float],
        k: int,
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        rerank: int = 0,
        timeout: float | None = None,
    ) -> r.SearchResult:
        request = r.shard_request(
            r.as_queries(vectors), k, r.search_params(ef_search, nprobe, rerank)
        )
        outcomes = await asyncio.gather(
            *(stub.Search(request, timeout=timeout or self.timeout) for stub in self._stubs),
            return_exceptions=True,
        )
        responses: list[shard_pb2.ShardSearchResponse | BaseException] = [
            from_rpc_error(o) if isinstance(o, grpc.RpcError) else o for o in outcomes
        ]
        return r.merge_shard_responses(responses, k)

    async def close(self) -> None:
        await asyncio.gather(*(c.close(None) for c in self._channels))

    async def __aenter__(self) -> AsyncScatterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
