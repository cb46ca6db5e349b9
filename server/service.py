"""gRPC edge of a shard server: protobuf <-> numpy, exceptions <-> status codes (via ``rpc``)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc

from annfleet.arrays import F32, I64, check_k, decode_matrix, to_bytes
from annfleet.bundle import Bundle
from annfleet.config import ShardsConfig
from annfleet.errors import FailedPrecondition, InvalidArgument, Unavailable
from annfleet.server.index import ShardIndex
from annfleet.serving import rpc
from annfleet.v1 import shard_pb2, shard_pb2_grpc
from annfleet.validation import check_params


@dataclass(frozen=True)
class LoadedShard:
    bundle: Bundle
    shard_id: int
    index: ShardIndex


class ShardService(shard_pb2_grpc.IndexShardServicer, shard_pb2_grpc.ShardAdminServicer):
    def __init__(self, config: ShardsConfig, executor: Executor) -> None:
        self.config = config
        self.executor = executor
        self.shard: LoadedShard | None = None

    def _loaded(self) -> LoadedShard:
        if self.shard is None:
            raise Unavailable("shard is starting: no bundle loaded yet")
        return self.shard

    @rpc("IndexShard")
    async def Search(
        self, request: shard_pb2.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ShardSearchResponse:
        shard = self._loaded()
        if request.bundle_id and request.bundle_id != shard.bundle.id:
            raise FailedPrecondition(
                f"bundle {request.bundle_id} is not held by shard {shard.shard_id} "
                f"(it serves {shard.bundle.id})"
            )
        if request.dim != shard.index.dim:
            raise InvalidArgument(
                f"dim {request.dim} does not match the index dim {shard.index.dim}"
            )
        queries = decode_matrix(request.queries, request.dim, max_rows=self.config.max_batch)
        k = check_k(request.k, self.config.max_k)
        check_params(request.params)
        loop = asyncio.get_running_loop()
        ids, scores = await loop.run_in_executor(
            self.executor,
            lambda: shard.index.search(
                queries,
                k,
                ef_search=request.params.ef_search,
                nprobe=request.params.nprobe,
                rerank=request.params.rerank,
            ),
        )
        return shard_pb2.ShardSearchResponse(
            ids=to_bytes(ids, I64),
            scores=to_bytes(scores, F32),
            num_queries=len(queries),
            k=k,
            shard_id=shard.shard_id,
            bundle_id=shard.bundle.id,
            metric=shard.index.metric,
        )

    @rpc("ShardAdmin")
    async def Describe(
        self, request: shard_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.DescribeResponse:
        shard = self._loaded()
        return shard_pb2.DescribeResponse(
            bundle_id=shard.bundle.id,
            shard_id=shard.shard_id,
            num_shards=shard.bundle.num_shards,
            num_items=len(shard.index.ids),
            dim=shard.index.dim,
            metric=shard.index.metric,
            index_type=shard.index.spec.type,
            index_params=json.dumps(shard.index.spec.params),
            max_k=self.config.max_k,
            max_batch=self.config.max_batch,
        )
