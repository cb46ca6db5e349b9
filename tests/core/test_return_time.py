"""The return time a client measures and reports (core ``annfleet.return_time``): what one
call's return time is, the client's running quantile of them, and the metadata entry both
sides agree on."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from annfleet.errors import InvalidArgument
from annfleet.queue_time import timeout_metadata
from annfleet.return_time import (
    EVERY,
    MIN_SAMPLES,
    RETURN_METADATA,
    ReturnTime,
    reported_return,
    return_metadata,
    return_seconds,
    with_return_time,
)


def test_a_calls_return_time_is_its_whole_time_less_what_the_router_accounted_for() -> None:
    assert return_seconds(0.020, {"total": 14.0, "inbound": 1.0}) == pytest.approx(0.005)
    assert return_seconds(0.020, {"total": 14.0}) == pytest.approx(0.006)  # way in unmeasured
    assert return_seconds(0.010, {"total": 12.0, "inbound": 0.5}) == 0.0  # never below 0
    assert return_seconds(0.020, {}) is None  # not a Retrieve answer: nothing to tell
    assert return_seconds(0.020, {"inbound": 1.0, "reply_margin": 3.0}) is None


def test_nothing_is_reported_until_min_samples_then_the_quantile_of_the_window() -> None:
    est = ReturnTime(quantile=0.5, window=40, min_samples=MIN_SAMPLES)
    est.observe(0.5, {"total": 1.0})  # the first answered call: connecting, not noted
    assert est.samples == 0
    for _ in range(MIN_SAMPLES - 1):
        est.observe(0.012, {"total": 10.0, "inbound": 1.0})  # 1 ms back
    assert est.value() is None and est.metadata() == ()
    est.observe(0.012, {"total": 10.0, "inbound": 1.0})
    assert est.value() == pytest.approx(0.001)
    assert est.metadata() == ((RETURN_METADATA, "1.000"),)
    backs = np.linspace(0.0, 0.004, 40)
    for back in backs:  # the window rolls: the 1 ms times are gone
        est.observe(0.010 + float(back), {"total": 10.0})
    assert est.samples == 40
    assert est.value() == pytest.approx(float(np.quantile(backs, 0.5)))


def test_the_quantile_is_recomputed_every_few_calls_and_answers_without_total_are_skipped() -> None:
    est = ReturnTime(quantile=1.0, window=64, min_samples=MIN_SAMPLES)
    est.observe(0.5, {"total": 1.0})  # the first answered call: connecting, not noted
    for _ in range(MIN_SAMPLES):
        est.observe(0.003, {"total": 1.0})
    assert est.value() == pytest.approx(0.002)
    est.observe(0.050, {})  # no total: not a sample
    est.observe(0.050, {"total": 1.0}, retried=True)  # connected again: not a way back
    assert est.samples == MIN_SAMPLES
    for n in range(EVERY - 1):
        est.observe(0.009, {"total": 1.0})  # 8 ms back
        assert est.value() == pytest.approx(0.002), n  # not yet recomputed
    est.observe(0.009, {"total": 1.0})
    assert est.value() == pytest.approx(0.008)  # the max (quantile 1.0) of the window


def test_the_estimate_is_shared_by_threads() -> None:
    est = ReturnTime(quantile=0.5, window=4096)
    est.observe(0.5, {"total": 1.0})  # the first answered call: connecting, not noted

    def calls() -> None:
        for _ in range(500):
            est.observe(0.004, {"total": 2.0, "inbound": 1.0})
            est.value()

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert est.samples == 2000
    assert est.value() == pytest.approx(0.001)


def test_the_entry_round_trips_and_its_absence_is_none() -> None:
    assert reported_return(return_metadata(0.0068)) == pytest.approx(0.0068)
    assert reported_return([("x", "1"), (RETURN_METADATA, b"2.5")]) == pytest.approx(0.0025)
    assert reported_return([(RETURN_METADATA, "0")]) == 0.0
    assert reported_return(None) is None
    assert reported_return([("annfleet-timeout-ms", "1000")]) is None


@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "-1", "-0.5", b"\xff"])
def test_a_malformed_entry_is_invalid_argument_naming_it(value: str | bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"annfleet-return-ms: .* milliseconds"):
        reported_return([(RETURN_METADATA, value)])


def test_a_retrieve_attempt_carries_its_timeout_and_the_return_time_once_measured() -> None:
    est = ReturnTime(min_samples=MIN_SAMPLES)
    timeout = timeout_metadata(1.0)
    assert with_return_time(None, None) is None
    assert with_return_time(timeout, None) == timeout
    assert with_return_time(timeout, est) == timeout  # not measured yet
    assert with_return_time(None, est) is None
    est.observe(0.5, {"total": 1.0})  # the first answered call: connecting, not noted
    for _ in range(MIN_SAMPLES):
        est.observe(0.004, {"total": 1.0, "inbound": 1.0})
    assert with_return_time(timeout, est) == (*timeout, (RETURN_METADATA, "2.000"))
    assert with_return_time(None, est) == ((RETURN_METADATA, "2.000"),)
