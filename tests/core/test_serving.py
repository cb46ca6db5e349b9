"""What every server shares (core/serving.py), through real servers on port 0."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import LoopThread

from annfleet.arrays import F32, to_bytes
from annfleet.bundle import Bundle
from annfleet.cluster import free_port
from annfleet.server.main import ShardServer
from annfleet.serving import MAX_STATUS_MESSAGE, not_serving_health, short_message
from annfleet.v1 import shard_pb2, shard_pb2_grpc

FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 20),
]


def test_health_is_never_serving_before_a_query_can_succeed(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> None:
    """A client polling health from before the port opens: at its first SERVING, Search
    succeeds. (grpc's HealthServicer starts with "" SERVING; the server must mark every
    name NOT_SERVING before the port opens, not after.)"""
    port = free_port()
    seen: list[str] = []
    first_search: list[object] = []
    stop = threading.Event()

    def poll() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=FAST_RECONNECT) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.RpcError:
                    continue  # the port is not open yet
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                if seen[-1] == "SERVING":
                    try:
                        first_search.append(
                            shard_pb2_grpc.IndexShardStub(channel).Search(
                                shard_pb2.ShardSearchRequest(
                                    queries=to_bytes(np.ones((1, 32)), F32), dim=32, k=3
                                ),
                                timeout=5,
                            )
                        )
                    except grpc.RpcError as exc:
                        first_search.append(exc.code())
                    return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.2)  # the poller is knocking before the port opens
    server = loop_thread.run(ShardServer.bind(port=port))
    try:
        # A slow load: the port is open, nothing is loaded, until the poller has seen that
        # (waiting for it, not a fixed sleep: a starved poller may need more than a second).
        deadline = time.monotonic() + 20.0
        while "NOT_SERVING" not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        loop_thread.run(server.load(flat_bundle.path, 0))
        poller.join(10)
    finally:
        stop.set()
        loop_thread.run(server.stop(0))
    assert seen and seen[-1] == "SERVING"
    assert "NOT_SERVING" in seen  # it did poll while the port was open and nothing loaded
    assert len(first_search) == 1 and isinstance(first_search[0], shard_pb2.ShardSearchResponse)


def test_stopping_server_stays_not_serving(loop_thread: LoopThread, flat_bundle: Bundle) -> None:
    """After stop() begins, a load finishing during the drain cannot flip health back."""
    server = loop_thread.run(ShardServer.bind())
    try:
        loop_thread.run(server.grpc.health.enter_graceful_shutdown())
        loop_thread.run(server.load(flat_bundle.path, 0))
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        loop_thread.run(server.stop(0))


@pytest.mark.parametrize(
    "method",
    [
        "/annfleet.v1.IndexShard/Search",
        "/annfleet.v1.IndexShard/Info",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_undecodable_payload_is_invalid_argument_on_every_service(
    loop_thread: LoopThread, method: str
) -> None:
    server = loop_thread.run(ShardServer.bind())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff", timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed request: 3 bytes are not a valid" in info.value.details()
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING  # still answers
    finally:
        loop_thread.run(server.stop(0))


def test_long_status_messages_are_cut() -> None:
    assert short_message("x" * 10) == "x" * 10
    cut = short_message("y" * 20_000)
    assert cut.startswith("y" * MAX_STATUS_MESSAGE) and "20000 characters, cut" in cut
    assert len(cut) < MAX_STATUS_MESSAGE + 50


def test_status_quoting_a_huge_bundle_id_still_arrives(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> None:
    """A message quoting 10 kB of input would exceed grpc's 8 KiB metadata limit and reach
    the client as RESOURCE_EXHAUSTED instead of the real status."""
    server = loop_thread.run(ShardServer.bind())
    try:
        loop_thread.run(server.load(flat_bundle.path, 0))
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            shard_pb2_grpc.IndexShardStub(channel).Search(
                shard_pb2.ShardSearchRequest(
                    queries=to_bytes(np.ones((1, 32)), F32), dim=32, k=3, bundle_id="a" * 10_000
                ),
                timeout=5,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "characters, cut" in info.value.details()
    finally:
        loop_thread.run(server.stop(0))


def test_health_servicer_is_not_serving_before_any_port_opens(loop_thread: LoopThread) -> None:
    """What the server registers: NOT_SERVING for "" and every service from construction
    (grpc's own HealthServicer() says "" SERVING until told otherwise)."""
    names = ["annfleet.v1.IndexShard", "annfleet.v1.ShardAdmin"]
    servicer = loop_thread.run(not_serving_health(names))
    for name in ["", *names]:
        reply = loop_thread.run(servicer.Check(health_pb2.HealthCheckRequest(service=name), None))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING, name
