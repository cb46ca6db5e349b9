"""Queue-time shedding (router/admission.py ``QueueShed``, core ``annfleet.queue_time``) and
the adaptive limit's overload floor.

The rules on a fake clock; then a real router on port 0: a request whose
``annfleet-timeout-ms`` says it waited beyond the target is refused with
RESOURCE_EXHAUSTED naming its wait, a malformed entry is INVALID_ARGUMENT, requests
without the entry are untouched; and annfleet's real client sends the entry, retries a
queue-time refusal within its bounds and counts it in its throttle.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from support import Cluster, LoopThread, serve_retrieval

from annfleet.bundle import Bundle
from annfleet.client import AsyncClient, Client, ResourceExhausted, Throttled
from annfleet.config import RouterConfig
from annfleet.errors import InvalidArgument
from annfleet.errors import ResourceExhausted as ServerResourceExhausted
from annfleet.queue_time import TIMEOUT_METADATA, queue_time, timeout_metadata
from annfleet.router.admission import (
    OVERLOAD_WINDOWS,
    WINDOW_MIN,
    WINDOW_S,
    Admission,
    QueueShed,
)
from annfleet.synthetic import Catalogue
from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc

STEP = 0.101  # a little more than the 100 ms interval (fake-clock sums are floats)
TIMEOUT_S, BLOCK_S = 3.0, 2.0  # a client's timeout; how long a blocked router loop keeps it


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- what the entry says -------------------------------------------------------------------


def test_queue_time_is_the_sent_timeout_less_the_time_remaining() -> None:
    assert queue_time(timeout_metadata(0.1), 0.075) == pytest.approx(0.025)
    assert queue_time([("x", "1"), (TIMEOUT_METADATA, b"1000")], 0.9) == pytest.approx(0.1)
    # gRPC rounds its grpc-timeout up: more left than was sent reads as no wait at all
    assert queue_time(timeout_metadata(0.1), 0.1007) == 0.0
    assert queue_time(None, 0.1) is None  # no metadata
    assert queue_time([("other", "5")], 0.1) is None  # not annfleet's client
    assert queue_time(timeout_metadata(0.1), None) is None  # no deadline reached the server


@pytest.mark.parametrize("value", ["abc", "", "-5", "0", "nan", "inf", "1e999"])
def test_a_malformed_entry_is_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match=r"annfleet-timeout-ms: .* milliseconds"):
        queue_time([(TIMEOUT_METADATA, value)], 0.1)


# -- CoDel on a fake clock -----------------------------------------------------------------


def test_shed_long_waits_while_shedding_or_doomed_ones_behind_a_standing_queue() -> None:
    clock = Clock()
    shed = QueueShed(0.005, 0.1, clock)
    for _ in range(3):  # the first interval: a burst; even a doomed wait is served
        shed.check(0.050, remaining=0.010)
    clock.now += STEP
    shed.check(0.008, 1.0)  # the last interval's lowest wait was 50 ms > 5 ms: a queue stood
    assert shed.stood
    shed.check(0.050, 1.0)  # waited long, but has time left: served
    with pytest.raises(ServerResourceExhausted, match=r"waited 600\.0 ms .* 400\.0 ms it has left"):
        shed.check(0.600, 0.400)
    # while the router sheds (``overload``), anything beyond 2 x target is refused
    with pytest.raises(ServerResourceExhausted, match=r"waited 50\.0 ms .* beyond 10 ms"):
        shed.check(0.050, 1.0, overload=True)
    shed.check(0.010, 1.0, overload=True)  # within 2 x target: served
    shed.check(0.001, 1.0)
    clock.now += STEP
    shed.check(0.600, 0.400)  # the last interval had a 1 ms wait: no standing queue
    assert not shed.stood


def one_round(adm: Admission, clock: Clock, arrivals: int, latency: float) -> None:
    """``arrivals`` requests at once: those admitted take ``latency``, the rest are shed."""
    held = []
    for _ in range(arrivals):
        block = adm.admit()
        try:
            block.__enter__()
        except ServerResourceExhausted:
            continue
        held.append(block)
    clock.now += latency
    for block in held:
        block.__exit__(None, None, None)


def window(adm: Admission, clock: Clock, latency: float, in_flight: int, extra: int = 0) -> None:
    """One window of WINDOW_MIN requests taking ``latency``, ``in_flight`` at once; in the
    first round ``extra`` more arrive meanwhile (those beyond the limit are shed)."""
    rounds = WINDOW_MIN // in_flight
    for n in range(rounds):
        if n == rounds - 1:
            clock.now += WINDOW_S
        one_round(adm, clock, in_flight + (extra if n == 0 else 0), latency)


def busy_window(adm: Admission, clock: Clock, latency: float, extra: int) -> None:
    """Rounds of requests taking ``latency``, as many at once as the limit admits and
    ``extra`` more (shed), until the admission window closes."""
    clock.now += WINDOW_S  # the window's time is up: it closes with its WINDOW_MIN-th request
    start = adm._window_start
    while adm._window_start == start:
        one_round(adm, clock, int(adm.limit) + extra, latency)


def test_overload_lowers_the_floor_and_a_busy_router_keeps_it() -> None:
    clock = Clock()
    config = RouterConfig(min_in_flight=8, overload_min_in_flight=2, latency_tolerance=1.5)
    adm = Admission(config, clock)
    window(adm, clock, 0.010, 8)  # no-load latency 10 ms
    # a busy router: a closed loop of 8, slow, nothing shed: the limit stops at the floor
    for _ in range(6):
        window(adm, clock, 0.050, 8)
    assert adm.limit == 8 and not adm.overloaded
    # a burst: one window sheds, the floor holds
    busy_window(adm, clock, 0.050, extra=1)
    assert not adm.overloaded and adm.limit == 8
    # an overload: windows in a row shed: the floor drops to 2
    for _ in range(OVERLOAD_WINDOWS + 3):
        busy_window(adm, clock, 0.050, extra=1)
    assert adm.overloaded and adm.limit == 2
    # the overload ends (nothing shed, no queue): back to min_in_flight by sqrt(limit) steps
    window(adm, clock, 0.050, 2)
    assert not adm.overloaded and adm.limit == pytest.approx(2 + 2**0.5)
    for _ in range(5):
        window(adm, clock, 0.050, 2)
    assert adm.limit == 8


def test_a_queue_time_refusal_counts_as_a_shed() -> None:
    clock = Clock()
    adm = Admission(RouterConfig(min_in_flight=8, overload_min_in_flight=2), clock)
    window(adm, clock, 0.010, 8)
    assert adm.queue is not None
    adm.queue.check(0.5, 1.0)  # the first wait of an interval...
    clock.now += STEP  # ... and the interval is over: a queue stood
    with pytest.raises(ServerResourceExhausted, match="before the router started it"):
        adm.admit(queued=0.6, remaining=0.4).__enter__()
    with adm.admit(queued=None, remaining=0.4):  # one that does not tell its wait: admitted
        pass
    busy_window(adm, clock, 0.050, extra=0)  # 5x the no-load latency, one request shed
    assert not adm.overloaded and adm.limit == 16  # one window: a burst; halved
    for _ in range(OVERLOAD_WINDOWS - 1):  # windows in a row that shed: an overload
        with pytest.raises(ServerResourceExhausted):
            adm.admit(queued=0.6, remaining=0.4).__enter__()
        busy_window(adm, clock, 0.050, extra=0)
    assert adm.overloaded and adm.limit < 8  # below min_in_flight
    off = Admission(RouterConfig(queue_target_s=0), clock)
    assert off.queue is None
    with off.admit(queued=10.0, remaining=0.1):  # queue shedding off: any wait is admitted
        pass


# -- a real router -------------------------------------------------------------------------


@pytest.fixture
def router(cluster_factory: Any, flat_bundle: Bundle) -> Iterator[Cluster]:
    # a wide target (shed beyond 500 ms), so that an honest request on a starved test box
    # is never shed; the default interval (100 ms)
    yield cluster_factory(flat_bundle, RouterConfig(queue_target_s=0.25))


def search(stub: Any, vector: np.ndarray, metadata: Any = None) -> Any:
    """One raw Search with a 1 s timeout; the response or the RpcError."""
    request = retrieval_pb2.SearchRequest(
        queries=vector.astype("<f4").tobytes(), dim=vector.shape[-1], k=5
    )
    try:
        return stub.Search(request, timeout=1.0, metadata=metadata)
    except grpc.RpcError as exc:
        return exc


def test_a_request_that_waited_beyond_the_target_is_refused(
    router: Cluster, catalogue: Catalogue
) -> None:
    query = catalogue.vectors[:1]
    ok = retrieval_pb2.SearchResponse
    with grpc.insecure_channel(router.router_target) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        assert isinstance(search(stub, query), ok)  # connected
        # The entry claims 3 s for a call that has 1 s: it waited 2 s, more than it has left.
        late = timeout_metadata(3.0)
        assert isinstance(search(stub, query, late), ok)  # the first wait of an interval
        time.sleep(0.15)  # the interval (100 ms) whose lowest wait was ~2 s has passed
        refused = search(stub, query, late)
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "router overloaded: the request waited" in refused.details()
        assert "ms it has left, behind a standing queue" in refused.details()
        # meanwhile an honest request, and one without the entry, are served
        assert isinstance(search(stub, query, timeout_metadata(1.0)), ok)
        assert isinstance(search(stub, query), ok)
        # a malformed entry: INVALID_ARGUMENT naming it; the router keeps serving
        bad = search(stub, query, ((TIMEOUT_METADATA, "soon"),))
        assert isinstance(bad, grpc.RpcError)
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "annfleet-timeout-ms: 'soon' is not the call's timeout" in bad.details()
        assert isinstance(search(stub, query), ok)


class Recording(retrieval_pb2_grpc.RetrievalServicer):
    """A real Retrieval server that records each Search's metadata and time remaining."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], float | None]] = []

    async def Search(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.append((dict(context.invocation_metadata()), context.time_remaining()))
        return retrieval_pb2.SearchResponse(num_queries=1, k=0)


@pytest.fixture
def recording(loop_thread: LoopThread) -> Iterator[tuple[str, Recording]]:
    servicer = Recording()

    server, port = loop_thread.run(serve_retrieval(servicer))
    yield f"127.0.0.1:{port}", servicer
    loop_thread.run(server.stop(0))


def test_the_client_sends_its_timeout_unless_told_not_to(
    recording: tuple[str, Recording],
) -> None:
    target, servicer = recording
    query = np.zeros(4, np.float32)
    took: list[float] = []  # seconds each reporting call took, as the caller saw it
    with Client(target, timeout=0.8) as client:
        start = time.monotonic()
        client.search(query, 1)
        took.append(time.monotonic() - start)
    with Client(target, timeout=0.8, report_timeout=False) as client:
        client.search(query, 1)

    async def main() -> None:
        async with AsyncClient(target, timeout=0.6) as client:
            start = time.monotonic()
            await client.search(query, 1)
            took.append(time.monotonic() - start)

    asyncio.run(main())
    (sync_md, sync_left), (off_md, _), (async_md, async_left) = servicer.seen
    # the timeout the call was sent with: the client's, less the moment between the start
    # of the call and its send (well under 1 ms on an idle machine, longer on a busy one)
    for md, timeout, spent in ((sync_md, 0.8, took[0]), (async_md, 0.6, took[1])):
        sent = float(md[TIMEOUT_METADATA])
        assert (timeout - spent) * 1e3 - 0.001 <= sent <= timeout * 1e3
    assert TIMEOUT_METADATA not in off_md
    # what the router computes from them: a wait between 0 and the call's timeout
    for md, left in ((sync_md, sync_left), (async_md, async_left)):
        waited = queue_time(md.items(), left)
        assert waited is not None and 0.0 <= waited < float(md[TIMEOUT_METADATA]) / 1e3


def test_the_client_retries_a_queue_refusal_and_its_throttle_counts_it(
    cluster_factory: Any, flat_bundle: Bundle, catalogue: Catalogue, loop_thread: LoopThread
) -> None:
    # Every request judges the previous one's wait (interval ~0). The router runs on
    # ``loop_thread``: blocking that loop makes a request sent meanwhile wait before the
    # handler, as in an overloaded router. A blocked call waits BLOCK_S (2 s) or more,
    # counted from just before the client sends it: beyond 2 x target and beyond the
    # TIMEOUT_S - BLOCK_S (1 s) it has left then, with up to 1 s to spare before its
    # deadline (a refused call's retry has ~0.95 s). The target, 0.5 s (a queue stands
    # when the previous request waited longer), is far above an honest request's wait,
    # even on a starved test box.
    config = RouterConfig(queue_target_s=0.5, queue_interval_s=1e-9)
    cluster = cluster_factory(flat_bundle, config)
    query = catalogue.vectors[:1]

    def blocked(call: Any) -> Any:
        """call() sent while the router's event loop is blocked, until BLOCK_S after the
        call is about to be sent (however late this thread gets to send it)."""
        held, sending = threading.Event(), threading.Event()

        def block() -> None:
            held.set()
            sending.wait(60)
            time.sleep(BLOCK_S)

        loop_thread.loop.call_soon_threadsafe(block)
        held.wait(60)
        sending.set()
        return call()

    with Client(cluster.router_target, timeout=TIMEOUT_S, retries=0) as client:
        assert len(client.search(query, 5).ids[0]) == 5  # connected
        blocked(lambda: client.search(query, 5))  # a long wait, but the first: served
        # waited BLOCK_S again, behind a standing queue: refused; no retries: raised
        with pytest.raises(ResourceExhausted, match="before the router started it") as raised:
            blocked(lambda: client.search(query, 5))
        assert not isinstance(raised.value, Throttled)
        stats = client.throttle_stats
        assert stats is not None and (stats.accepts, stats.refused) == (2, 1)
    # a client that does not send its timeout is not shed on queue time (the queue stands)
    with Client(cluster.router_target, timeout=TIMEOUT_S, report_timeout=False) as client:
        assert len(blocked(lambda: client.search(query, 5)).ids[0]) == 5
        stats = client.throttle_stats
        assert stats is not None and stats.refused == 0
    # waited BLOCK_S, the queue still standing: refused; the retry 50 ms later waits no
    # more: served
    with Client(cluster.router_target, timeout=TIMEOUT_S, retries=2) as client:
        assert len(blocked(lambda: client.search(query, 5)).ids[0]) == 5
        stats = client.throttle_stats
        assert stats is not None and (stats.accepts, stats.refused) == (1, 1)
