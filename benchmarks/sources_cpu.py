"""CPU of Retrieve's candidate generation in the router, in process (no gRPC, no shards).

``python -m annfleet.benchmarks.sources_cpu [--bundle B] [--k 100] [--requests 300]``

Over one bundle with a user tower (the MovieLens default unless ``--bundle``) and the default
sources config, with an in-memory state store: per request of a bundle user, the thread CPU
of the exclusions, of each non-ANN source's ``fetch``, of ``blend_outcomes`` and of the
whole ``CandidateGenerator.retrieve`` (candidate cache off) with the ``ann`` source answered
at once from a fixed list (its own work is the shards' and the scatter's, not measured
here). Medians over ``--repeats`` passes over the same users, in µs per request. Then, with
``content`` hanging (``delay_ms`` 1 s, budget 20 ms), how many ms past the budget each of
``--hang-requests`` retrieves returns (wall clock: the budget timer's wake-up and the blend).

Only the public APIs of ``annfleet.router`` are used, so the same file runs against an older
checkout (``<old venv>/bin/python path/to/sources_cpu.py``) for an old/new comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np


def bundle_history(bundle: Any) -> Callable[[int], tuple[int, ...]] | None:
    """The bundle's record of each user's last items, as the router feeds it to the sources;
    None in a checkout from before they had it (``UserHistory``)."""
    try:
        from annfleet.router.service import UserHistory
    except ImportError:
        return None
    return UserHistory.load(bundle).of


def _cpu_us(fn: Callable[[], Any], n: int) -> float:
    """Thread CPU µs per call of ``fn`` over ``n`` calls."""
    start = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - start) / n * 1e6


def _run(coro: Awaitable[Any]) -> Any:
    """Drive a coroutine that never suspends (in-memory state, no I/O) without a loop."""
    it = coro.__await__()
    try:
        next(it)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("coroutine suspended: not a pure in-memory path")


def measure(
    bundle_path: Path, k: int, requests: int, repeats: int, hang_requests: int = 200
) -> dict[str, float]:
    from annfleet.bundle import Bundle
    from annfleet.config import RouterConfig, SourcesConfig
    from annfleet.router.blend import Outcome, blend_outcomes
    from annfleet.router.caches import RouterCaches
    from annfleet.router.candidates import CandidateGenerator, build_sources
    from annfleet.router.service import SeenItems
    from annfleet.router.sources import Candidates, SourceRequest
    from annfleet.router.state import Blocked, MemoryState
    from annfleet.router.users import RequestContext

    bundle = Bundle.open(bundle_path, verify=False)
    users = np.random.default_rng(0).permutation(bundle.load_array(bundle.manifest["users"]["ids"]))
    users = users[:requests]
    state = MemoryState()
    config = SourcesConfig(candidate_cache_size=0)
    popular = np.asarray(bundle.table("popular_ids"), np.int64)

    async def embed(user_id: int, ctx: RequestContext) -> np.ndarray:
        return np.zeros(bundle.dim, np.float32)

    async def search(vector: np.ndarray, kk: int, exclude: Any, deadline: float, params: Any):  # type: ignore[no-untyped-def]
        # What the shards would answer: k ids not excluded (the popular list stands in).
        ids = popular[~np.isin(popular, exclude)][:kk]
        return Candidates(ids, np.linspace(1, 0, len(ids)).astype(np.float32))

    sources = build_sources(config, bundle, state, embed=embed, search=search)
    seen = SeenItems.load(bundle)
    caches = RouterCaches(RouterConfig(), config)
    history_of = bundle_history(bundle)
    known: dict[str, Any] = {"bundle_history": history_of} if history_of else {}
    generator = CandidateGenerator(bundle.id, sources, state, caches, bundle_seen=seen.of, **known)
    ctx = RequestContext((), 0, "", "")
    exclude = np.empty(0, np.int64)
    far = time.monotonic() + 3600.0

    prepared = []
    for user in users.tolist():
        u = _run(state.user(user))
        excl = generator.exclusions(user, u, (), exclude, Blocked())
        history: dict[str, Any] = {"history": history_of(user)} if history_of else {}
        request = SourceRequest(user, ctx, k, far, excl, None, **history)
        outcomes = {s.name: Outcome(s.name, _run(s.fetch(request))) for s in sources.sources}
        prepared.append((user, u, request, outcomes))

    def each(fn: Callable[[Any], Any]) -> Callable[[], None]:
        it = iter(prepared * (repeats + 1))
        return lambda: fn(next(it))

    def fetch_of(source: Any) -> Callable[[Any], Any]:
        return lambda p: _run(source.fetch(p[2]))

    stages: dict[str, Callable[[Any], Any]] = {
        "exclusions": lambda p: generator.exclusions(p[0], p[1], (), exclude, Blocked()),
        **{f"fetch {s.name}": fetch_of(s) for s in sources.sources},
        "blend_outcomes": lambda p: blend_outcomes(sources.sources, p[3], k, p[2].exclude),
    }
    out: dict[str, float] = {}
    for name, fn in stages.items():
        runs = [_cpu_us(each(fn), len(prepared)) for _ in range(repeats)]
        out[name] = float(np.median(runs))

    async def retrieve_all() -> None:
        for user in users.tolist():
            await generator.retrieve(int(user), ctx, k, exclude, time.monotonic() + 10.0)

    runs = []
    for _ in range(repeats):
        start = time.thread_time()
        asyncio.run(retrieve_all())
        runs.append((time.thread_time() - start) / len(users) * 1e6)
    out["retrieve (ann answered at once)"] = float(np.median(runs))

    # One source hanging (content answers 1 s late, past its 20 ms budget): how long after
    # the budget each retrieve returns (wall clock: the budget timer's wake-up, the blend).
    hanging = dataclasses.replace(config, content=dataclasses.replace(config.content, delay_ms=1e3))
    hang_sources = build_sources(hanging, bundle, state, embed=embed, search=search)
    hang_gen = CandidateGenerator(
        bundle.id, hang_sources, state, caches, bundle_seen=seen.of, diversity=None
    )
    budget = hanging.content.budget_ms

    async def hang_all() -> list[float]:
        late = []
        for user in users[:hang_requests].tolist():
            t0 = time.perf_counter()
            result = await hang_gen.retrieve(int(user), ctx, k, exclude, time.monotonic() + 10.0)
            late.append((time.perf_counter() - t0) * 1e3 - budget)
            assert "content" in result.dropped
        return late

    if hang_requests:
        from annfleet.serving import run as run_loop  # uvloop when installed, as the router

        late = run_loop(hang_all)
        out["hang: ms past the budget, p50"] = float(np.percentile(late, 50))
        out["hang: ms past the budget, p99"] = float(np.percentile(late, 99))
        out["hang: ms past the budget, max"] = float(np.max(late))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="", help="default: the MovieLens default bundle")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hang-requests", type=int, default=200, help="0 = skip")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.bundle:
        path = Path(args.bundle)
    else:
        from annfleet.cli import default_bundle
        from annfleet.config import load_config

        path = default_bundle(load_config(None))
    result = measure(path, args.k, args.requests, args.repeats, args.hang_requests)
    if args.json:
        print(json.dumps(result))
    else:
        for name, us in result.items():
            unit = "ms" if name.startswith("hang") else "µs"
            print(f"{name:34s} {us:9.2f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
