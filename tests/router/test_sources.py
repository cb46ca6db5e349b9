"""Each candidate source on small fixed data, with the exact expected output."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from annfleet.config import (
    AnnSourceConfig,
    CoEngagementSourceConfig,
    ContentSourceConfig,
    ExplorationSourceConfig,
    PopularSourceConfig,
    SocialSourceConfig,
    TrendingSourceConfig,
)
from annfleet.errors import ConfigError
from annfleet.router.sources import (
    SMALL_LOOKUP,
    Candidates,
    ItemTable,
    SourceRequest,
    first_not_in,
    isin_sorted,
    top_k,
)
from annfleet.router.sources.ann import AnnSource
from annfleet.router.sources.coengagement import CoEngagementSource
from annfleet.router.sources.content import ContentSource
from annfleet.router.sources.exploration import ExplorationSource
from annfleet.router.sources.popular import PopularSource
from annfleet.router.sources.social import FileFollowGraph, SocialSource
from annfleet.router.sources.trending import Regions, TrendingSource, seed_counts
from annfleet.router.state import MemoryState, StateUpdate
from annfleet.router.users import RequestContext


def request(
    user: int = 1,
    k: int = 10,
    recent: tuple[int, ...] = (),
    exclude: list[int] | None = None,
    now: int = 0,
    country: str = "",
) -> SourceRequest:
    return SourceRequest(
        user,
        RequestContext(recent, now, country, ""),
        k,
        time.monotonic() + 5,
        np.array(sorted(exclude or []), np.int64),
    )


def fetch(source: Any, req: SourceRequest) -> Candidates:
    return asyncio.run(source.fetch(req))  # type: ignore[no-any-return]


# --- trending ---------------------------------------------------------------------------

H = 10.0  # half-life (s)
# (item, time, user): user 1 lives in zip region "3", user 2 in "5".
EVENTS = np.array([[1, 100, 1], [1, 100, 1], [2, 110, 2], [3, 90, 1], [3, 90, 1], [3, 90, 1]])
REGIONS = Regions({1: "3", 2: "5"})


def decayed_log2(events: list[tuple[int, float, float]], item: int, now: float) -> float:
    """log2 of sum w * 2 ** (-(now - t) / H): the definition, computed directly."""
    return math.log2(sum(w * 2 ** (-(now - t) / H) for i, t, w in events if i == item))


def trending(state: MemoryState) -> TrendingSource:
    config = TrendingSourceConfig(half_life_s=H)
    return TrendingSource(config, state, REGIONS, seed_counts(EVENTS, REGIONS, H))


def test_trending_regional_then_global_from_the_seed() -> None:
    source = trending(MemoryState())
    got = fetch(source, request(user=1, k=3, now=120))
    # zip:3 holds items 1 (2 events at 100) and 3 (3 at 90); global adds item 2.
    assert got.ids.tolist() == [1, 3, 2]
    seed = [(int(i), float(t), 1.0) for i, t, _ in EVENTS]
    region = [e for e, (_, _, u) in zip(seed, EVENTS, strict=True) if u == 1]
    expected = [
        decayed_log2(region, 1, 120),
        decayed_log2(region, 3, 120),
        decayed_log2(seed, 2, 120),
    ]
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)
    # Unknown user, no country: global only; items 1 and 2 tie (2 * 2^-2 = 2^-1), smaller id first.
    assert fetch(source, request(user=99, k=3, now=120)).ids.tolist() == [1, 2, 3]
    assert fetch(source, request(user=1, k=3, now=120, exclude=[1])).ids.tolist() == [3, 2]


def test_trending_moves_with_live_engagement() -> None:
    state = MemoryState()
    source = trending(state)
    # One live like (weight 2) of item 2 at t=120 by user 2 in country "us".
    asyncio.run(state.apply(StateUpdate(trending=source.updates(2, "us", 2, 2.0, 120))))
    seed = [(int(i), float(t), 1.0) for i, t, _ in EVENTS]
    live = [*seed, (2, 120.0, 2.0)]
    got = fetch(source, request(user=99, k=3, now=130))
    assert got.ids.tolist() == [2, 1, 3]
    np.testing.assert_allclose(
        got.scores, [decayed_log2(live, i, 130) for i in (2, 1, 3)], rtol=1e-5
    )
    # The country scope has only the live event; the rest of k comes from global.
    assert fetch(source, request(user=1, k=3, now=130, country="US")).ids.tolist() == [2, 1, 3]
    # zip:5 (user 2's region) has the seed event and the live one of item 2.
    assert fetch(source, request(user=2, k=1, now=130)).ids.tolist() == [2]


# --- co-engagement ----------------------------------------------------------------------

ITEMS = ItemTable(np.array([10, 20, 30, 40, 50]))
NEIGHBOURS = np.array([[20, 30, -1], [10, 40, -1], [50, -1, -1], [-1, -1, -1], [-1, -1, -1]])
NEIGHBOUR_SCORES = np.array(
    [[0.9, 0.5, 0], [0.9, 0.4, 0], [0.7, 0, 0], [0, 0, 0], [0, 0, 0]], np.float32
)


def test_co_engagement_neighbours_of_recent_items() -> None:
    state = MemoryState()
    config = CoEngagementSourceConfig(recent=2, recency_decay=0.5, live_weight=0.1)
    source = CoEngagementSource(config, state, ITEMS, NEIGHBOURS, NEIGHBOUR_SCORES)
    # recent (10, 20): weights 0.5 and 1. 40 <- 20: 0.4; 30 <- 10: 0.5 * 0.5; 10, 20 are recent.
    got = fetch(source, request(recent=(10, 20)))
    assert got.ids.tolist() == [40, 30]
    np.testing.assert_allclose(got.scores, [0.4, 0.25], rtol=1e-6)
    # Live co-engagement 20 -> 50 three times: 1 * 0.1 * log1p(3).
    asyncio.run(state.apply(StateUpdate(co_engagement=Counter({(20, 50): 3}))))
    got = fetch(source, request(recent=(10, 20), exclude=[40]))
    assert got.ids.tolist() == [30, 50]
    np.testing.assert_allclose(got.scores, [0.25, 0.1 * math.log1p(3)], rtol=1e-6)
    # Only the last `recent` items are expanded: with (30, 10, 20), 30's neighbour 50 does not
    # come from the table (fresh state: no live counts either).
    fresh = CoEngagementSource(config, MemoryState(), ITEMS, NEIGHBOURS, NEIGHBOUR_SCORES)
    assert fetch(fresh, request(recent=(30, 10, 20))).ids.tolist() == [40, 30]
    assert fetch(source, request(recent=())).ids.tolist() == []


# --- content ----------------------------------------------------------------------------


def test_content_nearest_by_features_including_items_nobody_engaged_with() -> None:
    items = ItemTable(np.array([1, 2, 3, 4]))
    features = np.array([[1, 0], [1, 1], [0, 1], [2, 0]], np.float32)
    source = ContentSource(ContentSourceConfig(recent=5), items, features)
    got = fetch(source, request(recent=(1,), k=2))
    assert got.ids.tolist() == [4, 2]  # item 1 is recent; cosine 1.0, then 1/sqrt(2)
    np.testing.assert_allclose(got.scores, [1.0, 1 / math.sqrt(2)], rtol=1e-6)
    # recent (1, 3) with decay 0.5: profile 0.5*[1,0] + [0,1]; item 2 is nearest.
    source = ContentSource(ContentSourceConfig(recency_decay=0.5), items, features)
    got = fetch(source, request(recent=(1, 3)))
    assert got.ids.tolist() == [2, 4]
    assert fetch(source, request(recent=(99,))).ids.tolist() == []  # unknown item: no profile


# --- exploration ------------------------------------------------------------------------


def test_exploration_thompson_sampling_on_low_impression_items() -> None:
    state = MemoryState()
    asyncio.run(
        state.apply(
            StateUpdate(
                impressions=Counter({1: 200, 2: 50, 3: 50}),
                clicks=Counter({2: 50}),
            )
        )
    )
    items = ItemTable(np.array([1, 2, 3, 4, 5]))
    config = ExplorationSourceConfig(max_impressions=100)
    source = ExplorationSource(config, state, items, rng=np.random.default_rng(0))
    firsts = Counter()
    for _ in range(200):
        got = fetch(source, request(k=3, exclude=[5]))
        # 1 is explored enough (200 impressions), 5 is excluded; 2 = Beta(51, 1) always
        # beats 3 = Beta(1, 51).
        assert sorted(got.ids.tolist()) == [2, 3, 4]
        order = got.ids.tolist()
        assert order.index(2) < order.index(3)
        assert (np.diff(got.scores) <= 0).all()
        firsts[order[0]] += 1
    assert firsts[2] > 150  # Beta(51, 1) vs Beta(1, 1): 2 is first with probability 51/52


def test_exploration_samples_a_pool_of_a_large_catalogue() -> None:
    items = ItemTable(np.arange(1000, dtype=np.int64))
    source = ExplorationSource(
        ExplorationSourceConfig(pool=50), MemoryState(), items, rng=np.random.default_rng(1)
    )
    got = fetch(source, request(k=100))
    assert len(got.ids) == 50 and len(set(got.ids.tolist())) == 50


# --- social -----------------------------------------------------------------------------


def test_social_recent_items_of_followees(tmp_path: Path) -> None:
    path = tmp_path / "follows.txt"
    path.write_text("# follower followee\n1 2\n1,3\n2 1\n1 2\n\n")
    graph = FileFollowGraph.load(path)
    assert graph.followees(1) == [2, 3] and len(graph) == 3
    state = MemoryState()
    asyncio.run(state.apply(StateUpdate(recent={2: [10, 11], 3: [11, 12]})))
    source = SocialSource(SocialSourceConfig(recency_decay=0.5), state, graph)
    got = fetch(source, request(user=1))
    # 11: newest of user 2 (1) + second newest of user 3 (0.5); 12: 1; 10: 0.5.
    assert got.ids.tolist() == [11, 12, 10]
    np.testing.assert_allclose(got.scores, [1.5, 1.0, 0.5])
    assert fetch(source, request(user=1, exclude=[12])).ids.tolist() == [11, 10]
    assert fetch(source, request(user=3)).ids.tolist() == []  # follows nobody


def test_social_graph_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("1 2\n1 two\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: expected"):
        FileFollowGraph.load(path)
    with pytest.raises(ConfigError, match="cannot read follow graph"):
        FileFollowGraph.load(tmp_path / "absent.txt")


# --- popular and ann --------------------------------------------------------------------


def test_popular_in_order_without_excluded() -> None:
    source = PopularSource(PopularSourceConfig(), np.array([5, 3, 9, 1]))
    got = fetch(source, request(k=2, exclude=[3]))
    assert got.ids.tolist() == [5, 9]
    np.testing.assert_allclose(got.scores, [1.0, 0.5])


def test_ann_adapter_embeds_then_searches_and_drops_excluded() -> None:
    vectors = np.eye(4, dtype=np.float32)
    ids = np.array([100, 101, 102, 103])
    calls: list[tuple[int, int, list[int]]] = []

    async def embed(user_id: int, ctx: RequestContext) -> np.ndarray:
        return vectors[user_id] + 0.5 * vectors[(user_id + 1) % 4]

    async def search(
        vector: np.ndarray, k: int, exclude: np.ndarray, deadline: float, params: object
    ) -> Candidates:
        calls.append((k, len(vector), exclude.tolist()))
        scores = vectors @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        padded = np.concatenate([ids[order], [-1]])
        return Candidates(padded, np.concatenate([scores[order], [0]]), detail="coverage")

    source = AnnSource(AnnSourceConfig(), embed, search)
    got = fetch(source, request(user=1, k=3, exclude=[101]))
    assert calls == [(3, 4, [101])]
    assert got.ids.tolist() == [102, 100]  # 101 dropped (the searcher did not), pad gone
    assert got.detail == "coverage"


# --- shared helpers: membership, top k, row masks; trending against its definition ---------


def test_isin_sorted_equals_np_isin_on_both_paths() -> None:
    rng = np.random.default_rng(7)
    for n in (0, 1, 5, 300, SMALL_LOOKUP, SMALL_LOOKUP + 1, 3000):
        for e in (0, 1, 40, 2000):
            ids = rng.integers(-3, 2500, n)
            exclude = np.unique(rng.integers(0, 2500, e))
            got = isin_sorted(ids, exclude)
            assert got.dtype == bool and got.tolist() == np.isin(ids, exclude).tolist()


def test_first_not_in_keeps_order_and_looks_only_at_the_head() -> None:
    ids = np.array([9, 4, 7, 1, 8, 2, 6], np.int64)
    assert ids[first_not_in(ids, 3, np.array([4, 7], np.int64))].tolist() == [9, 1, 8]
    assert ids[first_not_in(ids, 3, np.empty(0, np.int64))].tolist() == [9, 4, 7]
    assert ids[first_not_in(ids, 10, np.array([1, 2, 6, 7, 8, 9], np.int64))].tolist() == [4]


def test_top_k_equals_a_full_sort() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(0, 60))
        ids = rng.permutation(np.arange(-2, 80))[:n].astype(np.int64)  # distinct, some < 0
        scores = rng.integers(0, 6, n).astype(np.float64)  # many ties
        scores[rng.random(n) < 0.1] = -np.inf
        exclude = np.unique(rng.integers(0, 80, int(rng.integers(0, 15))))
        k = int(rng.integers(1, 20))
        got = top_k(ids, scores, k, exclude)
        want = sorted(
            (-s, i)
            for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
            if i >= 0 and math.isfinite(s) and i not in set(exclude.tolist())
        )[:k]
        assert got.ids.tolist() == [i for _, i in want]
        assert got.scores.tolist() == [-s for s, _ in want]
        assert got.ids.dtype == np.int64 and got.scores.dtype == np.float32


def test_item_table_top_k_leaves_out_excluded_rows_as_top_k_does() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        table = ItemTable(rng.permutation(np.arange(100, 100 + n)).astype(np.int64))
        scores = rng.integers(0, 6, n).astype(np.float32)  # many ties
        a = rng.integers(95, 100 + n + 5, int(rng.integers(0, 15)))  # some ids unknown
        b = rng.integers(95, 100 + n + 5, int(rng.integers(0, 4)))
        k = int(rng.integers(1, 20))
        got = table.top_k(scores, k, a, b)
        want = top_k(table.ids, scores, k, np.union1d(a, b).astype(np.int64))
        assert got.ids.tolist() == want.ids.tolist()
        assert got.scores.tolist() == want.scores.tolist()
    assert scores.min() >= 0  # the caller's scores are not written to


def test_item_table_row_mask() -> None:
    table = ItemTable(np.array([30, 10, 20, 40]))
    assert table.row_mask(np.array([10, 40, 99])).tolist() == [False, True, False, True]
    assert table.row_mask(np.empty(0, np.int64)).tolist() == [False] * 4


def test_exploration_never_shown_items_draw_uniformly_and_excluded_stay_out() -> None:
    items = ItemTable(np.arange(4000, dtype=np.int64))
    source = ExplorationSource(
        ExplorationSourceConfig(pool=3000), MemoryState(), items, rng=np.random.default_rng(2)
    )
    exclude = np.arange(0, 4000, 2, dtype=np.int64)  # every even id
    got = fetch(source, request(k=3000, exclude=exclude.tolist()))
    assert len(got.ids) > 1000 and (got.ids % 2 == 1).all()  # the odd ones of the pool
    assert len(set(got.ids.tolist())) == len(got.ids)
    # Beta(1, 1) is uniform on [0, 1): its mean and quartiles.
    assert abs(float(got.scores.mean()) - 0.5) < 0.05
    assert abs(float(np.quantile(got.scores, 0.25)) - 0.25) < 0.05
    assert ((got.scores >= 0) & (got.scores < 1)).all()


def test_trending_merges_seed_and_live_tops_as_defined() -> None:
    rng = np.random.default_rng(5)
    for _ in range(120):
        n_seed = int(rng.integers(1, 40))
        events = np.stack(
            [rng.integers(0, 25, n_seed), rng.integers(0, 100, n_seed), np.full(n_seed, 7)],
            axis=1,
        )
        state = MemoryState()
        source = TrendingSource(
            TrendingSourceConfig(half_life_s=H),
            state,
            Regions({}),
            seed_counts(events, Regions({}), H),
        )
        live = [
            (int(rng.integers(0, 25)), float(rng.integers(0, 100)), float(rng.choice([1, 2])))
            for _ in range(int(rng.integers(0, 30)))
        ]
        updates = [u for i, t, w in live for u in source.updates(99, "", i, w, t)]
        asyncio.run(state.apply(StateUpdate(trending=updates)))
        exclude = sorted(set(rng.integers(0, 25, int(rng.integers(0, 14))).tolist()))
        k = int(rng.integers(1, 12))
        got = fetch(source, request(user=99, k=k, now=100, exclude=exclude))
        # The definition: candidates = the live top m and the seed's top k not excluded
        # (the union of each part's top, not the exact top of the sum), less the excluded;
        # each scored by its whole decayed count (seed + live). m = k + min(e, k), doubled
        # while fewer than k of the live top m are not excluded, up to k + e.
        seed_events = [(int(i), float(t), 1.0) for i, t, _ in events]
        total = {i: decayed_log2(seed_events + live, i, 100) for i, _, _ in seed_events + live}
        seed_l = {i: decayed_log2(seed_events, i, 100) for i, _, _ in seed_events}
        live_l = {i: decayed_log2(live, i, 100) for i, _, _ in live}
        live_rank = sorted(live_l, key=lambda i: (-live_l[i], i))
        m = k + min(len(exclude), k)
        while len(live_rank) > m < k + len(exclude):
            if sum(i not in exclude for i in live_rank[:m]) >= k:
                break
            m = min(k + len(exclude), 2 * m)
        live_top = live_rank[:m]
        seed_top = [i for i in sorted(seed_l, key=lambda i: (-seed_l[i], i)) if i not in exclude]
        candidates = (set(live_top) | set(seed_top[:k])) - set(exclude)
        ranked = sorted(candidates, key=lambda i: (-total[i], i))[:k]
        assert len(got.ids) == len(ranked)
        np.testing.assert_allclose(got.scores, [total[i] for i in got.ids.tolist()], rtol=1e-5)
        np.testing.assert_allclose(got.scores, [total[i] for i in ranked], rtol=1e-5)
