"""`annfleet bench sources`: the variants' configs and the report's arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from annfleet.benchmarks.sources import lines, summarise, variant_configs
from annfleet.config import ClusterConfig, SourcesConfig, load_config


def _load(tmp_path: Path, mapping: dict[str, Any]) -> ClusterConfig:
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return load_config(path)  # every variant is a valid config file


def test_variants_turn_off_every_other_source_or_hang_one_and_never_cache(
    tmp_path: Path,
) -> None:
    names = list(SourcesConfig().settings())
    base = {"router": {"port": 1}, "sources": {"trending": {"budget_ms": 30.0}}}
    configs = variant_configs(base, names, "content", 5000.0)
    assert list(configs) == ["ann-only", "all", "hang-content"]
    for mapping in configs.values():
        config = _load(tmp_path, mapping)
        assert config.sources.candidate_cache_size == 0
        assert config.router.port == 1 and config.sources.trending.budget_ms == 30.0
    ann_only = _load(tmp_path, configs["ann-only"]).sources.settings()
    assert [n for n, s in ann_only.items() if s.enabled] == ["ann"]
    hang = _load(tmp_path, configs["hang-content"]).sources
    assert hang.content.delay_ms == 5000.0 and hang.content.enabled
    assert _load(tmp_path, configs["all"]).sources.content.delay_ms == 0.0
    assert base["sources"] == {"trending": {"budget_ms": 30.0}}  # the base is not modified


def _run(
    variant: str, rnd: int, p50: float, p99: float, served: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "round": rnd,
        "variant": variant,
        "dropped": {},
        "served": served or {},
        "achieved_qps": 30.0,
        "p50_ms": p50,
        "p95_ms": p99,
        "p99_ms": p99,
        "errors": {},
    }


def test_summary_takes_medians_over_rounds_and_states_both_targets() -> None:
    runs = [
        _run("ann-only", 0, 10.0, 20.0),
        _run("all", 0, 12.0, 24.0),
        _run("hang-content", 0, 21.0, 21.5),
        _run("ann-only", 1, 20.0, 30.0),
        _run("all", 1, 18.0, 26.0),
        _run("hang-content", 1, 21.0, 23.5),
    ]
    result = summarise(runs, "content", 20.0)
    assert result["median_over_rounds"]["ann-only"] == {"p50_ms": 15.0, "p99_ms": 25.0}
    assert result["all_over_ann_only_p50"] == 1.0  # 15 / 15
    assert result["hang"] == {
        "source": "content",
        "budget_ms": 20.0,
        "p99_ms": 22.5,
        "limit_ms": 22.0,
        "all_p99_ms": 25.0,
    }
    assert len(result["rows"]) == 6


def test_a_weighted_source_that_served_nothing_in_the_all_samples_is_reported_idle() -> None:
    weighted = ["ann", "trending", "co_engagement", "content", "exploration"]
    runs = [
        _run("ann-only", 0, 10.0, 20.0, {"ann": 20}),
        _run("all", 0, 11.0, 21.0, {"ann": 20, "trending": 20, "exploration": 3}),
        _run("hang-content", 0, 21.0, 21.5, {"ann": 20, "co_engagement": 4}),
        _run("all", 1, 11.0, 21.0, {"ann": 20, "content": 1}),
    ]
    result = summarise(runs, "content", 20.0, weighted)
    # content served in one 'all' sample; co_engagement only in another variant's
    assert result["idle"] == ["co_engagement"]
    idle_line = "idle in every sampled 'all' answer: co_engagement"
    assert any(idle_line in line for line in lines(result))
    busy = summarise(runs[:3], "content", 20.0, ["ann", "trending"])
    assert busy["idle"] == []
