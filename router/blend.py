"""The blender: many sources' ranked lists -> one list of k candidates.

``blend`` is a pure function with three modes (``sources.blend``):

``rrf`` (the default: weighted reciprocal rank fusion; candidates several sources agree on
rise to the top):

1. **filter**: every list loses padding (< 0), excluded ids (seen items, the request's
   ``exclude_ids``, blocked items: one sorted array) and its own repeats, and is cut to
   ``max(k, depth)`` (the sources were asked that many: ``asked``);
2. **score**: the candidate at rank r (0-based) of a source with weight w gets
   ``w / (rrf_c + r + 1)`` from it; its score is the sum over every source that returned it;
   its primary source is the one that gave the largest share. A candidate's sources (bit
   ``1 << code`` of its mask) are those that added to its score, its primary source, and a
   source whose floor or quota took it: a source with weight 0 (``popular``, a backfill) is
   recorded only where it supplied the candidate;
3. **floors**: sources in weight order (heaviest first) each make sure at least
   ``quota * k`` (largest-remainder rounding) of the list are among their first k candidates,
   adding the best-scored of those not yet taken;
4. **fill**: the rest of k is the best-scored candidates not yet taken, from every source
   (so a source that under-delivered, timed out or failed is made up for, and the list has k
   candidates whenever the sources together had that many);
5. the list is ordered by score (ties: primary source's weight order, the candidate's rank
   there, then id).

``learned`` (a fitted fusion, ``Fusion``: per source a table of log-odds by rank bucket,
one more for "not in this source's list", and one by the number of sources that returned
the candidate): as ``rrf`` but for the score, which is the fitted log-odds that the
candidate is one the user engages with next: ``bias + sum over the model's sources of
table[bucket of its rank] (or table[absent]) + agreement[sources that returned it]``. A
candidate's contributors are the model's sources that returned it; its primary source the
one whose table raised its score most over that source's "absent". Sources the model has
no table for add nothing (as weight 0 in ``rrf``). Filters, floors, fill and order as in
``rrf``; each source is asked ``max(k, depth)``.

``quota`` (fixed slots, the blender before ``rrf``):

1. **filter** as above, each list cut to k;
2. **score**: the candidate at rank r of a source with weight w scores ``w * (1 - r / k)``;
   a candidate several sources returned keeps its best score, and every source that returned
   it is recorded; its primary source is the one that gave the best score;
3. **quotas**: sources in weight order each take their next candidates not yet taken until
   they have added ``quota * k``;
4. **backfill**: what is left of k is filled with the best-scored candidates not yet taken;
5. ordered by score as above.

``run_sources`` runs sources concurrently, each within its budget: a source that misses it
is dropped for that request (cancelled, never waited for), one that fails likewise.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.config import SourcesConfig
from annfleet.errors import ConfigError
from annfleet.metrics import SOURCE_CANDIDATES, SOURCE_LATENCY, SOURCE_OUTCOMES
from annfleet.router.sources import Candidates, Source, SourceRequest

log = logging.getLogger(__name__)

# Loop passes the remote sources (``Source.remote``: the ANN) get before the local ones start:
# enough for the ANN's task to embed (cached), create its shard calls and for those to write
# their requests (the stream writer wakes one pass later).
HEAD_START_PASSES = 3
# The event loop's timers have a resolution of 1 ms (epoll; libuv under uvloop), so a wait
# for a budget ends up to 1 ms after it. A source still running this close to its budget is
# dropped then: at most this much before the budget rather than up to this much after it.
TIMER_SLACK_S = 1e-3

RRF = "rrf"
QUOTA = "quota"
LEARNED = "learned"
BLEND_MODES = (RRF, QUOTA, LEARNED)


@dataclass(frozen=True)
class Fusion:
    """A learned fusion's parameters (``sources.fusion``: a JSON file, see ``load``).

    ``edges``: bucket b holds ranks ``edges[b] <= r < edges[b + 1]`` (0-based ranks after the
    filters; ranks past the last edge fall in the last bucket), so ``len(edges) - 1``
    buckets. ``tables``: (source name, values) pairs, ``len(edges)`` values each: one per
    bucket, then the value of a candidate that source did not return. ``agreement``: the
    value by the number of the model's sources that returned the candidate (index
    ``min(n, len - 1)``; index 0 is never used). ``bias``: a constant (the scores are then
    log-odds)."""

    edges: tuple[int, ...]
    tables: tuple[tuple[str, tuple[float, ...]], ...]
    agreement: tuple[float, ...]
    bias: float = 0.0

    def __post_init__(self) -> None:
        edges = self.edges
        if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"fusion edges must start at 0 and increase, got {list(edges)}")
        for name, values in self.tables:
            if len(values) != len(edges):
                raise ValueError(
                    f"fusion table {name!r}: {len(edges)} values expected (one per bucket, "
                    f"then absent), got {len(values)}"
                )
        if len(self.agreement) < 2:
            raise ValueError("fusion agreement: at least 2 values expected")
        numbers = [v for _, t in self.tables for v in t] + [*self.agreement, self.bias]
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("fusion values must be finite numbers")

    def table(self, name: str) -> tuple[float, ...] | None:
        return next((t for n, t in self.tables if n == name), None)

    def bucket(self, ranks: np.ndarray) -> np.ndarray:
        """(n,) 0-based ranks -> (n,) bucket indices."""
        edges = np.asarray(self.edges, np.int64)
        b = np.searchsorted(edges, np.asarray(ranks, np.int64), side="right") - 1
        return np.clip(b, 0, len(edges) - 2)

    def as_json(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "tables": {n: list(t) for n, t in self.tables},
            "agreement": list(self.agreement),
            "bias": self.bias,
        }

    @classmethod
    def from_json(cls, data: Any) -> Fusion:
        """From ``{"edges": [...], "tables": {source: [...]}, "agreement": [...],
        "bias": x}`` (extra keys, e.g. how it was fitted, are ignored); ValueError when
        malformed."""
        try:
            return cls(
                tuple(int(e) for e in data["edges"]),
                tuple((str(n), tuple(float(v) for v in t)) for n, t in data["tables"].items()),
                tuple(float(v) for v in data["agreement"]),
                float(data.get("bias", 0.0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                "fusion parameters must be an object with edges (list of int), tables "
                f"(source -> list of float), agreement (list of float), bias: {exc!r}"
            ) from exc

    @classmethod
    def load(cls, path: str) -> Fusion:
        """The JSON file at ``path``; ConfigError (a ValueError) naming the key and the file
        when unreadable or malformed: `serve-router` says so and exits 2, no traceback."""
        where = f"sources.fusion: fusion parameters {path}"
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from exc
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class SourceList:
    """One source's answer for the blender: ids (n,) int64 best first (None = dropped)."""

    name: str
    code: int  # Source enum value: bit ``1 << code`` in the masks
    quota: float
    weight: float
    ids: np.ndarray | None


