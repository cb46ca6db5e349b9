from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from annfleet.config import (
    SOURCE_RULES,
    ClusterConfig,
    DatasetConfig,
    IndexConfig,
    SearchConfig,
    SourcesConfig,
    load_config,
    redis_loopback,
)
from annfleet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_local_config_equals_defaults() -> None:
    assert load_config(REPO / "deploy" / "local.yaml") == ClusterConfig()


def test_partial_file_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("router:\n  port: 6000\n  min_coverage: 1\nshards:\n  count: 2\n")
    config = load_config(path)
    assert config.router.port == 6000 and config.router.min_coverage == 1.0
    assert config.shards.count == 2 and config.index == ClusterConfig().index


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routr: {}\n", "unknown key 'routr'"),
        ("router:\n  min_covrage: 0.5\n", "unknown key 'router.min_covrage'"),
        ("router:\n  port: fast\n", "'router.port' must be int"),
        ("router:\n  min_coverage: 0\n", "router.min_coverage must be in"),
        ("index:\n  type: lsh\n", "index.type must be"),
        ("index:\n  pq_m: -1\n", "index.pq_m must be >= 0"),
        ("index:\n  m: 1\n", "index.m must be >= 2"),
        ("index:\n  ef_construction: 0\n", "index.ef_construction must be >= 1"),
        ("index:\n  nlist: 0\n", "index.nlist must be >= 1"),
        ("index:\n  nbits: 0\n", "index.nbits must be >= 1"),
        ("search:\n  ef_search: 0\n", "search.ef_search must be in [1, 32768]"),
        ("search:\n  rerank: 100000\n", "search.rerank must be in [1, 65536]"),
        ("shards:\n  replicas: 0\n", "shards.replicas must be >= 1"),
        ("router:\n  port: 70000\n", "router.port must be in [0, 65535]"),
        ("router:\n  metrics_port: -2\n", "router.metrics_port must be in [0, 65535], or -1"),
        ("shards:\n  base_port: -1\n", "shards.base_port must be in [0, 65532]"),
        (
            "shards:\n  base_port: 65530\n  replicas: 2\n",
            "shards.base_port must be in [0, 65528] (+ shard * replicas + replica <= 65535 for 8",
        ),
        ("shards:\n  metrics_base_port: 65535\n", "shards.metrics_base_port must be in"),
        ("shards:\n  max_batch: 0\n", "shards.max_batch must be >= 1"),
        ("router:\n  max_batch: 0\n", "router.max_batch must be >= 1"),
        ("shards:\n  grace_s: -1\n", "shards.grace_s must be >= 0"),
        ("router:\n  connect_timeout_s: 0\n", "router.connect_timeout_s must be > 0"),
        ("dataset:\n  items: 0\n", "dataset.items must be >= 1"),
        ("dataset:\n  dim: 0\n", "dataset.dim must be >= 1"),
        ("shards:\n  exact_duty: 0\n", "shards.exact_duty must be in (0, 1]"),
        ("shards:\n  exact_chunk_items: -1\n", "shards.exact_chunk_items must be >= 0"),
        ("router:\n  max_in_flight: 0\n", "router.max_in_flight must be >= 1"),
        ("router:\n  hedge_quantile: 1.5\n", "router.hedge_quantile must be in [0, 1)"),
        ("router:\n  hedge_min_delay_s: 0.5\n", "router.hedge_min_delay_s must be"),
        ("router:\n  max_k: 0\n", "router.max_k must be >= 1"),  # was "max_k must be"
        ("shards:\n  max_k: 0\n", "shards.max_k must be >= 1"),
        ("shards:\n  search_threads: 0\n", "shards.search_threads must be >= 1"),
        ("router:\n  user_cache_size: -1\n", "router.user_cache_size must be >= 0"),
        ("router:\n  coalesce_in_flight: -1\n", "router.coalesce_in_flight must be >= 0"),
        (
            "router: {min_in_flight: 64, max_in_flight: 32}\n",
            "router.min_in_flight must be <= router.max_in_flight (32) with adaptive admission",
        ),
        ("sources:\n  candidate_cache_ttl_s: -1\n", "sources.candidate_cache_ttl_s must be"),
        ("sources:\n  content: {recency_decay: 0}\n", "sources.content.recency_decay must be"),
        ("sources:\n  social: {recent: 0}\n", "sources.social.recent must be >= 1"),
        ("sources:\n  trending: {delay_ms: -5}\n", "sources.trending.delay_ms must be >= 0"),
        ("sources:\n  exploration: {max_impressions: 0}\n", "max_impressions must be >= 1"),
        ("state:\n  timeout_s: 0\n", "state.timeout_s must be > 0"),
        ("shards: 3\n", "shards must be a mapping"),
        ("a: [\n", "not valid YAML"),
        (
            "sources:\n  trending: {quota: 1.0}\n",
            "sources.<name>.quota summed over the enabled sources must be <= 1, got 1.02",
        ),
        ("sources:\n  ann: {budget_ms: 0}\n", "sources.ann.budget_ms must be > 0"),
        ("router:\n  user_cache_ttl_s: -1\n", "router.user_cache_ttl_s must be >= 0"),
        ("sources:\n  candidate_cache_size: -1\n", "sources.candidate_cache_size must be >= 0"),
        (
            "router:\n  overload_min_in_flight: 64\n",
            "router.overload_min_in_flight must be <= router.min_in_flight (32) with adaptive",
        ),
        ("dataset:\n  seed: -1\n", "dataset.seed must be >= 0"),
        ("state:\n  max_future_s: -1\n", "state.max_future_s must be >= 0"),
        ("state:\n  co_neighbours: 0\n", "state.co_neighbours must be >= 1"),
        ("sources:\n  popular: {delay_ms: -1}\n", "sources.popular.delay_ms must be >= 0"),
        ("sources:\n  trending: {half_life_s: 0}\n", "sources.trending.half_life_s must be > 0"),
        (
            "sources:\n  co_engagement: {recency_decay: 1.5}\n",
            "sources.co_engagement.recency_decay must be in (0, 1]",
        ),
        (
            "sources:\n  co_engagement: {live_weight: -0.1}\n",
            "sources.co_engagement.live_weight must be >= 0",
        ),
        ("sources:\n  exploration: {seed: -2}\n", "sources.exploration.seed must be >= 0, or -1"),
        ("sources:\n  social: {max_followees: 0}\n", "sources.social.max_followees must be >= 1"),
        ("sources:\n  ann: {weight: .nan}\n", "sources.ann.weight must be >= 0"),
        ("sources:\n  trendy: {}\n", "unknown key 'sources.trendy'"),
        (
            "sources:\n  social: {enabled: true}\n",
            "sources.social.graph must be set (a follow-graph file) when sources.social.enabled",
        ),
        ("state:\n  backend: etcd\n", "state.backend must be memory or redis"),
        (
            "state: {backend: redis, start_redis: true, url: 'redis://10.0.0.5:6380/0'}\n",
            "state.url must be redis://<loopback host>:<port>[/db] when state.start_redis",
        ),
        ("state: {backend: redis, start_redis: true, url: 'redis://127.0.0.1/0'}\n", "state.url"),
        ("state: {start_redis: true}\n", "state.backend must be redis when state.start_redis"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_every_numeric_source_setting_has_a_range() -> None:
    """A knob added to a source gets a rule in SOURCE_RULES (checked on every source)."""
    knobs = {
        f.name
        for source in SourcesConfig().settings().values()
        for f in dataclasses.fields(source)
        if f.type in ("int", "float")
    }
    assert knobs == set(SOURCE_RULES)


def test_fixed_admission_does_not_check_the_adaptive_floors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("router: {admission: fixed, max_in_flight: 8}\n")
    assert load_config(path).router.max_in_flight == 8


def test_a_yaml_syntax_error_points_at_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("router:\n  port: 6000\n  host: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: not valid YAML" in str(info.value)
    assert f'in "{path}", line 4, column 1' in str(info.value)  # was in "<unicode string>"
    path.write_bytes(b"router:\n  host: \xc3\x28\n")  # not UTF-8: was a UnicodeDecodeError
    with pytest.raises(ConfigError, match="not valid YAML: unacceptable character"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def _keys(value: object, prefix: str = "") -> set[str]:
    """Dotted keys of a YAML mapping or of a config dataclass, recursively."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, dict):
        return {prefix.rstrip(".")}
    return {k for name, v in value.items() for k in _keys(v, f"{prefix}{name}.")}


@pytest.mark.parametrize("name", ["local.yaml", "synthetic.yaml"])
def test_shipped_configs_list_every_key(name: str) -> None:
    listed = _keys(yaml.safe_load((REPO / "deploy" / name).read_text()))
    assert listed == _keys(ClusterConfig())


def test_synthetic_config_differs_from_the_defaults_only_in_the_dataset_kind() -> None:
    config = load_config(REPO / "deploy" / "synthetic.yaml")
    assert config == dataclasses.replace(
        ClusterConfig(), dataset=dataclasses.replace(DatasetConfig(), kind="synthetic")
    )


def test_search_defaults_are_their_own_section_and_not_index_params(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("index: {type: ivfpq}\nsearch: {ef_search: 64, nprobe: 8, rerank: 100}\n")
    config = load_config(path)
    assert config.search == SearchConfig(ef_search=64, nprobe=8, rerank=100)
    assert config.index.params() == {"nlist": 1024, "pq_m": 0, "nbits": 8}
    assert IndexConfig(type="hnsw").params() == {"m": 32, "ef_construction": 200}


def test_a_search_key_left_under_index_says_where_it_moved(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("index:\n  ef_search: 64\n")
    with pytest.raises(ConfigError, match=r"'index.ef_search' moved to 'search.ef_search'"):
        load_config(path)


def test_no_annfleet_variable_of_the_shell_reaches_a_test(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`ANNFLEET_DATA=/tmp/elsewhere make test` must pass: conftest clears the shell's
    variables and points ANNFLEET_DATA into the session's tmp dir."""
    assert [name for name in os.environ if name.startswith("ANNFLEET_")] == ["ANNFLEET_DATA"]
    assert Path(os.environ["ANNFLEET_DATA"]).is_relative_to(tmp_path_factory.getbasetemp())


def test_data_dir_from_the_config_wins_over_annfleet_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANNFLEET_DATA", str(tmp_path / "elsewhere"))
    path = tmp_path / "c.yaml"
    path.write_text(f"data_dir: {tmp_path / 'mine'}\n")
    assert load_config(path).data_path() == tmp_path / "mine"
    # Without a data_dir the variable is the default, and ~/.cache/annfleet without either.
    assert load_config(REPO / "deploy" / "local.yaml").data_path() == tmp_path / "elsewhere"
    monkeypatch.delenv("ANNFLEET_DATA")
    assert ClusterConfig().data_path() == Path("~/.cache/annfleet").expanduser()


def test_shipped_ha_config_has_two_replicas() -> None:
    config = load_config(REPO / "deploy" / "ha.yaml")
    assert config.shards.replicas == 2 and config.shards.count == 4
    assert config.router == ClusterConfig().router  # the knobs it lists are the defaults


def test_sources_and_state_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n  ann: {quota: 0.5}\n  trending: {quota: 0.2}\n"
        "  social: {enabled: true, graph: follows.txt}\n"
        "state: {backend: redis, url: 'redis://127.0.0.1:7000/1'}\n"
    )
    config = load_config(path)
    assert config.sources.ann.quota == 0.5 and config.sources.ann.weight == 1.0
    assert config.sources.social.graph == str(tmp_path / "follows.txt")
    assert config.state.backend == "redis" and config.state.url.endswith(":7000/1")
    assert list(config.sources.settings()) == [
        "ann",
        "trending",
        "co_engagement",
        "content",
        "exploration",
        "social",
        "popular",
    ]


def test_shipped_redis_config_starts_its_own_redis_and_changes_nothing_else() -> None:
    config = load_config(REPO / "deploy" / "redis.yaml")
    assert config.state.backend == "redis" and config.state.start_redis
    assert redis_loopback(config.state.url) == ("127.0.0.1", 6380)
    assert dataclasses.replace(config, state=ClusterConfig().state) == ClusterConfig()


def test_redis_loopback() -> None:
    assert redis_loopback("redis://localhost:7000") == ("localhost", 7000)
    assert redis_loopback("redis://127.0.0.2:7000/3") == ("127.0.0.2", 7000)
    assert redis_loopback("redis://[::1]:7000/0") == ("::1", 7000)
    for url in ("redis://example.com:6379/0", "rediss://127.0.0.1:6379", "redis://127.0.0.1"):
        assert redis_loopback(url) is None


def test_shipped_global_sources_config_changes_weights_and_rrf_c_only() -> None:
    config = load_config(REPO / "deploy" / "sources-global.yaml")
    default = ClusterConfig()
    sources = default.sources
    assert config == dataclasses.replace(
        default,
        sources=dataclasses.replace(
            sources,
            co_engagement=dataclasses.replace(sources.co_engagement, weight=0.25),
            trending=dataclasses.replace(sources.trending, weight=0.5),
            exploration=dataclasses.replace(sources.exploration, weight=0.0),
            rrf_c=120.0,
        ),
    )
