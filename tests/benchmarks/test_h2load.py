"""h2load as a gRPC load generator: every request it sends is a real Search the router answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from annfleet.benchmarks import h2load
from annfleet.bundle import Bundle
from annfleet.v1 import retrieval_pb2

pytestmark = pytest.mark.skipif(
    h2load.available() is None,
    reason="h2load is not installed (Debian package nghttp2-client; make test installs it)",
)


def _router_search_codes() -> dict[str, float]:
    """This process's router counters (the in-process cluster shares the registry)."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if (
                sample.name == "annfleet_requests_total"
                and sample.labels.get("service") == "Retrieval"
                and sample.labels.get("method") == "Search"
            ):
                out[sample.labels["code"]] = sample.value
    return out


@pytest.fixture
def generator(cluster_factory: Any, flat_bundle: Bundle) -> Any:
    cluster = cluster_factory(flat_bundle)
    query = np.ones((1, flat_bundle.dim), dtype="<f4")
    message = retrieval_pb2.SearchRequest(
        queries=query.tobytes(), dim=flat_bundle.dim, k=10
    ).SerializeToString()
    gen = h2load.H2Load(cluster.router_target, "annfleet.v1.Retrieval/Search", message, 2)
    yield gen
    gen.close()


def test_grpc_frame_is_length_prefixed() -> None:
    assert h2load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_open_loop_sends_its_schedule_and_each_request_is_a_search_answered_ok(
    generator: h2load.H2Load,
) -> None:
    before = _router_search_codes()
    result = generator.open(rate=100, duration=1.0)
    after = _router_search_codes()
    assert result.requests == 100 and result.failed == 0
    assert after.get("OK", 0) - before.get("OK", 0) == 100
    assert len(result.latencies_s) == 100 and np.all(result.latencies_s > 0)
    assert result.cpu_s > 0 and result.summary()["requests"] == 100


def test_closed_loop_keeps_requests_in_flight_for_the_duration(
    generator: h2load.H2Load,
) -> None:
    before = _router_search_codes()
    result = generator.closed(in_flight=4, duration=0.5)
    answered = {c: v - before.get(c, 0) for c, v in _router_search_codes().items()}
    # h2load counts an answer, whatever its gRPC status; the router counts each one, and
    # the streams still open when the duration ends, which h2load resets (CANCELLED).
    assert result.requests > 0
    assert sum(answered.values()) >= result.requests
    assert answered.get("OK", 0) > 0
    assert set(c for c, n in answered.items() if n) <= {"OK", "RESOURCE_EXHAUSTED", "CANCELLED"}
