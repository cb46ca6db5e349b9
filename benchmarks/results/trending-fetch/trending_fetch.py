"""The trending source's fetch against a real redis-server on loopback, with a request
carrying e exclusions (a user's seen items and blocked ones; none of them trending):
100,000 items with live events in the global scope, k = 200, e = 0 / 1,000 / 4,000.
Run from the repo root with the build to measure on the path (needs redis-server):
``python benchmarks/results/trending-fetch/trending_fetch.py``."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, "tests")
from support import temporary_redis

from annfleet.config import TrendingSourceConfig
from annfleet.router.sources import SourceRequest
from annfleet.router.sources.trending import Regions, TrendingSource
from annfleet.router.state import RedisState, StateUpdate
from annfleet.router.users import RequestContext

LIVE, K, CALLS = 100_000, 200, 200


async def measure(url: str) -> None:
    store = RedisState(url, timeout_s=5.0)
    source = TrendingSource(TrendingSourceConfig(), store, Regions({}))
    rng = np.random.default_rng(0)
    items = rng.choice(10**7, LIVE, replace=False)
    for start in range(0, LIVE, 10_000):
        chunk = items[start : start + 10_000]
        events = [
            (source.key("global"), int(i), float(x))
            for i, x in zip(chunk, rng.random(len(chunk)) * 10, strict=True)
        ]
        await store.apply(StateUpdate(trending=events))
    for e in (0, 1_000, 4_000):
        exclude = np.unique(rng.integers(2 * 10**7, 3 * 10**7, e))  # not trending items
        request = SourceRequest(1, RequestContext((), 0, "", ""), K, time.monotonic() + 60, exclude)
        times = []
        for _ in range(CALLS):
            began = time.perf_counter()
            got = await source.fetch(request)
            times.append((time.perf_counter() - began) * 1e3)
        print(
            f"e = {e:>5}: {statistics.median(times):.3f} ms per fetch "
            f"(median of {CALLS}), {len(got.ids)} ids"
        )
    await store.close()


def main() -> None:
    with temporary_redis() as server:
        asyncio.run(measure(server.url))


if __name__ == "__main__":
    main()
