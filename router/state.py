"""Live state the routers share, behind one interface: an in-memory default and Redis.

What is kept (item and user ids are the bundle's int64 ids; nothing depends on a bundle):

* per user: recent items (most recent last, at most ``recent_len``), the seen set, and a
  version bumped by every engagement (part of the candidate-cache key, so a cached list is
  not served after the user engaged, whichever router recorded it);
* trending: per scope key, ``L = log2(sum_i w_i * 2 ** (t_i / half_life))`` over live events
  (weight w_i at unix time t_i). The decayed count at time ``now`` is
  ``2 ** (L - now / half_life)``: one number per item, updated with a log-add, never
  rescanned, and ranking by L ranks by decayed count at any time;
* exploration posteriors: impressions and clicks per item;
* live co-engagement: per item, counts of items engaged right after it by the same user;
* blocked items (never served).

Writes come in one :class:`StateUpdate` per engagement batch and are applied atomically
(``MULTI``/``EXEC`` on Redis), so a batch is either all applied or not at all.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annfleet.config import StateConfig
from annfleet.errors import Unavailable

log = logging.getLogger(__name__)

EMPTY_IDS = np.empty(0, np.int64)


@dataclass(frozen=True)
class UserState:
    recent: tuple[int, ...] = ()  # most recent last
    seen: np.ndarray = field(default_factory=lambda: EMPTY_IDS)  # (s,) int64 sorted unique
    version: int = 0
    last_ts: int = 0  # unix seconds of the user's latest engagement (0 = none recorded)


@dataclass
class StateUpdate:
    """Everything one engagement batch changes (see :meth:`StateStore.apply`)."""

    recent: dict[int, list[int]] = field(default_factory=dict)  # user -> items, oldest first
    seen: dict[int, set[int]] = field(default_factory=dict)  # user -> items
    trending: list[tuple[str, int, float]] = field(default_factory=list)  # (scope, item, log2 w)
    impressions: Counter[int] = field(default_factory=Counter)
    clicks: Counter[int] = field(default_factory=Counter)
    co_engagement: Counter[tuple[int, int]] = field(default_factory=Counter)  # (a, b) -> count
    last_ts: dict[int, int] = field(default_factory=dict)  # user -> latest engagement time

    def users(self) -> set[int]:
        return set(self.recent) | set(self.seen)

    def __bool__(self) -> bool:
        return bool(
            self.recent
            or self.seen
            or self.trending
            or self.impressions
            or self.clicks
            or self.co_engagement
        )


def log2_add(a: float, b: float) -> float:
    """log2(2**a + 2**b) without overflow."""
    if a == -math.inf:
        return b
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


class StateStore(ABC):
    """Async interface of the live state; see the module doc for what each part means."""

    @abstractmethod
    async def user(self, user_id: int) -> UserState: ...

    @abstractmethod
    async def users_recent(self, user_ids: Sequence[int], n: int) -> dict[int, tuple[int, ...]]:
        """Each user's last ``n`` items (most recent last); users with none are left out."""

    @abstractmethod
    async def trending_top(self, scope: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items with the largest L in ``scope``: ids (m,) int64, L (m,) float64."""

    @abstractmethod
    async def trending_scores(self, scope: str, ids: np.ndarray) -> np.ndarray:
        """(n,) float64 L of ``ids`` in ``scope``; -inf where an item has no live event."""

    @abstractmethod
    async def posteriors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """impressions (n,) int64, clicks (n,) int64 of ``ids``."""

    @abstractmethod
    async def co_engaged(self, items: Sequence[int]) -> dict[int, dict[int, int]]:
        """Live co-engagement counts: item -> {neighbour: count}; items with none left out."""

    @abstractmethod
    async def blocked(self) -> np.ndarray:
        """(b,) int64 sorted: items never served."""

    @abstractmethod
    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None: ...

    @abstractmethod
    async def apply(self, update: StateUpdate) -> None:
        """Apply every part of ``update`` atomically (all or nothing)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def lookup(
    values: Mapping[int, float], ids: np.ndarray, default: float, dtype: type[np.generic]
) -> np.ndarray:
    """(n,) ``dtype``: ``values[id]`` for each of ``ids`` (n,) int64, ``default`` where absent.

    Vectorised (a sorted copy of the mapping and one searchsorted): a request looks up every
    item of the catalogue, and live counters hold at most that many entries."""
    out = np.full(len(ids), default, dtype)
    if not values or not len(ids):
        return out
    keys = np.fromiter(values.keys(), np.int64, len(values))
    vals = np.fromiter(values.values(), dtype, len(values))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    hit = keys[pos] == ids
    out[hit] = vals[pos[hit]]
    return out


class MemoryState(StateStore):
    """This process only (what ``make up`` uses): lost on restart, not shared."""

    def __init__(self, recent_len: int = 50) -> None:
        self.recent_len = recent_len
        self._recent: dict[int, list[int]] = {}
        self._seen: dict[int, set[int]] = {}
        self._version: Counter[int] = Counter()
        self._trending: dict[str, dict[int, float]] = {}
        self._impressions: Counter[int] = Counter()
        self._clicks: Counter[int] = Counter()
        self._co: dict[int, Counter[int]] = {}
        self._blocked: set[int] = set()
        # the set as a sorted array, built when it changes: every Retrieve reads it
        self._blocked_ids = EMPTY_IDS
        self._last_ts: dict[int, int] = {}

    async def user(self, user_id: int) -> UserState:
        seen = self._seen.get(user_id)
        return UserState(
            tuple(self._recent.get(user_id, ())),
            np.array(sorted(seen), np.int64) if seen else EMPTY_IDS,
            self._version[user_id],
            self._last_ts.get(user_id, 0),
        )

    async def users_recent(self, user_ids: Sequence[int], n: int) -> dict[int, tuple[int, ...]]:
        return {u: tuple(self._recent[u][-n:]) for u in user_ids if self._recent.get(u)}

    async def trending_top(self, scope: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self._trending.get(scope, {})
        if not counts or n <= 0:
            return EMPTY_IDS, np.empty(0, np.float64)
        ids = np.fromiter(counts, np.int64, len(counts))
        logs = np.fromiter(counts.values(), np.float64, len(counts))
        order = np.lexsort((ids, -logs))[:n]
        return ids[order], logs[order]

    async def trending_scores(self, scope: str, ids: np.ndarray) -> np.ndarray:
        return lookup(self._trending.get(scope, {}), ids, -math.inf, np.float64)

    async def posteriors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        imp = lookup(self._impressions, ids, 0, np.int64)
        clk = lookup(self._clicks, ids, 0, np.int64)
        return imp, clk

    async def co_engaged(self, items: Sequence[int]) -> dict[int, dict[int, int]]:
        return {i: dict(self._co[i]) for i in items if self._co.get(i)}

    async def blocked(self) -> np.ndarray:
        return self._blocked_ids

    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None:
        if blocked:
            self._blocked.update(int(i) for i in ids)
        else:
            self._blocked.difference_update(int(i) for i in ids)
        self._blocked_ids = np.array(sorted(self._blocked), np.int64)

    async def apply(self, update: StateUpdate) -> None:
        # No await below: nothing else runs on the loop while a batch is applied.
        for user, items in update.recent.items():
            recent = self._recent.setdefault(user, [])
            for item in items:  # an item engaged again moves to the most recent place
                if item in recent:
                    recent.remove(item)
                recent.append(item)
            del recent[: -self.recent_len]
        for user, seen in update.seen.items():
            self._seen.setdefault(user, set()).update(seen)
        for user in update.users():
            self._version[user] += 1
        for user, ts in update.last_ts.items():
            self._last_ts[user] = max(self._last_ts.get(user, 0), ts)
        for scope, item, x in update.trending:
            counts = self._trending.setdefault(scope, {})
            counts[item] = log2_add(counts.get(item, -math.inf), x)
        self._impressions.update(update.impressions)
        self._clicks.update(update.clicks)
        for (a, b), n in update.co_engagement.items():
            self._co.setdefault(a, Counter())[b] += n


# KEYS[i] is a sorted set; ARGV holds (member, x) pairs: score := log2(2^score + 2^x).
_LOG2_ADD = """
for i, key in ipairs(KEYS) do
  local member = ARGV[2 * i - 1]
  local x = tonumber(ARGV[2 * i])
  local cur = redis.call('ZSCORE', key, member)
  if cur then
    cur = tonumber(cur)
    local hi, lo = math.max(cur, x), math.min(cur, x)
    x = hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
  end
  redis.call('ZADD', key, x, member)
end
return #KEYS
"""


class RedisState(StateStore):
    """Redis: several routers share it and a router restart loses nothing.

    Keys (under ``prefix``): ``recent:<user>`` list (newest first), ``seen:<user>`` set,
    ``ver:<user>`` counter, ``trend:<scope>`` sorted set of L, ``imp`` / ``clk`` hashes,
    ``co:<item>`` hash of neighbour counts, ``blocked`` set.
    """

    def __init__(
        self, url: str, *, prefix: str = "annfleet:", recent_len: int = 50, timeout_s: float = 0.05
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.recent_len = recent_len
        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 1.0)
        )
        self._log2_add = self._redis.register_script(_LOG2_ADD)

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    async def _run(self, what: str, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except (TimeoutError, RedisError, OSError) as exc:
            raise Unavailable(f"state store {self.url}: {what} failed: {exc}") from exc

    async def ping(self) -> None:
        await self._run("ping", self._redis.ping())

    async def user(self, user_id: int) -> UserState:
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._k("recent", user_id), 0, self.recent_len - 1)
        pipe.smembers(self._k("seen", user_id))
        pipe.get(self._k("ver", user_id))
        pipe.zscore(self._k("last_ts"), user_id)
        recent, seen, version, last_ts = await self._run("read user", pipe.execute())
        return UserState(
            tuple(int(i) for i in reversed(recent)),
            np.array(sorted(int(i) for i in seen), np.int64) if seen else EMPTY_IDS,
            int(version or 0),
            int(last_ts or 0),
        )

    async def users_recent(self, user_ids: Sequence[int], n: int) -> dict[int, tuple[int, ...]]:
        if not user_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for u in user_ids:
            pipe.lrange(self._k("recent", u), 0, n - 1)
        lists = await self._run("read recent items", pipe.execute())
        return {
            u: tuple(int(i) for i in reversed(items))
            for u, items in zip(user_ids, lists, strict=True)
            if items
        }

    async def trending_top(self, scope: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n <= 0:
            return EMPTY_IDS, np.empty(0, np.float64)
        rows = await self._run(
            "read trending",
            self._redis.zrevrange(self._k("trend", scope), 0, n - 1, withscores=True),
        )
        ids = np.array([int(m) for m, _ in rows], np.int64)
        logs = np.array([float(s) for _, s in rows], np.float64)
        order = np.lexsort((ids, -logs))  # equal scores: smaller id first, as in memory
        return ids[order], logs[order]

    async def trending_scores(self, scope: str, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.empty(0, np.float64)
        values = await self._run(
            "read trending", self._redis.zmscore(self._k("trend", scope), [int(i) for i in ids])
        )
        return np.array([-math.inf if v is None else float(v) for v in values], np.float64)

    async def posteriors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) == 0:
            return EMPTY_IDS, EMPTY_IDS
        fields = [int(i) for i in ids]
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._k("imp"), fields)
        pipe.hmget(self._k("clk"), fields)
        imp, clk = await self._run("read posteriors", pipe.execute())
        return (
            np.array([int(v or 0) for v in imp], np.int64),
            np.array([int(v or 0) for v in clk], np.int64),
        )

    async def co_engaged(self, items: Sequence[int]) -> dict[int, dict[int, int]]:
        if not items:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for i in items:
            pipe.hgetall(self._k("co", i))
        maps = await self._run("read co-engagement", pipe.execute())
        return {
            i: {int(b): int(n) for b, n in m.items()} for i, m in zip(items, maps, strict=True) if m
        }

    async def blocked(self) -> np.ndarray:
        members = await self._run("read blocked", self._redis.smembers(self._k("blocked")))
        return np.array(sorted(int(i) for i in members), np.int64)

    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None:
        members = [int(i) for i in ids]
        if not members:
            return
        op = self._redis.sadd if blocked else self._redis.srem
        await self._run("write blocked", op(self._k("blocked"), *members))

    async def apply(self, update: StateUpdate) -> None:
        if not update:
            return
        pipe = self._redis.pipeline(transaction=True)
        for user, items in update.recent.items():
            key = self._k("recent", user)
            for item in items:
                pipe.lrem(key, 0, item)
                pipe.lpush(key, item)
            pipe.ltrim(key, 0, self.recent_len - 1)
        for user, seen in update.seen.items():
            pipe.sadd(self._k("seen", user), *sorted(seen))
        for user in sorted(update.users()):
            pipe.incr(self._k("ver", user))
        if update.last_ts:  # GT: a batch of older events never moves the time back
            pipe.zadd(self._k("last_ts"), {str(u): t for u, t in update.last_ts.items()}, gt=True)
        if update.trending:
            args: list[int | str] = []
            for _scope, item, x in update.trending:
                args += [item, repr(float(x))]
            keys = [self._k("trend", scope) for scope, _, _ in update.trending]
            # Queued in the transaction (redis-py loads the script before MULTI).
            await self._log2_add(keys=keys, args=args, client=pipe)
        for item, n in update.impressions.items():
            pipe.hincrby(self._k("imp"), item, n)
        for item, n in update.clicks.items():
            pipe.hincrby(self._k("clk"), item, n)
        for (a, b), n in update.co_engagement.items():
            pipe.hincrby(self._k("co", a), b, n)
        await self._run("apply engagement", pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()


async def open_state(config: StateConfig) -> StateStore:
    """The configured store; Redis is pinged first (UNAVAILABLE with the URL if it is down)."""
    if config.backend == "memory":
        return MemoryState(config.recent_len)
    store = RedisState(
        config.url, prefix=config.prefix, recent_len=config.recent_len, timeout_s=config.timeout_s
    )
    try:
        await store.ping()
    except Unavailable:
        await store.close()
        raise
    log.info("state store: redis at %s (prefix %r)", config.url, config.prefix)
    return store
