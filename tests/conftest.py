"""Shared fixtures: small real bundles, and real gRPC servers on port 0 in a loop thread."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, LoopThread, RedisServer, start_cluster

from annfleet.bundle import Bundle
from annfleet.config import RouterConfig, ShardsConfig
from annfleet.server.builder import build_bundle
from annfleet.synthetic import Catalogue, make_catalogue


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test, fixture or subprocess sees the shell's ANNFLEET_* variables (data dir, caches,
    tokens); session-scoped so it is in place before any module or session fixture runs.
    ANNFLEET_DATA points into the session's tmp dir, so code that falls back to the default
    data dir (logs of the benchmark harness's local cluster) never writes to ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("ANNFLEET_")]:
            patch.delenv(name)
        patch.setenv("ANNFLEET_DATA", str(tmp_path_factory.mktemp("annfleet-data")))
        yield


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (Debian package ``redis-server``; ``tests/install-deps.sh``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed and tests/install-deps.sh could not install it "
            "(needs root and apt-get)"
        )
    server = RedisServer(binary, str(tmp_path_factory.mktemp("redis")))
    yield server
    server.close()


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return make_catalogue(20_000, 32, clusters=64, users=300, seed=7)


def _bundle(root: Path, cat: Catalogue, index_type: str, shards: int = 3, **params: int) -> Bundle:
    return build_bundle(
        root / f"{index_type}-{shards}",
        cat.ids,
        cat.vectors,
        num_shards=shards,
        index_type=index_type,
        index_params=params,
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        tables={"popular_ids": cat.popular_ids},
        progress=False,
    )


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def flat_bundle(bundles_dir: Path, catalogue: Catalogue) -> Bundle:
    return _bundle(bundles_dir, catalogue, "flat")


@pytest.fixture(scope="session")
def hnsw_bundle(bundles_dir: Path, catalogue: Catalogue) -> Bundle:
    return _bundle(bundles_dir, catalogue, "hnsw")


@pytest.fixture(scope="session")
def ivfpq_bundle(bundles_dir: Path, catalogue: Catalogue) -> Bundle:
    return _bundle(bundles_dir, catalogue, "ivfpq", nlist=64, pq_m=8)


@pytest.fixture
def cluster_factory(loop_thread: LoopThread) -> Iterator[Any]:
    started: list[Cluster] = []

    def factory(
        bundle: Bundle,
        router_config: RouterConfig | None = None,
        shards_config: ShardsConfig | None = None,
        replicas: int = 1,
        **kw: Any,
    ) -> Cluster:
        """``kw``: start_cluster's sources=, state= and start_router's keywords."""
        cluster = start_cluster(loop_thread, bundle, router_config, shards_config, replicas, **kw)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.close()
