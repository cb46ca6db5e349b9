"""The candidate sources over a real MovieLens export: its tables, every source serving,
the blend keeping k full, and an engaged item never coming back."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np

from annfleet.bundle import Bundle, shard_dirname
from annfleet.config import RouterConfig, SourcesConfig
from annfleet.router.caches import RouterCaches
from annfleet.router.candidates import (
    CandidateGenerator,
    SourceSet,
    build_sources,
    cached_embedder,
)
from annfleet.router.engagement import Event, record_engagement
from annfleet.router.sources import Candidates, SourceRequest
from annfleet.router.state import MemoryState
from annfleet.router.users import PrecomputedUsers, RequestContext
from annfleet.v1 import retrieval_pb2


def test_export_has_the_source_tables(small_bundle: Bundle) -> None:
    item_ids = small_bundle.table("item_ids")
    events = small_bundle.table("engagement_events")
    assert events.dtype == np.int64 and events.shape[1] == 3 and len(events) > 1000
    assert np.isin(events[:, 0], item_ids).all()
    assert np.isin(events[:, 2], small_bundle.users()[0]).all()  # type: ignore[index]
    assert events[:, 1].max() - events[:, 1].min() <= 56 * 86400
    assert (np.diff(events[:, 1]) >= 0).all()
    content = small_bundle.table("item_content")
    genres = small_bundle.table("item_genres")
    assert content.shape[0] == len(item_ids) and content.shape[1] > genres.shape[1]
    np.testing.assert_array_equal(content[:, : genres.shape[1]], genres)
    assert set(np.unique(content[:, genres.shape[1] :])) <= {0.0, 0.5}
    assert small_bundle.manifest["item_features"]["content_table"] == "item_content"


def brute_force_searcher(bundle: Bundle):  # type: ignore[no-untyped-def]
    """An exact inner-product search over every shard's vectors, with exclude pushed down."""
    ids = np.concatenate(
        [bundle.load_array(f"{shard_dirname(s)}/ids.npy") for s in range(bundle.num_shards)]
    )
    vectors = np.concatenate(
        [bundle.load_array(f"{shard_dirname(s)}/vectors.npy") for s in range(bundle.num_shards)]
    )

    async def search(
        vector: np.ndarray, k: int, exclude: np.ndarray, deadline: float, params: object
    ) -> Candidates:
        scores = vectors @ vector
        scores[np.isin(ids, exclude)] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return Candidates(ids[order], scores[order])

    return search


def bundle_sources(bundle: Bundle) -> tuple[SourceSet, MemoryState, RouterCaches]:
    """Every default source over ``bundle`` (the ANN by brute force), a fresh memory state."""
    state = MemoryState()
    caches = RouterCaches(RouterConfig(), SourcesConfig())
    caches.bundle_changed(bundle.id)
    users = PrecomputedUsers(*bundle.users())  # type: ignore[misc]

    async def embed(user_id: int, ctx: RequestContext) -> np.ndarray:
        return users.embed(user_id, ctx)

    sources = build_sources(
        SourcesConfig(),
        bundle,
        state,
        embed=cached_embedder(caches.embeddings, bundle.id, embed),
        search=brute_force_searcher(bundle),
    )
    return sources, state, caches


