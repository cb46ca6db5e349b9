"""The co_engagement source's fetch with live counts, over the in-memory store and a real
redis-server: 10 recent items, each co-engaged with 1,000 / 10,000 / 50,000 items; per
iteration one engagement pair touches one of the 10 and the source fetches k = 200. Also the
counts each store holds for those 10 items. Uses the stores' public API only, so the same
script measures any build: run from the repo root with the build on the path
(``PYTHONPATH=<worktree>/build/typecheck``; needs redis-server):
``python benchmarks/results/co-engagement-bound/co_bound.py``."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, "tests")
from support import temporary_redis

from annfleet.config import CoEngagementSourceConfig
from annfleet.router.sources import ItemTable, SourceRequest
from annfleet.router.sources.coengagement import CoEngagementSource
from annfleet.router.state import MemoryState, RedisState, StateStore, StateUpdate
from annfleet.router.users import RequestContext

RECENT = tuple(range(1, 11))
CALLS = 200
SIZES = tuple(int(s) for s in (sys.argv[1:] or ["1000", "10000", "50000"]))


async def fetch_ms(state: StateStore, neighbours: int) -> tuple[float, int]:
    """Median ms per fetch, and how many live counts the store hands over for RECENT."""
    rng = np.random.default_rng(0)
    catalogue = np.arange(1, 2_000_001, dtype=np.int64)
    items = ItemTable(catalogue)
    none = np.full((len(catalogue), 1), -1, np.int64)
    source = CoEngagementSource(
        CoEngagementSourceConfig(), state, items, none, np.zeros(none.shape, np.float32)
    )
    for a in RECENT:  # one batch per item: a Redis transaction of at most 50,000 writes
        counts: Counter[tuple[int, int]] = Counter()
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
    served = sum(len(n.ids) for n in (await state.co_engaged(RECENT)).values())
    return statistics.median(times), served


async def main(url: str) -> None:
    for n in SIZES:
        report("memory", n, *await fetch_ms(MemoryState(), n))
    for i, n in enumerate(SIZES):
        store = RedisState(url, prefix=f"bound{i}:", timeout_s=10.0)
        report("redis ", n, *await fetch_ms(store, n))
        await store.close()


def report(store: str, n: int, ms: float, served: int) -> None:
    print(f"{store} {n:>6} live neighbours per recent item: {ms:.3f} ms per fetch, {served} served")


if __name__ == "__main__":
    with temporary_redis() as server:
        asyncio.run(main(server.url))
