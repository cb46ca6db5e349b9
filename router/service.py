"""The Retrieval service: Search (vectors -> merged top-k), Retrieve (user -> blended
candidates, :class:`~annfleet.router.candidates.CandidateGenerator`) and RecordEngagement
(events -> live state, :mod:`annfleet.router.engagement`). The servicer only translates."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from annfleet.arrays import F32, I64, U8, U32, check_k, decode_ids, decode_matrix, to_bytes
from annfleet.bundle import (
    TABLE_ITEM_TITLES,
    TABLE_POPULAR_IDS,
    TABLE_SEEN_IDS,
    TABLE_SEEN_OFFSETS,
    Bundle,
)
from annfleet.config import RouterConfig, SourcesConfig, StateConfig
from annfleet.errors import DeadlineExceeded, InvalidArgument, Unavailable
from annfleet.metrics import DEGRADED
from annfleet.queue_time import queue_time
from annfleet.return_time import reported_return
from annfleet.router.admission import Admission
from annfleet.router.blend import Blend
from annfleet.router.caches import RouterCaches
from annfleet.router.candidates import CandidateGenerator, SourceSet, build_sources, cached_embedder
from annfleet.router.coalesce import Coalescer
from annfleet.router.diversity import DiversityMonitor
from annfleet.router.engagement import Event, record_engagement
from annfleet.router.margin import ReplyMargin
from annfleet.router.scatter import Scatter, ScatterResult
from annfleet.router.sources import Candidates
from annfleet.router.sources.social import FollowGraph
from annfleet.router.state import MemoryState, StateStore
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


@dataclass(frozen=True)
class UserHistory:
    """Each known user's last items as the bundle recorded them at training (the user tower's
    ``user_recent`` table: dense item indices, right-aligned, 0-padded), as item ids: what the
    item-to-item sources start from before the user engages live (``SourceRequest.history``).
    """

    row: dict[int, int]
    recent: np.ndarray  # (U, L) int64 dense 1-based item indices, 0 = none
    item_ids: np.ndarray  # (N,) int64: index i is item_ids[i - 1]

    @classmethod
    def load(cls, bundle: Bundle) -> UserHistory:
        """The bundle's tables (the names the user tower's spec gives, else the defaults); a
        bundle without them, or with tables that do not fit together, has no history."""
        names = bundle.manifest.get("user_tower", {}).get("tables", {})
        users = bundle.table(names.get("users", "user_features"))
        recent = bundle.table(names.get("recent", "user_recent"))
        item_ids = bundle.table(names.get("item_ids", "item_ids"))
        none = cls({}, np.zeros((0, 0), np.int64), np.empty(0, np.int64))
        if users is None or recent is None or item_ids is None:
            return none
        users, recent = np.asarray(users), np.asarray(recent)
        fits = (
            users.ndim == 2
            and users.shape[1] > 0
            and recent.ndim == 2
            and len(users) == len(recent)
            and (recent.size == 0 or 0 <= recent.min() <= recent.max() <= len(item_ids))
        )
        if not fits:
            log.warning("bundle %s: user_recent does not fit its user and item tables", bundle.id)
            return none
        rows = {int(u): i for i, u in enumerate(users[:, 0])}
        return cls(rows, recent.astype(np.int64), np.asarray(item_ids, np.int64))

    def of(self, user_id: int) -> tuple[int, ...]:
        """Item ids, oldest first; empty for a user the bundle does not know."""
        row = self.row.get(int(user_id))
        if row is None:
            return ()
        index = self.recent[row]
        return tuple(self.item_ids[index[index > 0] - 1].tolist())


@dataclass
class SourcesEnv:
    """What every bundle's sources share in one router process: the sources config, the
    live state store, the caches and the executor blocking work (the user tower) runs on."""

    config: SourcesConfig
    store: StateStore
    caches: RouterCaches
    executor: Executor
    state_config: StateConfig = field(default_factory=StateConfig)
    graph: FollowGraph | None = None  # the social source's follow graph (else its file)
    diversity: DiversityMonitor | None = None  # diversity gauges of served lists (diversity.py)

    @classmethod
    def default(cls, router: RouterConfig, executor: Executor) -> SourcesEnv:
        """Default sources over an in-memory state store (what tests and `make up` use)."""
        sources, state = SourcesConfig(), StateConfig()
        return cls(sources, MemoryState(state.recent_len), RouterCaches(router, sources), executor)


@dataclass(frozen=True)
class AnnDetail:
    """What the ANN source tells the servicer besides its candidates."""

    scatter: ScatterResult  # coverage: which shards answered
    query: np.ndarray  # (dim,) float32 user vector (live recall sampling)

    @property
    def degraded(self) -> bool:
        """Some shard did not answer (such a list is not cached)."""
        return bool(self.scatter.failures)


def check_coverage(result: ScatterResult, min_coverage: float, method: str) -> common_pb2.Coverage:
    """The coverage of a scatter; Unavailable (DeadlineExceeded once the deadline passed)
    when fewer shards than ``min_coverage`` answered."""
    asked = result.asked
    answered = len(result.answered)
    if answered == 0 or answered / asked < min_coverage:
        reasons = "; ".join(f"shard {s}: {r}" for s, r in sorted(result.failures.items()))
        message = (
            f"only {answered} of {asked} shards answered (min_coverage {min_coverage}): {reasons}"
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
    env: SourcesEnv
    sources: SourceSet
    candidates: CandidateGenerator  # Retrieve below the servicer

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        scatter: Scatter,
        embedder: UserEmbedder,
        config: RouterConfig,
        env: SourcesEnv,
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
        seen = SeenItems.load(bundle)

        async def embed(user_id: int, ctx: RequestContext) -> np.ndarray:
            if embedder.blocking:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(env.executor, embedder.embed, user_id, ctx)
            return embedder.embed(user_id, ctx)

        async def search(
            vector: np.ndarray,
            k: int,
            exclude: np.ndarray,
            deadline: float,
            params: common_pb2.SearchParams | None,
        ) -> Candidates:
            # The ANN source over every shard, exclusions filtered inside the shards (k is
            # not inflated by the user's history); below min_coverage the source fails and
            # the others backfill. Requests with exclusions skip the coalescer: its batches
            # share one exclusion set per shard request.
            params = params or common_pb2.SearchParams()
            queries = vector[None, :]
            if len(exclude):
                result = await scatter.search(queries, k, params, deadline, exclude)
            else:
                result = await searcher.search(queries, k, params, deadline)
            check_coverage(result, config.min_coverage, "Retrieve")
            return Candidates(result.ids[0], result.scores[0], detail=AnnDetail(result, vector))

        sources = build_sources(
            env.config,
            bundle,
            env.store,
            embed=cached_embedder(env.caches.embeddings, bundle.id, embed),
            search=search,
            graph=env.graph,
        )
        generator = CandidateGenerator(
            bundle.id,
            sources,
            env.store,
            env.caches,
            bundle_seen=seen.of,
            bundle_history=UserHistory.load(bundle).of,
            filter_seen=config.filter_seen,
            recent_len=env.state_config.recent_len,
            diversity=env.diversity,
        )
        return cls(
            bundle,
            scatter,
            searcher,
            embedder,
            popular_ids,
            titles,
            seen,
            env,
            sources,
            generator,
        )


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
        self.reply_margin = ReplyMargin.from_config(config)  # Retrieve's, measured
        self.sampler: RecallMonitor | None = None  # live recall sampling (recall.py)
        self.rpc_observer: RpcObserver | None = None  # the status page's window

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

    @staticmethod
    def _queued(context: grpc.aio.ServicerContext) -> tuple[float | None, float | None]:
        """The request's queue time before its handler (``annfleet.queue_time``: None when
        its caller sent no timeout; a malformed entry is InvalidArgument) and its time left
        (None: no deadline), seconds."""
        remaining = context.time_remaining()
        return queue_time(context.invocation_metadata(), remaining), remaining

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

    @rpc("Retrieval")
    async def Search(
        self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.SearchResponse:
        deadline = self._deadline(context)
        with self.admission.admit(*self._queued(context)):
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
        coverage = check_coverage(result, self.config.min_coverage, "Search")
        return retrieval_pb2.SearchResponse(
            ids=to_bytes(result.ids, I64),
            scores=to_bytes(result.scores, F32),
            num_queries=len(queries),
            k=k,
            bundle_id=state.bundle.id,
            coverage=coverage,
            metric=state.bundle.metric,
        )

    @rpc("Retrieval")
    async def Retrieve(
        self, request: retrieval_pb2.RetrieveRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        started = time.perf_counter()
        received = time.monotonic()
        deadline = self._deadline(context)
        queued, remaining = self._queued(context)
        way_back = reported_return(context.invocation_metadata())  # malformed: InvalidArgument
        with self.admission.admit(queued, remaining):
            return await self._retrieve(request, deadline, started, received, queued, way_back)

    async def _retrieve(
        self,
        request: retrieval_pb2.RetrieveRequest,
        deadline: float,
        started: float,
        received: float,
        inbound: float | None,
        way_back: float | None = None,
    ) -> retrieval_pb2.RetrieveResponse:
        """``inbound``: the seconds the request spent between its caller's send and the
        handler (its queue time; None when its caller sent no timeout). The sources' budgets
        count from the send, so the way in is inside them as the caller sees it. ``way_back``:
        the return time its caller reported (``annfleet-return-ms``; None: none), kept back
        from each budget too (at most ``return_time_max_share`` of it), so the way back is
        inside them as well."""
        state, variant = self._variant(request.user_id)  # one bundle for the whole request
        k = check_k(request.k, self.config.max_k)
        check_params(request.params)
        exclude = decode_ids(request.exclude_ids, name="exclude_ids")
        shape = (request.params.SerializeToString(deterministic=True),)
        # Kept back from each source's budget: the fixed allowance for what the router cannot
        # time, and what it measures it needs after a budget (router/margin.py).
        margin = self.config.deadline_margin_s + self.reply_margin.value
        result = await state.candidates.retrieve(
            request.user_id,
            _context(request),
            k,
            exclude,
            deadline,
            shape,
            request.params,
            received=received,
            reply_margin=margin,
            inbound=inbound or 0.0,
            return_time=way_back or 0.0,
            return_max_share=self.config.return_time_max_share,
        )
        ann = result.details.get("ann")
        if self.sampler is not None and isinstance(ann, AnnDetail) and not result.cached:
            self.sampler.offer(state, ann.query[None, :], request.params)
        coverage = _retrieve_coverage(result, state.bundle.num_shards)
        if coverage.degraded or result.dropped:
            DEGRADED.labels("Retrieve").inc()
        response = retrieval_pb2.RetrieveResponse(
            ids=to_bytes(result.ids, I64),
            scores=to_bytes(result.scores, F32),
            sources=to_bytes(result.primary, U8),
            source_masks=to_bytes(result.masks, U32),
            bundle_id=state.bundle.id,
            variant=variant,
            coverage=coverage,
            source_counts={name: n for name, n in result.counts.items() if n},
            dropped_sources=result.dropped,
        )
        if request.include_titles:
            response.titles.extend(state.titles.get(int(i), "") for i in result.ids)
        timings = response.timings_ms
        timings["reply_margin"] = margin * 1e3
        if inbound is not None:
            timings["inbound"] = inbound * 1e3
        if way_back is not None:
            timings["return"] = way_back * 1e3
        if result.sources_done:
            timings["sources"] = (result.sources_done - received) * 1e3
        timings["total"] = (time.perf_counter() - started) * 1e3
        if result.budget_end:  # a budget ended the wait: how long after it the reply is ready
            after = time.monotonic() - result.budget_end  # noted once the reply is on its way
            asyncio.get_running_loop().call_soon(self.reply_margin.observe, after)
        return response

    @rpc("Retrieval")
    async def RecordEngagement(
        self, request: retrieval_pb2.RecordEngagementRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RecordEngagementResponse:
        self._deadline(context)
        with self.admission.admit(*self._queued(context)):
            state = self._state()  # the stable bundle's items check the events
            env = state.env
            applied = await record_engagement(
                [Event.from_proto(e) for e in request.events],
                store=env.store,
                items=state.sources.items,
                trending=state.sources.trending,
                caches=env.caches,
                max_future_s=env.state_config.max_future_s,
                co_window=env.config.co_engagement.recent,
            )
            return retrieval_pb2.RecordEngagementResponse(
                applied=applied, bundle_id=state.bundle.id
            )


def _retrieve_coverage(result: Blend, num_shards: int) -> common_pb2.Coverage:
    """The ANN source's scatter coverage; none answered when the source was dropped."""
    ann = result.details.get("ann")
    if not isinstance(ann, AnnDetail):
        return common_pb2.Coverage(shards_asked=num_shards, degraded=True)
    scatter = ann.scatter
    return common_pb2.Coverage(
        shards_answered=len(scatter.answered),
        shards_asked=scatter.asked,
        answered_shard_ids=scatter.answered,
        degraded=bool(scatter.failures),
    )
