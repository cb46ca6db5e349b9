"""The Retrieval service: Search (vectors -> merged top-k) and Retrieve (user -> candidates)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np
from cachetools import TTLCache

from annfleet.arrays import F32, I64, U8, check_k, decode_ids, decode_matrix, to_bytes
from annfleet.bundle import (
    TABLE_ITEM_TITLES,
    TABLE_POPULAR_IDS,
    TABLE_SEEN_IDS,
    TABLE_SEEN_OFFSETS,
    Bundle,
)
from annfleet.config import RouterConfig
from annfleet.errors import DeadlineExceeded, InvalidArgument, Unavailable
from annfleet.metrics import DEGRADED, USER_CACHE
from annfleet.names import SOURCE_NAMES
from annfleet.router.admission import Admission
from annfleet.router.coalesce import Coalescer
from annfleet.router.scatter import Scatter, ScatterResult
from annfleet.router.users import RequestContext, UserEmbedder
from annfleet.router.variants import CANARY, STABLE, Canary
from annfleet.serving import RpcObserver, rpc
from annfleet.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from annfleet.validation import check_params

if TYPE_CHECKING:
    from annfleet.router.recall import RecallMonitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenItems:
    """Items each user of the bundle has engaged with (the bundle's CSR seen tables)."""

    row: dict[int, int]
    offsets: np.ndarray  # (u + 1,) int64
    ids: np.ndarray  # (nnz,) int64

    @classmethod
    def load(cls, bundle: Bundle) -> SeenItems:
        offsets, ids = bundle.table(TABLE_SEEN_OFFSETS), bundle.table(TABLE_SEEN_IDS)
        users = bundle.manifest.get("users")
        if offsets is None or ids is None or not users:
            return cls({}, np.zeros(1, np.int64), np.empty(0, np.int64))
        user_ids = bundle.load_array(users["ids"])
        return cls({int(u): i for i, u in enumerate(user_ids)}, offsets, ids)

    def of(self, user_id: int) -> np.ndarray:
        """(n,) int64 item ids; empty for a user the bundle does not know."""
        row = self.row.get(int(user_id))
        if row is None:
            return self.ids[:0]
        return self.ids[self.offsets[row] : self.offsets[row + 1]]


@dataclass
class RouterState:
    """Everything the router serves from one bundle. Replaced as a whole, never mutated."""

    bundle: Bundle
    scatter: Scatter
    searcher: Coalescer  # the scatter, batching concurrent searches
    embedder: UserEmbedder
    popular_ids: np.ndarray  # (p,) int64, most popular first; may be empty
    titles: dict[int, str]
    seen: SeenItems

    @classmethod
    def load(
        cls, bundle: Bundle, scatter: Scatter, embedder: UserEmbedder, config: RouterConfig
    ) -> RouterState:
        popular = bundle.table(TABLE_POPULAR_IDS)
        titles_table = bundle.table(TABLE_ITEM_TITLES) or {"ids": [], "titles": []}
        titles = dict(
            zip((int(i) for i in titles_table["ids"]), titles_table["titles"], strict=True)
        )
        popular_ids = (
            np.asarray(popular, dtype=np.int64) if popular is not None else np.empty(0, np.int64)
        )
        searcher = Coalescer(
            scatter, max_in_flight=config.coalesce_in_flight, max_rows=config.max_batch
        )
        return cls(bundle, scatter, searcher, embedder, popular_ids, titles, SeenItems.load(bundle))


def _context(request: retrieval_pb2.RetrieveRequest) -> RequestContext:
    ctx = request.context
    return RequestContext(
        tuple(int(i) for i in ctx.recent_item_ids), int(ctx.timestamp), ctx.country, ctx.device
    )


class RetrievalService(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, config: RouterConfig, executor: Executor) -> None:
        self.config = config
        self.executor = executor
        self.state: RouterState | None = None  # the stable bundle
        self.canary: Canary | None = None  # a bundle serving a share of users (variants.py)
        self.admission = Admission(config)
        self.sampler: RecallMonitor | None = None  # live recall sampling (recall.py)
        self.rpc_observer: RpcObserver | None = None  # the status page's window
        self.user_cache: TTLCache[tuple[object, ...], np.ndarray] = TTLCache(
            maxsize=config.user_cache_size, ttl=config.user_cache_ttl_s
        )

    def _state(self) -> RouterState:
        if self.state is None:
            raise Unavailable("router is starting: no bundle loaded yet")
        return self.state

    def _variant(self, user_id: int) -> tuple[RouterState, str]:
        """The state that serves this user: the canary's for its share of users, else stable."""
        state, canary = self._state(), self.canary
        if canary is not None and canary.serves(user_id):
            return canary.state, CANARY
        return state, STABLE

    def _admit(self) -> contextlib.AbstractContextManager[None]:
        """Count a request in flight; beyond the admission limit shed it at once."""
        return self.admission.admit()

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The request's one absolute deadline (``time.monotonic()``), taken where it enters.

        The caller's deadline less ``deadline_margin_s`` (time kept to merge and reply), else
        ``default_timeout_s`` from now. It is carried unchanged through the coalescer and the
        scatter to every shard attempt.
        """
        now = time.monotonic()
        remaining = context.time_remaining()
        if remaining is None:
            return now + self.config.default_timeout_s
        budget = remaining - self.config.deadline_margin_s
        if budget <= 0:
            raise DeadlineExceeded("deadline exceeded before the shards could be asked")
        return now + budget

    def _coverage(self, result: ScatterResult, method: str) -> common_pb2.Coverage:
        asked = result.asked
        answered = len(result.answered)
        if answered == 0 or answered / asked < self.config.min_coverage:
            reasons = "; ".join(f"shard {s}: {r}" for s, r in sorted(result.failures.items()))
            message = (
                f"only {answered} of {asked} shards answered (min_coverage "
                f"{self.config.min_coverage}): {reasons}"
            )
            if result.expired:  # the deadline passed while shards were still being waited for
                raise DeadlineExceeded(f"deadline exceeded: {message}")
            raise Unavailable(message)
        if result.failures:
            DEGRADED.labels(method).inc()
        return common_pb2.Coverage(
            shards_answered=answered,
            shards_asked=asked,
            answered_shard_ids=result.answered,
            degraded=bool(result.failures),
        )

    @rpc("Retrieval")
    async def Search(
        self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchResponse:
        deadline = self._deadline(context)
        with self._admit():
            return await self._search(request, deadline)

    async def _search(
        self, request: retrieval_pb2.SearchRequest, deadline: float
    ) -> retrieval_pb2.SearchResponse:
        state = self._state()
        if request.dim != state.bundle.dim:
            raise InvalidArgument(
                f"dim {request.dim} does not match the bundle dim {state.bundle.dim}"
            )
        queries = decode_matrix(request.queries, request.dim, max_rows=self.config.max_batch)
        k = check_k(request.k, self.config.max_k)
        check_params(request.params)
        if self.sampler is not None:
            self.sampler.offer(state, queries, request.params)
        result = await state.searcher.search(queries, k, request.params, deadline)
        coverage = self._coverage(result, "Search")
        return retrieval_pb2.SearchResponse(
            ids=to_bytes(result.ids, I64),
            scores=to_bytes(result.scores, F32),
            num_queries=len(queries),
            k=k,
            bundle_id=state.bundle.id,
            coverage=coverage,
            metric=state.bundle.metric,
        )

    async def _embed(self, state: RouterState, user_id: int, ctx: RequestContext) -> np.ndarray:
        key = (
            state.bundle.id,
            user_id,
            ctx.recent_item_ids,
            ctx.timestamp // 3600,
            ctx.country,
            ctx.device,
        )
        vector = self.user_cache.get(key)
        if vector is not None:
            USER_CACHE.labels("hit").inc()
            return vector
        USER_CACHE.labels("miss").inc()
        if state.embedder.blocking:
            loop = asyncio.get_running_loop()
            vector = await loop.run_in_executor(self.executor, state.embedder.embed, user_id, ctx)
        else:
            vector = state.embedder.embed(user_id, ctx)
        self.user_cache[key] = vector
        return vector

    @rpc("Retrieval")
    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        started = time.perf_counter()
        deadline = self._deadline(context)
        with self._admit():
            return await self._retrieve(request, deadline, started)

    async def _retrieve(
        self, request: retrieval_pb2.RetrieveRequest, deadline: float, started: float
    ) -> retrieval_pb2.RetrieveResponse:
        state, variant = self._variant(request.user_id)
        k = check_k(request.k, self.config.max_k)
        check_params(request.params)
        exclude = decode_ids(request.exclude_ids, name="exclude_ids")
        ctx = _context(request)
        if self.config.filter_seen:
            recent = np.fromiter(ctx.recent_item_ids, np.int64, len(ctx.recent_item_ids))
            exclude = np.concatenate([exclude, state.seen.of(request.user_id), recent])
        vector = await self._embed(state, request.user_id, ctx)
        if self.sampler is not None:
            self.sampler.offer(state, vector[None, :], request.params)
        embedded = time.perf_counter()

        fetch = min(k + len(exclude), self.config.max_k)
        result = await state.searcher.search(vector[None, :], fetch, request.params, deadline)
        coverage = self._coverage(result, "Retrieve")
        searched = time.perf_counter()

        ids, scores = result.ids[0], result.scores[0]
        keep = (ids >= 0) & ~np.isin(ids, exclude)
        ids, scores = ids[keep][:k], scores[keep][:k]
        sources = np.full(len(ids), retrieval_pb2.SOURCE_ANN, dtype=np.uint8)
        if len(ids) < k and len(state.popular_ids):
            # Backfill keeps k full when shards are missing or exclusions ate the ANN hits.
            fill = state.popular_ids[~np.isin(state.popular_ids, np.concatenate([ids, exclude]))]
            fill = fill[: k - len(ids)]
            ids = np.concatenate([ids, fill])
            scores = np.concatenate([scores, np.zeros(len(fill), np.float32)])
            sources = np.concatenate(
                [sources, np.full(len(fill), retrieval_pb2.SOURCE_POPULAR, np.uint8)]
            )
        codes, counts = np.unique(sources, return_counts=True)
        response = retrieval_pb2.RetrieveResponse(
            ids=to_bytes(ids, I64),
            scores=to_bytes(scores, F32),
            sources=to_bytes(sources, U8),
            bundle_id=state.bundle.id,
            variant=variant,
            coverage=coverage,
            source_counts={
                SOURCE_NAMES[int(c)]: int(n) for c, n in zip(codes, counts, strict=True)
            },
            timings_ms={
                "embed": (embedded - started) * 1e3,
                "ann": (searched - embedded) * 1e3,
                "total": (time.perf_counter() - started) * 1e3,
            },
        )
        if request.include_titles:
            response.titles.extend(state.titles.get(int(i), "") for i in ids)
        return response
