"""The in-memory store's user() read (what every Retrieve starts with) for a user with 100 /
1,000 / 10,000 seen items, one engagement (a new seen item) per 10 reads. Run from the repo
root with the build to measure on the path:
``python benchmarks/results/memory-seen-read/seen_read.py``."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from annfleet.router.state import MemoryState, StateUpdate


async def read_us(seen: int) -> float:
    store = MemoryState()
    rng = np.random.default_rng(0)
    items = set(rng.choice(10**6, seen, replace=False).tolist())
    await store.apply(StateUpdate(seen={1: items}, recent={1: [1, 2, 3]}))
    began = time.perf_counter()
    for i in range(1000):
        if i % 10 == 0:
            await store.apply(StateUpdate(seen={1: {int(rng.integers(10**6))}}, recent={1: [4]}))
        await store.user(1)
    return (time.perf_counter() - began) / 1000 * 1e6


async def main() -> None:
    for seen in (100, 1_000, 10_000):
        print(f"{seen:>6} seen items: {await read_us(seen):.1f} µs per user() read")


if __name__ == "__main__":
    asyncio.run(main())
