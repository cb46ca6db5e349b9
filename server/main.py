"""Start a shard server: bind, load and verify the shard, then go SERVING; drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from annfleet.bundle import Bundle
from annfleet.config import SearchConfig, ShardsConfig
from annfleet.errors import BundleError
from annfleet.server.index import IndexSpec, ShardIndex, set_threads
from annfleet.server.service import LoadedShard, ShardService
from annfleet.serving import GrpcServer, start_server
from annfleet.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    shard_pb2.DESCRIPTOR.services_by_name["IndexShard"].full_name,
    shard_pb2.DESCRIPTOR.services_by_name["ShardAdmin"].full_name,
]


def load_shard(bundle_path: Path, shard_id: int, search: SearchConfig | None = None) -> LoadedShard:
    """Open the bundle, verify this shard's files (sha256) and load its index; ``search``
    fills the search parameters a request leaves at 0."""
    bundle = Bundle.open(bundle_path, verify=False)
    shard = bundle.shard(shard_id)
    bundle.verify(only=[shard["dir"] + "/"])
    spec = IndexSpec(shard["index"]["type"], shard["index"]["params"])
    index = ShardIndex.load(bundle.shard_dir(shard_id), bundle.metric, spec, search)
    if index.dim != bundle.dim:
        raise BundleError(f"shard {shard_id} index has dim {index.dim}, manifest says {bundle.dim}")
    return LoadedShard(bundle, shard_id, index)


@dataclass
class ShardServer:
    grpc: GrpcServer
    service: ShardService
    executor: ThreadPoolExecutor
    search: SearchConfig = field(default_factory=SearchConfig)

    @classmethod
    async def bind(
        cls,
        config: ShardsConfig | None = None,
        *,
        search: SearchConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_port: int = -1,
    ) -> ShardServer:
        """Listen with no shard loaded: health NOT_SERVING, Search answers UNAVAILABLE."""
        config = config or ShardsConfig()
        # OpenMP's thread count is per thread: set it in every thread that runs faiss.
        executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2,
            thread_name_prefix="faiss",
            initializer=set_threads,
            initargs=(config.search_threads,),
        )
        service = ShardService(config, executor)
        server = await start_server(
            [
                (shard_pb2_grpc.add_IndexShardServicer_to_server, service),
                (shard_pb2_grpc.add_ShardAdminServicer_to_server, service),
            ],
            SERVICE_NAMES,
            host=host,
            port=port,
            metrics_port=metrics_port,
        )
        return cls(server, service, executor, search or SearchConfig())

    @property
    def port(self) -> int:
        return self.grpc.port

    async def load(self, bundle_path: Path, shard_id: int) -> None:
        """Verify and load a shard off the event loop, then go SERVING.

        A bundle that fails verification raises BundleError and changes nothing: a shard
        already loaded keeps serving.
        """
        loop = asyncio.get_running_loop()
        shard = await loop.run_in_executor(
            self.executor, load_shard, Path(bundle_path), shard_id, self.search
        )
        self.service.shard = shard
        await self.grpc.set_serving(True)
        log.info(
            "shard %d of bundle %s serving on port %d (%d items)",
            shard_id,
            shard.bundle.id,
            self.port,
            len(shard.index.ids),
        )

    async def stop(self, grace: float = 0.0) -> None:
        await self.grpc.stop(grace)
        self.executor.shutdown(wait=False)


async def start_shard_server(
    bundle_path: Path,
    shard_id: int,
    config: ShardsConfig | None = None,
    *,
    search: SearchConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int = -1,
) -> ShardServer:
    """Bind, then load; raises BundleError (after stopping) when the shard cannot be loaded."""
    server = await ShardServer.bind(
        config, search=search, host=host, port=port, metrics_port=metrics_port
    )
    try:
        await server.load(bundle_path, shard_id)
    except BaseException:
        await server.stop(0)
        raise
    return server
