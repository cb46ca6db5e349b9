"""The state reads a Retrieve starts with, against a real redis-server on loopback: user()
then blocked() (two round trips) vs user_and_blocked() (one pipeline). Run from the repo
root: ``python benchmarks/results/redis-state-read/state_read.py`` (needs redis-server)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, "tests")
from support import temporary_redis

from annfleet.router.state import RedisState, StateUpdate

CALLS, ROUNDS = 2000, 6


async def measure(url: str) -> dict[str, list[tuple[float, float]]]:
    store = RedisState(url, timeout_s=2.0)
    await store.apply(StateUpdate(recent={1: [5, 6, 7]}, seen={1: {5, 6, 7}}))
    await store.set_blocked(range(100))

    async def two() -> object:
        return await store.user(1), await store.blocked()

    async def one() -> object:
        return await store.user_and_blocked(1)

    variants: dict[str, Callable[[], Awaitable[object]]] = {"two reads": two, "one read": one}
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # alternated
        for name, fn in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(CALLS):
                await fn()
            out[name].append(
                (
                    (time.perf_counter() - wall) / CALLS * 1e6,
                    (time.process_time() - cpu) / CALLS * 1e6,
                )
            )
    await store.close()
    return out


def main() -> None:
    with temporary_redis() as server:
        results = asyncio.run(measure(server.url))
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"{name}: {wall:.1f} µs wall, {cpu:.1f} µs of this process's CPU per Retrieve")


if __name__ == "__main__":
    main()
