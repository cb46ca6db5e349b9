"""The overload report's arithmetic (the measurement itself runs in `annfleet bench load`)."""

from __future__ import annotations

from annfleet.benchmarks.overload import phase_row


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