@dataclass(frozen=True)
class Blend:
    ids: np.ndarray  # (n,) int64, n <= k, best first
    scores: np.ndarray  # (n,) float32: rrf sum over sources / quota best source's score
    primary: np.ndarray  # (n,) uint8 Source code of the best source
    masks: np.ndarray  # (n,) uint32: bit 1 << code for every source that returned it
    counts: dict[str, int]  # source -> candidates it returned among the n (with sharing)
    dropped: dict[str, str] = field(default_factory=dict)  # source -> why (budget, error)
    details: dict[str, Any] = field(default_factory=dict)  # source -> Candidates.detail
    cached: bool = False  # served from the candidate cache
    # time.monotonic() when the wait for the sources ended (0: not run, a cached list), and
    # the deadline of the budget that ended it (0: it ended with an answer or a failure)
    sources_done: float = 0.0
    budget_end: float = 0.0


def slots(quotas: Sequence[float], k: int) -> list[int]:
    """Quota shares -> whole slots: floor(q * k) each, then the seats of round(sum * k) left
    go to the largest remainders (ties: earlier first); never more than k in all."""
    raw = [max(q, 0.0) * k for q in quotas]
    out = [math.floor(r + 1e-9) for r in raw]
    total = min(k, math.floor(sum(raw) + 0.5))
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: max(total - sum(out), 0)]:
        out[i] += 1
    return out


