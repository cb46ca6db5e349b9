"""Engagement ingestion (``Retrieval.RecordEngagement``): a batch of events -> one atomic
state update, and the caches of the users in it dropped.

Per event type (the ``EventType`` enum): an impression counts an impression of the item
(exploration); a click, view or like is an engagement: the item joins the user's recent
items (the user tower's context on the next request) and seen set, counts in trending
(weight 1, a like 2) for the global scope, the user's zip region and the event's country,
counts a click in the item's exploration posterior, and is co-engaged with the user's
previous ``co_engagement.recent`` items (both directions).

The whole batch is checked before anything is applied: an unknown type, an item the bundle
does not know, a timestamp later than now + ``state.max_future_s`` (or negative) is
INVALID_ARGUMENT naming the event's index, and nothing of that batch is applied.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annfleet.errors import InvalidArgument
from annfleet.names import EVENT_TYPE_NAMES, event_type_value
from annfleet.router.caches import RouterCaches
from annfleet.router.sources import ItemTable
from annfleet.router.sources.trending import TrendingSource
from annfleet.router.state import StateStore, StateUpdate
from annfleet.v1 import retrieval_pb2

MAX_EVENTS = 10_000  # per batch
MAX_COUNTRY = 16


@dataclass(frozen=True)
class EventKind:
    engaged: bool  # recent items, seen set, trending, co-engagement, posterior click
    trending_weight: float


EVENT_KINDS: dict[int, EventKind] = {
    retrieval_pb2.EVENT_TYPE_IMPRESSION: EventKind(False, 0.0),
    retrieval_pb2.EVENT_TYPE_CLICK: EventKind(True, 1.0),
    retrieval_pb2.EVENT_TYPE_VIEW: EventKind(True, 1.0),
    retrieval_pb2.EVENT_TYPE_LIKE: EventKind(True, 2.0),
}


def event_type(name: str) -> int:
    """ "click" -> EVENT_TYPE_CLICK (the CLI's --type); InvalidArgument for another name."""
    try:
        return event_type_value(name)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def event_type_name(value: int) -> str:
    return EVENT_TYPE_NAMES.get(value, "unspecified")


@dataclass(frozen=True)
class Event:
    user_id: int
    item_id: int
    type: int  # EventType value
    timestamp: int = 0  # unix seconds; 0 = now
    country: str = ""

    @classmethod
    def from_proto(cls, e: retrieval_pb2.EngagementEvent) -> Event:
        return cls(int(e.user_id), int(e.item_id), int(e.type), int(e.timestamp), e.country)


def check_events(
    events: Sequence[Event], items: ItemTable, now: float, max_future_s: float
) -> list[Event]:
    """The events with ``timestamp`` 0 set to ``now``; InvalidArgument naming the first bad
    event's index otherwise."""
    if len(events) > MAX_EVENTS:
        raise InvalidArgument(f"{len(events)} events in one batch; at most {MAX_EVENTS}")
    known = items.contains(np.fromiter((e.item_id for e in events), np.int64, len(events)))
    out = []
    for i, (e, ok) in enumerate(zip(events, known, strict=True)):
        if e.type not in EVENT_KINDS:
            raise InvalidArgument(f"events[{i}]: unknown event type {e.type}")
        if not ok:
            raise InvalidArgument(f"events[{i}]: unknown item id {e.item_id} (not in the bundle)")
        if e.timestamp < 0:
            raise InvalidArgument(f"events[{i}]: negative timestamp {e.timestamp}")
        if e.timestamp > now + max_future_s:
            raise InvalidArgument(
                f"events[{i}]: timestamp {e.timestamp} is {e.timestamp - now:.0f} s in the "
                f"future (at most {max_future_s:g} s allowed)"
            )
        if len(e.country) > MAX_COUNTRY or not e.country.isascii():
            raise InvalidArgument(f"events[{i}]: country {e.country[:32]!r} is not a country code")
        out.append(e if e.timestamp else Event(e.user_id, e.item_id, e.type, int(now), e.country))
    return out


def plan_update(
    events: Sequence[Event],
    recent_before: dict[int, tuple[int, ...]],
    trending: TrendingSource | None,
    co_window: int,
) -> StateUpdate:
    """Checked events -> the state update (events applied in timestamp order)."""
    update = StateUpdate()
    recent = {u: list(items) for u, items in recent_before.items()}
    for e in sorted(events, key=lambda e: e.timestamp):
        kind = EVENT_KINDS[e.type]
        if not kind.engaged:
            update.impressions[e.item_id] += 1
            continue
        update.clicks[e.item_id] += 1
        update.recent.setdefault(e.user_id, []).append(e.item_id)
        update.seen.setdefault(e.user_id, set()).add(e.item_id)
        update.last_ts[e.user_id] = max(update.last_ts.get(e.user_id, 0), e.timestamp)
        history = recent.setdefault(e.user_id, [])
        previous = [o for o in dict.fromkeys(reversed(history)) if o != e.item_id]
        for other in previous[:co_window]:  # the user's last co_window other items
            update.co_engagement[(other, e.item_id)] += 1
            update.co_engagement[(e.item_id, other)] += 1
        history.append(e.item_id)
        if trending is not None:
            update.trending += trending.updates(
                e.user_id, e.country, e.item_id, kind.trending_weight, e.timestamp
            )
    return update


async def record_engagement(
    events: Sequence[Event],
    *,
    store: StateStore,
    items: ItemTable,
    trending: TrendingSource | None,
    caches: RouterCaches | None,
    max_future_s: float,
    co_window: int,
    now: float | None = None,
) -> int:
    """Check, apply atomically, invalidate the users' caches; returns the events applied."""
    now = time.time() if now is None else now
    checked = check_events(events, items, now, max_future_s)
    if not checked:
        return 0
    engaged = sorted({e.user_id for e in checked if EVENT_KINDS[e.type].engaged})
    before = await store.users_recent(engaged, co_window) if co_window > 0 else {}
    await store.apply(plan_update(checked, before, trending, co_window))
    if caches is not None:
        for user in {e.user_id for e in checked}:
            caches.invalidate_user(user)
    return len(checked)