def test_every_source_serves_and_an_engaged_item_never_comes_back(small_bundle: Bundle) -> None:
    from annfleet.router.service import SeenItems

    sources, state, caches = bundle_sources(small_bundle)
    assert sources.names() == [
        "ann",
        "trending",
        "co_engagement",
        "content",
        "exploration",
        "popular",
    ]
    seen = SeenItems.load(small_bundle)
    generator = CandidateGenerator(
        small_bundle.id, sources, state, caches, bundle_seen=seen.of, filter_seen=True
    )
    user, k = 1, 60
    context = RequestContext(recent_item_ids=(50, 172, 181))

    async def go() -> None:
        first = await generator.retrieve(
            user, context, k, np.empty(0, np.int64), time.monotonic() + 10
        )
        assert len(first.ids) == k and len(set(first.ids.tolist())) == k and not first.dropped
        assert not np.isin(first.ids, seen.of(user)).any()
        assert not np.isin(first.ids, [50, 172, 181]).any()
        config = SourcesConfig()
        for name in sources.names():  # popular (weight 0, no quota) only backfills
            settings = getattr(config, name)
            if settings.weight > 0 or settings.quota > 0:
                assert first.counts[name] > 0, name
        again = await generator.retrieve(
            user, context, k, np.empty(0, np.int64), time.monotonic() + 10
        )
        assert again.cached and not first.cached  # from the candidate cache
        assert again.ids.tolist() == first.ids.tolist()

        engaged = int(first.ids[0])
        await record_engagement(
            [Event(user, engaged, retrieval_pb2.EVENT_TYPE_CLICK)],
            store=state,
            items=sources.items,
            trending=sources.trending,
            caches=caches,
            max_future_s=300,
            co_window=10,
        )
        again = await generator.retrieve(
            user, context, k, np.empty(0, np.int64), time.monotonic() + 10
        )
        assert again is not first and len(again.ids) == k
        assert engaged not in again.ids.tolist()
        # The click is trending right away (live events outweigh the 1998 seed).
        assert sources.trending is not None
        hot = await sources.trending.fetch(
            SourceRequest(2, RequestContext(country="US"), 5, time.monotonic() + 10)
        )
        assert hot.ids[0] == engaged

    asyncio.run(go())


def test_a_known_user_without_live_engagement_starts_from_the_bundles_history(
    small_bundle: Bundle,
) -> None:
    """A freshly started router has no live state: the item-to-item sources start from the
    bundle's record of the user's last items (the tower's user_recent), as they would from
    the same items recorded live or sent in the request."""
    from annfleet.router.service import SeenItems, UserHistory

    history = UserHistory.load(small_bundle)
    user, k = 1, 60
    users = small_bundle.table("user_features")
    recent = small_bundle.table("user_recent")[int(np.flatnonzero(users[:, 0] == user)[0])]
    expected = small_bundle.table("item_ids")[recent[recent > 0] - 1]
    assert history.of(user) == tuple(expected.tolist()) and len(expected) > 0
    assert history.of(10**9) == ()  # a user the bundle does not know

    sources, state, caches = bundle_sources(small_bundle)
    seen = SeenItems.load(small_bundle)
    far = time.monotonic() + 10
    nothing = np.empty(0, np.int64)

    async def go() -> None:
        without = await CandidateGenerator(
            small_bundle.id, sources, state, caches, bundle_seen=seen.of
        ).retrieve(user, RequestContext(), k, nothing, far)
        assert without.counts.get("co_engagement", 0) == without.counts.get("content", 0) == 0
        fresh = RouterCaches(RouterConfig(), SourcesConfig())  # not the list cached above
        with_history = await CandidateGenerator(
            small_bundle.id, sources, state, fresh, bundle_seen=seen.of, bundle_history=history.of
        ).retrieve(user, RequestContext(), k, nothing, far)
        assert not with_history.cached
        assert len(with_history.ids) == k and not with_history.dropped
        assert with_history.counts["co_engagement"] > 0 and with_history.counts["content"] > 0
        assert not np.isin(with_history.ids, seen.of(user)).any()
        for source in sources.sources:
            if source.name in ("co_engagement", "content"):
                from_history = await source.fetch(
                    SourceRequest(user, RequestContext(), k, far, history=history.of(user))
                )
                sent = RequestContext(recent_item_ids=history.of(user))
                from_request = await source.fetch(SourceRequest(user, sent, k, far))
                assert len(from_history.ids) > 0, source.name
                np.testing.assert_array_equal(from_history.ids, from_request.ids)

    asyncio.run(go())


def test_a_history_table_that_does_not_fit_gives_no_history(
    small_bundle: Bundle, tmp_path: Path
) -> None:
    """A user_recent table naming items the bundle does not have, or of the wrong shape,
    is no history (the sources start from live and request items), not a failure."""
    from annfleet.router.service import UserHistory

    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle.path, copy)
    rel = small_bundle.manifest["tables"]["user_recent"]
    recent = np.load(copy / rel, allow_pickle=False)
    for bad in (recent + len(small_bundle.table("item_ids")), recent[:-1], recent[:, 0]):
        np.save(copy / rel, bad)
        assert UserHistory.load(Bundle.open(copy, verify=False)).of(1) == ()
    np.save(copy / rel, recent)
    assert UserHistory.load(Bundle.open(copy, verify=False)).of(1) != ()
