"""`annfleet bench scale` with its open-loop phase, end to end on a tiny catalogue (a real
local cluster, real load-generator processes), and the rate search's logic on known steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from annfleet.benchmarks.cli import main
from annfleet.benchmarks.scale import rate_search, slo_breaches


def _step(rate: float, p99: float, errors: dict[str, int] | None = None) -> dict[str, Any]:
    row = {
        "offered_qps": rate,
        "ok": 100,
        "p50_ms": 5.0,
        "p95_ms": 10.0,
        "p99_ms": p99,
        "errors": errors or {},
        "unfinished": 0,
    }
    breaches = slo_breaches(row)
    return {**row, "phase": "step", "slo_met": not breaches, "breaches": "; ".join(breaches)}


def test_slo_breaches_name_each_broken_bound() -> None:
    assert slo_breaches(_step(10, 50.0)) == []  # p99 <= 50 holds
    assert slo_breaches(_step(10, 50.1)) == ["p99 50.1 > 50"]
    row = {**_step(10, 20.0), "p50_ms": 20.0, "p95_ms": 40.0}
    assert slo_breaches(row) == ["p50 20.0 >= 20", "p95 40.0 >= 40"]
    shed = _step(10, 20.0, {"RESOURCE_EXHAUSTED": 2, "CLIENT_BACKLOG": 1})
    assert slo_breaches(shed) == ["3 not answered"]
    assert slo_breaches({**_step(10, 20.0), "ok": 0}) == ["nothing answered"]
    assert slo_breaches({**_step(10, 20.0), "degraded": 1}) == ["1 degraded (shards missing)"]


def test_rate_search_steps_up_then_bisects_to_the_highest_rate_held() -> None:
    tried: list[float] = []

    def step(rate: float) -> dict[str, Any]:  # holds up to 27 requests/s
        tried.append(rate)
        return _step(rate, 30.0 if rate <= 27 else 80.0)

    out = rate_search(step, [10, 20, 40, 80], bisect=3)
    assert tried == [10, 20, 40, 30, 25, 27.5]  # stops stepping at 40, then halves 20..40
    assert [s["phase"] for s in out["steps"]] == ["step"] * 3 + ["bisect"] * 3
    assert out["max_sustained_qps"] == 25
    assert out["first_broken_qps"] == 27.5
    assert out["upper_bound_found"] is True

    held_all = rate_search(lambda r: _step(r, 30.0), [10, 20], bisect=3)
    assert held_all["max_sustained_qps"] == 20 and held_all["upper_bound_found"] is False
    assert len(held_all["steps"]) == 2  # nothing to bisect

    broke_first = rate_search(lambda r: _step(r, 80.0), [10, 20], bisect=1)
    assert [s["offered_qps"] for s in broke_first["steps"]] == [10, 5.0]
    assert broke_first["max_sustained_qps"] == 0.0 and broke_first["max_sustained_step"] is None


def test_scale_open_loop_end_to_end(tmp_path: Path) -> None:
    rates = [15.0, 30.0]
    code = main(
        [
            "bench",
            "scale",
            *("--items", "20000", "--dim", "16", "--shards", "2", "--queries", "50"),
            *("--build", "nlist=64,pq_m=8", "--nprobe", "8,16", "--rerank", "200", "-k", "100"),
            *("--rates", ",".join(map(str, rates)), "--step-s", "1", "--load-warmup-s", "0.5"),
            *("--step-min-requests", "20"),
            *("--bisect", "1", "--capacity-s", "0.4"),
            *("--out", str(tmp_path / "results"), "--name", "tiny"),
            *("--data-dir", str(tmp_path / "data"), "--no-progress"),
        ]
    )
    assert code == 0
    out = tmp_path / "results" / "tiny"
    result = json.loads((out / "results.json").read_text())
    assert set(result["uptime"]) == {"before", "after"}
    assert "load average" in result["uptime"]["before"]
    ol = result["open_loop"]
    router = [r for r in result["rows"] if r["system"] == "router"]
    assert [r["params"] for r in router] == [{"nprobe": n, "rerank": 200} for n in (8, 16)]
    costs = ol["point_costs"]  # the sweep points with the recall, costed in process
    assert [c["params"] for c in costs] == [r["params"] for r in router if r["recall"] >= 0.95]
    if costs:
        assert ol["point"] == min(costs, key=lambda c: c["inprocess_cpu_ms_per_query"])["params"]
    else:
        assert ol["point"] == max(router, key=lambda r: r["recall"])["params"]
    assert ol["rates"] == rates
    steps = ol["steps"]
    stepped = [s["offered_qps"] for s in steps if s["phase"] == "step"]
    assert stepped and stepped == rates[: len(stepped)]  # in order, up to the first broken
    assert [s["phase"] for s in steps] == ["step"] * len(stepped) + ["bisect"] * (
        len(steps) - len(stepped)
    )
    processes = ol["config"]["processes"]
    for s in steps:
        duration = s["duration_s"]  # 1 s, or 20 requests' worth at 15/s
        assert duration == max(1.0, 20 / s["offered_qps"])
        assert 0 <= s["ok"] <= s["sent_in_window"]
        assert s["unfinished"] >= 0  # ok + errors never exceed what was sent
        assert 0 <= s["degraded"] <= s["ok"]
        assert math.isclose(s["achieved_qps"], s["ok"] / duration)
        # at most one send per process more than rate x window (the schedule's phase)
        assert s["achieved_qps"] <= s["offered_qps"] + processes / duration
        assert s["slo_met"] == (s["breaches"] == "")
        if s["ok"]:
            assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["p999_ms"]
    held = [s["offered_qps"] for s in steps if s["slo_met"]]
    assert ol["max_sustained_qps"] == (max(held) if held else 0.0)
    if not ol["upper_bound_found"]:
        assert all(s["slo_met"] for s in steps) and len(steps) == len(rates)
    cap = ol["inprocess"]
    assert cap["capacity_qps"] == max(cap["faiss_threads_qps"], cap["python_threads_qps"]) > 0
    assert cap["per_shard_k"] == [100, 100]  # ceil(100 x ~0.5 x 2), capped at k
    assert 0.9 <= cap["recall"] <= 1.0  # the same shards, params and merge as the router
    assert math.isclose(ol["ratio_to_inprocess"], ol["max_sustained_qps"] / cap["capacity_qps"])
    assert cap["cpu_ms_per_query"] > 0 and all(s["server_cpu_ms_per_query"] > 0 for s in steps)
    assert (
        math.isclose(
            ol["cluster_cpu_ms_per_query"],
            sorted(s["server_cpu_ms_per_query"] for s in steps)[(len(steps) - 1) // 2],
        )
        or len(steps) % 2 == 0
    )
    assert math.isclose(ol["cpu_ratio"], cap["cpu_ms_per_query"] / ol["cluster_cpu_ms_per_query"])
    assert ol["idle_server_cores"] >= 0
    for s in steps:  # the idle share left out
        assert s["marginal_cpu_ms_per_query"] <= s["server_cpu_ms_per_query"]
    assert ol["target"]["met"] == (
        ol["ratio_to_inprocess"] >= 0.5 and ol["target"]["recall"] >= 0.95
    )
    readme = (out / "README.md").read_text()
    assert "## SLO under load" in readme and "uptime before" in readme
    assert (out / "open_loop.csv").read_text().startswith("phase,offered_qps,")


def test_prepare_only_builds_the_cache_and_starts_no_cluster(tmp_path: Path) -> None:
    args = [
        "bench",
        "scale",
        *("--items", "5000", "--dim", "16", "--shards", "2", "--queries", "20"),
        *("--build", "nlist=16,pq_m=8", "-k", "50", "--prepare-only", "--no-progress"),
        *("--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "results")),
    ]
    assert main(args) == 0
    bundles = list((tmp_path / "data" / "bundles").glob("*/manifest.json"))
    assert len(bundles) == 1
    assert len(list((tmp_path / "data" / "groundtruth").glob("*-k50.npy"))) == 1
    assert not (tmp_path / "results").exists()  # nothing measured, nothing written
    mtime = bundles[0].stat().st_mtime
    assert main(args) == 0  # second run: cache hit, nothing rebuilt
    assert bundles[0].stat().st_mtime == mtime
