"""Shared fixtures: small real bundles, and real gRPC servers on port 0 in a loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import uvloop

from annfleet.bundle import Bundle, build_bundle
from annfleet.config import RouterConfig, ShardsConfig
from annfleet.router.main import RouterServer, start_router
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import Catalogue, make_catalogue

T = TypeVar("T")


class LoopThread:
    """An event loop (uvloop, as in production) in a daemon thread, for servers under test."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


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
    return _bundle(bundles_dir, catalogue, "ivfpq", nlist=64, pq_m=8, nprobe=16, rerank=200)


@dataclass
class Cluster:
    """Shard servers + a router, all real grpc.aio servers on port 0."""

    lt: LoopThread
    bundle: Bundle
    shards: list[ShardServer]
    router: RouterServer
    stopped: set[int] = field(default_factory=set)

    @property
    def router_target(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    @property
    def shard_targets(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.shards]

    def stop_shard(self, i: int) -> None:
        self.lt.run(self.shards[i].stop(0))
        self.stopped.add(i)

    def close(self) -> None:
        self.lt.run(self.router.stop(0))
        for i, shard in enumerate(self.shards):
            if i not in self.stopped:
                self.lt.run(shard.stop(0))


def start_cluster(
    lt: LoopThread,
    bundle: Bundle,
    router_config: RouterConfig | None = None,
    shards_config: ShardsConfig | None = None,
) -> Cluster:
    shards = [
        lt.run(start_shard_server(bundle.path, i, shards_config)) for i in range(bundle.num_shards)
    ]
    router = lt.run(
        start_router(
            bundle.path, [f"127.0.0.1:{s.port}" for s in shards], router_config or RouterConfig()
        )
    )
    return Cluster(lt, bundle, shards, router)


@pytest.fixture
def cluster_factory(loop_thread: LoopThread) -> Iterator[Any]:
    started: list[Cluster] = []

    def factory(
        bundle: Bundle,
        router_config: RouterConfig | None = None,
        shards_config: ShardsConfig | None = None,
    ) -> Cluster:
        cluster = start_cluster(loop_thread, bundle, router_config, shards_config)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        cluster.close()


def exact_topk(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64 with numpy: ids (nq, k), scores (nq, k), ties by smaller id."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)
