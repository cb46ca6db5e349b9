"""Which failures the client retries: UNAVAILABLE and RESOURCE_EXHAUSTED (a shed request),
bounded and inside the call's timeout; never a message-size RESOURCE_EXHAUSTED. The retry
rule alone: the adaptive throttle is off here (with it, see test_client_throttle.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from support import LoopThread, serve_retrieval

from annfleet.client import AsyncClient, Client, ResourceExhausted
from annfleet.client.errors import InvalidArgument, retry_backoff, retryable
from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc


class Shedding(retrieval_pb2_grpc.RetrievalServicer):
    """A real Retrieval server that sheds the first ``shed`` calls, then answers."""

    def __init__(self, shed: int) -> None:
        self.shed = shed
        self.calls = 0

    async def Search(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.shed:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (test)")
        return retrieval_pb2.SearchResponse(
            ids=np.zeros(1, "<i8").tobytes(),
            scores=np.zeros(1, "<f4").tobytes(),
            num_queries=1,
            k=1,
        )


@pytest.fixture
def shedding(loop_thread: LoopThread) -> Iterator[object]:
    servers = []

    def start(shed: int) -> tuple[str, Shedding]:
        servicer = Shedding(shed)

        server, port = loop_thread.run(serve_retrieval(servicer))
        servers.append(server)
        return f"127.0.0.1:{port}", servicer

    yield start
    for server in servers:
        loop_thread.run(server.stop(0))


def test_resource_exhausted_is_retried_then_succeeds(shedding) -> None:  # type: ignore[no-untyped-def]
    target, servicer = shedding(shed=2)
    with Client(target, timeout=5, retries=2, throttle=None) as client:
        result = client.search(np.zeros(4, np.float32), 1)
    assert servicer.calls == 3 and result.ids.shape == (1, 1)


def test_resource_exhausted_retries_are_bounded(shedding, loop_thread: LoopThread) -> None:  # type: ignore[no-untyped-def]
    target, servicer = shedding(shed=100)

    async def call() -> None:
        async with AsyncClient(target, timeout=5, retries=3, throttle=None) as client:
            await client.search(np.zeros(4, np.float32), 1)

    with pytest.raises(ResourceExhausted, match="queue full"):
        loop_thread.run(call())
    assert servicer.calls == 4


def test_message_size_and_other_codes_are_not_retried() -> None:
    deadline = time.monotonic() + 10
    too_big = ResourceExhausted(
        "Received message larger than max (70000000 vs. 67108864)",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert not retryable(too_big)
    with pytest.raises(ResourceExhausted):
        retry_backoff(too_big, 0, 3, deadline)
    with pytest.raises(InvalidArgument):
        retry_backoff(InvalidArgument("bad"), 0, 3, deadline)
    assert retry_backoff(ResourceExhausted("full"), 0, 3, deadline) == pytest.approx(0.05)


def test_a_call_the_throttle_let_out_keeps_its_retries(shedding) -> None:  # type: ignore[no-untyped-def]
    """The throttle decides once per call: after two refusals (which alone would make it
    reject with p = 2/3) the call's retries still go out, and each counts as a request."""
    target, servicer = shedding(shed=2)
    with Client(target, timeout=5, retries=2) as client:
        result = client.search(np.zeros(4, np.float32), 1)
        stats = client.throttle_stats
    assert servicer.calls == 3 and result.ids.shape == (1, 1)
    assert stats is not None
    assert (stats.requests, stats.refused, stats.accepts, stats.throttled) == (3, 2, 1, 0)
