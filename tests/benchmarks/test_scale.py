"""`annfleet bench scale` with its open-loop phase, end to end on a tiny catalogue (a real
local cluster, real load-generator processes), the rate search's logic on known steps, and
the settle between steps against a real router driven into an overload."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from support import LoopThread, ObservedServer, start_observed_shard

from annfleet.benchmarks.cli import main
from annfleet.benchmarks.scale import (
    rate_search,
    recovery_windows,
    settle,
    settle_windows,
    slo_breaches,
)
from annfleet.bundle import Bundle
from annfleet.client import AsyncClient, ResourceExhausted
from annfleet.config import RouterConfig
from annfleet.errors import ResourceExhausted as ServerResourceExhausted
from annfleet.router.admission import WINDOW_MIN, WINDOW_S, Admission
from annfleet.router.main import start_router
from annfleet.synthetic import Catalogue


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
    # with one request in flight at most, 3000/s backs up at the client: a broken step
    rates = [15.0, 3000.0]
    code = main(
        [
            "bench",
            "scale",
            *("--items", "20000", "--dim", "16", "--shards", "2", "--queries", "50"),
            *("--build", "nlist=64,pq_m=8", "--nprobe", "8,16", "--rerank", "200", "-k", "100"),
            *("--rates", ",".join(map(str, rates)), "--step-s", "1", "--load-warmup-s", "0.5"),
            *("--step-min-requests", "20", "--load-concurrency", "1"),
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
    # the settle: before a step after one that broke the SLO, none before the first
    windows = ol["settle_windows"]
    assert windows == settle_windows(RouterConfig())  # the cluster's router config: defaults
    assert ol["settle_run"] == {
        "answers": windows * WINDOW_MIN,
        "seconds": round(windows * WINDOW_S, 2),
    }
    assert ol["upper_bound_found"] and not steps[-2]["slo_met"]  # 3000/s broke, then bisect
    assert steps[0]["settle_sent"] == 0 and steps[0]["settled"] is True
    for before, s in itertools.pairwise(steps):
        if not before["slo_met"]:
            assert s["settled"] is True
            answered = s["settle_sent"] - s["settle_refused"] - s["settle_errors"]
            assert answered >= windows * WINDOW_MIN
            assert s["settle_s"] > 0
    held = [s["offered_qps"] for s in steps if s["slo_met"]]
    assert ol["max_sustained_qps"] == (max(held) if held else 0.0)
    if not ol["upper_bound_found"]:
        assert all(s["slo_met"] for s in steps) and len(steps) == len(rates)
    cap = ol["inprocess"]
    assert cap["capacity_qps"] == max(cap["faiss_threads_qps"], cap["python_threads_qps"]) > 0
    # as the router asks (topk_probability 0.9999 over 2 shards: ~69 each), not k each
    assert all(50 <= m < 100 for m in cap["per_shard_k"]), cap["per_shard_k"]
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
    assert "settle_refused" in readme and f"{windows * WINDOW_MIN} in a row" in readme
    csv_head = (out / "open_loop.csv").read_text().splitlines()[0]
    assert csv_head.startswith("phase,offered_qps,") and "settle_sent" in csv_head


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


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _windows_to_recover(config: RouterConfig) -> int:
    """Drive the router's real Admission (on a fake clock) through an overload down to its
    overload floor, then answer requests one at a time: the windows whose close grew the
    limit until it was back at min_in_flight."""
    clock = _Clock()
    adm = Admission(config, clock)
    spacing = WINDOW_S / (WINDOW_MIN - 1)  # one at a time: a window closes on its 16th
    while adm.baseline is None:  # the no-load latency
        with adm.admit():
            clock.now += spacing
    for _ in range(100):  # everything beyond the limit refused, 0.1 s each: queueing
        blocks = [adm.admit() for _ in range(int(adm.limit))]
        for b in blocks:
            b.__enter__()
        with pytest.raises(ServerResourceExhausted), adm.admit():
            pass
        clock.now += 0.1
        for b in blocks:
            b.__exit__(None, None, None)
    assert adm.overloaded and adm.limit == adm.overload_floor
    grew = 0
    while adm.limit < adm.floor:
        before = adm.limit
        with adm.admit():
            clock.now += spacing
        grew += adm.limit > before
    return grew


def test_recovery_windows_are_what_the_routers_admission_takes() -> None:
    for config in (
        RouterConfig(),
        RouterConfig(min_in_flight=64, overload_min_in_flight=1),
        RouterConfig(min_in_flight=8, overload_min_in_flight=8),
    ):
        assert recovery_windows(config) == _windows_to_recover(config)
        assert settle_windows(config) == 2 * (recovery_windows(config) + 1)
    assert recovery_windows(RouterConfig(min_in_flight=8, overload_min_in_flight=8)) == 0
    assert recovery_windows(RouterConfig(admission="fixed")) == 0  # the limit never moves


def _burst(target: str, queries: Any, n: int) -> list[str]:
    """``n`` searches at once (no retries, no client throttle) -> each one's outcome."""

    async def run() -> list[str]:
        async with AsyncClient(target, timeout=10.0, retries=0, throttle=None) as client:

            async def one(i: int) -> str:
                try:
                    await client.search(queries[i % len(queries)], 10)
                except ResourceExhausted:
                    return "RESOURCE_EXHAUSTED"
                return "OK"

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    return asyncio.run(run())


def test_settle_brings_the_router_back_from_an_overload_before_the_next_step(
    loop_thread: LoopThread, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    shards: list[ObservedServer] = [
        loop_thread.run(start_observed_shard(flat_bundle, i)) for i in range(flat_bundle.num_shards)
    ]
    router = loop_thread.run(
        start_router(flat_bundle.path, [f"127.0.0.1:{s.port}" for s in shards], RouterConfig())
    )
    target = f"127.0.0.1:{router.port}"
    adm = router.service.admission
    queries = catalogue.vectors[:64]
    try:
        # the no-load latency: one window of requests one at a time
        settle(target, queries, 10, {}, windows=1, max_s=60.0, timeout_s=10.0)
        assert adm.baseline is not None
        # an overload: the shards answer 0.1 s late and 64 requests come at once, again and
        # again, until the limit is at its overload floor
        for shard in shards:
            shard.service.delay = 0.1
        for _ in range(200):
            if adm.overloaded and adm.limit == adm.overload_floor:
                break
            _burst(target, queries, 64)
        assert adm.overloaded and adm.limit == adm.overload_floor < adm.floor
        for shard in shards:
            shard.service.delay = 0.0
        # what the next step would meet: the shards are quick again, but the limit is still
        # the overload's, and 16 requests at once are refused
        assert "RESOURCE_EXHAUSTED" in _burst(target, queries, 16)

        windows = settle_windows(adm.config)
        out = settle(target, queries, 10, {}, windows, max_s=60.0, timeout_s=10.0)
        assert out["settled"] is True
        answered = out["settle_sent"] - out["settle_refused"] - out["settle_errors"]
        assert answered >= windows * WINDOW_MIN  # at least the run, answered
        assert out["settle_errors"] == 0
        assert out["settle_s"] >= 0
        # settled: the limit is back at min_in_flight, no overload, and the same 16 at once
        # are all answered
        assert adm.limit >= adm.floor and not adm.overloaded
        assert _burst(target, queries, 16) == ["OK"] * 16
    finally:
        loop_thread.run(router.stop(0))
        for shard in shards:
            loop_thread.run(shard.stop(0))
