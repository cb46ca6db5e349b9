"""Candidate sources of ``Retrieve``: one small interface, one module per source.

A source turns a request (user, context, k, deadline) into candidates (ids, scores), best
first. Each is configured in the YAML (``sources:``) with a quota (share of k), a weight and
a latency budget; ``annfleet.router.blend`` runs them concurrently, drops the ones that miss
their budget and blends what came back.

Sources: ``ann`` (two-tower over the shards), ``trending``, ``co_engagement``, ``content``,
``exploration``, ``social``, ``popular``. A source's name is its ``Source`` enum name in
lower case (the wire code of its candidates).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annfleet.bundle import Bundle, shard_dirname
from annfleet.config import SourceSettings
from annfleet.router.users import RequestContext
from annfleet.v1 import retrieval_pb2

EMPTY_IDS = np.empty(0, np.int64)


def source_code(name: str) -> int:
    """The ``Source`` enum value of a source name ("co_engagement" -> SOURCE_CO_ENGAGEMENT)."""
    return int(retrieval_pb2.Source.Value(f"SOURCE_{name.upper()}"))


@dataclass(frozen=True)
class SourceRequest:
    """What a source is asked. ``context.recent_item_ids`` already holds the user's live
    recent items (state store) followed by the request's, most recent last."""

    user_id: int
    context: RequestContext
    k: int
    deadline: float  # absolute time.monotonic() seconds; the source's own budget included
    exclude: np.ndarray = field(default_factory=lambda: EMPTY_IDS)  # (e,) int64, sorted unique
    params: Any = None  # the request's SearchParams (the ANN source passes them on)
    # time.monotonic() when the request reached the router, and the seconds it had spent
    # on its way there as measured from the timeout its caller sent (``inbound``,
    # ``annfleet.queue_time``; 0 when unknown): each source's budget counts from
    # ``received - inbound`` (its caller's send; the shift is at most the budget), less
    # ``reply_margin`` (kept back to blend and reply), so a source that hangs holds the
    # whole Retrieve, as its caller sees it, to about its budget (README "Budgets").
    received: float = field(default_factory=time.monotonic)
    reply_margin: float = 0.0
    inbound: float = 0.0
    # the reply's way back as the caller reported it (``annfleet-return-ms``,
    # ``annfleet.return_time``; 0 when it sent none), also kept back from each budget, at
    # most ``return_max_share`` of it (``router.return_time_max_share``)
    return_time: float = 0.0
    return_max_share: float = 0.0
    # the user's last items as the bundle recorded them at training (oldest first; empty for
    # a user it does not know): a user with no live engagement yet still has a history
    history: tuple[int, ...] = ()

    @property
    def recent_items(self) -> tuple[int, ...]:
        """What the item-to-item sources start from: the bundle's history, then the live and
        the request's recent items (``context.recent_item_ids``), most recent last; an item
        may repeat (``last_unique`` keeps its latest place)."""
        return self.history + self.context.recent_item_ids

    @property
    def now(self) -> float:
        """Unix seconds of the request: the context's timestamp, else the wall clock."""
        return float(self.context.timestamp) if self.context.timestamp > 0 else time.time()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class Candidates:
    """ids (n,) int64 best first, scores (n,) float32 higher is better, n <= k."""

    ids: np.ndarray
    scores: np.ndarray
    detail: Any = None  # source-specific extras (the ANN's scatter result: coverage)

    @classmethod
    def empty(cls) -> Candidates:
        return cls(EMPTY_IDS, np.empty(0, np.float32))


class Source(ABC):
    """One candidate source. ``fetch`` must not block the event loop."""

    name: str = ""
    # Waits on other processes (the ANN: the shards): started first, and given a few loop
    # passes to send before the local sources, whose work is CPU on the router's loop.
    remote: bool = False

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self.code = source_code(self.name)

    @abstractmethod
    async def fetch(self, request: SourceRequest) -> Candidates:
        """The best ``request.k`` candidates not in ``request.exclude``."""


SMALL_LOOKUP = 512  # up to this many ids, membership by binary search beats np.isin


