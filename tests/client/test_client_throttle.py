"""The client's adaptive throttle (client/throttle.py): the SRE book's rejection rule on a
fake clock, and on a real router whose admission limit refuses: local rejections happen,
are counted, say so, are never retried and never reach the router; the client recovers
once the router accepts again; off, nothing changes; grpc's message-size
RESOURCE_EXHAUSTED is not a refusal."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from support import LoopThread, ObservedServer, serve_retrieval, start_observed_shard

from annfleet.bundle import Bundle
from annfleet.client import (
    AnnfleetError,
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    ThrottleConfig,
    Throttled,
    Unavailable,
)
from annfleet.client.errors import overloaded, refused, retryable
from annfleet.client.throttle import AdaptiveThrottle, rejection_probability
from annfleet.config import RouterConfig
from annfleet.router.main import RouterServer, start_router
from annfleet.synthetic import Catalogue
from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rejected(throttle: AdaptiveThrottle) -> bool:
    try:
        throttle.admit()
    except Throttled:
        return True
    return False


# -- the rule, on a fake clock ------------------------------------------------------------


@given(
    outcomes=st.lists(st.booleans(), max_size=200),
    k=st.floats(1.0, 4.0),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_rejects_with_the_sre_books_probability(outcomes: list[bool], k: float, u: float) -> None:
    """One bucket of finished attempts (True: refused): the next attempt is rejected exactly
    when the draw is below max(0, (requests - k * accepts) / (requests + 1)), and a
    rejection counts as a request."""
    throttle = AdaptiveThrottle(ThrottleConfig(k=k), clock=FakeClock(), draw=lambda: u)
    for was_refused in outcomes:
        throttle.record(was_refused)
    requests, accepts = len(outcomes), outcomes.count(False)
    p = max(0.0, (requests - k * accepts) / (requests + 1))
    assert throttle.probability() == pytest.approx(p)
    assert rejected(throttle) == (u < p)
    stats = throttle.stats()
    assert (stats.accepts, stats.refused) == (accepts, requests - accepts)
    assert stats.throttled == int(u < p)
    assert stats.requests == requests + stats.throttled


@given(requests=st.integers(0, 10_000), accepts=st.integers(0, 10_000), k=st.floats(1.0, 10.0))
def test_probability_is_a_probability_and_zero_while_k_accepts_cover_requests(
    requests: int, accepts: int, k: float
) -> None:
    accepts = min(accepts, requests)
    p = rejection_probability(requests, accepts, k)
    assert 0.0 <= p < 1.0
    assert (p == 0.0) == (requests <= k * accepts)


def test_nothing_is_rejected_while_the_server_accepts() -> None:
    throttle = AdaptiveThrottle(clock=FakeClock(), draw=lambda: 0.0)  # the draw rejects any p > 0
    for _ in range(1000):
        throttle.admit()
        throttle.record(False)
    assert throttle.stats().throttled == 0 and throttle.probability() == 0.0


def test_history_older_than_the_window_is_forgotten() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(ThrottleConfig(window_s=2.0, buckets=20), clock=clock)
    for _ in range(100):
        throttle.record(True)
    assert throttle.probability() == pytest.approx(100 / 101)
    clock.now += 1.0  # half a window later the refusals still count; new accepts dilute them
    for _ in range(100):
        throttle.record(False)
    assert throttle.probability() == 0.0  # 200 requests <= 2 x 100 accepts
    for _ in range(50):
        throttle.record(True)
    assert throttle.probability() == pytest.approx((250 - 200) / 251)
    clock.now += 1.05  # the first 100 refusals leave the window, the rest are within it
    assert throttle.probability() == 0.0  # 150 requests <= 2 x 100 accepts
    clock.now += 2.0  # everything has left
    throttle.record(True)
    assert throttle.probability() == pytest.approx(1 / 2)
    assert throttle.stats().refused == 151  # the counters are totals, not windowed


def test_client_sends_about_k_times_what_the_server_accepts() -> None:
    """A simulated server that accepts 200/s (20 per 100 ms) offered 1000/s (a clock that
    advances 1 ms per call): once the window is full, the client sends about k x 200/s and
    rejects the rest locally (seeded draws)."""
    clock = FakeClock()
    throttle = AdaptiveThrottle(ThrottleConfig(k=2.0), clock=clock, draw=random.Random(7).random)
    accepted_in: dict[int, int] = {}  # 100 ms interval -> accepts
    sent = accepted = 0
    for i in range(20_000):
        clock.now += 0.001
        if rejected(throttle):
            continue
        interval = int(clock.now * 10)
        ok = accepted_in.get(interval, 0) < 20
        accepted_in[interval] = accepted_in.get(interval, 0) + ok
        throttle.record(not ok)
        if i >= 10_000:  # after five windows
            sent += 1
            accepted += ok
    assert accepted / 10.0 == pytest.approx(200, rel=0.05)  # the server stays busy
    assert sent / 10.0 == pytest.approx(400, rel=0.1)


def test_config_is_checked() -> None:
    for bad in ({"k": 0.5}, {"window_s": 0.0}, {"buckets": 0}):
        with pytest.raises(InvalidArgument, match="throttle"):
            ThrottleConfig(**bad)  # type: ignore[arg-type]


def test_what_counts_against_the_server() -> None:
    """Refusals by a limit and timeouts count; grpc's message-size limit, the client's own
    throttle, a server that is down and a bad argument do not."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused(ResourceExhausted("2 requests in flight (limit 2, max_in_flight 2)", code))
    assert overloaded(ResourceExhausted("shard 0: 64 searches queued (max_queue 64)", code))
    for size in ("Received", "Sent", "SERVER: Received"):
        too_big = ResourceExhausted(f"{size} message larger than max (9 vs. 4)", code)
        assert not refused(too_big) and not overloaded(too_big) and not retryable(too_big)
    assert not refused(Throttled("throttled locally, not sent: ...", code))
    assert not overloaded(Throttled("throttled locally, not sent: ...", code))
    assert not retryable(Throttled("throttled locally, not sent: ...", code))
    assert overloaded(DeadlineExceeded("Deadline Exceeded"))
    assert overloaded(AnnfleetError("cancelled by the server", grpc.StatusCode.CANCELLED))
    assert not overloaded(Unavailable("failed to connect"))
    assert not overloaded(InvalidArgument("k must be >= 1"))


