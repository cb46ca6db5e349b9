"""The router's caches (cachetools TTL + LRU): user embeddings and blended candidates.

Both are keyed by user and by a request key that starts with the bundle id, so a bundle
change never serves a stale entry (and :meth:`RouterCaches.bundle_changed` frees them);
a user's engagement drops that user's entries at once (:meth:`RouterCaches.invalidate_user`).
Hits and misses are counted in ``annfleet_router_cache_lookups{cache, result}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

from annfleet.config import RouterConfig, SourcesConfig
from annfleet.metrics import CACHE_LOOKUPS

V = TypeVar("V")
_Key = tuple[int, Hashable]


class _IndexedTTLCache(TTLCache[_Key, Any]):
    """A TTLCache that tells its owner about every entry it expires or evicts."""

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float], gone: Callable[[_Key], None]
    ) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self._gone = gone

    def expire(self, time: float | None = None) -> list[tuple[_Key, Any]]:
        expired = list(super().expire(time))
        for key, _ in expired:
            self._gone(key)
        return expired

    def popitem(self) -> tuple[_Key, Any]:
        key, value = super().popitem()
        self._gone(key)
        return key, value


class UserCache(Generic[V]):
    """Entries keyed (user id, request key); all of one user's entries can be dropped, and
    the users most recently served are known (:meth:`recent`: a rollout's cache warm-up)."""

    def __init__(
        self, name: str, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._by_user: dict[int, set[Hashable]] = {}
        self._cache = _IndexedTTLCache(max(maxsize, 1), ttl_s, timer, self._forget)
        self.enabled = maxsize > 0 and ttl_s > 0

    def _forget(self, key: _Key) -> None:
        keys = self._by_user.get(key[0])
        if keys is not None:
            keys.discard(key[1])
            if not keys:
                del self._by_user[key[0]]

    def get(self, user_id: int, key: Hashable) -> V | None:
        value = self._cache.get((user_id, key)) if self.enabled else None
        CACHE_LOOKUPS.labels(self.name, "miss" if value is None else "hit").inc()
        if value is not None:
            keys = self._by_user.pop(user_id, None)
            if keys is not None:
                self._by_user[user_id] = keys  # most recently served last
        return value

    def put(self, user_id: int, key: Hashable, value: V) -> None:
        if not self.enabled:
            return
        self._cache[(user_id, key)] = value
        keys = self._by_user.pop(user_id, None)
        self._by_user[user_id] = keys if keys is not None else set()
        self._by_user[user_id].add(key)

    def recent(self, users: int) -> list[tuple[int, Hashable]]:
        """The keys of the ``users`` users most recently served (a hit or a put), most
        recent first; expired entries left out."""
        out: list[tuple[int, Hashable]] = []
        if users <= 0:
            return out
        self._cache.expire()
        for n, user_id in enumerate(reversed(self._by_user)):
            if n >= users:
                break
            out.extend((user_id, key) for key in self._by_user[user_id])
        return out

    def invalidate_user(self, user_id: int) -> int:
        """Drop every entry of ``user_id``; returns how many there were."""
        keys = self._by_user.pop(user_id, set())
        for key in keys:
            self._cache.pop((user_id, key), None)
        return len(keys)

    def clear(self) -> None:
        self._cache.clear()
        self._by_user.clear()

    def __len__(self) -> int:
        return len(self._cache)


class RouterCaches:
    """User embeddings (``router.user_cache_*``, 1 h) and blended candidates
    (``sources.candidate_cache_*``, 5 min) of the bundle being served."""

    def __init__(
        self,
        router: RouterConfig,
        sources: SourcesConfig,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.embeddings: UserCache[Any] = UserCache(
            "embedding", router.user_cache_size, router.user_cache_ttl_s, timer
        )
        self.candidates: UserCache[Any] = UserCache(
            "candidates", sources.candidate_cache_size, sources.candidate_cache_ttl_s, timer
        )
        self.bundle_id = ""

    def bundle_changed(self, bundle_id: str) -> None:
        """Call when the served bundle changes: every entry of the old one goes."""
        if bundle_id != self.bundle_id:
            self.embeddings.clear()
            self.candidates.clear()
            self.bundle_id = bundle_id

    def invalidate_user(self, user_id: int) -> None:
        self.embeddings.invalidate_user(user_id)
        self.candidates.invalidate_user(user_id)
