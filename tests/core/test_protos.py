"""The committed generated code equals what protoc generates now (no drift)."""

from __future__ import annotations

from pathlib import Path

from annfleet.protogen import PROTO_ROOT, generate


def test_generated_code_is_committed_and_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    committed_dir = PROTO_ROOT / "annfleet" / "v1"
    for path in fresh:
        committed = committed_dir / path.name
        assert committed.exists(), f"{path.name} is not committed; run `make protos`"
        assert committed.read_text() == path.read_text(), (
            f"{path.name} drifted from its .proto; run `make protos` and commit"
        )
