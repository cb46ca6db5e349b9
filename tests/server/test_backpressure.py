"""A shard's bounded queue and deadlines, on a real shard server: RESOURCE_EXHAUSTED at once
beyond ``max_queue``, and work whose deadline passed is dropped before it reaches faiss."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import LoopThread

from annfleet.arrays import F32, to_bytes
from annfleet.bundle import Bundle
from annfleet.config import ShardsConfig
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.v1 import shard_pb2, shard_pb2_grpc


def heavy(rows: int = 1024, seed: int = 0) -> shard_pb2.ShardSearchRequest:
    """A batch that keeps an executor thread busy (exact search over the whole shard)."""
    queries = np.random.default_rng(seed).standard_normal((rows, 32)).astype(np.float32)
    return shard_pb2.ShardSearchRequest(queries=to_bytes(queries, F32), dim=32, k=100)


LIGHT = shard_pb2.ShardSearchRequest(queries=to_bytes(np.ones((1, 32)), F32), dim=32, k=5)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("annfleet_shard_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
def shard_factory(loop_thread: LoopThread, flat_bundle: Bundle) -> Iterator[object]:
    servers: list[ShardServer] = []

    def start(config: ShardsConfig) -> ShardServer:
        server = loop_thread.run(start_shard_server(flat_bundle.path, 0, config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop_thread.run(server.stop(0))


def test_beyond_max_queue_is_resource_exhausted_at_once(shard_factory) -> None:  # type: ignore[no-untyped-def]
    server = shard_factory(ShardsConfig(max_queue=2))
    full_before = dropped("queue_full")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = shard_pb2_grpc.IndexShardStub(channel)
        futures = [stub.Search.future(heavy(seed=i), timeout=60) for i in range(20)]
        codes: Counter[str] = Counter()
        messages = set()
        for future in futures:
            try:
                future.result()
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                messages.add(exc.details())
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["OK"] >= 2
        assert any("max_queue 2" in m for m in messages), messages
        # The queue drains: the slots are free again once the searches finish.
        assert stub.Search(LIGHT, timeout=30).k == 5
    assert dropped("queue_full") - full_before == codes["RESOURCE_EXHAUSTED"]


def test_deadline_passing_in_the_queue_drops_the_search_before_faiss(shard_factory) -> None:  # type: ignore[no-untyped-def]
    server = shard_factory(ShardsConfig(max_queue=256))
    before = dropped("deadline") + dropped("cancelled")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = shard_pb2_grpc.IndexShardStub(channel)
        timings = []
        for _ in range(3):  # the fastest of three sizes the backlog to this machine's speed
            started = time.monotonic()
            stub.Search(heavy(), timeout=120)
            timings.append(time.monotonic() - started)
        one = min(timings)  # (one slow call would size too short a backlog)
        workers = os.cpu_count() or 2
        # Every executor thread busy for ~2 s with searches that have no deadline ...
        count = min(200, workers * (math.ceil(2.0 / one) + 1))
        busy = [stub.Search.future(heavy(seed=i), timeout=120) for i in range(count)]
        time.sleep(0.05)
        # ... so a search with a 0.2 s deadline waits in the queue past it.
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(LIGHT, timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(f.result().k == 100 for f in busy)  # work with time left is done
        assert stub.Search(LIGHT, timeout=30).k == 5
    # The shard dropped it: on arrival, when a thread picked it up, or while queued.
    assert dropped("deadline") + dropped("cancelled") - before >= 1


def test_max_queue_must_be_positive() -> None:
    from annfleet.config import ClusterConfig
    from annfleet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shards\.max_queue must be >= 1"):
        ClusterConfig(shards=ShardsConfig(max_queue=0)).validate()


def test_quick_searches_run_inline_and_answer_as_through_the_executor(shard_factory) -> None:  # type: ignore[no-untyped-def]
    server = shard_factory(ShardsConfig(max_queue=8))
    queue = server.service.queue
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = shard_pb2_grpc.IndexShardStub(channel)
        first = stub.Search(LIGHT, timeout=30)  # no cost known yet: through the executor
        assert queue.inline == 0 and queue.row_seconds["search"] > 0
        queue.inline_max_s = 3600.0  # every search is expected to be quick enough
        answers = [stub.Search(LIGHT, timeout=30) for _ in range(3)]
        assert queue.inline == 3
        assert all(a.ids == first.ids and a.scores == first.scores for a in answers)
        queue.inline_max_s = 0.0  # none is
        assert stub.Search(LIGHT, timeout=30).ids == first.ids
        assert queue.inline == 3
        assert queue.admitted == 0
