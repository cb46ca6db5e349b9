"""Where the admin token comes from, and how a call's metadata is judged."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest

from annfleet.auth import check, client_token, ensure_token_file, metadata, read_token
from annfleet.config import AdminConfig, ClusterConfig, load_config
from annfleet.errors import ConfigError


def test_token_from_file_then_variable(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file \n")
    env = {"MY_TOKEN": "from-env"}
    assert read_token(AdminConfig(str(token_file), "MY_TOKEN"), env) == "from-file"
    assert read_token(AdminConfig("", "MY_TOKEN"), env) == "from-env"
    assert read_token(AdminConfig("", "MY_TOKEN"), {}) is None
    assert read_token(AdminConfig("", ""), env) is None
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(AdminConfig(str(token_file), ""), {})
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(AdminConfig(str(tmp_path / "missing"), ""), {})


def test_token_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "c.yaml"
    config.write_text("admin: {token_file: secrets/admin}\n")
    assert load_config(config).admin.token_file == str(tmp_path / "conf" / "secrets" / "admin")


def test_generated_token_is_private_and_found_by_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANNFLEET_DATA", raising=False)  # data_dir below is where it looks
    config = ClusterConfig(data_dir=str(tmp_path), admin=AdminConfig("", "ANNFLEET_TEST_NO_SUCH"))
    with pytest.raises(ConfigError, match="no admin token"):
        client_token(config)
    path = ensure_token_file(tmp_path / "admin.token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) == 64 and ensure_token_file(path).read_text().strip() == token  # kept
    assert client_token(config) == token
    other = tmp_path / "other"
    other.write_text("explicit\n")
    assert client_token(config, str(other)) == "explicit"


@pytest.mark.parametrize(
    ("received", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer "),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("authorization", "Bearer s3cret-but-longer"),), grpc.StatusCode.PERMISSION_DENIED),
        ((("Authorization", "bearer s3cret"),), grpc.StatusCode.OK),
        (metadata("s3cret"), grpc.StatusCode.OK),
        ((("x-other", "1"), ("authorization", b"Bearer s3cret")), grpc.StatusCode.OK),
    ],
)
def test_check(received: tuple[tuple[str, object], ...], code: grpc.StatusCode) -> None:
    assert check("s3cret", received)[0] == code
