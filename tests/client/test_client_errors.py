"""Status code -> exception mapping and the UNAVAILABLE-only bounded retry, on real servers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from annfleet.client import Client, DeadlineExceeded, InvalidArgument, Unavailable
from annfleet.cluster import free_port


def test_unavailable_is_retried_a_bounded_number_of_times() -> None:
    port = free_port()  # nothing listens here
    with Client(f"127.0.0.1:{port}", timeout=5, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.search(np.zeros(4, np.float32), 1)
        elapsed = time.monotonic() - started
    # 2 retries with 50 ms and 100 ms backoff, far below the 5 s timeout.
    assert 0.15 <= elapsed < 3.0


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
