"""The router's adaptive admission limit (router/admission.py), on a fake clock.

The servicer's use of it (RESOURCE_EXHAUSTED at once beyond the limit) is tested against
real servers in test_deadlines.py; here, how the limit moves with latency and load.
"""

from __future__ import annotations

import pytest

from annfleet.config import RouterConfig
from annfleet.errors import ResourceExhausted
from annfleet.router.admission import INITIAL, WINDOW_MIN, WINDOW_S, Admission


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_window(adm: Admission, clock: Clock, latency: float, in_flight: int) -> None:
    """One window: WINDOW_MIN requests taking ``latency``, ``in_flight`` of them at once
    (the rest of the limit idle); the last of them closes the window."""
    assert WINDOW_MIN % in_flight == 0
    rounds = WINDOW_MIN // in_flight
    for n in range(rounds):
        if n == rounds - 1:
            clock.now += WINDOW_S
        blocks = [adm.admit() for _ in range(in_flight)]
        for b in blocks:
            b.__enter__()
        clock.now += latency
        for b in blocks:
            b.__exit__(None, None, None)


def test_limit_shrinks_while_latency_rises_and_grows_back_when_used() -> None:
    clock = Clock()
    adm = Admission(RouterConfig(min_in_flight=4, latency_tolerance=1.5), clock)
    assert adm.limit == INITIAL
    run_window(adm, clock, 0.010, 8)  # no-load latency 10 ms
    assert adm.baseline == pytest.approx(0.010)
    assert adm.limit == INITIAL  # the limit was not used: no growth
    run_window(adm, clock, 0.040, 8)  # 4x the baseline: queueing
    assert adm.limit == INITIAL / 2  # at most halved per window
    run_window(adm, clock, 0.020, 8)  # 2x: shrinks by 1.5 / 2
    assert adm.limit == pytest.approx(INITIAL / 2 * 0.75)
    for _ in range(20):
        run_window(adm, clock, 0.100, 4)
    assert adm.limit == 4  # never below min_in_flight
    run_window(adm, clock, 0.012, 4)  # within tolerance and the whole limit used: grows
    assert adm.limit == pytest.approx(4 + 2)
    assert adm.baseline == pytest.approx(0.010)


def test_beyond_the_limit_is_resource_exhausted_and_counts_no_request() -> None:
    clock = Clock()
    adm = Admission(RouterConfig(max_in_flight=2, min_in_flight=1), clock)
    with adm.admit(), adm.admit():
        with (
            pytest.raises(
                ResourceExhausted, match=r"2 requests in flight \(limit 2, max_in_flight 2\)"
            ),
            adm.admit(),
        ):
            pass
        assert adm.in_flight == 2
    assert adm.in_flight == 0


def test_fixed_admission_keeps_max_in_flight() -> None:
    clock = Clock()
    adm = Admission(RouterConfig(admission="fixed", max_in_flight=50), clock)
    for _ in range(5):
        run_window(adm, clock, 1.0, 8)
    assert adm.limit == 50


def test_baseline_forgets_old_windows() -> None:
    from annfleet.router.admission import BASELINE_S

    clock = Clock()
    adm = Admission(RouterConfig(), clock)
    run_window(adm, clock, 0.001, 8)
    clock.now += BASELINE_S + 1
    run_window(adm, clock, 0.005, 8)  # a slower bundle: after BASELINE_S it is the new normal
    assert adm.baseline == pytest.approx(0.005)
