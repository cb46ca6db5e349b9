"""The state store contract, run against the in-memory store and a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import RedisServer

from annfleet.config import StateConfig
from annfleet.errors import Unavailable
from annfleet.router.state import RedisState, StateStore, StateUpdate, log2_add

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
        assert await store.co_engaged([1, 2, 4]) == {1: {2: 2, 3: 1}, 2: {1: 2}}
        await store.set_blocked([9, 4])
        await store.set_blocked([4], blocked=False)
        assert (await store.blocked()).tolist() == [9]
        await store.close()

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