def test_a_local_rejection_costs_no_rpc() -> None:
    """A client whose throttle rejects everything never opens a call: nothing listens on
    the target, yet the error is the local rejection, not UNAVAILABLE."""
    from annfleet.cluster import free_port

    with Client(f"127.0.0.1:{free_port()}", retries=0) as client:
        assert client.throttle is not None
        for _ in range(50):
            client.throttle.record(True)
        client.throttle._draw = lambda: 0.0  # every p > 0 rejects
        with pytest.raises(Throttled, match="throttled locally"):
            client.search(np.zeros(4, np.float32), 1)
        assert client.throttle_stats is not None and client.throttle_stats.throttled == 1


# -- on a real router that refuses --------------------------------------------------------


class Refusing:
    """A real router with room for one request in flight, held by a search its (delayed)
    shards answer ``hold_s`` later: meanwhile every other request is refused at once."""

    def __init__(self, lt: LoopThread, bundle: Bundle, catalogue: Catalogue) -> None:
        self.lt = lt
        self.vectors = catalogue.user_vectors
        self.shards: list[ObservedServer] = [
            lt.run(start_observed_shard(bundle, i)) for i in range(bundle.num_shards)
        ]
        config = RouterConfig(
            admission="fixed",
            max_in_flight=1,
            coalesce_in_flight=0,
            shard_transport="unary",  # each shard search sleeps on its own, cancellable
            shard_timeout_s=60.0,
        )
        targets = [f"127.0.0.1:{s.port}" for s in self.shards]
        self.router: RouterServer = lt.run(start_router(bundle.path, targets, config))
        self.target = f"127.0.0.1:{self.router.port}"
        self._channel = grpc.insecure_channel(self.target)
        self._held: grpc.Future | None = None

    def _in_flight(self, n: int) -> None:
        """Wait (bounded) until the router counts ``n`` requests in flight."""
        admission = self.router.service.admission
        for _ in range(1000):
            if admission.in_flight == n:
                return
            time.sleep(0.01)
        raise AssertionError(f"the router has {admission.in_flight} requests in flight, not {n}")

    def hold(self) -> None:
        """Occupy the one slot until ``release``: every other request is refused meanwhile."""
        for shard in self.shards:
            shard.service.delay = 120.0
        stub = retrieval_pb2_grpc.RetrievalStub(self._channel)
        query = np.ascontiguousarray(self.vectors[0], dtype="<f4")
        request = retrieval_pb2.SearchRequest(queries=query.tobytes(), dim=query.size, k=5)
        self._held = stub.Search.future(request, timeout=120)
        self._in_flight(1)

    def release(self) -> None:
        """Cancel the held search; returns once the router has the slot free again."""
        for shard in self.shards:
            shard.service.delay = 0.0
        assert self._held is not None
        self._held.cancel()
        self._in_flight(0)

    def refusals(self) -> float:
        labels = {"service": "Retrieval", "method": "Search", "code": "RESOURCE_EXHAUSTED"}
        return REGISTRY.get_sample_value("annfleet_requests_total", labels) or 0.0

    def refusals_since(self, before: float, expected: float) -> float:
        """The router's refusals since ``before``, once it has counted ``expected`` of them
        (it counts a refusal after sending it) or a few seconds have passed."""
        for _ in range(500):
            if self.refusals() - before >= expected:
                break
            time.sleep(0.01)
        return self.refusals() - before

    def close(self) -> None:
        if self._held is not None:
            self._held.cancel()
        self._channel.close()
        self.lt.run(self.router.stop(0))
        for shard in self.shards:
            self.lt.run(shard.stop(0))


