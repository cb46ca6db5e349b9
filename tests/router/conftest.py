"""Router test fixtures: a state-store factory over memory and a real redis-server."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from support import RedisServer

from annfleet.router.state import MemoryState, RedisState, StateStore

_prefixes = itertools.count()


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], StateStore]]:
    """A factory of stores over the same data (redis: a new connection, the same prefix, so
    a second store is another router or a restarted one); 4 recent items per user, 3 live
    co-engagement neighbours per item."""
    if request.param == "memory":
        store = MemoryState(recent_len=4, co_neighbours=3)
        yield lambda: store
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{next(_prefixes)}:"
    yield lambda: RedisState(
        server.url, prefix=prefix, recent_len=4, timeout_s=2.0, co_neighbours=3
    )
