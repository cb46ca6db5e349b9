"""RecordEngagement's effect on the state (memory and a real redis-server) and the caches."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import numpy as np
import pytest

from annfleet.config import RouterConfig, SourcesConfig, TrendingSourceConfig
from annfleet.errors import InvalidArgument
from annfleet.router.caches import RouterCaches
from annfleet.router.engagement import Event, event_type, record_engagement
from annfleet.router.sources import ItemTable
from annfleet.router.sources.trending import Regions, TrendingSource
from annfleet.router.state import StateStore
from annfleet.v1 import retrieval_pb2

CLICK = retrieval_pb2.EVENT_TYPE_CLICK
LIKE = retrieval_pb2.EVENT_TYPE_LIKE
IMPRESSION = retrieval_pb2.EVENT_TYPE_IMPRESSION
ITEMS = ItemTable(np.array([10, 20, 30, 40]))
NOW = 1_000_000.0


def record(
    make_store: Callable[[], StateStore], events: list[Event], caches: RouterCaches | None = None
) -> int:
    """Record through a store of its own (as one router would), closed afterwards."""

    async def go() -> int:
        store = make_store()
        trending = TrendingSource(TrendingSourceConfig(half_life_s=100.0), store, Regions({1: "3"}))
        try:
            return await record_engagement(
                events,
                store=store,
                items=ITEMS,
                trending=trending,
                caches=caches,
                max_future_s=300,
                co_window=2,
                now=NOW,
            )
        finally:
            await store.close()

    return asyncio.run(go())


def test_engagement_updates_every_part(make_store: Callable[[], StateStore]) -> None:
    events = [
        Event(1, 10, CLICK, 999_000),
        Event(1, 20, LIKE, 999_100, country="fr"),
        Event(1, 30, IMPRESSION, 999_200),
        Event(1, 30, CLICK, 0),  # now
        Event(2, 40, IMPRESSION, 999_300),
    ]
    assert record(make_store, events) == 5

    async def check() -> None:
        store = make_store()
        user = await store.user(1)
        assert user.recent == (10, 20, 30) and user.seen.tolist() == [10, 20, 30]
        assert (await store.user(2)).recent == ()  # an impression is not an engagement
        # The latest engagement's time (the "now" event), for the tower's gap feature.
        assert user.last_ts == int(NOW) and (await store.user(2)).last_ts == 0
        imp, clk = await store.posteriors(np.array([10, 20, 30, 40]))
        assert imp.tolist() == [0, 0, 1, 1] and clk.tolist() == [1, 1, 1, 0]
        # co-engagement with the user's previous 2 items, both ways.
        live = await store.co_engaged([10, 20, 30])
        assert {i: n.as_dict() for i, n in live.items()} == {
            10: {20: 1, 30: 1},
            20: {10: 1, 30: 1},
            30: {10: 1, 20: 1},
        }
        # trending: global, the user's zip region, the event's country; L = log2 w + t / h.
        ids, logs = await store.trending_top("100s:global", 5)
        assert ids.tolist() == [30, 20, 10]
        np.testing.assert_allclose(logs, [NOW / 100, 1 + 999_100 / 100, 999_000 / 100])
        assert (await store.trending_top("100s:zip:3", 5))[0].tolist() == [30, 20, 10]
        assert (await store.trending_top("100s:country:FR", 5))[0].tolist() == [20]
        await store.close()

    asyncio.run(check())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Event(1, 99, CLICK, 0), "events[2]: unknown item id 99"),
        (Event(1, 10, 0, 0), "events[2]: unknown event type 0"),
        (Event(1, 10, 77, 0), "events[2]: unknown event type 77"),
        (
            Event(1, 10, CLICK, int(NOW) + 3600),
            "events[2]: timestamp 1003600 is 3600 s in the future",
        ),
        (Event(1, 10, CLICK, -5), "events[2]: negative timestamp"),
        (Event(1, 10, CLICK, 0, country="x" * 40), "events[2]: country"),
    ],
)
def test_a_bad_event_names_its_index_and_nothing_is_applied(
    make_store: Callable[[], StateStore], bad: Event, message: str
) -> None:
    events = [Event(1, 10, CLICK, 0), Event(2, 20, IMPRESSION, 0), bad, Event(3, 30, LIKE, 0)]
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        record(make_store, events)

    async def check() -> None:
        store = make_store()
        assert (await store.user(1)).recent == () and (await store.user(1)).version == 0
        assert (await store.posteriors(np.array([20])))[0].tolist() == [0]
        assert (await store.trending_top("100s:global", 5))[0].tolist() == []
        await store.close()

    asyncio.run(check())


def test_engagement_drops_the_users_cached_candidates_and_embeddings(
    make_store: Callable[[], StateStore],
) -> None:
    caches = RouterCaches(RouterConfig(), SourcesConfig())
    caches.bundle_changed("b1")
    for user in (1, 2):
        caches.candidates.put(user, ("b1", 10), "list")
        caches.embeddings.put(user, ("b1", ()), np.zeros(2))
    record(make_store, [Event(1, 10, CLICK, 0)])  # without caches: nothing to drop
    assert caches.candidates.get(1, ("b1", 10)) == "list"
    record(make_store, [Event(1, 10, CLICK, 0)], caches)
    assert caches.candidates.get(1, ("b1", 10)) is None
    assert caches.embeddings.get(1, ("b1", ())) is None
    assert caches.candidates.get(2, ("b1", 10)) == "list"  # other users keep theirs


def test_event_type_names() -> None:
    assert event_type("click") == CLICK and event_type("LIKE") == LIKE
    with pytest.raises(InvalidArgument, match=r"unknown event type 'share'.*click"):
        event_type("share")
