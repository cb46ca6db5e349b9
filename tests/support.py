"""Test helpers: real gRPC servers on port 0 in a loop thread, and brute-force references.

Imported by test modules as ``support`` (``pythonpath = ["tests"]`` in pyproject).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import uvloop

from annfleet.bundle import Bundle
from annfleet.cluster import free_port
from annfleet.config import (
    AnnSourceConfig,
    CoEngagementSourceConfig,
    ContentSourceConfig,
    ExplorationSourceConfig,
    RouterConfig,
    ShardsConfig,
    SourcesConfig,
    StateConfig,
    TrendingSourceConfig,
)
from annfleet.router.main import RouterServer, start_router
from annfleet.server.builder import build_bundle
from annfleet.server.main import SERVICE_NAMES, ShardServer, start_shard_server
from annfleet.server.service import ShardService
from annfleet.serving import GrpcServer, start_server
from annfleet.synthetic import Catalogue
from annfleet.v1 import retrieval_pb2_grpc, shard_pb2, shard_pb2_grpc

T = TypeVar("T")


async def serve_retrieval(
    servicer: retrieval_pb2_grpc.RetrievalServicer, options: list[tuple[str, Any]] | None = None
) -> tuple[grpc.aio.Server, int]:
    """A bare grpc.aio server on a free loopback port with ``servicer`` as its Retrieval
    service (a stand-in router for client tests); (server, port)."""
    server = grpc.aio.server(options=options)
    retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


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


@dataclass
class Cluster:
    """Shard servers (``replicas[i][r]``: replica r of shard i) + a router, all real grpc.aio
    servers on port 0."""

    lt: LoopThread
    bundle: Bundle
    replicas: list[list[ShardServer]]
    router: RouterServer
    stopped: set[tuple[int, int]] = field(default_factory=set)

    @property
    def shards(self) -> list[ShardServer]:
        """The first replica of each shard."""
        return [group[0] for group in self.replicas]

    @property
    def router_target(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    @property
    def shard_targets(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.shards]

    def stop_shard(self, i: int) -> None:
        """Stop every replica of shard i."""
        for r in range(len(self.replicas[i])):
            self.stop_replica(i, r)

    def stop_replica(self, i: int, r: int) -> None:
        if (i, r) not in self.stopped:
            self.lt.run(self.replicas[i][r].stop(0))
            self.stopped.add((i, r))

    def close(self) -> None:
        self.lt.run(self.router.stop(0))
        for i, group in enumerate(self.replicas):
            for r, shard in enumerate(group):
                if (i, r) not in self.stopped:
                    self.lt.run(shard.stop(0))


def catalogue_bundle(path: Path, cat: Catalogue, **kw: Any) -> Bundle:
    """A bundle of ``cat``'s items and users (flat, 2 shards unless ``kw`` says otherwise)."""
    return build_bundle(
        path,
        cat.ids,
        cat.vectors,
        **{"num_shards": 2, "index_type": "flat", **kw},
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        progress=False,
    )


def patient(sources: SourcesConfig, budget_ms: float = 60_000.0) -> SourcesConfig:
    """``sources`` with every latency budget at ``budget_ms`` (the request's deadline still
    caps them): tests that expect no source to be dropped must not depend on how loaded the
    machine is."""
    return dataclasses.replace(
        sources,
        **{
            name: dataclasses.replace(s, budget_ms=budget_ms)
            for name, s in sources.settings().items()
        },
    )


# Retrieve as the ANN over the shards, backfilled from the popularity table only (tests of
# the ANN path compare it with exact search); depth 0: the sources are asked k, as requested.
ANN_ONLY = patient(
    SourcesConfig(
        depth=0,
        ann=AnnSourceConfig(quota=1.0),
        trending=TrendingSourceConfig(enabled=False),
        co_engagement=CoEngagementSourceConfig(enabled=False),
        content=ContentSourceConfig(enabled=False),
        exploration=ExplorationSourceConfig(enabled=False),
    )
)


def start_cluster(
    lt: LoopThread,
    bundle: Bundle,
    router_config: RouterConfig | None = None,
    shards_config: ShardsConfig | None = None,
    replicas: int = 1,
    sources: SourcesConfig | None = None,
    state: StateConfig | None = None,
    *,
    metrics_port: int = -1,
    **router_kw: Any,
) -> Cluster:
    """``metrics_port``: the router's HTTP port (/metrics, /status); 0 = a free one."""
    groups = [
        [lt.run(start_shard_server(bundle.path, i, shards_config)) for _ in range(replicas)]
        for i in range(bundle.num_shards)
    ]
    router = lt.run(
        start_router(
            bundle.path,
            [[f"127.0.0.1:{s.port}" for s in group] for group in groups],
            router_config or RouterConfig(),
            metrics_port=metrics_port,
            # Every source by default, with budgets no loaded machine misses (a test of
            # budgets passes its own sources).
            sources=sources or patient(SourcesConfig()),
            state=state,
            **router_kw,
        )
    )
    return Cluster(lt, bundle, groups, router)


