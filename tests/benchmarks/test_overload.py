"""The overload report's arithmetic (the measurement itself runs in `annfleet bench load`)."""

from __future__ import annotations

import argparse

from annfleet.benchmarks.overload import (
    admission_columns,
    client_phases,
    client_row,
    first_window_summary,
    key,
    phase_label,
    phase_row,
    unloaded_duration,
    unloaded_windows,
    window_p99,
)


def test_shed_fraction_counts_sent_requests_not_client_backlog() -> None:
    result = {
        "spec": {"duration": 10.0},
        "ok": 600,
        "achieved_qps": 60.0,
        "errors": {"RESOURCE_EXHAUSTED": 300, "DEADLINE_EXCEEDED": 100, "CLIENT_BACKLOG": 50},
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "p999_ms": 3.0,
    }
    row = phase_row("overload", result, offered_qps=105.0)
    assert row["sent_qps"] == 100.0  # 600 ok + 400 answered with an error, per 10 s
    assert row["shed_fraction"] == 0.3
    assert row["client_backlog"] == 50
    assert row["errors"] == {"RESOURCE_EXHAUSTED": 300, "DEADLINE_EXCEEDED": 100}


def test_client_row_counts_the_throttled_load_and_reads_latency_from_the_probe() -> None:
    load = {
        "spec": {"duration": 10.0},
        "ok": 5000,
        "errors": {
            "THROTTLED": 30000,
            "RESOURCE_EXHAUSTED": 400,
            "DEADLINE_EXCEEDED": 600,
            "CLIENT_BACKLOG": 7,
        },
        "p50_ms": 30.0,
        "p99_ms": 90.0,
    }
    probe = {"ok": 450, "errors": {"THROTTLED": 50}, "p50_ms": 20.0, "p99_ms": 60.0}
    codes = {"OK": 5100, "RESOURCE_EXHAUSTED": 410, "CANCELLED": 20}
    row = client_row("k=2", load, probe, codes, 11.0, 3600.0, unloaded_p99_ms=30.0)
    assert row["throttled_qps"] == 3000.0  # rejected locally, never sent
    assert row["sent_qps"] == 600.0  # 5000 ok + 400 refused + 600 timed out, per 10 s
    assert (row["refused_qps"], row["ok_qps"]) == (40.0, 500.0)
    assert row["other_codes"] == {"DEADLINE_EXCEEDED": 600, "CLIENT_BACKLOG": 7}
    assert (row["load_p99_x"], row["probe_p99_x"]) == (3.0, 2.0)
    assert row["probe_ok"] == "450/500"  # the probe's throttled calls count as not answered
    assert row["router_answered_qps"] == round(5530 / 11.0, 1)


def test_admission_columns_read_the_routers_queue_histogram_and_sheds() -> None:
    inf = float("inf")
    before = {"queue_shed": 10.0, "limit": 32.0, "queue_buckets": {0.001: 5, 0.01: 5, inf: 5}}
    after = {
        "queue_shed": 30.0,
        "limit": 2.0,
        # over the phase: 60 waits <= 1 ms, 39 more <= 10 ms, 1 longer
        "queue_buckets": {0.001: 65, 0.01: 104, inf: 105},
    }
    cols = admission_columns(before, after, wall_s=10.0)
    assert cols == {
        "queue_shed_qps": 2.0,
        "queue_p50_ms": 1.0,
        "queue_p99_ms": 10.0,
        "limit_at_end": 2.0,
    }
    # a phase in which no request sent its timeout
    none = admission_columns(after, after, wall_s=10.0)
    assert none["queue_p50_ms"] is None and none["queue_shed_qps"] == 0.0


def test_report_timeout_both_runs_each_k_with_and_without() -> None:
    args = argparse.Namespace(throttle_k=[2.0, 1.1], report_timeout="both")
    assert client_phases(args) == [(2.0, True), (2.0, False), (1.1, True), (1.1, False)]
    assert phase_label(2.0, False, "both") == "throttle k=2, no timeout sent"
    assert phase_label(2.0, True, "on") == "throttle k=2"  # as before the A/B existed
    assert key("throttle k=1.1, timeout sent") == "throttle_k1.1_timeout_sent"
    args.report_timeout = "off"
    assert client_phases(args) == [(2.0, False), (1.1, False)]


