"""The router's search stream to a shard (router.shard_transport: stream) against real shard
servers on port 0: the same answers and statuses as the unary Search, per-message deadlines,
a malformed message, and a shard that stops with streams open.

Replica failover over streams (a killed replica, one that comes back, a hung one) is in
test_replicas.py, run with both transports.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import LoopThread

from annfleet.arrays import F32, to_bytes
from annfleet.bundle import Bundle
from annfleet.config import ShardsConfig
from annfleet.router.streams import METHOD, SearchStreams
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import Catalogue
from annfleet.v1 import common_pb2, shard_pb2, shard_pb2_grpc


@pytest.fixture
def shard(loop_thread: LoopThread, flat_bundle: Bundle) -> Iterator[ShardServer]:
    server = loop_thread.run(start_shard_server(flat_bundle.path, 0, ShardsConfig(max_k=50)))
    yield server
    loop_thread.run(server.stop(0))


def request(queries: np.ndarray, k: int, **kw: object) -> shard_pb2.ShardSearchRequest:
    queries = np.atleast_2d(queries)
    return shard_pb2.ShardSearchRequest(
        queries=to_bytes(queries, F32), dim=queries.shape[1], k=k, **kw
    )


def target(server: ShardServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_stream_answers_equal_unary_ones(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue
) -> None:
    requests = [
        request(catalogue.user_vectors[i : i + 1 + i % 5], k=1 + 3 * i)
        for i in range(12)  # batches of 1-5 queries, k 1..34, all in flight at once
    ]

    async def both() -> tuple[list[shard_pb2.ShardSearchResponse], ...]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            stub = shard_pb2_grpc.IndexShardStub(channel)
            streams = SearchStreams(channel, target(shard))
            unary = await asyncio.gather(*(stub.Search(r, timeout=10) for r in requests))
            streamed = await asyncio.gather(*(streams.search(r, 10.0) for r in requests))
            assert streams.opened == 1  # one stream carried them all
            await streams.close()
            return unary, streamed

    unary, streamed = loop_thread.run(both())
    for u, s in zip(unary, streamed, strict=True):
        assert s.SerializeToString(deterministic=True) == u.SerializeToString(deterministic=True)
        assert s.num_queries >= 1 and s.k >= 1 and len(s.ids) == 8 * s.num_queries * s.k


def test_bad_input_gets_the_unary_status_and_the_stream_goes_on(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue, flat_bundle: Bundle
) -> None:
    good = request(catalogue.user_vectors[:2], 10)
    nan = catalogue.user_vectors[:1].copy()
    nan[0, 3] = np.nan
    bad = {
        "wrong dim": request(catalogue.user_vectors[:1, :16], 10),
        "k 0": request(catalogue.user_vectors[:1], 0),
        "k over max_k": request(catalogue.user_vectors[:1], 51),
        "NaN": request(nan, 10),
        "ragged bytes": shard_pb2.ShardSearchRequest(queries=b"\x00" * 7, dim=32, k=10),
        "ef_search out of range": request(
            catalogue.user_vectors[:1], 10, params=common_pb2.SearchParams(ef_search=10**9)
        ),
        "unknown bundle": request(catalogue.user_vectors[:1], 10, bundle_id="not-held"),
    }

    async def statuses() -> tuple[dict[str, tuple[grpc.StatusCode, str]], ...]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            stub = shard_pb2_grpc.IndexShardStub(channel)
            streams = SearchStreams(channel, target(shard))
            unary, streamed = {}, {}
            for name, r in bad.items():
                with pytest.raises(grpc.aio.AioRpcError) as u:
                    await stub.Search(r, timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as s:
                    await streams.search(r, 10.0)
                unary[name] = (u.value.code(), u.value.details())
                streamed[name] = (s.value.code(), s.value.details())
            after = await streams.search(good, 10.0)
            assert after.num_queries == 2 and after.bundle_id == flat_bundle.id
            assert streams.opened == 1
            await streams.close()
            return unary, streamed

    unary, streamed = loop_thread.run(statuses())
    assert streamed == unary
    codes = {name: code for name, (code, _) in streamed.items()}
    assert codes["unknown bundle"] == grpc.StatusCode.FAILED_PRECONDITION
    assert all(
        c == grpc.StatusCode.INVALID_ARGUMENT for n, c in codes.items() if n != "unknown bundle"
    )
    assert all(details for _, details in streamed.values())


def test_expired_message_is_deadline_exceeded_and_the_stream_survives(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue
) -> None:
    search = request(catalogue.user_vectors[:1], 10)
    labels = {"reason": "deadline"}
    dropped = REGISTRY.get_sample_value("annfleet_shard_dropped_total", labels) or 0.0

    async def exchange() -> list[shard_pb2.ShardStreamReply]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            call = shard_pb2_grpc.IndexShardStub(channel).SearchStream()
            # A microsecond to live: past by the time the shard looks at it.
            await call.write(
                shard_pb2.ShardStreamRequest(request_id=7, timeout_s=1e-6, search=search)
            )
            await call.write(
                shard_pb2.ShardStreamRequest(request_id=8, timeout_s=10, search=search)
            )
            replies = [await call.read(), await call.read()]
            await call.write(
                shard_pb2.ShardStreamRequest(request_id=9, timeout_s=10, search=search)
            )
            replies.append(await call.read())
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            return replies

    replies = {r.request_id: r for r in loop_thread.run(exchange())}
    assert replies[7].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "deadline" in replies[7].message and not replies[7].HasField("search")
    assert (REGISTRY.get_sample_value("annfleet_shard_dropped_total", labels) or 0.0) > dropped
    for i in (8, 9):
        assert replies[i].code == 0 and replies[i].search.num_queries == 1


def test_router_side_deadline_on_a_hung_shard_then_the_same_stream_serves(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue
) -> None:
    release = threading.Event()
    for _ in range(shard.executor._max_workers):  # every faiss thread blocked
        shard.executor.submit(release.wait)
    search = request(catalogue.user_vectors[:1], 10)

    async def hung_then_back() -> tuple[grpc.StatusCode, shard_pb2.ShardSearchResponse, int]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            streams = SearchStreams(channel, target(shard))
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await streams.search(search, 0.2)
            release.set()
            answer = await streams.search(search, 10.0)
            opened = streams.opened
            await streams.close()
            return exc.value.code(), answer, opened

    try:
        code, answer, opened = loop_thread.run(hung_then_back())
    finally:
        release.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer.num_queries == 1 and opened == 1


def test_malformed_message_ends_the_stream_invalid_argument(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue
) -> None:
    async def garbage() -> tuple[grpc.StatusCode, str, int]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            call = channel.stream_stream(METHOD, request_serializer=None)(None)
            await call.write(b"\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
            stub = shard_pb2_grpc.IndexShardStub(channel)
            after = await stub.Search(request(catalogue.user_vectors[:1], 5), timeout=10)
            return await call.code(), await call.details() or "", after.k

    code, details, k = loop_thread.run(garbage())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ShardStreamRequest" in details
    assert k == 5  # the server keeps serving


def test_stopping_shard_answers_what_it_took_and_ends_its_streams(
    loop_thread: LoopThread, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    server = loop_thread.run(start_shard_server(flat_bundle.path, 0))
    search = request(catalogue.user_vectors[:1], 10)

    async def stop_with_stream_open() -> tuple[shard_pb2.ShardStreamReply, object, grpc.StatusCode]:
        async with grpc.aio.insecure_channel(target(server)) as channel:
            call = shard_pb2_grpc.IndexShardStub(channel).SearchStream()
            await call.write(
                shard_pb2.ShardStreamRequest(request_id=1, timeout_s=10, search=search)
            )
            first = await call.read()
            # A long grace: the stream must end because the shard ends it, not at the grace.
            await server.stop(60.0)
            end = await call.read()
            return first, end, await call.code()

    first, end, code = loop_thread.run(stop_with_stream_open())
    assert first.code == 0 and first.search.num_queries == 1
    assert end is grpc.aio.EOF
    assert code == grpc.StatusCode.OK


def test_cancelled_search_is_withdrawn_from_the_shard_queue(
    loop_thread: LoopThread, shard: ShardServer, catalogue: Catalogue
) -> None:
    release = threading.Event()
    for _ in range(shard.executor._max_workers):  # every faiss thread blocked: searches queue
        shard.executor.submit(release.wait)
    search = request(catalogue.user_vectors[:1], 10)
    labels = {"reason": "cancelled"}
    before = REGISTRY.get_sample_value("annfleet_shard_dropped_total", labels) or 0.0

    async def cancel_one() -> tuple[float, shard_pb2.ShardSearchResponse]:
        async with grpc.aio.insecure_channel(target(shard)) as channel:
            streams = SearchStreams(channel, target(shard))
            waiting = asyncio.ensure_future(streams.search(search, 30.0))
            while shard.service.queue.admitted == 0:  # it reached the shard's queue
                await asyncio.sleep(0.01)
            waiting.cancel()  # as a hedge that lost: a cancel message follows
            while shard.service.queue.admitted:  # withdrawn before any thread took it
                await asyncio.sleep(0.01)
            dropped = REGISTRY.get_sample_value("annfleet_shard_dropped_total", labels) or 0.0
            release.set()
            answer = await streams.search(search, 10.0)  # the same stream goes on
            assert streams.opened == 1
            await streams.close()
            return dropped, answer

    try:
        dropped, answer = loop_thread.run(cancel_one(), timeout=60)
    finally:
        release.set()
    assert dropped == before + 1
    assert answer.num_queries == 1


def test_full_queue_is_resource_exhausted_on_the_stream_as_on_unary(
    loop_thread: LoopThread, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    server = loop_thread.run(start_shard_server(flat_bundle.path, 0, ShardsConfig(max_queue=1)))
    release = threading.Event()
    for _ in range(server.executor._max_workers):
        server.executor.submit(release.wait)
    search = request(catalogue.user_vectors[:1], 10)

    async def overflow() -> tuple[tuple[grpc.StatusCode, str], tuple[grpc.StatusCode, str]]:
        async with grpc.aio.insecure_channel(target(server)) as channel:
            stub = shard_pb2_grpc.IndexShardStub(channel)
            streams = SearchStreams(channel, target(server))
            held = asyncio.ensure_future(streams.search(search, 30.0))  # takes the one place
            while server.service.queue.admitted == 0:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as s:
                await streams.search(search, 10.0)
            with pytest.raises(grpc.aio.AioRpcError) as u:
                await stub.Search(search, timeout=10)
            release.set()
            assert (await held).num_queries == 1  # the stream went on
            await streams.close()
            return (s.value.code(), s.value.details()), (u.value.code(), u.value.details())

    try:
        streamed, unary = loop_thread.run(overflow(), timeout=60)
    finally:
        release.set()
        loop_thread.run(server.stop(0))
    assert streamed == unary
    assert streamed[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queue 1" in streamed[1]
