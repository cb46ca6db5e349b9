"""Retrieve's candidate generation, without gRPC: the user's live state -> exclusions ->
sources run within their budgets -> blend, with the candidate cache in front.

``build_sources`` makes the configured sources a bundle supports (one the bundle lacks a
table for is left out, with a log line); :class:`CandidateGenerator` answers one request.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from annfleet.bundle import TABLE_POPULAR_IDS, Bundle
from annfleet.config import SourcesConfig
from annfleet.errors import AnnfleetError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from annfleet.router.blend import Blend, Blender, blend_outcomes, run_sources
from annfleet.router.caches import RouterCaches, UserCache
from annfleet.router.diversity import DiversityMonitor
from annfleet.router.sources import ItemTable, Source, SourceRequest, last_unique, union_sorted
from annfleet.router.sources.ann import AnnSource, EmbedFn, SearchFn
from annfleet.router.sources.coengagement import CoEngagementSource
from annfleet.router.sources.content import ContentSource
from annfleet.router.sources.exploration import ExplorationSource
from annfleet.router.sources.popular import PopularSource
from annfleet.router.sources.social import FileFollowGraph, FollowGraph, SocialSource
from annfleet.router.sources.trending import TrendingSource
from annfleet.router.state import Blocked, StateStore, UserState
from annfleet.router.users import RequestContext

log = logging.getLogger(__name__)

# Failures of a source that are the request's fault: they fail the request, not the source.
CALLER_ERRORS = (NotFound, InvalidArgument)
# Blocked ids the sources (and the shards) are given to leave out, at most: a larger blocked
# set (a bulk `items delete`) is left to the blender's filter alone, so that a request does
# not carry it to every source and shard (each source's cut grows with its exclusions, and
# the shards already leave deleted items out). A source that returned blocked ids then
# delivers fewer, and the blender's backfill from the others keeps k full.
BLOCKED_PUSHDOWN_MAX = 4096


@dataclass
class SourceSet:
    """The sources of one bundle and what engagement ingestion needs from them."""

    sources: list[Source]
    items: ItemTable
    trending: TrendingSource | None
    blender: Blender = field(default_factory=Blender)  # how their lists are blended

    def names(self) -> list[str]:
        return [s.name for s in self.sources]


def build_sources(
    config: SourcesConfig,
    bundle: Bundle,
    state: StateStore,
    *,
    embed: EmbedFn | None = None,
    search: SearchFn | None = None,
    graph: FollowGraph | None = None,
) -> SourceSet:
    """The enabled sources ``bundle`` can serve. ``ann`` needs ``embed`` and ``search``;
    ``social`` a graph (``graph``, else the file ``sources.social.graph``)."""
    items = ItemTable.from_bundle(bundle)
    sources: list[Source] = []
    trending: TrendingSource | None = None
    missing: list[str] = []
    if config.ann.enabled and embed is not None and search is not None:
        sources.append(AnnSource(config.ann, embed, search))
    if config.trending.enabled:
        trending = TrendingSource.from_bundle(config.trending, state, bundle)
        sources.append(trending)
    if config.co_engagement.enabled:
        co = CoEngagementSource.from_bundle(config.co_engagement, state, bundle, items)
        sources.append(co) if co is not None else missing.append("co_engagement")
    if config.content.enabled:
        content = ContentSource.from_bundle(config.content, bundle, items)
        sources.append(content) if content is not None else missing.append("content")
    if config.exploration.enabled and len(items):
        sources.append(ExplorationSource(config.exploration, state, items))
    if config.social.enabled:
        if graph is None and config.social.graph:
            graph = FileFollowGraph.load(config.social.graph)
        sources.append(SocialSource(config.social, state, graph)) if graph else missing.append(
            "social"
        )
    popular = bundle.table(TABLE_POPULAR_IDS)
    if config.popular.enabled:
        if popular is not None:
            sources.append(PopularSource(config.popular, np.asarray(popular, np.int64)))
        else:
            missing.append("popular")
    if missing:
        log.info("bundle %s lacks the tables of source(s) %s: off", bundle.id, ", ".join(missing))
    return SourceSet(sources, items, trending, Blender.from_config(config))


def merge_recent(live: tuple[int, ...], request: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The user's recent items: live ones (state store) then the request's, an item kept at
    its latest position, at most the last ``n``; most recent last."""
    return tuple(last_unique(live + request, n))


