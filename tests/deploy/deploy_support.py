"""What the deploy tests share: the repository and chart paths, the tools `make test`
installs (helm, hadolint, promtool) and helpers over rendered objects. (Imported by name:
not from `conftest`, which may be another directory's conftest module.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "annfleet"
BIG_VALUES = CHART / "ci" / "8x3-tls-values.yaml"

Render = Callable[..., list[dict[str, Any]]]


def find_tool(name: str) -> str | None:
    """A tool in the virtualenv's bin (where tests/install-deps.sh puts it), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def need_tool(name: str, why: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(
            f"{name} not installed ({why}); `make test` installs it via tests/install-deps.sh"
        )
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def by_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def shard_sets(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shards' StatefulSets (the chart's Redis is a StatefulSet too)."""
    return [
        o
        for o in by_kind(objects, "StatefulSet")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "shard"
    ]


def one(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]