def asked(k: int, mode: str = RRF, depth: int = 0) -> int:
    """How many candidates each source is asked for a list of k: ``max(k, depth)`` in
    ``rrf`` and ``learned`` mode (deeper lists let agreement below rank k count), k in
    ``quota`` mode."""
    return k if mode == QUOTA else max(k, depth)


@dataclass(frozen=True)
class Blender:
    """How a router blends (``sources.blend``, ``sources.rrf_c``, ``sources.depth``,
    ``sources.fusion``)."""

    mode: str = RRF
    rrf_c: float = 60.0
    depth: int = 0
    fusion: Fusion | None = None  # learned mode's parameters

    @classmethod
    def from_config(cls, config: SourcesConfig) -> Blender:
        """ValueError when ``learned`` and its parameters cannot be loaded (read once per
        process and path: a bundle swap reuses them; a changed file needs a restart)."""
        fusion = _fusion(config.fusion) if config.blend == LEARNED else None
        return cls(config.blend, config.rrf_c, config.depth, fusion)

    def asked(self, k: int) -> int:
        return asked(k, self.mode, self.depth)


@functools.cache
def _fusion(path: str) -> Fusion:
    return Fusion.load(path)


def sorted_unique(ids: np.ndarray | None) -> np.ndarray:
    """(e,) int64 sorted unique (as given when it already is: the request's exclusions)."""
    ids = np.asarray(ids if ids is not None else [], np.int64).ravel()
    return ids if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()) else np.unique(ids)


