"""The state store contract, run against the in-memory store and a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import RedisServer

from annfleet.config import StateConfig
from annfleet.errors import AnnfleetError, ConfigError, Unavailable
from annfleet.router import state
from annfleet.router.state import (
    TOP_CACHE_MAX,
    MemoryState,
    RedisState,
    StateStore,
    StateUpdate,
    TrendScope,
    log2_add,
)

T = TypeVar("T")
_prefixes = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def update(**parts: object) -> StateUpdate:
    return StateUpdate(**parts)  # type: ignore[arg-type]


def test_user_state_round_trip(make_store: Callable[[], StateStore]) -> None:
    async def go() -> None:
        store = make_store()
        assert (await store.user(7)).recent == ()
        await store.apply(update(recent={7: [1, 2, 3]}, seen={7: {1, 2, 3}}))
        assert (await store.user(7)).seen.tolist() == [1, 2, 3]
        await store.apply(update(recent={7: [4, 2, 5]}, seen={7: {5}}))
        user = await store.user(7)
        # 2 moved to its latest place, at most recent_len=4 kept, most recent last.
        assert user.recent == (3, 4, 2, 5)
        assert user.seen.tolist() == [1, 2, 3, 5]
        assert user.version == 2
        assert (await store.user(8)).version == 0
        assert await store.users_recent([7, 8], 2) == {7: (2, 5)}
        await store.close()

    run(go())


def test_last_engagement_time_only_moves_forward(make_store: Callable[[], StateStore]) -> None:
    async def go() -> None:
        store = make_store()
        assert (await store.user(7)).last_ts == 0
        await store.apply(update(recent={7: [1]}, last_ts={7: 1_000}))
        await store.apply(update(recent={7: [2]}, last_ts={7: 500}))  # a late, older batch
        assert (await store.user(7)).last_ts == 1_000
        await store.apply(update(recent={7: [3]}, last_ts={7: 2_000, 8: 10}))
        assert (await store.user(7)).last_ts == 2_000 and (await store.user(8)).last_ts == 10
        await store.close()

    run(go())


def test_trending_log_add_and_top(make_store: Callable[[], StateStore]) -> None:
    async def go() -> None:
        store = make_store()
        # item 10: two events of log2 weight 3 -> log2(16) = 4; item 11: one of 3.5; 12: 1.
        await store.apply(update(trending=[("g", 10, 3.0), ("g", 11, 3.5), ("g", 12, 1.0)]))
        await store.apply(update(trending=[("g", 10, 3.0), ("other", 12, 9.0)]))
        ids, logs = await store.trending_top("g", 2)
        assert ids.tolist() == [10, 11]
        np.testing.assert_allclose(logs, [4.0, 3.5], rtol=0, atol=1e-12)
        scores = await store.trending_scores("g", np.array([12, 99, 10]))
        assert scores[0] == pytest.approx(1.0) and scores[1] == -math.inf
        assert scores[2] == pytest.approx(4.0)
        assert (await store.trending_top("empty", 5))[0].tolist() == []
        await store.close()

    run(go())


def test_posteriors_co_engagement_and_blocked(make_store: Callable[[], StateStore]) -> None:
    async def go() -> None:
        store = make_store()
        await store.apply(
            update(
                impressions=Counter({1: 3, 2: 1}),
                clicks=Counter({1: 1}),
                co_engagement=Counter({(1, 2): 2, (2, 1): 2, (1, 3): 1}),
            )
        )
        await store.apply(update(impressions=Counter({1: 2})))
        imp, clk = await store.posteriors(np.array([1, 2, 3]))
        assert imp.tolist() == [5, 1, 0] and clk.tolist() == [1, 0, 0]
        live = await store.co_engaged([1, 2, 4])
        assert {i: n.as_dict() for i, n in live.items()} == {1: {2: 2, 3: 1}, 2: {1: 2}}
        assert live[1].ids.tolist() == [2, 3]  # ascending ids, counts beside them
        await store.apply(update(co_engagement=Counter({(1, 2): 1, (1, 0): 4})))
        again = await store.co_engaged([1, 2])  # a changed item is read anew, the other kept
        assert again[1].as_dict() == {0: 4, 2: 3, 3: 1} and again[2].as_dict() == {1: 2}
        await store.set_blocked([9, 4])
        await store.set_blocked([4], blocked=False)
        assert (await store.blocked()).ids.tolist() == [9]
        await store.close()

    run(go())


def test_live_co_engagement_keeps_the_most_co_engaged(
    make_store: Callable[[], StateStore],
) -> None:
    """An item's live neighbours are its co_neighbours (3 here) most co-engaged, and it keeps
    at most twice that many counts, whatever the traffic: a neighbour dropped from the tail
    starts again from its new events."""

    async def go() -> None:
        store = make_store()
        # Item 1 co-engaged with 10..19, count = neighbour - 9 (1 to 10), in one batch and
        # one pair at a time.
        await store.apply(update(co_engagement=Counter({(1, b): b - 9 for b in range(10, 15)})))
        for b in range(15, 20):
            await store.apply(update(co_engagement=Counter({(1, b): b - 9})))
        assert (await store.co_engaged([1]))[1].as_dict() == {17: 8, 18: 9, 19: 10}
        assert await kept(store, 1) <= 6
        await store.apply(update(co_engagement=Counter({(1, 10): 100, (1, 18): 1})))
        assert (await store.co_engaged([1]))[1].as_dict() == {10: 100, 18: 10, 19: 10}
        assert await kept(store, 1) <= 6
        await store.close()

    run(go())


async def kept(store: StateStore, item: int) -> int:
    """How many live co-engagement counts ``store`` holds for ``item``."""
    if isinstance(store, MemoryState):
        return len(store._co[item])
    assert isinstance(store, RedisState)
    return int(await store._redis.zcard(store._k("conb", item)))


def test_redis_co_engagement_hashes_move_to_sorted_sets_once(redis_server: RedisServer) -> None:
    """Counts a router kept before they were bounded (``co:<item>`` hashes) are read by the
    new layout once a store opens: moved into the sorted sets (trimmed), the hashes gone,
    keys that are not an item's and keys of another prefix (glob characters in it taken
    literally) untouched, and done once."""
    import redis.asyncio as aioredis

    prefix = f"mig[{next(_prefixes)}]*:"
    other = prefix.replace("[", "x").replace("]*", "y")  # what the pattern unescaped matches
    config = StateConfig(backend="redis", url=redis_server.url, prefix=prefix, co_neighbours=2)

    async def go() -> None:
        raw = aioredis.Redis.from_url(redis_server.url)
        await raw.hset(f"{prefix}co:5", mapping={7: 3, 8: 1, 9: 2, 10: 6, 11: 5})
        await raw.hset(f"{prefix}co:6", mapping={5: 1})
        await raw.hset(f"{prefix}co:notes", mapping={"a": 1})
        await raw.hset(f"{other}co:5", mapping={7: 1})
        store = await state.open_state(config)
        live = await store.co_engaged([5, 6])
        assert {i: n.as_dict() for i, n in live.items()} == {5: {10: 6, 11: 5}, 6: {5: 1}}
        assert await raw.zcard(f"{prefix}conb:5") == 4  # 2 x co_neighbours kept
        assert not await raw.exists(f"{prefix}co:5", f"{prefix}co:6")
        assert await raw.exists(f"{prefix}co:notes", f"{other}co:5") == 2
        await raw.hset(f"{prefix}co:7", mapping={5: 1})  # written after: not moved again
        assert await store.migrate() == 0 and await raw.exists(f"{prefix}co:7")
        await store.close()
        await raw.aclose()

    run(go())


def test_redis_keeps_the_neighbours_it_read_briefly(redis_server: RedisServer) -> None:
    """A Redis store keeps the live co-engagement it read for co_cache_ttl_s: this router's
    own writes are read at once, another router's once that time has passed."""
    prefix = f"cocache{next(_prefixes)}:"

    def neighbours(live: dict[int, state.Neighbours]) -> dict[int, dict[int, int]]:
        return {i: n.as_dict() for i, n in live.items()}

    async def go() -> None:
        mine = RedisState(redis_server.url, prefix=prefix, timeout_s=2.0, co_cache_ttl_s=0.5)
        other = RedisState(redis_server.url, prefix=prefix, timeout_s=2.0)
        await mine.apply(update(co_engagement=Counter({(1, 2): 1})))
        assert neighbours(await mine.co_engaged([1, 5])) == {1: {2: 1}}  # 5: none yet
        await other.apply(update(co_engagement=Counter({(1, 2): 1, (5, 6): 1})))
        assert neighbours(await mine.co_engaged([1, 5])) == {1: {2: 1}}  # as read
        await mine.apply(update(co_engagement=Counter({(1, 3): 1})))  # its own: read anew
        assert neighbours(await mine.co_engaged([1, 5])) == {1: {2: 2, 3: 1}}
        await asyncio.sleep(0.6)
        assert neighbours(await mine.co_engaged([5])) == {5: {6: 1}}
        await mine.close()
        await other.close()

    run(go())