@pytest.fixture
def refusing(
    loop_thread: LoopThread, flat_bundle: Bundle, catalogue: Catalogue
) -> Iterator[Refusing]:
    router = Refusing(loop_thread, flat_bundle, catalogue)
    yield router
    router.close()


def outcomes(client: Client, vectors: np.ndarray, n: int) -> list[str]:
    """n searches: "ok", "throttled" (local) or "refused" (by the router)."""
    seen = []
    for i in range(n):
        try:
            client.search(vectors[i % len(vectors)], 5)
            seen.append("ok")
        except Throttled as exc:
            assert "throttled locally, not sent" in exc.details
            assert isinstance(exc, ResourceExhausted) and exc.code.name == "RESOURCE_EXHAUSTED"
            seen.append("throttled")
        except ResourceExhausted as exc:
            assert "max_in_flight 1" in exc.details
            seen.append("refused")
    return seen


def test_throttle_engages_on_refusals_and_recovers(refusing: Refusing) -> None:
    refusing.hold()
    before = refusing.refusals()
    config = ThrottleConfig(window_s=1.0, buckets=10)
    with Client(refusing.target, timeout=5, retries=2, throttle=config) as client:
        seen = outcomes(client, refusing.vectors, 30)
        stats = client.throttle_stats
        assert stats is not None
        # Local rejections happened, each ended its call (not retried: one per call at most)
        assert seen.count("throttled") == stats.throttled > 0
        assert seen.count("ok") == 0 and stats.accepts == 0
        # and never reached the router: it refused exactly the attempts the client sent
        # (retries included), and each counts as a request
        assert refusing.refusals_since(before, stats.refused) == stats.refused
        assert stats.refused >= seen.count("refused")
        assert stats.requests == stats.refused + stats.throttled
        assert stats.probability > 0

        refusing.release()  # the router accepts again
        time.sleep(config.window_s + 0.1)  # the refusals leave the throttle's window
        assert client.throttle.probability() == 0.0  # type: ignore[union-attr]
        again = outcomes(client, refusing.vectors, 20)
        assert again == ["ok"] * 20
        after = client.throttle_stats
        assert after is not None
        assert (after.throttled, after.accepts) == (stats.throttled, 20)


def test_without_throttle_every_call_reaches_the_router(refusing: Refusing) -> None:
    refusing.hold()
    before = refusing.refusals()
    with Client(refusing.target, timeout=5, retries=0, throttle=None) as client:
        seen = outcomes(client, refusing.vectors, 30)
        assert client.throttle is None and client.throttle_stats is None
    assert seen == ["refused"] * 30
    assert refusing.refusals_since(before, 30) == 30
    refusing.release()


def test_async_client_throttles_too(refusing: Refusing, loop_thread: LoopThread) -> None:
    refusing.hold()

    async def main() -> tuple[list[str], object]:
        seen = []
        async with AsyncClient(refusing.target, timeout=5, retries=0) as client:
            for i in range(30):
                try:
                    await client.search(refusing.vectors[i % 5], 5)
                    seen.append("ok")
                except Throttled:
                    seen.append("throttled")
                except ResourceExhausted:
                    seen.append("refused")
            return seen, client.throttle_stats

    seen, stats = loop_thread.run(main())
    assert stats.throttled == seen.count("throttled") > 0  # type: ignore[attr-defined]
    assert stats.refused == seen.count("refused")  # type: ignore[attr-defined]
    refusing.release()


# -- grpc's message-size RESOURCE_EXHAUSTED -----------------------------------------------


class Answering(retrieval_pb2_grpc.RetrievalServicer):
    async def Search(self, request, context):  # type: ignore[no-untyped-def]
        return retrieval_pb2.SearchResponse(num_queries=1, k=0)


@pytest.fixture
def small_server(loop_thread: LoopThread) -> Iterator[str]:
    """A real gRPC server that takes messages of at most 1 KiB: larger requests get grpc's
    own RESOURCE_EXHAUSTED ("Received message larger than max")."""

    server, port = loop_thread.run(
        serve_retrieval(Answering(), options=[("grpc.max_receive_message_length", 1024)])
    )
    yield f"127.0.0.1:{port}"
    loop_thread.run(server.stop(0))


def test_message_size_resource_exhausted_is_not_a_refusal(small_server: str) -> None:
    with Client(small_server, timeout=5, retries=2) as client:
        for _ in range(5):  # after one refusal the next call would be rejected with p = 0.5
            with pytest.raises(ResourceExhausted, match="larger than max") as raised:
                client.search(np.zeros(1024, np.float32), 1)  # 4 KiB of vectors
            assert not isinstance(raised.value, Throttled)
        stats = client.throttle_stats
    assert stats is not None
    # not retried, not refused: 5 attempts, all accepts, nothing rejected locally
    assert (stats.requests, stats.accepts, stats.refused, stats.throttled) == (5, 5, 0, 0)