def blend(
    lists: Sequence[SourceList],
    k: int,
    exclude: np.ndarray | None = None,
    dropped: dict[str, str] | None = None,
    *,
    mode: str = RRF,
    rrf_c: float = 60.0,
    depth: int = 0,
    fusion: Fusion | None = None,
) -> Blend:
    """Blend ``lists`` into at most k candidates (module doc). ``exclude`` (e,) int64;
    ``fusion`` the ``learned`` mode's parameters (required there, unused otherwise).

    Vectorised over all the lists' entries at once (a Retrieve blends ~6 lists on the event
    loop): one stable sort of the entries by id gives the exclusions (sorted against sorted),
    each list's repeats and, per candidate, its score and mask; then one short loop over the
    sources fills the quotas (floors)."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode {mode!r}: expected one of {', '.join(BLEND_MODES)}")
    if mode == LEARNED and fusion is None:
        raise ValueError("blend mode 'learned' needs its fusion parameters")
    learned = fusion if mode == LEARNED else None
    fuse = mode != QUOTA  # rrf and learned: scores summed over sources, quotas as floors
    limit = asked(k, mode, depth)
    exclude = sorted_unique(exclude)
    order = sorted(range(len(lists)), key=lambda i: (-lists[i].weight, lists[i].code))
    live = [lists[i] for i in order if lists[i].ids is not None]
    n_live = len(live)
    parts = [np.asarray(s.ids, np.int64).ravel() for s in live]  # type: ignore[arg-type]
    sizes = np.array([len(p) for p in parts], np.int64)
    ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
    lst = np.repeat(np.arange(n_live, dtype=np.int64), sizes)  # list position (weight order)

    # 1. filter: padding, excluded ids, a list's own repeats (first kept); each list cut to
    # ``limit``. Entries are in (list, rank) order; a stable sort by id keeps that order
    # within an id, so a repeat within a list follows its first occurrence.
    by = np.argsort(ids, kind="stable")
    sid, slst = ids[by], lst[by]
    drop = sid < 0
    if len(exclude):
        at = np.minimum(np.searchsorted(exclude, sid), len(exclude) - 1)
        drop |= exclude[at] == sid
    drop[1:] |= (sid[1:] == sid[:-1]) & (slst[1:] == slst[:-1])
    keep = np.empty(len(ids), bool)
    keep[by] = ~drop
    rank = np.cumsum(keep) - 1  # rank within its list, once each list's start is taken off
    starts_of = np.concatenate(([0], np.cumsum(np.bincount(lst[keep], minlength=n_live))))
    rank -= starts_of[lst]
    keep &= rank < limit
    new_index = np.cumsum(keep) - 1  # index among the kept entries, in (list, rank) order
    by = new_index[by[keep[by]]]  # the kept entries by id (stable), as kept indices
    ids, lst, rank = ids[keep], lst[keep], rank[keep]
    bounds = np.searchsorted(lst, np.arange(n_live + 1), side="left")

    # 2. score: each entry's share (rrf: w / (c + r + 1); quota: w * (1 - r / k); learned:
    # its source's table at the rank's bucket less the table's absent value); per candidate
    # the entry with the largest share (ties: the earlier list) names its primary source;
    # its score is the sum of the shares (rrf; learned: plus the constant and agreement
    # terms) or that largest share (quota).
    weights = np.array([s.weight for s in live], np.float64)
    codes = np.array([s.code for s in live], np.int64)
    if learned is not None:
        tables = [learned.table(s.name) for s in live]
        modelled = np.array([t is not None for t in tables], bool)  # contributors
        gains = np.array(
            [
                [v - t[-1] for v in t[:-1]] if t is not None else [0.0] * (len(learned.edges) - 1)
                for t in tables
            ],
            np.float64,
        ).reshape(n_live, len(learned.edges) - 1)
        score = gains[lst, learned.bucket(rank)]
        absent = sum(t[-1] for _, t in learned.tables)
    elif fuse:
        modelled = weights > 0
        score = weights[lst] / (rrf_c + rank + 1.0)
    else:
        modelled = weights > 0
        score = weights[lst] * (1.0 - rank / k)
    sid, sscore = ids[by], score[by]
    head = np.ones(len(by), bool)
    head[1:] = sid[1:] != sid[:-1]
    starts = np.flatnonzero(head)
    group = np.cumsum(head) - 1  # candidate of each sorted entry
    uniq = sid[starts]
    inv = np.empty(len(by), np.int64)
    inv[by] = group  # candidate of each entry, in (list, rank) order
    if len(starts):
        top = np.maximum.reduceat(sscore, starts)
        at_top = np.flatnonzero(sscore == top[group])
        first = np.ones(len(at_top), bool)  # the first entry at the top score: earliest list
        first[1:] = group[at_top[1:]] != group[at_top[:-1]]
        best_entry = by[at_top[first]]
        bits = np.left_shift(np.uint32(1), codes.astype(np.uint32))[lst]
        bits[~modelled[lst]] = 0  # a source that adds nothing (weight 0) is not a contributor
        mask = np.bitwise_or.reduceat(bits[by], starts).astype(np.uint32)
        best_score = np.add.reduceat(sscore, starts) if fuse else score[best_entry]
        if learned is not None:
            agree = np.add.reduceat(modelled[lst][by].astype(np.int64), starts)
            terms = np.asarray(learned.agreement, np.float64)
            best_score = (
                best_score + (learned.bias + absent) + terms[np.minimum(agree, len(terms) - 1)]
            )
    else:
        best_entry = np.empty(0, np.int64)
        mask = np.empty(0, np.uint32)
        best_score = np.empty(0, np.float64)
    best_pos = lst[best_entry]
    best_rank = rank[best_entry]
    source_bit = np.left_shift(np.uint32(1), codes.astype(np.uint32))
    mask |= source_bit[best_pos]  # the primary source is always recorded

    # 3. quotas in weight order (rrf: floors over each source's first k; quota: new
    # candidates each); 4. fill with the best-scored candidates not taken.
    def by_score(c: np.ndarray) -> np.ndarray:
        """Candidates ``c`` best first: score, primary source's weight order, rank there, id."""
        return c[np.lexsort((uniq[c], best_rank[c], best_pos[c], -best_score[c]))]

    taken = np.zeros(len(uniq), bool)
    chosen = 0
    for pos, quota in enumerate(slots([s.quota for s in live], k)):
        own = inv[bounds[pos] : bounds[pos + 1]]
        if fuse:
            own = own[rank[bounds[pos] : bounds[pos + 1]] < k]
            room = min(quota - int(taken[own].sum()), k - chosen)
            if room <= 0:
                continue
            free = own[~taken[own]]
            pick = by_score(free)[:room]
        else:
            room = min(quota, k - chosen)
            if room <= 0:
                continue
            pick = own[~taken[own]][:room]
        taken[pick] = True
        mask[pick] |= source_bit[pos]  # its floor or quota took them
        chosen += len(pick)
    if chosen < k:
        taken[by_score(np.flatnonzero(~taken))[: k - chosen]] = True

    # 5. order by score, then the primary source's weight order, its rank there, then id.
    final = by_score(np.flatnonzero(taken))
    masks = mask[final]
    per_code = (masks[:, None] >> codes.astype(np.uint32)[None, :]) & 1
    counts = dict(zip((s.name for s in live), per_code.sum(axis=0).tolist(), strict=True))
    return Blend(
        ids=uniq[final],
        scores=best_score[final].astype(np.float32),
        primary=codes[best_pos[final]].astype(np.uint8),
        masks=masks,
        counts=counts,
        dropped=dict(dropped or {}),
    )


