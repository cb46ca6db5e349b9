"""How the blender's defaults were chosen (per-user validation split) and the test ablations.

Each source's own list is captured once through a real in-process router (``capture``), then
blended offline with the router's own pure function ``annfleet.router.blend.blend`` and
scored with ``annfleet eval``'s metric (``search``, ``ablate``), so hundreds of settings cost
seconds each instead of a router replay each.

    python tune_blend.py capture per_user val BUNDLE OUT.npz [DEPTH]  # one router per source
    python tune_blend.py search per_user val OUT.npz                  # coordinate search
    python tune_blend.py ablate per_user test OUT.npz SETTINGS.json RESULT.json
    python tune_blend.py offline per_user BUNDLE RESULT.json          # two-tower, pop, MF-BPR

``capture``: a router with only that source (``annfleet.model.blend_eval.only``), the split's
train engagements recorded through RecordEngagement, then ``Retrieve(user, DEPTH)`` at each
test (or validation) user's query time: the source's list as the router serves it (after the
exclusions). A list of k is the first k of it (the sources are deterministic top-k, but for
the ANN's HNSW beam and exploration's draws).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.client import Client
from annfleet.config import ClusterConfig
from annfleet.model import blend_eval as be
from annfleet.model.data import load_movielens, make_split
from annfleet.model.metrics import KS, ranking_metrics
from annfleet.router.blend import QUOTA, RRF, Fusion, SourceList, asked, blend
from annfleet.router.sources import source_code

# The built-in sources config before rrf.
PREVIOUS_QUOTAS = dict(
    ann=0.6, trending=0.1, co_engagement=0.15, content=0.05, exploration=0.05, popular=0.0
)
PREVIOUS_WEIGHTS = dict(
    ann=1.0, trending=0.3, co_engagement=0.5, content=0.2, exploration=0.1, popular=0.05
)


def capture(split_name: str, which: str, bundle_dir: str, out: str, depth: int = 200) -> None:
    from annfleet.model.features import build_queries

    data = load_movielens()
    split = make_split(data, split_name, validation=which == "val")
    queries = build_queries(data, split)
    bundle = be.eval_bundle(Path(bundle_dir), data, split, which == "val")
    config = ClusterConfig()
    config = dataclasses.replace(
        config, router=dataclasses.replace(config.router, shard_timeout_s=60.0)
    )
    sources = be.patient(config.sources)
    lists: dict[str, Any] = {}
    with be.InProcessCluster(bundle.path, config) as cluster:
        for name in be.enabled_sources(sources):
            t0 = time.monotonic()
            arr = np.full((len(queries), depth), -1, np.int64)
            with (
                cluster.router(be.only(sources, name)) as target,
                Client(target, timeout=60, retries=2) as client,
            ):
                be.record(client, be.train_engagements(data, split.train))
                for q in range(len(queries)):
                    user = int(data.user_ids[queries.users[q] - 1])
                    res = client.retrieve(user, depth, timestamp=int(queries.query_ts[q]))
                    ids = np.asarray(res.ids, np.int64)[:depth]
                    arr[q, : len(ids)] = ids
            lists[name] = arr
            print(name, f"{time.monotonic() - t0:.0f} s", flush=True)
    np.savez(out, **lists)


class Lists:
    """Captured lists of one split, blended offline by the router's ``blend``."""

    def __init__(self, split_name: str, which: str, path: str) -> None:
        from annfleet.model.features import build_queries

        self.data = load_movielens()
        split = make_split(self.data, split_name, validation=which == "val")
        self.queries = build_queries(self.data, split)
        with np.load(path) as f:
            self.arrs = {n: f[n] for n in f.files}
        self.names = list(self.arrs)

    def recall(
        self,
        quotas: dict[str, float],
        weights: dict[str, float],
        mode: str = RRF,
        c: float = 60.0,
        depth: int = 0,
        use: list[str] | None = None,
        fusion: Fusion | None = None,
    ) -> dict[str, float]:
        use = use or self.names
        out = {}
        for k in KS:
            top = np.zeros((len(self.queries), k), np.int64)
            n = asked(k, mode, depth)
            for q in range(len(self.queries)):
                lists = [
                    SourceList(s, source_code(s), quotas.get(s, 0.0), weights.get(s, 0.0), a[q][:n])
                    for s, a in ((s, self.arrs[s]) for s in use)
                ]
                ids = blend(lists, k, mode=mode, rrf_c=c, depth=depth, fusion=fusion).ids[:k]
                if len(ids):
                    top[q, : len(ids)] = self.data.item_index(ids)
            out[f"R@{k}"] = round(ranking_metrics(top, self.queries, ks=(k,))[f"recall@{k}"], 4)
        return out