def test_redis_state_survives_a_router_restart(redis_server: RedisServer) -> None:
    """A new store (a restarted router, or another router) sees what the first one wrote."""
    prefix = f"restart{next(_prefixes)}:"

    async def write() -> None:
        store = RedisState(redis_server.url, prefix=prefix, timeout_s=2.0)
        await store.apply(
            update(
                recent={1: [5, 6]},
                seen={1: {5, 6}},
                trending=[("g", 5, 2.0)],
                impressions=Counter({6: 1}),
            )
        )
        await store.close()

    async def read() -> tuple[tuple[int, ...], list[int], list[int]]:
        store = RedisState(redis_server.url, prefix=prefix, timeout_s=2.0)
        user = await store.user(1)
        ids, _ = await store.trending_top("g", 3)
        imp, _ = await store.posteriors(np.array([6]))
        await store.close()
        return user.recent, ids.tolist(), imp.tolist()

    run(write())
    assert run(read()) == ((5, 6), [5], [1])


def test_redis_down_is_unavailable_naming_the_url() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    from annfleet.router.state import open_state

    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        run(open_state(StateConfig(backend="redis", url=url, timeout_s=0.5)))


def test_log2_add() -> None:
    assert log2_add(-math.inf, 3.0) == 3.0
    assert log2_add(2.0, 2.0) == pytest.approx(3.0)
    assert log2_add(1000.0, 0.0) == pytest.approx(1000.0)


