from __future__ import annotations

from pathlib import Path

import pytest

from annfleet.config import ClusterConfig, load_config
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
        ("shards: 3\n", "shards must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_synthetic_config_loads() -> None:
    config = load_config(REPO / "deploy" / "synthetic.yaml")
    assert config.dataset.kind == "synthetic" and config.dataset.items == 200_000
    assert config.router == ClusterConfig().router
