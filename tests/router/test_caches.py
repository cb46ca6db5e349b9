"""The router's TTL caches: expiry, per-user invalidation, bundle change, hit/miss metrics."""

from __future__ import annotations

from annfleet.config import RouterConfig, SourcesConfig
from annfleet.metrics import CACHE_LOOKUPS
from annfleet.router.caches import RouterCaches, UserCache


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lookups(cache: str, result: str) -> float:
    return CACHE_LOOKUPS.labels(cache, result)._value.get()


def test_ttl_expiry_and_per_user_invalidation() -> None:
    clock = Clock()
    cache: UserCache[str] = UserCache("test", maxsize=100, ttl_s=300, timer=clock)
    hits, misses = lookups("test", "hit"), lookups("test", "miss")
    cache.put(1, "a", "x")
    cache.put(1, "b", "y")
    cache.put(2, "a", "z")
    assert cache.get(1, "a") == "x"
    assert cache.invalidate_user(1) == 2
    assert cache.get(1, "a") is None and cache.get(1, "b") is None
    assert cache.get(2, "a") == "z"
    clock.t = 301
    assert cache.get(2, "a") is None  # expired
    cache.put(3, "a", "w")  # a write expires old entries and forgets their users
    assert len(cache) == 1 and cache.invalidate_user(2) == 0
    assert lookups("test", "hit") - hits == 2 and lookups("test", "miss") - misses == 3


def test_eviction_keeps_the_user_index_bounded() -> None:
    cache: UserCache[int] = UserCache("evict", maxsize=3, ttl_s=300)
    for user in range(10):
        cache.put(user, "k", user)
    assert len(cache) == 3
    assert len(cache._by_user) == 3  # evicted users forgotten
    assert cache.get(9, "k") == 9 and cache.get(0, "k") is None


def test_router_caches_ttls_and_bundle_change() -> None:
    clock = Clock()
    caches = RouterCaches(RouterConfig(), SourcesConfig(), timer=clock)
    caches.bundle_changed("b1")
    caches.candidates.put(1, "k", "list")
    caches.embeddings.put(1, "k", "vector")
    clock.t = 301  # candidates live 5 minutes, embeddings an hour
    assert caches.candidates.get(1, "k") is None and caches.embeddings.get(1, "k") == "vector"
    caches.bundle_changed("b1")  # same bundle: kept
    assert caches.embeddings.get(1, "k") == "vector"
    caches.bundle_changed("b2")
    assert caches.embeddings.get(1, "k") is None and len(caches.embeddings) == 0


def test_recent_lists_the_most_recently_served_users_first() -> None:
    clock = Clock()
    cache: UserCache[str] = UserCache("recent", maxsize=100, ttl_s=300, timer=clock)
    cache.put(1, "a", "x")
    cache.put(2, "a", "y")
    cache.put(3, "a", "z")
    cache.put(1, "b", "x2")  # user 1 served again (a put)
    assert cache.get(2, "a") == "y"  # user 2 served again (a hit)
    assert cache.get(3, "missing") is None  # a miss does not count as served
    assert [u for u, _ in cache.recent(2)] == [2, 1, 1]  # two users, all their entries
    assert [u for u, _ in cache.recent(3)] == [2, 1, 1, 3]
    assert {k for u, k in cache.recent(3) if u == 1} == {"a", "b"}
    assert cache.recent(0) == []
    clock.t = 200
    cache.put(4, "a", "w")
    clock.t = 301  # every entry but user 4's has expired
    assert cache.recent(10) == [(4, "a")]
