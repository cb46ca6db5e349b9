"""Capture every source's list *with its scores* through a real in-process router.

    python capture_scores.py per_user val|test BUNDLE OUT.npz [DEPTH]

One router with every default source (budgets made patient), the split's train engagements
recorded through RecordEngagement, then ``Retrieve(user, 100)`` at each query's time; the
blender's inputs (each source's ``Candidates``: ids and scores, after the exclusions) are
taken where the router hands them to ``blend_outcomes``. Saved per source: ``NAME_ids`` /
``NAME_scores`` (Q, DEPTH), -1 / nan padded; ``blend_ids`` (Q, 100) the served list.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

import annfleet.router.candidates as candidates_module
from annfleet.client import Client
from annfleet.config import ClusterConfig
from annfleet.model import blend_eval as be
from annfleet.model.data import load_movielens, make_split
from annfleet.model.features import build_queries

seen: dict[str, Any] = {}
_blend_outcomes = candidates_module.blend_outcomes


def stash(sources: Any, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
    seen.clear()
    for name, outcome in outcomes.items():
        if outcome.candidates is not None:
            seen[name] = (outcome.candidates.ids.copy(), outcome.candidates.scores.copy())
    return _blend_outcomes(sources, outcomes, *args, **kwargs)


def capture(split_name: str, which: str, bundle_dir: str, out: str, depth: int = 200) -> None:
    candidates_module.blend_outcomes = stash  # type: ignore[assignment]
    data = load_movielens()
    split = make_split(data, split_name, validation=which == "val")
    queries = build_queries(data, split)
    bundle = be.eval_bundle(Path(bundle_dir), data, split, which == "val")
    config = ClusterConfig()
    config = dataclasses.replace(
        config,
        router=dataclasses.replace(config.router, shard_timeout_s=60.0),
        sources=dataclasses.replace(be.patient(config.sources), depth=depth),
    )
    names = be.enabled_sources(config.sources)
    arrays: dict[str, Any] = {
        f"{n}_ids": np.full((len(queries), depth), -1, np.int64) for n in names
    }
    arrays |= {f"{n}_scores": np.full((len(queries), depth), np.nan, np.float32) for n in names}
    arrays["blend_ids"] = np.full((len(queries), 100), -1, np.int64)
    with (
        be.InProcessCluster(bundle.path, config) as cluster,
        cluster.router(config.sources) as target,
        Client(target, timeout=60, retries=2) as client,
    ):
        be.record(client, be.train_engagements(data, split.train))
        for q in range(len(queries)):
            user = int(data.user_ids[queries.users[q] - 1])
            seen.clear()
            res = client.retrieve(user, 100, timestamp=int(queries.query_ts[q]))
            assert seen, "a cached answer carries no source lists"
            arrays["blend_ids"][q, : len(res.ids)] = res.ids
            for name, (ids, scores) in seen.items():
                arrays[f"{name}_ids"][q, : len(ids)] = ids[:depth]
                arrays[f"{name}_scores"][q, : len(ids)] = scores[:depth]
            if q % 100 == 0:
                print(q, len(queries), flush=True)
    np.savez(out, **arrays)


if __name__ == "__main__":
    capture(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:]))
