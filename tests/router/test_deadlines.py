"""One absolute deadline from the router's edge to every shard attempt, and router backpressure.

Real shard services (``ObservedShard``: records the deadline each Search arrives with and can
answer late) behind a real router, through the real client or a raw stub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import LoopThread, ObservedServer, ObservedShard, start_observed_shard

from annfleet.bundle import Bundle
from annfleet.client import AsyncClient, Client, DeadlineExceeded, ResourceExhausted
from annfleet.config import RouterConfig
from annfleet.router.main import RouterServer, start_router
from annfleet.synthetic import Catalogue
from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc

# The timeout gRPC puts on the wire is rounded up to three significant figures and taken
# against its own clock reading, which lags on a loaded machine: a shard was seen with
# 6.098 s left of a 6 s budget on a box at load average 10.
GRPC_SLACK_S = 0.15


@dataclass
class Observed:
    shards: list[ObservedServer]
    router: RouterServer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    def service(self, i: int) -> ObservedShard:
        return self.shards[i].service

    def seen(self) -> list[float | None]:
        return [t for i in range(len(self.shards)) for t in self.service(i).seen]

    def set_delay(self, delay: float, shards: tuple[int, ...] = (0, 1, 2)) -> None:
        for i in shards:
            self.service(i).delay = delay


@pytest.fixture
def observed(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> Iterator[Callable[[RouterConfig], Observed]]:
    started: list[Observed] = []

    def factory(config: RouterConfig) -> Observed:
        shards = [
            loop_thread.run(start_observed_shard(flat_bundle, i))
            for i in range(flat_bundle.num_shards)
        ]
        targets = [f"127.0.0.1:{s.port}" for s in shards]
        router = loop_thread.run(start_router(flat_bundle.path, targets, config))
        for shard in shards:
            shard.service.forget()  # the router's warm-up search
        started.append(Observed(shards, router))
        return started[-1]

    yield factory
    for cluster in started:
        loop_thread.run(cluster.router.stop(0))
        for shard in cluster.shards:
            loop_thread.run(shard.stop(0))


def raw_search(target: str, vector: np.ndarray, k: int, timeout: float | None) -> grpc.RpcError:
    """Search through a plain stub (``timeout=None``: no deadline at all); the error, if any."""
    with grpc.insecure_channel(target) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        request = retrieval_pb2.SearchRequest(
            queries=vector.astype("<f4").tobytes(), dim=vector.shape[-1], k=k
        )
        try:
            stub.Search(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc
    return None  # type: ignore[return-value]


def test_no_caller_deadline_the_shards_get_default_timeout(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    cluster = observed(RouterConfig(default_timeout_s=5.0, shard_timeout_s=20.0))
    assert raw_search(cluster.target, catalogue.vectors[:1], 10, timeout=None) is None
    seen = cluster.seen()
    assert len(seen) == 3 and all(t is not None and 2.0 < t <= 5.05 for t in seen), seen


def test_caller_deadline_less_margin_reaches_the_shards_capped_per_attempt(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    cluster = observed(RouterConfig(deadline_margin_s=4.0, shard_timeout_s=20.0))
    assert raw_search(cluster.target, catalogue.vectors[:1], 10, timeout=10.0) is None
    seen = cluster.seen()
    # 10 s less the margin (give or take GRPC_SLACK_S)
    assert all(t is not None and 3.0 < t <= 6.0 + GRPC_SLACK_S for t in seen), seen

    capped = observed(RouterConfig(shard_timeout_s=2.0))
    assert raw_search(capped.target, catalogue.vectors[:1], 10, timeout=10.0) is None
    assert all(t is not None and 0.0 < t <= 2.0 + GRPC_SLACK_S for t in capped.seen()), (
        capped.seen()
    )


def test_short_deadline_batched_with_long_ones_does_not_fail_them(
    observed: Callable[[RouterConfig], Observed], loop_thread: LoopThread, catalogue: Catalogue
) -> None:
    # One batch in flight per lane: while the first search is out (1 s), the others queue
    # and leave together as the next batch (at ~1 s, back at ~2 s); the short one's
    # deadline (~1.5 s) falls while that batch is out.
    cluster = observed(RouterConfig(coalesce_in_flight=1, oversample=3.0, shard_timeout_s=10.0))
    cluster.set_delay(1.0)
    queries = catalogue.user_vectors[:6]

    async def main() -> list[object]:
        async with AsyncClient(cluster.target, retries=0) as client:
            first = asyncio.ensure_future(client.search(queries[0], 10, timeout=10))
            await asyncio.sleep(0.3)  # the first batch is out
            short = client.search(queries[1], 10, timeout=1.2)
            longs = [client.search(q, 10, timeout=10) for q in queries[2:]]
            return await asyncio.gather(first, short, *longs, return_exceptions=True)

    before = sum(len(cluster.service(i).seen) for i in range(3))
    outcomes = asyncio.run(main())
    calls = sum(len(cluster.service(i).seen) for i in range(3)) - before
    assert calls == 6, "two batches: the short search rode with the long ones"
    assert isinstance(outcomes[1], DeadlineExceeded), outcomes[1]
    for outcome in [outcomes[0], *outcomes[2:]]:
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.coverage.shards_answered == 3  # type: ignore[attr-defined]


def test_deadline_passing_before_min_coverage_is_deadline_exceeded(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    # The router's deadline (caller's less a wide margin) passes while every shard is slow:
    # the router itself answers DEADLINE_EXCEEDED, before the caller's deadline.
    cluster = observed(RouterConfig(deadline_margin_s=2.0, shard_timeout_s=10.0))
    cluster.set_delay(5.0)
    error = raw_search(cluster.target, catalogue.vectors[:1], 10, timeout=3.0)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "only 0 of 3 shards answered" in (error.details() or "")

    # No caller deadline: default_timeout_s is the request's deadline.
    quick = observed(RouterConfig(default_timeout_s=0.5, shard_timeout_s=10.0))
    quick.set_delay(5.0)
    error = raw_search(quick.target, catalogue.vectors[:1], 10, timeout=None)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "only 0 of 3 shards answered" in (error.details() or "")


def test_margin_leaves_time_for_a_degraded_answer(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    cluster = observed(RouterConfig(deadline_margin_s=1.0, shard_timeout_s=20.0))
    cluster.set_delay(10.0, shards=(1,))
    with Client(cluster.target, retries=0) as client:
        result = client.search(catalogue.vectors[:1], 10, timeout=3.0)
    assert result.coverage.degraded and result.coverage.answered_shard_ids == (0, 2)


def test_per_attempt_cap_gives_up_on_a_slow_shard(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    labels = {"shard": "1", "code": "DEADLINE_EXCEEDED"}
    before = REGISTRY.get_sample_value("annfleet_router_shard_failures_total", labels) or 0.0
    cluster = observed(RouterConfig(shard_timeout_s=1.5))
    cluster.set_delay(10.0, shards=(1,))
    with Client(cluster.target, retries=0) as client:
        result = client.search(catalogue.vectors[:1], 10, timeout=8.0)
    assert result.coverage.degraded and result.coverage.answered_shard_ids == (0, 2)
    after = REGISTRY.get_sample_value("annfleet_router_shard_failures_total", labels) or 0.0
    assert after - before == 1  # the attempt was cut at shard_timeout_s, not at the deadline


def test_requests_beyond_max_in_flight_are_resource_exhausted_at_once(
    observed: Callable[[RouterConfig], Observed], catalogue: Catalogue
) -> None:
    cluster = observed(RouterConfig(max_in_flight=2, coalesce_in_flight=0, shard_timeout_s=10.0))
    cluster.set_delay(3.0)

    async def main() -> list[object]:
        async with AsyncClient(cluster.target, retries=0) as client:
            held = [
                asyncio.ensure_future(client.search(q, 5, timeout=10))
                for q in catalogue.user_vectors[:2]
            ]
            await asyncio.sleep(1.0)  # both are in flight at the router
            shed = await asyncio.gather(
                *(client.search(q, 5, timeout=10) for q in catalogue.user_vectors[2:5]),
                return_exceptions=True,
            )
            return [*shed, *(await asyncio.gather(*held, return_exceptions=True))]

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ResourceExhausted) for o in outcomes[:3]), outcomes
    assert "max_in_flight 2" in outcomes[0].details  # type: ignore[union-attr]
    assert all(not isinstance(o, BaseException) for o in outcomes[3:]), outcomes
    with Client(cluster.target) as client:  # capacity comes back
        cluster.set_delay(0.0)
        assert len(client.search(catalogue.user_vectors[0], 5).ids[0]) == 5