def search(split_name: str, which: str, path: str) -> None:
    """Coordinate search (objective R@10 + R@100), from rrf with exploration's floor 0.05."""
    lists = Lists(split_name, which, path)
    log = Path(path).with_suffix(".search.jsonl").open("a")

    def run(tag: str, q: dict[str, float], w: dict[str, float], **kw: Any) -> dict[str, float]:
        m = lists.recall(q, w, **kw)
        log.write(json.dumps(dict(tag=tag, quotas=q, weights=w, **kw, **m)) + "\n")
        log.flush()
        print(tag, q, w, kw, m, flush=True)
        return m

    run("quota (previous default)", PREVIOUS_QUOTAS, PREVIOUS_WEIGHTS, mode=QUOTA)
    for n in lists.names:
        run(f"only {n}", {n: 1.0}, {n: 1.0}, mode=QUOTA, use=[n])
    run("rrf, previous quotas and weights", PREVIOUS_QUOTAS, PREVIOUS_WEIGHTS)
    best: dict[str, Any] = dict(
        c=60.0,
        depth=0,
        W=dict(ann=1.0, co_engagement=1.0, trending=0.2, content=0.1, exploration=0.1, popular=0.0),
        Q=dict(exploration=0.05),
    )
    top = run("start", best["Q"], best["W"])

    def attempt(tag: str, **change: Any) -> None:
        nonlocal best, top
        cand = {**best, **change}
        m = run(tag, cand["Q"], cand["W"], c=cand["c"], depth=cand["depth"])
        if m["R@10"] + m["R@100"] > top["R@10"] + top["R@100"]:
            best, top = cand, m

    for depth in (50, 100, 200):
        attempt(f"depth {depth}", depth=depth)
    for c in (5.0, 20.0, 120.0):
        attempt(f"c {c}", c=c)
    grid = [
        ("co_engagement", (0.5, 0.75, 1.25, 1.5, 2.0)),
        ("trending", (0.0, 0.1, 0.3, 0.5)),
        ("content", (0.0, 0.05, 0.2)),
        ("popular", (0.05, 0.1)),
        ("exploration", (0.0, 0.05)),
    ]
    for _ in range(2):
        for n, values in grid:
            for v in values:
                if v != best["W"].get(n):
                    attempt(f"w {n} {v}", W={**best["W"], n: v})
        for depth in (0, 50, 100, 200):
            if depth != best["depth"]:
                attempt(f"depth {depth}", depth=depth)
        for c in (2.0, 10.0, 30.0, 60.0, 120.0):
            if c != best["c"]:
                attempt(f"c {c}", c=c)
    print("BEST", best, top, flush=True)
    for e in (0.0, 0.02, 0.05):
        q = {**best["Q"], "exploration": e}
        run(f"exploration floor {e}", q, best["W"], c=best["c"], depth=best["depth"])
    q = {**best["Q"], "ann": 0.5}
    run("ann floor 0.5", q, best["W"], c=best["c"], depth=best["depth"])


def ablate(split_name: str, which: str, path: str, settings: str, out: str) -> None:
    """The blend of SETTINGS, without each source, each source alone; the previous quota
    blend and its ablations."""
    lists = Lists(split_name, which, path)
    cfg = json.loads(Path(settings).read_text())
    q, w, kw = cfg["quotas"], cfg["weights"], dict(c=cfg["c"], depth=cfg["depth"])
    names = lists.names
    rows = {"blend": lists.recall(q, w, **kw)}
    for n in names:
        rows[f"without {n}"] = lists.recall(q, w, use=[m for m in names if m != n], **kw)
    for n in names:
        rows[f"only {n}"] = lists.recall({n: 1.0}, {n: 1.0}, use=[n], **kw)
    prev = lists.recall(PREVIOUS_QUOTAS, PREVIOUS_WEIGHTS, mode=QUOTA)
    rows["quota blend (previous default)"] = prev
    for n in names:
        rows[f"quota: without {n}"] = lists.recall(
            PREVIOUS_QUOTAS, PREVIOUS_WEIGHTS, mode=QUOTA, use=[m for m in names if m != n]
        )
    Path(out).write_text(json.dumps({"settings": cfg, "rows": rows}, indent=1) + "\n")
    for k, v in rows.items():
        print(f"{k:<40}", v)


def offline(split_name: str, bundle_dir: str, out: str) -> None:
    """The bundle's two-tower by exact search (its TorchScript tower, its item vectors),
    popularity and MF-BPR (seed 0), on the split's test queries."""
    import torch

    from annfleet.bundle import Bundle, shard_dirname
    from annfleet.model import baselines
    from annfleet.model.features import build_queries
    from annfleet.model.metrics import mask_seen, topk

    torch.set_num_threads(1)
    b = Bundle.open(bundle_dir, verify=False)
    data = load_movielens()
    split = make_split(data, split_name)
    q = build_queries(data, split)
    shards = range(b.num_shards)
    ids = np.concatenate([b.load_array(f"{shard_dirname(s)}/ids.npy") for s in shards])
    vec = np.concatenate([b.load_array(f"{shard_dirname(s)}/vectors.npy") for s in shards])
    ivecs = np.zeros((data.num_items + 1, vec.shape[1]), np.float32)
    ivecs[data.item_index(ids)] = vec
    tower = torch.jit.load(str(b.path / "user_tower.pt")).eval()

    def metrics(scores: np.ndarray) -> dict[str, float]:
        m = ranking_metrics(topk(mask_seen(scores, q), max(KS)), q)
        return {k: round(v, 4) for k, v in m.items()}

    with torch.inference_mode():
        u = tower(*(torch.from_numpy(a) for a in (q.user, q.recent, q.time))).numpy()
    res = {
        "two_tower": metrics(u @ ivecs.T),
        "popularity": metrics(baselines.popularity(data, split.train, q)),
        "mf_bpr": metrics(baselines.mf_bpr(data, split.train, q, seed=0, progress=False)),
    }
    Path(out).write_text(json.dumps({"split": split_name, "bundle_id": b.id, "offline": res}))
    print(res)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "capture":
        capture(args[0], args[1], args[2], args[3], *(int(a) for a in args[4:]))
    elif command == "search":
        search(args[0], args[1], args[2])
    elif command == "ablate":
        ablate(args[0], args[1], args[2], args[3], args[4])
    else:
        offline(args[0], args[1], args[2])