@dataclass(frozen=True)
class Outcome:
    """One source's result for one request: candidates, or why it was dropped."""

    name: str
    candidates: Candidates | None
    dropped: str = ""  # "" | "budget" | "error: ..."
    seconds: float = 0.0
    error: BaseException | None = None  # what a failed source raised
    deadline: float = 0.0  # time.monotonic(): when its budget (or the request's deadline) ran out
    ended: float = 0.0  # time.monotonic(): when it answered, failed or was dropped


def wait_end(outcomes: dict[str, Outcome]) -> tuple[float, float]:
    """When the wait for ``outcomes``' sources ended (``time.monotonic()``; 0 with none),
    and the deadline of the budget that ended it: the latest deadline of the sources dropped
    for their budget at that moment, 0 when the last source to end answered or failed."""
    if not outcomes:
        return 0.0, 0.0
    done = max(o.ended for o in outcomes.values())
    at_budget = [o.deadline for o in outcomes.values() if o.dropped == "budget" and o.ended == done]
    return done, max(at_budget, default=0.0)


def _forget(task: asyncio.Task[Candidates]) -> None:
    """Done callback of a dropped source's task: retrieve its exception so it is not logged
    as never retrieved (the source was dropped; its late failure is only noted)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("dropped source task ended with %r", task.exception())


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (a ``labels()`` call takes a lock and walks a
    dict: three per source per request otherwise)."""
    return metric.labels(*labels)


async def _fetch(source: Source, request: SourceRequest) -> Candidates:
    """``source.fetch``, after the source's ``delay_ms`` (a fault drill) when set."""
    if source.settings.delay_ms > 0:
        await asyncio.sleep(source.settings.delay_ms / 1e3)
    return await source.fetch(request)


def budget_deadline(request: SourceRequest, budget: float) -> float:
    """When a source with ``budget`` seconds must have answered (``time.monotonic()``): the
    budget counts from when the caller sent the request (``received - inbound``, the
    measured inbound delay taken at most up to the whole budget) and ends early by
    ``reply_margin`` (to blend and reply within it) and by the return time its caller
    reported (the reply's way back to it), the latter at most ``return_max_share`` of the
    budget."""
    way_back = min(max(request.return_time, 0.0), request.return_max_share * budget)
    sent = request.received + max(budget - max(request.inbound, 0.0), 0.0)
    return sent - request.reply_margin - way_back


