"""Start a router: bind, load the bundle's router files, confirm the shards, go SERVING."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import grpc
import numpy as np

from annfleet.arrays import F32, I64, to_bytes
from annfleet.auth import BearerTokenInterceptor
from annfleet.bundle import Bundle
from annfleet.config import RouterConfig, SourcesConfig, StateConfig, TlsConfig, host_port
from annfleet.errors import BundleError, ConfigError
from annfleet.gcpolicy import freeze_startup_objects, observe_pauses
from annfleet.rollout_state import stable_bundle
from annfleet.router.admin import RouterAdminService
from annfleet.router.caches import RouterCaches
from annfleet.router.diversity import DiversityMonitor
from annfleet.router.replicas import Replica, ReplicaGroup
from annfleet.router.rollout import RolloutController, open_router_bundle
from annfleet.router.scatter import Scatter
from annfleet.router.service import RetrievalService, RouterState, SourcesEnv
from annfleet.router.sources.social import FollowGraph
from annfleet.router.state import open_state
from annfleet.router.status import RouterStatus
from annfleet.router.users import load_embedder
from annfleet.serving import GrpcServer, channel_credentials, start_server
from annfleet.v1 import admin_pb2, admin_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc, shard_pb2

log = logging.getLogger(__name__)

WARM_SEARCH_TIMEOUT_S = 5.0  # a replica's first search, before the router serves

SERVICE_NAMES = [retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name]
ADMIN_SERVICE_NAMES = [admin_pb2.DESCRIPTOR.services_by_name["RouterAdmin"].full_name]


def load_router_bundle(bundle_path: Path) -> Bundle:
    """Open the bundle and verify every file the router uses (all but the shards')."""
    return open_router_bundle(bundle_path)


async def confirm_shards(
    groups: Sequence[ReplicaGroup], bundle: Bundle, timeout: float
) -> list[int]:
    """Wait (up to ``timeout``) until a replica of each shard describes the bundle; return the
    confirmed shard ids. A replica that serves another shard or bundle is an error."""
    deadline = time.monotonic() + timeout
    pending = {g.shard_id: g for g in groups}
    confirmed: list[int] = []
    while pending and time.monotonic() < deadline:
        for shard_id, group in list(pending.items()):
            for replica in group.replicas:
                try:
                    info = await replica.stub.Info(shard_pb2.InfoRequest(), timeout=1.0)
                except grpc.aio.AioRpcError:
                    continue
                if info.bundle_id != bundle.id or info.shard_id != shard_id:
                    raise BundleError(
                        f"shard at {replica.target} serves shard {info.shard_id} of bundle "
                        f"{info.bundle_id}, expected shard {shard_id} of {bundle.id}"
                    )
                await warm_replica(replica, bundle)
                if shard_id in pending:
                    confirmed.append(shard_id)
                    del pending[shard_id]
        if pending:
            await asyncio.sleep(0.1)
    if pending:
        log.warning("shards %s not answering yet; serving with partial coverage", sorted(pending))
    return sorted(confirmed)


async def warm_replica(replica: Replica, bundle: Bundle) -> None:
    """One search on a replica that answered, so that the first request does not pay for
    what its first search costs (the search stream opened, the shard's first search with an
    exclude set): ~15 ms, most of the 20 ms budget of a non-ANN source."""
    request = shard_pb2.ShardSearchRequest(
        queries=to_bytes(np.zeros((1, bundle.dim)), F32),
        dim=bundle.dim,
        k=1,
        bundle_id=bundle.id,
        exclude_ids=to_bytes(np.array([-1]), I64),
    )
    try:
        await replica.search(request, WARM_SEARCH_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:  # it answered Info: a failure here is the request's
        log.info("warm-up search on %s: %s", replica.target, exc.code().name)


def shard_groups(shard_targets: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Per shard, its replicas' addresses: each entry a list, or one string ("h:1|h:2")."""
    return [
        [t for t in entry.split("|") if t] if isinstance(entry, str) else list(entry)
        for entry in shard_targets
    ]


@dataclass
class RouterServer:
    grpc: GrpcServer
    service: RetrievalService
    executor: ThreadPoolExecutor
    rollouts: RolloutController
    admin_grpc: GrpcServer | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def admin_port(self) -> int | None:
        return self.admin_grpc.port if self.admin_grpc else None

    async def stop(self, grace: float = 0.0) -> None:
        if self.admin_grpc is not None:
            await self.admin_grpc.stop(0)
        await self.rollouts.close()
        await self.grpc.stop(grace)
        if self.service.state is not None:
            await self.service.state.scatter.close()
            await self.service.state.env.store.close()
            if self.service.state.env.diversity is not None:
                await self.service.state.env.diversity.close()
        self.executor.shutdown(wait=False)


async def start_router(
    bundle_path: Path,
    shard_targets: Sequence[str | Sequence[str]],
    config: RouterConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = -1,
    tls: TlsConfig | None = None,
    admin_port: int = -1,
    admin_token: str | None = None,
    shard_admin_targets: Sequence[str] = (),
    rollout_state: Path | None = None,
    blocked_file: Path | None = None,
    sources: SourcesConfig | None = None,
    state: StateConfig | None = None,
    graph: FollowGraph | None = None,
    freeze_gc: bool = False,
) -> RouterServer:
    """Bind (NOT_SERVING), load the bundle, connect to the shards, then SERVING.

    ``admin_port`` >= 0 (0 = a free port) also serves RouterAdmin there (it needs
    ``admin_token``, and ``shard_admin_targets`` to roll out). With ``rollout_state``, the
    stable bundle it names wins over ``bundle_path``, and every rollout step is written to it.
    ``blocked_file``: where the in-memory state store keeps the blocked items over a restart.

    ``shard_targets``: one entry per shard, in shard order: its replicas' addresses.
    ``sources`` / ``state``: the candidate sources of Retrieve and their live state store
    (defaults: every source the bundle supports, in memory); ``graph`` the social source's
    follow graph instead of its file. ``freeze_gc``: once the bundle is opened, and torch
    imported if it has a user tower, freeze every object alive out of the garbage collector's
    reach (``annfleet.gcpolicy``; only for a process of its own: serve-router).
    """
    config = config or RouterConfig()
    sources = sources or SourcesConfig()
    state = state or StateConfig()
    if admin_port >= 0 and not admin_token:
        raise ConfigError("the router admin port needs a token (admin.token_file/token_env)")
    bundle_path = stable_bundle(rollout_state) or Path(bundle_path)
    executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="router")
    try:
        store = await open_state(state, blocked_file)
    except BaseException:
        executor.shutdown(wait=False)
        raise
    diversity = DiversityMonitor(sources)
    env = SourcesEnv(
        sources, store, RouterCaches(config, sources), executor, state, graph, diversity
    )
    service = RetrievalService(config, executor)
    # A rollout loads and warms the next bundle's tower in its own thread, so requests keep
    # every worker of ``executor`` (their user-tower calls run there) during a swap.
    rollout_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
    rollouts = RolloutController(
        service,
        config,
        rollout_executor,
        admin_targets=shard_admin_targets,
        token=admin_token or "",
        state_path=rollout_state,
        credentials=channel_credentials(tls),
    )
    status = RouterStatus(service, asyncio.get_running_loop(), rollouts)
    service.rpc_observer = status.observe
    server = await start_server(
        [(retrieval_pb2_grpc.add_RetrievalServicer_to_server, service)],
        SERVICE_NAMES,
        host=host,
        port=port,
        metrics_port=metrics_port,
        tls=tls,
        status=status,
    )
    scatter: Scatter | None = None
    status.address = host_port(host, server.port)
    try:
        loop = asyncio.get_running_loop()
        bundle = await loop.run_in_executor(executor, load_router_bundle, Path(bundle_path))
        targets = shard_groups(shard_targets)
        if len(targets) != bundle.num_shards:
            raise BundleError(
                f"bundle {bundle.id} has {bundle.num_shards} shards, addresses of "
                f"{len(targets)} shards were given"
            )
        credentials = channel_credentials(tls)  # TLS to the shards, as to the router
        groups = [
            ReplicaGroup(i, replicas, config, credentials) for i, replicas in enumerate(targets)
        ]
        scatter = Scatter(
            groups, bundle, config.oversample, config.shard_timeout_s, config.topk_probability
        )
        for group in groups:
            group.start()
        if freeze_gc:
            if "user_tower" in bundle.manifest:
                import_module("annfleet.router.tower")  # torch: ~100k objects to freeze
            observe_pauses()
            freeze_startup_objects()
        embedder = await loop.run_in_executor(executor, load_embedder, bundle, config.tower_threads)
        warm_up = getattr(embedder, "warm_up", None)
        if warm_up is not None:  # the tower's first calls are slow: not the first requests'
            await loop.run_in_executor(executor, warm_up)
        await confirm_shards(groups, bundle, config.connect_timeout_s)
        service.state = await loop.run_in_executor(
            executor, RouterState.load, bundle, scatter, embedder, config, env
        )
        await rollouts.restore()
        rollouts.start_recall()
        rollouts.start_following()
        diversity.start()
        admin_grpc = None
        if admin_port >= 0:
            assert admin_token
            admin_grpc = await start_server(
                [
                    (
                        admin_pb2_grpc.add_RouterAdminServicer_to_server,
                        RouterAdminService(rollouts, store),
                    )
                ],
                ADMIN_SERVICE_NAMES,
                host=host,
                port=admin_port,
                interceptors=[BearerTokenInterceptor(admin_token)],
                tls=tls,
            )
            await admin_grpc.set_serving(True)
    except BaseException:
        if scatter is not None:
            await scatter.close()
        await server.stop(0)
        await rollouts.close()
        await diversity.close()
        await store.close()
        executor.shutdown(wait=False)
        raise
    await server.set_serving(True)
    log.info(
        "router serving bundle %s on %s over %d shards (%d replicas)",
        bundle.id,
        host_port(host, server.port),
        len(groups),
        sum(len(g.replicas) for g in groups),
    )
    return RouterServer(server, service, executor, rollouts, admin_grpc)
