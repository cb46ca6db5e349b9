"""Blocking clients: ``Client`` (the router) and ``ScatterClient`` (shards directly)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from annfleet.client import results as r
from annfleet.client.channels import open_channel
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


def call_with_retry(
    call: Callable[[float], T],
    timeout: float,
    retries: int,
    throttle: AdaptiveThrottle | None = None,
) -> T:
    """Run ``call(remaining_timeout)``; retry what ``retry_backoff`` allows (UNAVAILABLE, a
    shed RESOURCE_EXHAUSTED), at most ``retries`` times, never past ``timeout``. Other
    failures raise the mapped annfleet exception at once. With a ``throttle``, the call is
    first admitted by it (``Throttled``: nothing is sent, nothing retried); a call it lets
    out keeps its bounded retries, and every attempt's outcome is recorded."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        if throttle is not None and attempt == 0:
            throttle.admit()
        try:
            result = call(max(deadline - time.monotonic(), 0.001))
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if throttle is not None:
                throttle.record(overloaded(error))
            time.sleep(retry_backoff(error, attempt, retries, deadline))
            attempt += 1
        else:
            if throttle is not None:
                throttle.record(False)
            return result


class Client:
    """Calls the router. ``timeout`` (seconds) applies to each call unless overridden."""

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
        """``credentials``: None = plaintext; ``tls_credentials(ca=, cert=, key=)`` = TLS.
        ``throttle``: the adaptive client-side throttle (``ThrottleConfig``; None: off)."""
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
        self._channel = open_channel(target, credentials)
        self._stub = retrieval_pb2_grpc.RetrievalStub(self._channel)

    @property
    def throttle_stats(self) -> ThrottleStats | None:
        """Requests, accepts, server refusals and local rejections so far (None: no throttle)."""
        return self.throttle.stats() if self.throttle is not None else None

    def search(
        self,
        vectors: np.ndarray | Sequence[float],
        k: int,
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        rerank: int = 0,
        timeout: float | None = None,
    ) -> r.SearchResult:
        """vectors (d,) or (nq, d) float32 -> merged top-k per query over all shards."""
        request = r.search_request(
            r.as_queries(vectors), k, r.search_params(ef_search, nprobe, rerank)
        )
        response = call_with_retry(
            lambda t: self._stub.Search(request, timeout=t, metadata=self._metadata(t)),
            timeout or self.timeout,
            self.retries,
            self.throttle,
        )
        return r.search_result(response)

    def retrieve(
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
        """Candidates for a user: ids, scores and the source of each."""
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
        response = call_with_retry(attempts, timeout or self.timeout, self.retries, self.throttle)
        result = r.retrieve_result(response)
        attempts.answered(result.timings_ms)
        return result

    def record_engagement(
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
        response = call_with_retry(
            lambda t: self._stub.RecordEngagement(request, timeout=t, metadata=self._metadata(t)),
            timeout or self.timeout,
            self.retries,
            self.throttle,
        )
        return int(response.applied)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScatterClient:
    """Searches the shards directly and merges client-side (what the router does, without it).

    Each shard is asked for k hits, so the merge is exact with respect to the shards' answers.
    Shards that fail are left out and reported in ``coverage``; all failing raises.
    """

    def __init__(
        self,
        shard_targets: Sequence[str],
        *,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._channels = [open_channel(t, credentials) for t in shard_targets]
        self._stubs = [shard_pb2_grpc.IndexShardStub(c) for c in self._channels]

    def search(
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
        futures = [
            stub.Search.future(request, timeout=timeout or self.timeout) for stub in self._stubs
        ]
        responses: list[shard_pb2.ShardSearchResponse | BaseException] = []
        for future in futures:
            try:
                responses.append(future.result())
            except grpc.RpcError as exc:
                responses.append(from_rpc_error(exc))
        return r.merge_shard_responses(responses, k)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> ScatterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