class ObservedShard(shard_pb2_grpc.IndexShardServicer):
    """A real shard service (delegated to) that records the deadline each Search arrives
    with and can answer late (``delay`` seconds, on the event loop: a slow but live process)
    or end each Search with ``abort`` (a status code: what a stopping server's calls get)."""

    def __init__(self, inner: ShardService) -> None:
        self.inner = inner
        self.delay = 0.0
        self.abort: grpc.StatusCode | None = None
        self.seen: list[float | None] = []  # context.time_remaining() of each Search
        self.requests: list[shard_pb2.ShardSearchRequest] = []  # every Search request

    def forget(self) -> None:
        """Drop the records so far (e.g. a router's warm-up search before it serves)."""
        self.seen.clear()
        self.requests.clear()

    async def Search(
        self, request: shard_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardSearchResponse:
        self.seen.append(context.time_remaining())
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.abort is not None:
            await context.abort(self.abort, "the server is stopping")
        return await self.inner.Search(request, context)

    async def SearchStream(
        self,
        requests: AsyncIterator[shard_pb2.ShardStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """The real stream, each message recorded as a Search (its timeout as the time
        remaining) and handed on ``delay`` seconds after it arrived, with that much less time."""
        arrived: asyncio.Queue[tuple[float, shard_pb2.ShardStreamRequest] | None] = asyncio.Queue()

        async def pump() -> None:
            async for message in requests:
                if not message.cancel:
                    self.seen.append(message.timeout_s if message.timeout_s > 0 else None)
                    self.requests.append(message.search)
                arrived.put_nowait((time.monotonic(), message))
            arrived.put_nowait(None)

        async def delayed() -> AsyncIterator[shard_pb2.ShardStreamRequest]:
            pumping = asyncio.ensure_future(pump())
            try:
                while (item := await arrived.get()) is not None:
                    at, message = item
                    if self.delay and not message.cancel:
                        await asyncio.sleep(max(0.0, at + self.delay - time.monotonic()))
                        if message.timeout_s > 0:
                            message.timeout_s = max(
                                message.timeout_s - (time.monotonic() - at), 1e-9
                            )
                    yield message
            finally:
                pumping.cancel()

        await self.inner.SearchStream(delayed(), context)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ObservedShard, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return getattr(self.inner, name)(request, context)

    method.__name__ = name
    return method


# Every other IndexShard method as the real one. (Not __getattr__: the generated servicer
# base class defines each method, raising UNIMPLEMENTED, so __getattr__ was never asked: the
# router's start-up Info failed and it waited 30 s for its shards in every deadline test.)
for _name in shard_pb2.DESCRIPTOR.services_by_name["IndexShard"].methods_by_name:
    if _name not in ("Search", "SearchStream"):
        setattr(ObservedShard, _name, _delegate(_name))


@dataclass
class ObservedServer:
    grpc: GrpcServer
    inner: ShardServer  # the real shard server behind it
    service: ObservedShard

    @property
    def port(self) -> int:
        return self.grpc.port

    async def stop(self, grace: float = 0.0) -> None:
        await self.grpc.stop(grace)
        await self.inner.stop(grace)


async def start_observed_shard(bundle: Bundle, shard_id: int) -> ObservedServer:
    """A shard server (port 0) whose IndexShard service is an ObservedShard in front of a
    real shard server's."""
    inner = await start_shard_server(bundle.path, shard_id)
    service = ObservedShard(inner.service)
    server = await start_server(
        [(shard_pb2_grpc.add_IndexShardServicer_to_server, service)],
        SERVICE_NAMES,
        host="127.0.0.1",
        port=0,
    )
    await server.set_serving(True)
    return ObservedServer(server, inner, service)


def exact_topk(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64 with numpy: ids (nq, k), scores (nq, k), ties by smaller id."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def imported_modules(package_dir: Path) -> dict[str, set[str]]:
    """Every module a package's source files import, lazy imports inside functions included.

    {file name: {module, ...}}; ``from a.b import c`` counts as ``a.b`` and ``a.b.c``.
    """
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(package_dir))] = names
    return found


@contextmanager
def temporary_redis() -> Iterator[RedisServer]:
    """A RedisServer in a temporary directory for the length of a ``with`` (the result
    scripts' servers); exits naming what is missing where redis-server is not installed."""
    import shutil
    import sys
    import tempfile

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(binary, workdir)
        try:
            yield server
        finally:
            server.close()


class RedisServer:
    """A real ``redis-server`` on a free loopback port, no persistence, for one test session."""

    def __init__(self, binary: str, workdir: str) -> None:
        import socket
        import subprocess
        import time

        self.port = free_port()  # below the ephemeral range: no client takes it
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except Exception:
            self.process.kill()
