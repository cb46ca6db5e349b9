"""The status pages' rolling window of request outcomes (fake clock, exact counts)."""

from __future__ import annotations

import numpy as np
import pytest

from annfleet.window import LATENCY_BINS, LATENCY_RATIO, RequestWindow, latency_bin, quantile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quantiles_are_within_half_a_bin_of_numpy() -> None:
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(np.log(0.004), 0.8, 5000)
    hist = np.zeros(LATENCY_BINS, np.int64)
    for s in latencies:
        hist[latency_bin(float(s))] += 1
    for q in (0.5, 0.9, 0.99):
        # the q-quantile as the window defines it: the ceil(q * n)-th smallest sample
        exact = np.sort(latencies)[int(np.ceil(q * len(latencies))) - 1]
        got = quantile(hist, q)
        assert got is not None
        assert exact / np.sqrt(LATENCY_RATIO) <= got <= exact * np.sqrt(LATENCY_RATIO)
    assert quantile(np.zeros(LATENCY_BINS, np.int64), 0.5) is None
    assert latency_bin(0.0) == 0 and latency_bin(1e9) == LATENCY_BINS - 1


def test_window_counts_codes_coverage_and_sources() -> None:
    clock = Clock()
    window = RequestWindow(60, clock)
    window.record("Search", "OK", 0.002, coverage=(3, 3))
    window.record("Retrieve", "OK", 0.010, coverage=(2, 3), degraded=True, sources={"ann": 8})
    window.record("Retrieve", "OK", 0.020, coverage=(3, 3), sources={"ann": 6, "popular": 2})
    window.record("Retrieve", "UNAVAILABLE", 0.5)
    snap = window.snapshot()
    assert snap["window_s"] == 60
    retrieve = snap["requests"]["Retrieve"]
    assert retrieve["count"] == 3 and retrieve["ok"] == 2
    assert retrieve["codes"] == {"OK": 2, "UNAVAILABLE": 1}
    assert retrieve["error_rate"] == pytest.approx(1 / 3)
    assert retrieve["qps"] == pytest.approx(3 / 60)
    assert retrieve["p50_ms"] == pytest.approx(20, rel=0.03)
    assert retrieve["p99_ms"] == pytest.approx(500, rel=0.03)
    assert snap["requests"]["Search"]["codes"] == {"OK": 1}
    assert snap["coverage"] == {
        "responses": 3,
        "mean": pytest.approx((1 + 2 / 3 + 1) / 3),
        "min": pytest.approx(2 / 3),
        "degraded": 1,
        "degraded_rate": pytest.approx(1 / 3),
    }
    assert snap["sources"] == {
        "ann": {"candidates": 14, "share": 14 / 16},
        "popular": {"candidates": 2, "share": 2 / 16},
    }


def test_window_forgets_what_is_older_than_its_span() -> None:
    clock = Clock()
    window = RequestWindow(60, clock)
    window.record("Search", "OK", 0.001, coverage=(1, 2), degraded=True)
    clock.now += 30
    window.record("Search", "OK", 0.001, coverage=(2, 2))
    assert window.snapshot()["requests"]["Search"]["count"] == 2
    clock.now += 30  # the first request is now 60 s old: out
    snap = window.snapshot()
    assert snap["requests"]["Search"]["count"] == 1
    assert snap["coverage"]["degraded"] == 0 and snap["coverage"]["min"] == 1.0
    clock.now += 60  # a slot reused a minute later starts empty
    window.record("Search", "CANCELLED", 0.001)
    assert window.snapshot()["requests"] == {
        "Search": {
            "count": 1,
            "qps": pytest.approx(1 / 60),
            "ok": 0,
            "error_rate": 1.0,
            "codes": {"CANCELLED": 1},
            "p50_ms": pytest.approx(1, rel=0.03),
            "p99_ms": pytest.approx(1, rel=0.03),
        }
    }
    assert window.snapshot()["coverage"]["responses"] == 0
    assert window.snapshot()["coverage"]["mean"] is None