def isin_sorted(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """(n,) bool: which of ``ids`` (n,) int64 are in ``sorted_ids`` (e,) int64 sorted.

    Same answer as ``np.isin``: a binary search per id for a few hundred ids (a source's
    list against the request's exclusions: ~5x cheaper than ``np.isin``'s set-up), ``np.isin``
    (its lookup table) for more."""
    ids = np.asarray(ids, np.int64)
    if len(sorted_ids) == 0 or len(ids) == 0:
        return np.zeros(len(ids), bool)
    if len(ids) > SMALL_LOOKUP:
        return np.isin(ids, sorted_ids)
    pos = np.searchsorted(sorted_ids, ids)
    np.minimum(pos, len(sorted_ids) - 1, out=pos)
    return np.asarray(sorted_ids[pos] == ids)


def union_sorted(small: np.ndarray, big: np.ndarray) -> np.ndarray:
    """(m,) int64 sorted unique: the union of ``small`` (any order) and ``big`` (sorted
    unique), without sorting ``big`` again (the blocked set, up to 100,000s of ids): the
    new ids are inserted at their places, O(len(big)) and no sort."""
    small = np.unique(np.asarray(small, np.int64))
    if not len(big) or not len(small):
        return small if not len(big) else big
    pos = np.searchsorted(big, small)
    new = big[np.minimum(pos, len(big) - 1)] != small
    new |= pos == len(big)
    return np.insert(big, pos[new], small[new])


def first_not_in(ids: np.ndarray, n: int, sorted_ids: np.ndarray) -> np.ndarray:
    """Positions in ``ids`` of its first ``n`` entries not in ``sorted_ids`` (e,) sorted
    unique, in order: only the first n + e of ``ids`` are looked at (at most e of them are
    excluded)."""
    head = ids[: n + len(sorted_ids)]
    if not len(sorted_ids):
        return np.arange(len(head), dtype=np.int64)
    return np.flatnonzero(~isin_sorted(head, sorted_ids))[:n]


def top_k(
    ids: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray = EMPTY_IDS
) -> Candidates:
    """Best k of (ids (n,) int64 distinct, scores (n,)) with ids in ``exclude`` (sorted
    unique) or < 0 dropped; ties by smaller id. Scores of -inf are dropped too.

    Only the best k + len(exclude) valid scores (ties at the cut included) are filtered and
    sorted: at most len(exclude) of them are excluded."""
    keep = (ids >= 0) & np.isfinite(scores)
    ids, scores = ids[keep], scores[keep].astype(np.float32)  # ranked as float32
    cut = k + len(exclude)
    if 0 < cut < len(scores):
        kth = np.partition(scores, len(scores) - cut)[len(scores) - cut]
        top = scores >= kth
        ids, scores = ids[top], scores[top]
    if len(exclude):
        out = ~isin_sorted(ids, exclude)
        ids, scores = ids[out], scores[out]
    order = np.lexsort((ids, -scores))[:k]
    return Candidates(ids[order].astype(np.int64), scores[order])


class ItemTable:
    """The bundle's item ids in table row order (``ids``) and id -> row lookups, for the
    item tables whose rows are aligned with ``item_ids``."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, np.int64)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray | list[int] | tuple[int, ...]) -> np.ndarray:
        """(n,) int64 table rows of ``ids``; -1 for ids the bundle does not know."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == ids, self._order[pos], -1).astype(np.int64)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool."""
        return self.rows(ids) >= 0

    def row_mask(self, ids: np.ndarray) -> np.ndarray:
        """(N,) bool over the table's rows: True at the rows of ``ids`` (unknown ids ignored):
        membership of the whole catalogue in a few ids without an ``np.isin`` over it."""
        mask = np.zeros(len(self.ids), bool)
        rows = self.rows(ids)
        mask[rows[rows >= 0]] = True
        return mask

    def top_k(self, scores: np.ndarray, k: int, *excluded: np.ndarray) -> Candidates:
        """``top_k`` over the whole catalogue (``scores`` (N,) aligned with the rows), the
        ``excluded`` ids (any order; unknown ids ignored) left out by their rows: a few
        lookups instead of a membership test of the best k + e candidates."""
        scores = np.array(scores, np.float32)
        for ids in excluded:
            rows = self.rows(ids)
            scores[rows[rows >= 0]] = -np.inf
        return top_k(self.ids, scores, k)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ItemTable:
        """The ``item_ids`` table (the row order of item tables); else every shard's ids."""
        table = bundle.table("item_ids")
        if table is not None:
            return cls(np.asarray(table, np.int64))
        parts = [bundle.load_array(f"{shard_dirname(s)}/ids.npy") for s in range(bundle.num_shards)]
        return cls(np.concatenate(parts) if parts else EMPTY_IDS)


def last_unique(items: tuple[int, ...] | list[int], n: int) -> list[int]:
    """The last ``n`` distinct items (an item counted at its latest place), oldest first."""
    return list(dict.fromkeys(reversed(items)))[:n][::-1]


def recency_weights(n: int, decay: float) -> np.ndarray:
    """(n,) float64 weights of n items ordered oldest first: the newest gets 1, the one
    before it ``decay``, then decay**2, ..."""
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