@given(
    values=st.dictionaries(st.integers(-50, 50), st.integers(0, 1000), max_size=30),
    ids=st.lists(st.integers(-60, 60), max_size=40),
)
def test_lookup_matches_a_dict_get_per_id(values: dict[int, int], ids: list[int]) -> None:
    from annfleet.router.state import lookup

    arr = np.array(ids, np.int64)
    got = lookup(values, arr, -1, np.int64)
    assert got.dtype == np.int64
    assert got.tolist() == [values.get(i, -1) for i in ids]
    floats = lookup({k: v / 3 for k, v in values.items()}, arr, -np.inf, np.float64)
    assert floats.tolist() == [values[i] / 3 if i in values else -np.inf for i in ids]


def test_blocked_version_moves_with_the_set_only(make_store: Callable[[], StateStore]) -> None:
    """The version (the candidate-cache key's part) changes with every change of the set,
    another store over the same data (redis: another router) sees the change, and an
    unchanged set is not read again (the same object comes back)."""

    async def go() -> None:
        store, other = make_store(), make_store()
        empty = await store.blocked()
        assert empty.ids.tolist() == [] and store.last_blocked() is empty
        await store.set_blocked([9, 4, 9])
        first = await other.blocked()
        assert first.ids.tolist() == [4, 9] and first.version != empty.version
        assert await other.blocked() is first and other.last_blocked() is first
        await other.set_blocked([4], blocked=False)
        second = await store.blocked()
        assert second.ids.tolist() == [9] and second.version not in (first.version, "")
        await store.set_blocked([9, 4], blocked=True)
        await store.set_blocked([4], blocked=False)
        assert (await other.blocked()).ids.tolist() == [9]
        await store.close()
        await other.close()

    run(go())


def test_user_and_blocked_is_user_and_blocked(make_store: Callable[[], StateStore]) -> None:
    """The one read every Retrieve starts with (one round trip on redis) says what the two
    reads say, before and after the blocked set moves."""

    async def go() -> None:
        store, other = make_store(), make_store()
        await store.apply(update(recent={3: [7, 8]}, seen={3: {7, 8}}, last_ts={3: 99}))
        for change in ([5, 1], [2]):
            await other.set_blocked(change)
            user, blocked = await store.user_and_blocked(3)
            alone = await store.user(3)
            assert (user.recent, user.version, user.last_ts) == (alone.recent, alone.version, 99)
            assert user.seen.tolist() == alone.seen.tolist() == [7, 8]
            assert blocked.ids.tolist() == (await other.blocked()).ids.tolist()
            assert blocked is await store.blocked()  # unchanged: not read again
        nobody = (await store.user_and_blocked(4))[0]
        assert (nobody.recent, nobody.version, len(nobody.seen)) == ((), 0, 0)
        await store.close()
        await other.close()

    run(go())


