"""Start a shard server: bind, load and verify the shard, then go SERVING; drain on SIGTERM.

Two gRPC servers per process: the serving port (IndexShard, health, reflection) and, when
an admin port and token are configured, the admin port (ShardAdmin behind the bearer-token
interceptor, health, reflection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from annfleet.auth import BearerTokenInterceptor
from annfleet.config import SearchConfig, ShardsConfig, TlsConfig, host_port
from annfleet.errors import ConfigError, FailedPrecondition
from annfleet.gcpolicy import freeze_startup_objects, observe_pauses
from annfleet.server.admin import ShardAdminService
from annfleet.server.holdings import Holdings, load_shard
from annfleet.server.index import set_threads
from annfleet.server.service import ShardService
from annfleet.server.status import ShardStatus
from annfleet.serving import GrpcServer, start_server
from annfleet.v1 import shard_pb2, shard_pb2_grpc

__all__ = ["ShardServer", "load_shard", "start_shard_server"]

log = logging.getLogger(__name__)

SERVICE_NAMES = [shard_pb2.DESCRIPTOR.services_by_name["IndexShard"].full_name]
ADMIN_SERVICE_NAMES = [shard_pb2.DESCRIPTOR.services_by_name["ShardAdmin"].full_name]


def _loader_thread(search_threads: int, nice: int) -> None:
    """A background thread (bundle loads, exact searches): faiss threads as for searches,
    and ``nice`` lower priority (Linux applies setpriority to the calling thread only;
    elsewhere it is left as it is)."""
    set_threads(search_threads)
    if nice > 0 and sys.platform == "linux":
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        except OSError as exc:
            log.warning(
                "%s: cannot lower its priority by %d: %s",
                threading.current_thread().name,
                nice,
                exc,
            )


@dataclass
class ShardServer:
    grpc: GrpcServer
    service: ShardService
    admin: ShardAdminService
    admin_grpc: GrpcServer | None
    executor: ThreadPoolExecutor
    loader: ThreadPoolExecutor
    updater: ThreadPoolExecutor
    exact: ThreadPoolExecutor

    @classmethod
    async def bind(
        cls,
        config: ShardsConfig | None = None,
        *,
        search: SearchConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_port: int = -1,
        admin_port: int = -1,
        admin_token: str | None = None,
        shard_id: int | None = None,
        replica: int = 0,
        tls: TlsConfig | None = None,
    ) -> ShardServer:
        """Listen with no shard loaded: health NOT_SERVING, Search answers UNAVAILABLE.

        ``admin_port`` >= 0 (0 = a free port) also serves ShardAdmin there, which needs
        ``admin_token``. ``search`` fills the search parameters a request leaves at 0.
        ``tls`` (enabled) serves both ports over TLS, mutual with ``require_client_cert``.
        """
        config = config or ShardsConfig()
        if admin_port >= 0 and not admin_token:
            raise ConfigError("the shard admin port needs a token (admin.token_file/token_env)")
        # OpenMP's thread count is per thread: set it in every thread that runs faiss.
        executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2,
            thread_name_prefix="faiss",
            initializer=set_threads,
            initargs=(config.search_threads,),
        )
        # Bundle loads, one at a time, apart from the searches (at lower priority with
        # shards.load_nice); update-log writes in another single thread, at serving priority.
        loader = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="load",
            initializer=_loader_thread,
            initargs=(config.search_threads, config.load_nice),
        )
        updater = ThreadPoolExecutor(max_workers=1, thread_name_prefix="updates")
        # Exact brute-force searches (live recall samples) in one thread of their own, at
        # lower priority with shards.exact_nice: serving comes first.
        exact = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="exact",
            initializer=_loader_thread,
            initargs=(config.search_threads, config.exact_nice),
        )
        holdings = Holdings(config, search, shard_id, replica)
        service = ShardService(config, executor, holdings, exact)
        admin = ShardAdminService(service, loader, updater)
        status = ShardStatus(service, asyncio.get_running_loop())
        service.rpc_observer = status.observe
        server = await start_server(
            [(shard_pb2_grpc.add_IndexShardServicer_to_server, service)],
            SERVICE_NAMES,
            host=host,
            port=port,
            metrics_port=metrics_port,
            tls=tls,
            status=status,
        )
        status.address = host_port(host, server.port)
        admin_grpc = None
        if admin_port >= 0:
            assert admin_token
            try:
                admin_grpc = await start_server(
                    [(shard_pb2_grpc.add_ShardAdminServicer_to_server, admin)],
                    ADMIN_SERVICE_NAMES,
                    host=host,
                    port=admin_port,
                    interceptors=[BearerTokenInterceptor(admin_token)],
                    tls=tls,
                )
            except BaseException:
                await server.stop(0)
                raise
            await admin_grpc.set_serving(True)  # usable before any bundle is loaded
        return cls(server, service, admin, admin_grpc, executor, loader, updater, exact)

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def admin_port(self) -> int | None:
        return self.admin_grpc.port if self.admin_grpc else None

    @property
    def holdings(self) -> Holdings:
        return self.service.holdings

    async def load(self, bundle_path: Path, shard_id: int, also_hold: Sequence[Path] = ()) -> None:
        """Verify and load a shard off the event loop, make it active, hold ``also_hold``
        beside it (one that cannot be loaded is logged and skipped), then go SERVING.

        A bundle that fails verification raises BundleError and changes nothing: a shard
        already loaded keeps serving.
        """
        holdings = self.holdings
        if holdings.shard_id is None:
            holdings.shard_id = shard_id
        elif holdings.shard_id != shard_id:
            raise FailedPrecondition(
                f"this process serves shard {holdings.shard_id}, not shard {shard_id}"
            )
        holding = await self.admin.prepare(str(bundle_path))
        holdings.commit(holding.id)
        for path in also_hold:
            try:
                held = await self.admin.prepare(str(path))
            except Exception as exc:
                log.warning("shard %d: could not hold %s (rollout state): %s", shard_id, path, exc)
            else:
                log.info("shard %d: holds %s beside the active bundle", shard_id, held.id)
        await self.grpc.set_serving(True)
        log.info(
            "shard %d of bundle %s serving on port %d (%d items)",
            shard_id,
            holding.id,
            self.port,
            holding.delta.num_items,
        )

    async def stop(self, grace: float = 0.0) -> None:
        if self.admin_grpc is not None:
            await self.admin_grpc.stop(0)
        self.service.close_streams()  # long-lived search streams end once answered
        await self.grpc.stop(grace)
        self.executor.shutdown(wait=False)
        self.loader.shutdown(wait=False)
        self.updater.shutdown(wait=False)
        self.exact.shutdown(wait=False)


async def start_shard_server(
    bundle_path: Path,
    shard_id: int,
    config: ShardsConfig | None = None,
    *,
    search: SearchConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = -1,
    admin_port: int = -1,
    admin_token: str | None = None,
    replica: int = 0,
    tls: TlsConfig | None = None,
    also_hold: Sequence[Path] = (),
    freeze_gc: bool = False,
) -> ShardServer:
    """Bind, then load; raises BundleError (after stopping) when the shard cannot be loaded.

    ``freeze_gc``: freeze every object alive before the bundle loads out of the garbage
    collector's reach (``annfleet.gcpolicy``; only for a process of its own: serve-shard).

    ``also_hold``: bundles to prepare beside the active one once it serves (what the rollout
    state says a restarted replica holds: a canary, the rollback target, a rollout's bundle);
    one that cannot be loaded is logged and skipped.
    """
    server = await ShardServer.bind(
        config,
        search=search,
        host=host,
        port=port,
        metrics_port=metrics_port,
        admin_port=admin_port,
        admin_token=admin_token,
        shard_id=shard_id,
        replica=replica,
        tls=tls,
    )
    if freeze_gc:
        observe_pauses()
        freeze_startup_objects()
    try:
        await server.load(bundle_path, shard_id, also_hold)
    except BaseException:
        await server.stop(0)
        raise
    return server
