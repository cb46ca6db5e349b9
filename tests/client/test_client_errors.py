"""Status code -> exception mapping and the UNAVAILABLE-only bounded retry, on real servers."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from annfleet.client import AnnfleetError, Client, DeadlineExceeded, InvalidArgument, Unavailable
from annfleet.cluster import free_port
from annfleet.v1 import retrieval_pb2, shard_pb2


def test_unavailable_is_retried_a_bounded_number_of_times() -> None:
    port = free_port()  # nothing listens here
    with Client(f"127.0.0.1:{port}", timeout=5, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.search(np.zeros(4, np.float32), 1)
        elapsed = time.monotonic() - started
    # 2 retries with 50 ms and 100 ms backoff, far below the 5 s timeout.
    assert 0.15 <= elapsed < 3.0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "target: empty"),
        ("  ", "target: empty"),
        ("127.0.0.1:99999", "port '99999' is not in 1..65535"),  # gRPC dialled 34463
        ("127.0.0.1:0", "port '0' is not in 1..65535"),
        ("localhost:http", "port 'http' is not in 1..65535"),
        ("router", "expected HOST:PORT"),  # gRPC would dial port 443
        ("::1", "expected HOST:PORT or [IPV6]:PORT"),
    ],
)
@pytest.mark.parametrize("aio", [False, True])
def test_a_malformed_target_is_the_clients_invalid_argument(
    target: str, message: str, aio: bool
) -> None:
    from annfleet.client import AsyncClient

    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace(".", r"\.")):
        if aio:
            AsyncClient(target)
        else:
            Client(target)


@pytest.mark.parametrize("target", ["[::1]:50051", "unix:/tmp/annfleet.sock", "dns:///h:1"])
def test_well_formed_targets_and_grpc_uris_are_accepted(target: str) -> None:
    Client(target).close()  # no connection is made until a call


def test_invalid_argument_is_not_retried(cluster_factory, flat_bundle) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(flat_bundle)
    with Client(cluster.router_target, timeout=5, retries=5) as client:
        started = time.monotonic()
        with pytest.raises(InvalidArgument):
            client.search(np.zeros(3, np.float32), 1)
        assert time.monotonic() - started < 0.05 + 0.5  # no backoff sleeps


def test_deadline_exceeded(cluster_factory, flat_bundle) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(flat_bundle)
    with Client(cluster.router_target, timeout=1e-6) as client, pytest.raises(DeadlineExceeded):
        client.search(np.zeros(32, np.float32), 10)


BAD_CALLS = {
    "3-d vectors": lambda c: c.search(np.zeros((2, 2, 2), np.float32), 1),
    "non-numeric vectors": lambda c: c.search(["a", "b"], 1),
    "k not an int": lambda c: c.search(np.zeros(4, np.float32), "3"),
    "ef_search beyond uint32": lambda c: c.search(np.zeros(4, np.float32), 1, ef_search=1 << 40),
    "non-int exclude ids": lambda c: c.retrieve(1, 10, exclude=["x"]),
    "user id not an int": lambda c: c.retrieve("one", 10),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_arguments_that_cannot_be_encoded_raise_the_clients_invalid_argument(call) -> None:  # type: ignore[no-untyped-def]
    from annfleet import errors as core_errors

    client = Client(f"127.0.0.1:{free_port()}", timeout=1, retries=0)
    with client, pytest.raises(InvalidArgument) as raised:
        call(client)
    assert not isinstance(raised.value, core_errors.AnnfleetError)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details


NEGATIVE = {
    "k must be > 0, got -5": lambda c: c.retrieve(1, -5),
    "k must be > 0, got -1": lambda c: c.search(np.zeros(4, np.float32), -1),
    "ef_search must be >= 0 (0 = the server's default), got -2": lambda c: c.search(
        np.zeros(4, np.float32), 1, ef_search=-2
    ),
    "rerank must be >= 0 (0 = the server's default), got -1": lambda c: c.search(
        np.zeros(4, np.float32), 1, rerank=-1
    ),
}


@pytest.mark.parametrize(("message", "call"), NEGATIVE.items(), ids=NEGATIVE.keys())
def test_a_negative_k_or_parameter_is_named_in_the_error(message: str, call) -> None:  # type: ignore[no-untyped-def]
    """Not protobuf's "Value out of range: -5" (what `annfleet query --k -5` printed)."""
    client = Client(f"127.0.0.1:{free_port()}", timeout=1, retries=0)
    with client, pytest.raises(InvalidArgument) as raised:
        call(client)
    assert raised.value.details == message


def test_a_malformed_response_raises_a_client_error_not_a_core_one() -> None:
    from annfleet import errors as core_errors
    from annfleet.client import results

    bad_search = retrieval_pb2.SearchResponse(ids=b"\0" * 7, scores=b"", num_queries=1, k=1)
    bad_retrieve = retrieval_pb2.RetrieveResponse(ids=b"\0" * 16, scores=b"\0" * 4, sources=b"\1")
    bad_shard = shard_pb2.ShardSearchResponse(ids=b"\0" * 8, scores=b"", num_queries=1, k=1)
    for decode in (
        lambda: results.search_result(bad_search),
        lambda: results.retrieve_result(bad_retrieve),
        lambda: results.merge_shard_responses([bad_shard], 1),
        lambda: results.merge_shard_responses([RuntimeError("boom")], 1),
    ):
        with pytest.raises(AnnfleetError) as raised:
            decode()
        assert not isinstance(raised.value, core_errors.AnnfleetError)
        assert raised.value.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