def test_memory_blocked_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "blocked-items.npy"

    async def go() -> None:
        store = MemoryState(blocked_file=path)
        assert (await store.blocked()).ids.tolist() == [] and not path.exists()
        await store.set_blocked([30, 10, 20])
        await store.set_blocked([20], blocked=False)
        assert np.load(path, allow_pickle=False).tolist() == [10, 30]
        again = MemoryState(blocked_file=path)  # a restarted router
        assert (await again.blocked()).ids.tolist() == [10, 30]
        # A write that fails changes nothing, in memory or on disk.
        path.unlink()
        path.mkdir()  # os.replace cannot put a file there
        with pytest.raises(AnnfleetError, match=r"cannot write .*nothing changed"):
            await again.set_blocked([40])
        assert (await again.blocked()).ids.tolist() == [10, 30]
        path.rmdir()
        # Changes made at once (the file written off the event loop) are each kept.
        await asyncio.gather(*(again.set_blocked([i]) for i in range(40, 60)))
        await asyncio.gather(*(again.set_blocked([i], blocked=False) for i in range(40, 50)))
        expected = [10, 30, *range(50, 60)]
        assert (await again.blocked()).ids.tolist() == expected
        assert np.load(path, allow_pickle=False).tolist() == expected

    run(go())
    for content, message in [
        (b"garbage", "not a readable .npy"),
        (None, r"holds a float64 array of shape \(2,\), not \(n,\) integer item ids"),
    ]:
        if content is None:
            np.save(path, np.array([1.5, 2.0]))
        else:
            path.write_bytes(content)
        with pytest.raises(ConfigError, match=message):
            MemoryState(blocked_file=path)
    with pytest.raises(ConfigError, match=r"its directory .* does not exist"):
        MemoryState(blocked_file=tmp_path / "gone" / "blocked-items.npy")


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 40), st.sampled_from([-1.0, 0.0, 0.5, 3.0])),
            st.tuples(st.just("top"), st.integers(1, 20), st.just(0.0)),
        ),
        max_size=150,
    )
)
def test_trend_scope_top_is_a_full_sort_whatever_the_order_of_events(
    steps: list[tuple[str, int, float]],
) -> None:
    """The in-memory trending top, kept up to date event by event, is always what sorting
    the whole scope by (-L, id) gives (ties included: weights repeat). A top of 4 to 16
    entries here, so a scope of up to 41 items fills it, and a top of 17+ is sorted."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(state, "TOP_CACHE_MIN", 4)
        patch.setattr(state, "TOP_CACHE_MAX", 16)
        scope = TrendScope()
        for op, value, x in steps:
            if op == "add":
                scope.add(value, x)
                continue
            ids, logs = scope.top(value)
            every = sorted(scope.logs.items(), key=lambda kv: (-kv[1], kv[0]))[:value]
            assert ids.tolist() == [i for i, _ in every]
            assert logs.tolist() == [v for _, v in every]


def test_trend_scope_top_past_the_cache_and_a_large_scope() -> None:
    scope = TrendScope()
    rng = np.random.default_rng(3)
    items = rng.choice(10**7, 20_000, replace=False)
    for item, x in zip(items.tolist(), np.round(rng.random(20_000) * 8).tolist(), strict=True):
        scope.add(item, x)  # few distinct L: many ties at every cut
    expect = sorted(scope.logs.items(), key=lambda kv: (-kv[1], kv[0]))
    for n in (1, 300, TOP_CACHE_MAX + 1, 20_000, 30_000):
        assert scope.top(n)[0].tolist() == [i for i, _ in expect[:n]]
    scope.add(int(expect[-1][0]), 20.0)  # the last item jumps to the front
    assert scope.top(5)[0].tolist()[0] == expect[-1][0]


@given(
    st.lists(st.integers(-50, 50), max_size=30),
    st.lists(st.integers(-50, 50), max_size=60),
)
def test_union_sorted_is_union1d(small: list[int], big: list[int]) -> None:
    from annfleet.router.sources import union_sorted

    big_sorted = np.unique(np.array(big, np.int64))
    got = union_sorted(np.array(small, np.int64), big_sorted)
    assert got.dtype == np.int64
    assert got.tolist() == np.union1d(small, big_sorted).astype(np.int64).tolist()
