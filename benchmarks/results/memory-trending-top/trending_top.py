"""The in-memory state store's trending reads under traffic: per iteration one engagement
(3 trending events in one scope), then a Retrieve's reads of that scope (its top 300 and the
live L of 300 items), at 1,000 / 100,000 / 1,000,000 items with live events; and at
MovieLens's 1,682 items a read and an event alone. Run from the repo root with the build
to measure on the path: ``python benchmarks/results/memory-trending-top/trending_top.py``."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from annfleet.router.state import MemoryState, StateUpdate


async def under_traffic(n: int) -> float:
    store = MemoryState()
    rng = np.random.default_rng(0)
    ids = rng.choice(10_000_000, n, replace=False)
    events = [("g", int(i), float(x)) for i, x in zip(ids, rng.random(n), strict=True)]
    await store.apply(StateUpdate(trending=events))
    await store.trending_top("g", 300)
    reps = 20 if n >= 1_000_000 else 200
    start = time.perf_counter()
    for r in range(reps):
        touched = [("g", int(ids[(r * 7 + j) % n]), 0.5) for j in range(3)]
        await store.apply(StateUpdate(trending=touched))
        await store.trending_top("g", 300)
        await store.trending_scores("g", ids[:300])
    return (time.perf_counter() - start) / reps * 1e3


async def movielens() -> tuple[float, float]:
    store = MemoryState()
    ids = np.arange(1, 1683)
    noise = np.random.default_rng(0).random(len(ids))
    events = [("g", int(i), float(x)) for i, x in zip(ids, noise, strict=True)]
    await store.apply(StateUpdate(trending=events))
    start = time.perf_counter()
    for _ in range(2000):
        await store.trending_top("g", 300)
    read = (time.perf_counter() - start) / 2000 * 1e6
    start = time.perf_counter()
    for r in range(2000):
        await store.apply(StateUpdate(trending=[("g", int(ids[(r * 7) % len(ids)]), 0.5)]))
    event = (time.perf_counter() - start) / 2000 * 1e6
    return read, event


async def main() -> None:
    for n in (1_000, 100_000, 1_000_000):
        print(f"{n:>9} live items: {await under_traffic(n):8.3f} ms per engagement + reads")
    read, event = await movielens()
    print(f"MovieLens (1,682 items): top(300) {read:.1f} µs, one event {event:.1f} µs")


if __name__ == "__main__":
    asyncio.run(main())