def embedding_key(bundle_id: str, ctx: RequestContext) -> tuple[Any, ...]:
    """The embedding cache's key of a user's request (with the user id): the bundle and the
    whole context, the timestamp to the hour (the tower's time features change hourly)."""
    return (
        bundle_id,
        ctx.recent_item_ids,
        ctx.timestamp // 3600,
        ctx.country,
        ctx.device,
        ctx.recent_timestamp,
    )


def embedding_key_context(key: tuple[Any, ...]) -> tuple[str, RequestContext]:
    """The bundle id and a context of :func:`embedding_key` (the hour's first second; 0 =
    "now" stays 0): what a rollout embeds again with the next bundle's tower."""
    bundle_id, recent, hour, country, device, recent_ts = key
    return bundle_id, RequestContext(tuple(recent), int(hour) * 3600, country, device, recent_ts)


def cached_embedder(cache: UserCache[np.ndarray], bundle_id: str, embed: EmbedFn) -> EmbedFn:
    """``embed`` behind the embedding cache (key: :func:`embedding_key`)."""

    async def embed_cached(user_id: int, ctx: RequestContext) -> np.ndarray:
        key = embedding_key(bundle_id, ctx)
        vector = cache.get(user_id, key)
        if vector is None:
            vector = await embed(user_id, ctx)
            cache.put(user_id, key, vector)
        return vector

    return embed_cached