async def run_sources(sources: Sequence[Source], request: SourceRequest) -> dict[str, Outcome]:
    """Run every source concurrently; each until ``min(budget_deadline(request, its
    budget), request.deadline)``: a budget counts from the request's sending (its arrival
    less its measured inbound delay) and ends early enough to blend and reply within it.

    A source still running at its own deadline (less ``TIMER_SLACK_S``, the loop's timer
    resolution) is cancelled and dropped without waiting for it to finish; one that raises is
    dropped with the error. Returns an outcome per source (its time counted from the start
    of this call).
    Remote sources (the ANN) start first, a few loop passes ahead of the local ones.

    One wait for all of them, woken at the earliest budget of those still running (not at
    every answer); each answer's time is noted by a done callback as it lands.
    """
    start = time.monotonic()
    tasks: dict[asyncio.Task[Candidates], tuple[Source, float]] = {}
    answered: dict[asyncio.Task[Candidates], float] = {}
    outcomes: dict[str, Outcome] = {}

    def note(task: asyncio.Task[Candidates]) -> None:
        answered[task] = time.monotonic()

    remote = [s for s in sources if s.remote]
    local = [s for s in sources if not s.remote]
    pending: set[asyncio.Task[Candidates]] = set()
    try:
        for n, source in enumerate(remote + local):
            if n == len(remote) and remote:
                # The remote sources' requests leave before the local ones take the loop:
                # their CPU then overlaps the shards' work instead of delaying the calls.
                for _ in range(HEAD_START_PASSES):
                    await asyncio.sleep(0)
            budget_end = budget_deadline(request, source.settings.budget_ms / 1e3)
            # A budget already spent when the wait starts (a request that came in late) ends
            # it at once: its deadline is then the wait's start, so the reply margin is
            # measured from there, not from before the router had the request.
            deadline = max(min(budget_end, request.deadline), start)
            task = asyncio.ensure_future(_fetch(source, replace(request, deadline=deadline)))
            task.add_done_callback(note)
            tasks[task] = (source, deadline)
            pending.add(task)
        while pending:
            now = time.monotonic()
            late = now + TIMER_SLACK_S
            for task in [t for t in pending if tasks[t][1] <= late and not t.done()]:
                source = tasks[task][0]
                task.cancel()
                task.add_done_callback(_forget)
                pending.discard(task)
                outcomes[source.name] = Outcome(
                    source.name, None, "budget", now - start, deadline=tasks[task][1], ended=now
                )
            if not pending:
                break
            timeout = max(min(tasks[t][1] for t in pending) - late, 0.0)
            done, pending = await asyncio.wait(pending, timeout=timeout)
            for task in done:
                source, deadline = tasks[task]
                ended = answered.get(task, time.monotonic())
                took = ended - start
                found, why, exc = None, "", None
                if task.cancelled():
                    why = "error: cancelled"
                elif (exc := task.exception()) is not None:
                    log.warning("source %s failed: %s", source.name, exc)
                    why = f"error: {type(exc).__name__}: {exc}"
                else:
                    found = task.result()
                outcomes[source.name] = Outcome(
                    source.name, found, why, took, exc, deadline=deadline, ended=ended
                )
    finally:
        for task in pending:  # our caller was cancelled: do not leave sources running
            task.cancel()
            task.add_done_callback(_forget)
    for outcome in outcomes.values():
        _child(SOURCE_LATENCY, outcome.name).observe(outcome.seconds)
        kind = "ok" if not outcome.dropped else outcome.dropped.split(":", 1)[0]
        _child(SOURCE_OUTCOMES, outcome.name, kind).inc()
    return outcomes


def blend_outcomes(
    sources: Sequence[Source],
    outcomes: dict[str, Outcome],
    k: int,
    exclude: np.ndarray | None = None,
    blender: Blender | None = None,
) -> Blend:
    """``blend`` over ``run_sources``' outcomes (quota and weight from each source's
    settings, mode from ``blender``), with when the wait for them ended (``wait_end``);
    records each source's contribution in the metrics."""
    lists = []
    dropped = {}
    for source in sources:
        outcome = outcomes.get(source.name)
        found = outcome.candidates if outcome is not None else None
        if found is None:
            dropped[source.name] = outcome.dropped if outcome is not None else "not run"
        lists.append(
            SourceList(
                source.name,
                source.code,
                source.settings.quota,
                source.settings.weight,
                found.ids if found is not None else None,
            )
        )
    how = blender or Blender()
    result = blend(
        lists,
        k,
        exclude,
        dropped,
        mode=how.mode,
        rrf_c=how.rrf_c,
        depth=how.depth,
        fusion=how.fusion,
    )
    for name, count in result.counts.items():
        _child(SOURCE_CANDIDATES, name).inc(count)
    details = {
        name: o.candidates.detail
        for name, o in outcomes.items()
        if o.candidates is not None and o.candidates.detail is not None
    }
    done, budget_end = wait_end(outcomes)
    return replace(result, details=details, sources_done=done, budget_end=budget_end)
