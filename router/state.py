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
* live co-engagement: per item, counts of items engaged right after it by the same user,
  bounded: the ``co_neighbours`` most co-engaged are served, and an item keeps at most twice
  that many counts (past that the least co-engaged are dropped: the counts of a popular item
  are approximate, heavy-hitter style, and reading them costs the same after a year of
  traffic as after a day);
* blocked items (never served), with a version that changes whenever they do (the
  candidate-cache key carries it). A store that is down serves the blocked set it last read;
  the in-memory store can keep its set in a file (``blocked_file``), so a blocked item stays
  blocked over a router restart.

Writes come in one :class:`StateUpdate` per engagement batch and are applied atomically
(``MULTI``/``EXEC`` on Redis), so a batch is either all applied or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import TTLCache

from annfleet.arrays import load_npy
from annfleet.config import StateConfig
from annfleet.errors import AnnfleetError, ConfigError, Unavailable
from annfleet.files import save_npy_durable

log = logging.getLogger(__name__)

EMPTY_IDS = np.empty(0, np.int64)
EMPTY_IDS.setflags(write=False)


def frozen(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only: the store hands the same array to many requests."""
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class UserState:
    recent: tuple[int, ...] = ()  # most recent last
    seen: np.ndarray = field(default_factory=lambda: EMPTY_IDS)  # (s,) int64 sorted unique
    version: int = 0
    last_ts: int = 0  # unix seconds of the user's latest engagement (0 = none recorded)


@dataclass(frozen=True)
class Blocked:
    """The blocked items as a router read them."""

    ids: np.ndarray = field(default_factory=lambda: EMPTY_IDS)  # (b,) int64 sorted unique
    version: str = ""  # changes whenever ``ids`` do (same ids, same version in one store)


@dataclass(frozen=True)
class Neighbours:
    """One item's live co-engagement: neighbour ids (n,) int64 ascending, counts (n,) int64."""

    ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, counts: Mapping[int, int]) -> Neighbours:
        ids, values = by_key(counts, np.int64)
        return cls(frozen(ids), frozen(values))

    @classmethod
    def top(cls, counts: Counter[int], n: int) -> Neighbours:
        """The ``n`` largest of ``counts`` (all of them if there are no more)."""
        return cls.of(counts if len(counts) <= n else dict(counts.most_common(n)))

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self.ids.tolist(), self.counts.tolist(), strict=True))


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
    async def co_engaged(self, items: Sequence[int]) -> dict[int, Neighbours]:
        """Live co-engagement counts: item -> its neighbours and counts; items with none
        left out."""

    @abstractmethod
    async def blocked(self) -> Blocked:
        """The items never served, and their version."""

    @abstractmethod
    def last_blocked(self) -> Blocked:
        """The blocked items as last read, without I/O: what a router serves with while
        the store is down (none before the first read)."""

    @abstractmethod
    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None:
        """Block (or unblock) ``ids``; all or nothing."""

    async def user_and_blocked(self, user_id: int) -> tuple[UserState, Blocked]:
        """What every Retrieve reads first: :meth:`user` and :meth:`blocked` (one round
        trip where the store can)."""
        return await self.user(user_id), await self.blocked()

    @abstractmethod
    async def apply(self, update: StateUpdate) -> None:
        """Apply every part of ``update`` atomically (all or nothing)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def by_key(values: Mapping[int, Any], dtype: type[np.generic]) -> tuple[np.ndarray, np.ndarray]:
    """A mapping's keys (n,) int64 ascending and its values (n,) ``dtype`` beside them."""
    keys = np.fromiter(values.keys(), np.int64, len(values))
    vals = np.fromiter(values.values(), dtype, len(values))
    order = np.argsort(keys)
    return keys[order], vals[order]


def lookup(
    values: Mapping[int, float], ids: np.ndarray, default: float, dtype: type[np.generic]
) -> np.ndarray:
    """(n,) ``dtype``: ``values[id]`` for each of ``ids`` (n,) int64, ``default`` where absent.

    A few ids in a large mapping (a request's exploration pool or trending candidates in a
    scope with many live items): a dict lookup each. Else vectorised: a sorted copy of the
    mapping and one searchsorted."""
    out = np.full(len(ids), default, dtype)
    if not values or not len(ids):
        return out
    if len(ids) * 16 < len(values):
        return np.fromiter((values.get(i, default) for i in ids.tolist()), dtype, len(ids))
    keys, vals = by_key(values, dtype)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    hit = keys[pos] == ids
    out[hit] = vals[pos[hit]]
    return out


