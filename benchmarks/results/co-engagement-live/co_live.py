"""The co_engagement source's fetch over the in-memory store, with live counts: 10 recent
items, each co-engaged with 100 / 1,000 / 10,000 items; per iteration one engagement pair
touches one of the 10 (as traffic does) and the source fetches k = 200. Run from the repo
root with the build to measure on the path:
``python benchmarks/results/co-engagement-live/co_live.py``."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter

import numpy as np

from annfleet.config import CoEngagementSourceConfig
from annfleet.router.sources import ItemTable, SourceRequest
from annfleet.router.sources.coengagement import CoEngagementSource
from annfleet.router.state import MemoryState, StateUpdate
from annfleet.router.users import RequestContext

RECENT = tuple(range(1, 11))
CALLS = 300


async def fetch_ms(neighbours: int) -> float:
    rng = np.random.default_rng(0)
    state = MemoryState()
    catalogue = np.arange(1, 2_000_001, dtype=np.int64)
    items = ItemTable(catalogue)
    none = np.full((len(catalogue), 1), -1, np.int64)
    source = CoEngagementSource(
        CoEngagementSourceConfig(), state, items, none, np.zeros(none.shape, np.float32)
    )
    counts: Counter[tuple[int, int]] = Counter()
    for a in RECENT:
        for b in rng.choice(np.arange(100, 2_000_000), neighbours, replace=False).tolist():
            counts[(a, b)] += int(rng.integers(1, 5))
    await state.apply(StateUpdate(co_engagement=counts))
    context = RequestContext(RECENT, 0, "", "")
    request = SourceRequest(1, context, 200, time.monotonic() + 600)
    times = []
    for i in range(CALLS):
        touched = Counter({(RECENT[i % 10], int(rng.integers(100, 2_000_000))): 1})
        await state.apply(StateUpdate(co_engagement=touched))
        began = time.perf_counter()
        await source.fetch(request)
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


async def main() -> None:
    for n in (100, 1_000, 10_000):
        print(f"{n:>6} live neighbours per recent item: {await fetch_ms(n):.3f} ms per fetch")


if __name__ == "__main__":
    asyncio.run(main())