class CandidateGenerator:
    """One bundle's Retrieve path below the servicer."""

    def __init__(
        self,
        bundle_id: str,
        sources: SourceSet,
        state: StateStore,
        caches: RouterCaches,
        *,
        bundle_seen: Callable[[int], np.ndarray] | None = None,
        bundle_history: Callable[[int], tuple[int, ...]] | None = None,
        filter_seen: bool = True,
        recent_len: int = 50,
        diversity: DiversityMonitor | None = None,
    ) -> None:
        self.bundle_id = bundle_id
        self.sources = sources
        self.state = state
        self.caches = caches
        self.bundle_seen = bundle_seen
        self.bundle_history = bundle_history
        self.filter_seen = filter_seen
        self.recent_len = recent_len
        self.diversity = diversity
        if diversity is not None:  # served lists are measured while this bundle serves
            content = next((s for s in sources.sources if isinstance(s, ContentSource)), None)
            diversity.register(bundle_id, sources.items, content.features if content else None)
            weakref.finalize(self, diversity.release, bundle_id)

    async def _user(self, user_id: int) -> tuple[UserState, Blocked, str]:
        """Live state and blocked items; a state store that is down degrades to no live
        state and the blocked items as last read."""
        try:
            return (*await self.state.user_and_blocked(user_id), "")
        except Unavailable as exc:
            log.warning("serving without live state: %s", exc)
            return UserState(), self.state.last_blocked(), str(exc)

    def exclusions(
        self,
        user_id: int,
        user: UserState,
        recent: tuple[int, ...],
        exclude: np.ndarray,
        blocked: Blocked,
    ) -> np.ndarray:
        """(e,) int64 sorted unique: request exclude_ids, blocked, and with ``filter_seen``
        the user's seen items (bundle table + live) and recent items."""
        return union_sorted(self.own_exclusions(user_id, user, recent, exclude), blocked.ids)

    def own_exclusions(
        self, user_id: int, user: UserState, recent: tuple[int, ...], exclude: np.ndarray
    ) -> np.ndarray:
        """The request's and the user's exclusions (``exclusions`` without the blocked)."""
        parts = [np.asarray(exclude, np.int64)]
        if self.filter_seen:
            parts += [user.seen, np.asarray(recent, np.int64)]
            if self.bundle_seen is not None:
                parts.append(self.bundle_seen(user_id))
        return np.unique(np.concatenate(parts))

    async def retrieve(
        self,
        user_id: int,
        context: RequestContext,
        k: int,
        exclude: np.ndarray,
        deadline: float,
        shape: tuple[object, ...] = (),
        params: Any = None,
        received: float | None = None,
        reply_margin: float = 0.0,
        inbound: float = 0.0,
        return_time: float = 0.0,
        return_max_share: float = 0.0,
    ) -> Blend:
        """The blended candidates. ``shape`` = what else makes two requests differ (search
        params, source overrides): part of the candidate-cache key. ``params`` (the request's
        SearchParams) go to the ANN source. ``received`` (``time.monotonic()`` of the
        request's arrival, default now), ``inbound`` (seconds it spent on its way there, as
        measured; 0 = unknown) and ``reply_margin``: where the sources' budgets start (the
        caller's send) and how much of each is kept back to blend and reply; ``return_time``
        (the reply's way back as the caller reported it; 0 = none), also kept back, at most
        ``return_max_share`` of each budget (``SourceRequest``, ``blend.budget_deadline``).

        A source that fails because of the request itself (NotFound: a user the bundle cannot
        embed; InvalidArgument) fails the request; any other failure drops the source.
        The served list (cached or not) is offered to the diversity monitor."""
        arrival = time.monotonic() if received is None else received
        timing = (arrival, reply_margin, inbound, return_time, return_max_share)
        result = await self._retrieve(user_id, context, k, exclude, deadline, shape, params, timing)
        if self.diversity is not None:
            self.diversity.offer(self.bundle_id, result.ids)
        return result

    async def _retrieve(
        self,
        user_id: int,
        context: RequestContext,
        k: int,
        exclude: np.ndarray,
        deadline: float,
        shape: tuple[object, ...],
        params: Any,
        timing: tuple[float, float, float, float, float],
    ) -> Blend:
        user, blocked, state_error = await self._user(user_id)
        recent = merge_recent(user.recent, context.recent_item_ids, self.recent_len)
        # The caller's own recent items are as of the request; the live ones as of the user's
        # last engagement, which the tower needs for its time-since-last-item feature (as in
        # training: the real gap, not zero).
        stamp = context.recent_timestamp if context.recent_item_ids else user.last_ts
        context = replace(context, recent_item_ids=recent, recent_timestamp=stamp)
        excluded = hashlib.blake2b(np.asarray(exclude, np.int64).tobytes(), digest_size=8)
        key = (
            self.bundle_id,
            k,
            shape,
            excluded.hexdigest(),
            context.country,
            context.device,
            recent,
            user.version,
            blocked.version,
        )
        cached = self.caches.candidates.get(user_id, key)
        if cached is not None:
            return replace(cached, cached=True, sources_done=0.0, budget_end=0.0)
        own = self.own_exclusions(user_id, user, recent, exclude)
        excl = union_sorted(own, blocked.ids)
        pushed = excl if len(blocked.ids) <= BLOCKED_PUSHDOWN_MAX else own
        blender = self.sources.blender
        history = self.bundle_history(user_id) if self.bundle_history is not None else ()
        request = SourceRequest(
            user_id, context, blender.asked(k), deadline, pushed, params, *timing, history=history
        )
        outcomes = await run_sources(self.sources.sources, request)
        for outcome in outcomes.values():
            if isinstance(outcome.error, CALLER_ERRORS):
                raise outcome.error
        result = blend_outcomes(self.sources.sources, outcomes, k, excl, blender)
        if not len(result.ids):
            errors = [outcomes[s.name].error for s in self.sources.sources if s.name in outcomes]
            failed = [e for e in errors if isinstance(e, AnnfleetError)]  # the ANN's first
            if failed:  # nothing to serve at all: the (first) failure is the answer
                raise failed[0]
            if "budget" in result.dropped.values() and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline exceeded before any source answered")
        if state_error:
            result = replace(result, dropped={**result.dropped, "state": state_error})
        degraded = any(getattr(d, "degraded", False) for d in result.details.values())
        if not result.dropped and not degraded:  # a degraded list is not kept
            self.caches.candidates.put(user_id, key, result)
        return result