TOP_CACHE_MIN = 256  # the in-memory trending top is kept for at least this many items ...
TOP_CACHE_MAX = 8192  # ... and at most this many (a longer top is computed per request)


class TrendScope:
    """One trending scope of the in-memory store: item -> L, and its top items by (-L, id)
    kept sorted for the longest top asked so far (a power of two, TOP_CACHE_MIN to
    TOP_CACHE_MAX). L only grows (a log-add of a positive weight), so an event moves its
    item up that top, or into it past the last entry, in place — a request reads the top
    without sorting the scope (it took 23 ms a request at 100,000 live items, 320 ms at
    1,000,000)."""

    def __init__(self) -> None:
        self.logs: dict[int, float] = {}
        self._size = 0  # capacity of the cached top; 0 = none cached yet
        self._len = 0  # entries in it (fewer than _size only while the scope is smaller)
        self._ids = EMPTY_IDS
        self._neg = np.empty(0, np.float64)  # -L, ascending

    def add(self, item: int, x: float) -> None:
        old = self.logs.get(item)
        new = log2_add(-math.inf if old is None else old, x)
        self.logs[item] = new
        if self._size:
            self._place(item, old, new)

    def _beats_last(self, item: int, value: float) -> bool:
        last = self._len - 1
        return (value, -item) > (-float(self._neg[last]), -int(self._ids[last]))

    def _place(self, item: int, old: float | None, new: float) -> None:
        n, ids, neg = self._len, self._ids, self._neg
        full = n == self._size
        if full and not self._beats_last(item, new):
            return  # below the last of a full top, and not in it (L only grows)
        at = int(np.searchsorted(neg[:n], -new, side="left"))
        tied = int(np.searchsorted(neg[:n], -new, side="right"))
        if tied > at:  # equal L: smaller ids first
            at += int(np.count_nonzero(ids[at:tied] < item))
        was = -1  # its place in the top before, at or after ``at`` (it only moves up)
        if old is not None and (not full or self._beats_last(item, old) or ids[n - 1] == item):
            found = np.flatnonzero(ids[at:n] == item)
            was = at + int(found[0]) if len(found) else -1
        end = was if was >= 0 else min(n, self._size - 1)  # [at, end) moves down one place
        ids[at + 1 : end + 1] = ids[at:end]
        neg[at + 1 : end + 1] = neg[at:end]
        ids[at], neg[at] = item, -new
        if was < 0 and not full:
            self._len = n + 1

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` items with the largest L, ties by smaller id: ids, L."""
        if n > TOP_CACHE_MAX:
            return self._sorted(n)
        if n > self._size:
            self._size = min(TOP_CACHE_MAX, max(TOP_CACHE_MIN, 1 << (n - 1).bit_length()))
            ids, logs = self._sorted(self._size)
            self._len = len(ids)
            self._ids = np.empty(self._size, np.int64)
            self._neg = np.empty(self._size, np.float64)
            self._ids[: self._len], self._neg[: self._len] = ids, -logs
        m = min(n, self._len)
        return self._ids[:m].copy(), -self._neg[:m]

    def _sorted(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter(self.logs, np.int64, len(self.logs))
        logs = np.fromiter(self.logs.values(), np.float64, len(self.logs))
        if len(logs) > n:  # the n largest and their ties at the cut, then the exact order
            cut = np.partition(logs, len(logs) - n)[len(logs) - n]
            ids, logs = ids[logs >= cut], logs[logs >= cut]
        order = np.lexsort((ids, -logs))[:n]
        return ids[order], logs[order]


def read_blocked_file(path: Path) -> np.ndarray:
    """(b,) int64 sorted unique: the blocked items kept in ``path`` (none if it does not
    exist). ConfigError for a file that is not a .npy of integer ids: a router that cannot
    tell which items are blocked does not start (it would serve them)."""
    what = f"blocked items file {path}"
    if not path.parent.is_dir():
        raise ConfigError(f"{what}: its directory {path.parent} does not exist")
    try:
        ids = load_npy(path)
    except FileNotFoundError:
        return EMPTY_IDS
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{what}: not a readable .npy ({exc}); fix or remove it") from exc
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ConfigError(
            f"{what}: holds a {ids.dtype} array of shape {ids.shape}, not (n,) integer item "
            "ids; fix or remove it"
        )
    return np.unique(ids.astype(np.int64))


class MemoryState(StateStore):
    """This process only (what ``make up`` uses): lost on restart and not shared, except the
    blocked items when ``blocked_file`` is given (read at start, rewritten at every change)."""

    def __init__(
        self,
        recent_len: int = 50,
        blocked_file: Path | None = None,
        co_neighbours: int = StateConfig.co_neighbours,
    ) -> None:
        self.recent_len = recent_len
        self.co_neighbours = co_neighbours
        self._recent: dict[int, list[int]] = {}
        self._seen: dict[int, set[int]] = {}
        self._seen_arrays: dict[int, np.ndarray] = {}  # user() answers, until the set changes
        self._version: Counter[int] = Counter()
        self._trending: dict[str, TrendScope] = {}
        self._impressions: Counter[int] = Counter()
        self._clicks: Counter[int] = Counter()
        self._co: dict[int, Counter[int]] = {}
        self._co_arrays: dict[int, Neighbours] = {}  # co_engaged's answers, until they change
        self.blocked_file = blocked_file
        # built when the set changes (every Retrieve reads it); the version counts changes
        self._blocked = Blocked(
            frozen(read_blocked_file(blocked_file)) if blocked_file else EMPTY_IDS, "m0"
        )
        self._blocked_changes = 0
        self._blocked_change = asyncio.Lock()
        self._last_ts: dict[int, int] = {}

    async def user(self, user_id: int) -> UserState:
        seen = self._seen_arrays.get(user_id)
        if seen is None:  # sorted once per change of the user's seen set, not per request
            items = self._seen.get(user_id)
            seen = frozen(np.array(sorted(items), np.int64)) if items else EMPTY_IDS
            if items:
                self._seen_arrays[user_id] = seen
        return UserState(
            tuple(self._recent.get(user_id, ())),
            seen,
            self._version[user_id],
            self._last_ts.get(user_id, 0),
        )

    async def users_recent(self, user_ids: Sequence[int], n: int) -> dict[int, tuple[int, ...]]:
        return {u: tuple(self._recent[u][-n:]) for u in user_ids if self._recent.get(u)}

    async def trending_top(self, scope: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self._trending.get(scope)
        if counts is None or n <= 0:
            return EMPTY_IDS, np.empty(0, np.float64)
        return counts.top(n)

    async def trending_scores(self, scope: str, ids: np.ndarray) -> np.ndarray:
        counts = self._trending.get(scope)
        return lookup(counts.logs if counts else {}, ids, -math.inf, np.float64)

    async def posteriors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        imp = lookup(self._impressions, ids, 0, np.int64)
        clk = lookup(self._clicks, ids, 0, np.int64)
        return imp, clk

    async def co_engaged(self, items: Sequence[int]) -> dict[int, Neighbours]:
        out = {}
        for item in items:
            got = self._co_arrays.get(item)
            if got is None and self._co.get(item):  # built once per change of the item's counts
                got = self._co_arrays[item] = Neighbours.top(self._co[item], self.co_neighbours)
            if got is not None:
                out[item] = got
        return out

    async def blocked(self) -> Blocked:
        return self._blocked

    def last_blocked(self) -> Blocked:
        return self._blocked

    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None:
        change = np.unique(np.fromiter((int(i) for i in ids), np.int64))
        async with self._blocked_change:  # one change at a time: none is lost to another
            current = self._blocked.ids
            if blocked:
                new = np.union1d(current, change)
            else:
                new = np.setdiff1d(current, change, assume_unique=True)
            if np.array_equal(new, current):
                return
            if self.blocked_file is not None:  # the file first: a failed write changes nothing
                try:  # off the event loop: Retrieve goes on (with the set before) during the fsync
                    await asyncio.to_thread(save_npy_durable, self.blocked_file, new)
                except OSError as exc:
                    raise AnnfleetError(
                        f"blocked items file {self.blocked_file}: cannot write "
                        f"({exc.strerror or exc}); nothing changed"
                    ) from exc
            self._blocked_changes += 1
            self._blocked = Blocked(frozen(new), f"m{self._blocked_changes}")

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
            self._seen_arrays.pop(user, None)
        for user in update.users():
            self._version[user] += 1
        for user, ts in update.last_ts.items():
            self._last_ts[user] = max(self._last_ts.get(user, 0), ts)
        for scope, item, x in update.trending:
            self._trending.setdefault(scope, TrendScope()).add(item, x)
        self._impressions.update(update.impressions)
        self._clicks.update(update.clicks)
        for (a, b), n in update.co_engagement.items():
            counts = self._co.setdefault(a, Counter())
            counts[b] += n
            if len(counts) > 2 * self.co_neighbours:  # amortised: a sort per co_neighbours new
                self._co[a] = Counter(dict(counts.most_common(self.co_neighbours)))
            self._co_arrays.pop(a, None)


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

# KEYS[1] a co-engagement hash of the old layout (neighbour -> count), KEYS[2] the item's
# sorted set; ARGV[1] how many counts an item keeps. Adds the hash into the sorted set,
# deletes it and trims the set, in one step (routers starting together migrate safely).
_MIGRATE_CO = """
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  redis.call('ZINCRBY', KEYS[2], flat[i + 1], flat[i])
end
redis.call('DEL', KEYS[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[1]) + 1))
return #flat / 2
"""
MIGRATION_TIMEOUT_S = 60.0  # socket timeout of the one-time migration's calls
CO_CACHE_TTL_S = 2.0  # a Redis store keeps items' live neighbours it read this long ...
CO_CACHE_ITEMS = 8192  # ... for at most this many items (least recently used go first)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a redis SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisState(StateStore):
    """Redis: several routers share it and a router restart loses nothing.

    Keys (under ``prefix``): ``recent:<user>`` list (newest first), ``seen:<user>`` set,
    ``ver:<user>`` counter, ``trend:<scope>`` sorted set of L, ``imp`` / ``clk`` hashes,
    ``conb:<item>`` sorted set of neighbour counts (trimmed to its ``2 x co_neighbours``
    largest at every write), ``blocked`` set and ``blocked:ver`` (a random token set with
    every change of it: a router reads the set again only when it moved).

    Before the counts were bounded, they were ``co:<item>`` hashes: :meth:`migrate` (run by
    :func:`open_state`) moves those into the sorted sets once per database.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "annfleet:",
        recent_len: int = 50,
        timeout_s: float = 0.05,
        co_neighbours: int = StateConfig.co_neighbours,
        co_cache_ttl_s: float = CO_CACHE_TTL_S,
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.recent_len = recent_len
        self.co_neighbours = co_neighbours
        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 1.0)
        )
        self._log2_add = self._redis.register_script(_LOG2_ADD)
        # Live neighbours read (None: the item has none), until CO_CACHE_TTL_S has passed or
        # this router records co-engagement of the item: the items a request's users engaged
        # with recently are much the same from one request to the next.
        self._co_cache: TTLCache[int, Neighbours | None] = TTLCache(CO_CACHE_ITEMS, co_cache_ttl_s)
        self._blocked = Blocked()  # as last read

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

    def _read_user(self, pipe: Any, user_id: int) -> None:
        """Queue the four reads :meth:`_user_of` turns into a UserState."""
        pipe.lrange(self._k("recent", user_id), 0, self.recent_len - 1)
        pipe.smembers(self._k("seen", user_id))
        pipe.get(self._k("ver", user_id))
        pipe.zscore(self._k("last_ts"), user_id)

    @staticmethod
    def _user_of(recent: Any, seen: Any, version: Any, last_ts: Any) -> UserState:
        return UserState(
            tuple(int(i) for i in reversed(recent)),
            np.array(sorted(int(i) for i in seen), np.int64) if seen else EMPTY_IDS,
            int(version or 0),
            int(last_ts or 0),
        )

    async def user(self, user_id: int) -> UserState:
        pipe = self._redis.pipeline(transaction=False)
        self._read_user(pipe, user_id)
        return self._user_of(*await self._run("read user", pipe.execute()))

    async def user_and_blocked(self, user_id: int) -> tuple[UserState, Blocked]:
        pipe = self._redis.pipeline(transaction=False)
        self._read_user(pipe, user_id)
        pipe.get(self._k("blocked", "ver"))
        *parts, token = await self._run("read user", pipe.execute())
        return self._user_of(*parts), await self._blocked_as_of(token)

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

    async def co_engaged(self, items: Sequence[int]) -> dict[int, Neighbours]:
        out: dict[int, Neighbours] = {}
        unread = []
        for item in items:
            try:
                got = self._co_cache[item]
            except KeyError:
                unread.append(item)
                continue
            if got is not None:
                out[item] = got
        if not unread:
            return out
        pipe = self._redis.pipeline(transaction=False)
        for item in unread:
            pipe.zrevrange(self._k("conb", item), 0, self.co_neighbours - 1, withscores=True)
        tops = await self._run("read co-engagement", pipe.execute())
        for item, top in zip(unread, tops, strict=True):
            got = Neighbours.of({int(b): int(n) for b, n in top}) if top else None
            self._co_cache[item] = got
            if got is not None:
                out[item] = got
        return out

    async def blocked(self) -> Blocked:
        token = await self._run("read blocked", self._redis.get(self._k("blocked", "ver")))
        return await self._blocked_as_of(token)

    async def _blocked_as_of(self, token: bytes | None) -> Blocked:
        """The blocked set whose version token was just read: the one in hand if it is
        that version, else the set read again."""
        if token is not None and token.decode() == self._blocked.version:
            return self._blocked
        pipe = self._redis.pipeline(transaction=True)  # the set and its token of one moment
        pipe.get(self._k("blocked", "ver"))
        pipe.smembers(self._k("blocked"))
        token, members = await self._run("read blocked", pipe.execute())
        ids = np.array(sorted(int(i) for i in members), np.int64) if members else EMPTY_IDS
        # No token (a set written before tokens, or by hand): a version from the contents.
        version = token.decode() if token is not None else f"h{hash(ids.tobytes())}"
        self._blocked = Blocked(frozen(ids), version)
        return self._blocked

    def last_blocked(self) -> Blocked:
        return self._blocked

    async def set_blocked(self, ids: Iterable[int], blocked: bool = True) -> None:
        members = [int(i) for i in ids]
        if not members:
            return
        pipe = self._redis.pipeline(transaction=True)
        (pipe.sadd if blocked else pipe.srem)(self._k("blocked"), *members)
        pipe.set(self._k("blocked", "ver"), uuid.uuid4().hex)
        await self._run("write blocked", pipe.execute())

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
            pipe.zincrby(self._k("conb", a), n, b)
        changed = sorted({a for a, _ in update.co_engagement})
        for a in changed:
            pipe.zremrangebyrank(self._k("conb", a), 0, -(2 * self.co_neighbours + 1))
        await self._run("apply engagement", pipe.execute())
        for a in changed:  # read anew by this router (others within CO_CACHE_TTL_S)
            self._co_cache.pop(a, None)

    async def migrate(self) -> int:
        """Move co-engagement counts kept as ``co:<item>`` hashes (before they were bounded)
        into the ``conb:<item>`` sorted sets, once per database (``schema:co`` records it);
        how many items were moved. Idempotent, and safe while other routers do the same.

        A router of the old layout still running beside a migrated one keeps writing hashes
        that no one reads: roll every router over (their other state is shared as before)."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        marker = self._k("schema", "co")
        if await self._run("read schema", self._redis.get(marker)) is not None:
            return 0  # every start but the first: no second connection
        slow: Any = aioredis.Redis.from_url(self.url, socket_timeout=MIGRATION_TIMEOUT_S)
        script = slow.register_script(_MIGRATE_CO)
        start, moved = len(self._k("co", "")), 0
        try:
            pattern = glob_escape(self._k("co", "")) + "*"
            async for key in slow.scan_iter(match=pattern, count=1000, _type="HASH"):
                item = key.decode()[start:]
                if item.lstrip("-").isdigit():  # else not an item's hash: left alone
                    await script(keys=[key, self._k("conb", item)], args=[2 * self.co_neighbours])
                    moved += 1
            await slow.set(marker, "conb")
        except (TimeoutError, RedisError, OSError) as exc:
            raise Unavailable(
                f"state store {self.url}: moving co-engagement counts failed after {moved} "
                f"items: {exc}"
            ) from exc
        finally:
            await slow.aclose()
        if moved:
            log.info("state store: co-engagement counts of %d items moved to sorted sets", moved)
        return moved

    async def close(self) -> None:
        await self._redis.aclose()


async def open_state(config: StateConfig, blocked_file: Path | None = None) -> StateStore:
    """The configured store; Redis is pinged first (UNAVAILABLE with the URL if it is down).
    ``blocked_file``: where the in-memory store keeps its blocked items (Redis keeps its own)."""
    if config.backend == "memory":
        return MemoryState(config.recent_len, blocked_file, config.co_neighbours)
    store = RedisState(
        config.url,
        prefix=config.prefix,
        recent_len=config.recent_len,
        timeout_s=config.timeout_s,
        co_neighbours=config.co_neighbours,
    )
    try:
        await store.ping()
        await store.migrate()
    except Unavailable:
        await store.close()
        raise
    log.info("state store: redis at %s (prefix %r)", config.url, config.prefix)
    return store
