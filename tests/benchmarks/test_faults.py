"""`annfleet bench faults` end to end on a tiny catalogue: a real local cluster with two
replicas per shard, a replica killed (and restarted by the supervisor) and another stopped
and continued under open-loop load."""

from __future__ import annotations

import json
from pathlib import Path

from annfleet.benchmarks.cli import main


def test_faults_bench_reports_every_second_and_every_fault(tmp_path: Path) -> None:
    code = main(
        [
            "bench",
            "faults",
            *("--items", "3000", "--dim", "16", "--shards", "2", "--stop-shard", "0"),
            *("--qps", "30", "--warmup", "1", "--duration", "14"),
            *("--kill-at", "2", "--stop-at", "9", "--stop-for", "3"),
            *("--out", str(tmp_path / "results"), "--name", "tiny"),
            *("--data-dir", str(tmp_path / "data")),
        ]
    )
    assert code in (0, 1)  # 1 = a target missed (timings on a shared machine)
    out = tmp_path / "results" / "tiny"
    result = json.loads((out / "results.json").read_text())
    seconds = result["per_second"]
    assert [row["second"] for row in seconds] == list(range(14))
    requests = result["windows"]["all"]["requests"]
    assert requests == sum(
        row["answers"] + sum(int(e.split("=")[1]) for e in row["errors"].split()) for row in seconds
    )
    assert requests > 0
    events = result["events_s"]
    assert {"kill", "kill_restarted", "stop", "cont"} <= set(events)
    assert events["kill"] < events["stop"] < events["cont"]
    assert any(
        "shard-01-r0" in note and "restarted as pid" in note for note in result["supervisor"]
    )
    assert set(result["targets"]) == {
        "failed_requests",
        "degraded_answers",
        "p99_stopped_over_steady",
        "killed_back_in_rotation_s",
    }
    readme = (out / "README.md").read_text()
    assert "## Per second" in readme and "Shared with other jobs" in readme
    assert (out / "results.csv").read_text().startswith("second,answers,errors,degraded")