def test_per_second_series_buckets_requests_by_scheduled_second_and_reads_router_samples() -> None:
    from annfleet.benchmarks.overload_series import per_second

    t0 = 1000.0  # the measured window's start
    load = [
        (t0 - 0.5, 0.010, "OK", False),  # warm-up: second -1
        (t0 + 0.1, 0.020, "OK", False),
        (t0 + 0.2, 0.040, "OK", False),
        (t0 + 0.3, 0.005, "RESOURCE_EXHAUSTED", False),
        (t0 + 0.4, 1.000, "DEADLINE_EXCEEDED", False),
        (t0 + 0.5, 0.000, "THROTTLED", False),  # never sent: not counted
        (t0 + 1.2, 0.030, "OK", False),
    ]
    probe = [(t0 + 0.1, 0.012, "OK", False), (t0 + 0.6, 0.025, "OK", False)]
    probe.append((t0 + 0.7, 0.5, "RESOURCE_EXHAUSTED", False))  # refused: not a latency
    inf = float("inf")

    def state(shed: float, low: float, high: float, limit: float) -> dict:
        return {
            "queue_shed": shed,
            "limit": limit,
            "queue_buckets": {0.005: low, 0.25: high, inf: high},
        }

    samples = [
        (t0 - 0.05, state(0, 10, 10, 32.0), 0.004),
        (t0 + 0.5, state(3, 10, 10, 16.0), 0.006),
        (t0 + 0.95, state(7, 10, 110, 2.0), inf),  # a health check that failed
        (t0 + 1.5, state(7, 110, 210, 4.0), 0.003),  # 100 more waits, all <= 5 ms
    ]
    rows = {r["second"]: r for r in per_second(load, probe, samples, t0)}
    assert sorted(rows) == [-1, 0, 1]
    zero = rows[0]
    assert (zero["sent"], zero["ok"], zero["refused"], zero["timed_out"]) == (4, 2, 1, 1)
    assert zero["probe_max_ms"] == 25.0
    # from the sample before the second to its last one: 100 more waits, all <= 250 ms
    assert zero["queue_p99_ms"] == 250.0 and zero["queue_shed"] == 7
    assert zero["limit"] == 2.0 and zero["health_ms"] == 6.0  # the failed check is left out
    assert rows[1]["ok"] == 1 and rows[1]["load_p99_ms"] == 30.0
    assert rows[1]["queue_p99_ms"] == 5.0 and rows[1]["queue_shed"] == 0
    assert rows[-1]["sent"] == 1 and rows[-1]["queue_p99_ms"] is None


def test_a_longer_unloaded_phase_keeps_its_first_window_apart() -> None:
    # 50/s for 30 s after a 5 s warm-up from t=100; six slow calls in the first 10 s only
    records = [(100.0 + i / 50, 0.010, "OK", False) for i in range(1750)]
    records[200] = (104.0, 0.500, "OK", False)  # in the warm-up: not counted
    for i in range(300, 306):
        records[i] = (records[i][0], 0.100, "OK", False)  # in the first window
    records[400] = (108.0, 0.200, "RESOURCE_EXHAUSTED", False)  # not OK: not counted
    first = window_p99(records, 105.0, 10.0)
    assert first["ok"] == 499  # 500 scheduled in [105, 115), one refused
    assert first["p99_ms"] == 100.0  # six of 499 calls: more than 1 %
    whole = window_p99(records, 105.0, 30.0)
    assert whole["ok"] == 1499
    assert whole["p99_ms"] == 10.0  # the same six of 1,499: less than 1 %
    summary = first_window_summary(first, {"p99_ms": 2 * first["p99_ms"]}, 10.0)
    assert summary["accepted_p99_over_unloaded_first_window_p99"] == 2.0
    assert summary["unloaded_first_window"] == {"seconds": 10.0, **first}
    args = argparse.Namespace(duration=10.0, unloaded_duration=0.0)
    assert unloaded_duration(args) == 10.0
    assert unloaded_duration(argparse.Namespace(duration=10.0, unloaded_duration=30.0)) == 30.0
    windows = unloaded_windows(records, 105.0, 10.0, slowest=3)
    assert (windows["ok"], windows["p99_ms"]) == (first["ok"], first["p99_ms"])
    assert windows["windows_p99_ms"] == [100.0, 10.0, 10.0]  # 30 s in three windows
    assert windows["slowest"] == [(1.0, 100.0), (1.02, 100.0), (1.04, 100.0)]
