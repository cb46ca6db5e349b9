"""The blender: many sources' ranked lists -> one list of k candidates.

``blend`` is a pure function:

1. **filter**: every list loses padding (< 0), excluded ids (seen items, the request's
   ``exclude_ids``, blocked items: one sorted array) and its own repeats, and is cut to k;
2. **score**: the candidate at rank r (0-based) of a source with weight w scores
   ``w * (1 - r / k)``; a candidate several sources returned keeps its best score, and every
   source that returned it is recorded (bit ``1 << code`` of its mask); its primary source
   is the one that gave the best score;
3. **quotas**: sources in weight order (heaviest first) each take their next candidates not
   yet taken until they have added ``quota * k`` (largest-remainder rounding);
4. **backfill**: what is left of k is filled with the best-scored candidates not yet taken,
   from every source, so a source that under-delivered, timed out or failed is made up for
   and the list has k candidates whenever the sources together had that many;
5. the list is ordered by score (ties: primary source's weight order, then id).

``run_sources`` runs sources concurrently, each within its budget: a source that misses it
is dropped for that request (cancelled, never waited for), one that fails likewise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from annfleet.metrics import SOURCE_CANDIDATES, SOURCE_LATENCY, SOURCE_OUTCOMES
from annfleet.router.sources import Candidates, Source, SourceRequest

log = logging.getLogger(__name__)


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
    scores: np.ndarray  # (n,) float32, weight * (1 - rank / k) of the best source
    primary: np.ndarray  # (n,) uint8 Source code of the best source
    masks: np.ndarray  # (n,) uint32: bit 1 << code for every source that returned it
    counts: dict[str, int]  # source -> candidates it returned among the n (with sharing)
    dropped: dict[str, str] = field(default_factory=dict)  # source -> why (budget, error)
    details: dict[str, Any] = field(default_factory=dict)  # source -> Candidates.detail
    cached: bool = False  # served from the candidate cache


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


def _clean(ids: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Valid, not excluded, first occurrence only, at most k; order kept."""
    ids = np.asarray(ids, np.int64)
    ids = ids[ids >= 0]
    if len(exclude):
        ids = ids[~np.isin(ids, exclude)]
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)][:k]


def blend(
    lists: Sequence[SourceList],
    k: int,
    exclude: np.ndarray | None = None,
    dropped: dict[str, str] | None = None,
) -> Blend:
    """Blend ``lists`` into at most k candidates (module doc). ``exclude`` (e,) int64."""
    exclude = np.unique(np.asarray(exclude if exclude is not None else [], np.int64))
    order = sorted(range(len(lists)), key=lambda i: (-lists[i].weight, lists[i].code))
    live = [lists[i] for i in order if lists[i].ids is not None]
    cleaned = [_clean(s.ids, exclude, k) for s in live]  # type: ignore[arg-type]

    # Best score, primary source and mask of every candidate any source returned.
    best: dict[int, tuple[float, int, int]] = {}  # id -> (score, rank of source, code)
    mask: dict[int, int] = {}
    for pos, (s, ids) in enumerate(zip(live, cleaned, strict=True)):
        for rank, item in enumerate(ids.tolist()):
            score = s.weight * (1.0 - rank / k)
            mask[item] = mask.get(item, 0) | (1 << s.code)
            current = best.get(item)
            if current is None or score > current[0]:
                best[item] = (score, pos, s.code)

    chosen: dict[int, None] = {}
    for ids, quota in zip(cleaned, slots([s.quota for s in live], k), strict=True):
        added = 0
        for item in ids.tolist():
            if added >= quota or len(chosen) >= k:
                break
            if item not in chosen:
                chosen[item] = None
                added += 1
    if len(chosen) < k:
        rest = sorted(
            (item for item in best if item not in chosen),
            key=lambda i: (-best[i][0], best[i][1], i),
        )
        for item in rest[: k - len(chosen)]:
            chosen[item] = None

    final = sorted(chosen, key=lambda i: (-best[i][0], best[i][1], i))
    masks = np.array([mask[i] for i in final], np.uint32)
    counts = {s.name: int(((masks >> s.code) & 1).sum()) for s in live}
    return Blend(
        ids=np.array(final, np.int64),
        scores=np.array([best[i][0] for i in final], np.float32),
        primary=np.array([best[i][2] for i in final], np.uint8),
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


def _forget(task: asyncio.Task[Candidates]) -> None:
    """Done callback of a dropped source's task: retrieve its exception so it is not logged
    as never retrieved (the source was dropped; its late failure is only noted)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("dropped source task ended with %r", task.exception())


async def _fetch(source: Source, request: SourceRequest) -> Candidates:
    """``source.fetch``, after the source's ``delay_ms`` (a fault drill) when set."""
    if source.settings.delay_ms > 0:
        await asyncio.sleep(source.settings.delay_ms / 1e3)
    return await source.fetch(request)


async def run_sources(sources: Sequence[Source], request: SourceRequest) -> dict[str, Outcome]:
    """Run every source concurrently; each gets ``min(its budget, request.deadline)``.

    A source still running at its own deadline is cancelled and dropped without waiting for
    it to finish; one that raises is dropped with the error. Returns an outcome per source.
    """
    start = time.monotonic()
    tasks: dict[asyncio.Task[Candidates], tuple[Source, float]] = {}
    for source in sources:
        deadline = min(start + source.settings.budget_ms / 1e3, request.deadline)
        task = asyncio.ensure_future(_fetch(source, replace(request, deadline=deadline)))
        tasks[task] = (source, deadline)
    outcomes: dict[str, Outcome] = {}
    pending = set(tasks)
    try:
        while pending:
            now = time.monotonic()
            for task in [t for t in pending if tasks[t][1] <= now and not t.done()]:
                source = tasks[task][0]
                task.cancel()
                task.add_done_callback(_forget)
                pending.discard(task)
                outcomes[source.name] = Outcome(source.name, None, "budget", now - start)
            if not pending:
                break
            timeout = max(min(tasks[t][1] for t in pending) - now, 0.0)
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                source = tasks[task][0]
                took = time.monotonic() - start
                if task.cancelled():
                    outcomes[source.name] = Outcome(source.name, None, "error: cancelled", took)
                elif (exc := task.exception()) is not None:
                    log.warning("source %s failed: %s", source.name, exc)
                    outcomes[source.name] = Outcome(
                        source.name, None, f"error: {type(exc).__name__}: {exc}", took, exc
                    )
                else:
                    outcomes[source.name] = Outcome(source.name, task.result(), "", took)
    finally:
        for task in pending:  # our caller was cancelled: do not leave sources running
            task.cancel()
            task.add_done_callback(_forget)
    for outcome in outcomes.values():
        SOURCE_LATENCY.labels(outcome.name).observe(outcome.seconds)
        kind = "ok" if not outcome.dropped else outcome.dropped.split(":", 1)[0]
        SOURCE_OUTCOMES.labels(outcome.name, kind).inc()
    return outcomes


def blend_outcomes(
    sources: Sequence[Source],
    outcomes: dict[str, Outcome],
    k: int,
    exclude: np.ndarray | None = None,
) -> Blend:
    """``blend`` over ``run_sources``' outcomes (quota and weight from each source's
    settings); records each source's contribution in the metrics."""
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
    result = blend(lists, k, exclude, dropped)
    for name, count in result.counts.items():
        SOURCE_CANDIDATES.labels(name).inc(count)
    details = {
        name: o.candidates.detail
        for name, o in outcomes.items()
        if o.candidates is not None and o.candidates.detail is not None
    }
    return replace(result, details=details) if details else result
