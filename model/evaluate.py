"""`annfleet eval`: every model on the same split, queries and metrics; means over seeds.

Per split and seed: popularity (all-time, recent window), MF-BPR, item-item co-engagement,
EASE, the two-tower by exact search and through an HNSW index (with ANN recall@100 against
exact search), and a cold-start run in which 5% of the items are held out of training
entirely and scored from content features alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annfleet.model import baselines
from annfleet.model.data import (
    MODELS,
    SPLITS,
    MovieLens,
    Split,
    cold_items,
    load_movielens,
    make_split,
)
from annfleet.model.features import Queries, build_queries
from annfleet.model.metrics import KS, mask_seen, ranking_metrics, topk
from annfleet.model.two_tower import (
    TwoTowerConfig,
    served_item_vectors,
    train_two_tower,
    user_vectors,
)

log = logging.getLogger(__name__)

# Tuned on the validation split carved from train (see benchmarks/results/eval/README.md).
RECENT_WINDOW_DAYS = {"per_user": 30.0, "global": 7.0}
EASE_LAMBDA = 300.0
COLD_FRACTION = 0.05
ANN_PARAMS = {"m": 32, "ef_construction": 200}  # HNSW build
ANN_EF_SEARCH = 128
EVAL_VERSION = "3"  # 3: untrained items served from content; cold share and warm recall


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


def ann_eval(
    item_vecs: np.ndarray,
    user_vecs: np.ndarray,
    queries: Queries,
    params: dict[str, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Two-tower through an HNSW index over items 1..N.

    item_vecs (N + 1, d), user_vecs (Q, d) float32 -> top (Q, 100) int64 item indices with the
    user's seen items removed, and mean recall@100 of the ANN top-100 against exact top-100.
    """
    import faiss

    from annfleet.server.index import IndexSpec, build_index, exact_search

    vecs = np.ascontiguousarray(item_vecs[1:], dtype=np.float32)
    spec = IndexSpec("hnsw", dict(params or ANN_PARAMS))
    index = build_index(vecs, spec, "ip", seed=seed)
    ef = ANN_EF_SEARCH
    k = max(KS)
    exact, _ = exact_search(vecs, user_vecs, k, "ip")  # (positions, scores)
    _, approx = index.search(
        np.ascontiguousarray(user_vecs),
        k,
        params=faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            efSearch=max(ef, k)
        ),
    )
    ann_recall = float(
        np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(approx, exact, strict=True)])
    )
    top = np.zeros((len(queries), k), dtype=np.int64)
    for q in range(len(queries)):
        seen = queries.seen_of(q)
        fetch = min(len(vecs), k + len(seen))
        _, pos = index.search(
            np.ascontiguousarray(user_vecs[q : q + 1]),
            fetch,
            params=faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                efSearch=max(ef, fetch)
            ),
        )
        cand = pos[0][pos[0] >= 0] + 1
        cand = cand[~np.isin(cand, seen)][:k]
        top[q, : len(cand)] = cand
    return top, ann_recall


def evaluate_split(
    data: MovieLens,
    split_name: str,
    *,
    seed: int = 0,
    config: TwoTowerConfig | None = None,
    validation: bool = False,
    progress: bool = True,
    models: tuple[str, ...] = MODELS,
) -> dict[str, Any]:
    """All models on one split and seed -> {model: {metric: value}}."""
    torch.manual_seed(seed)
    config = replace(config or TwoTowerConfig(), seed=seed)
    split = make_split(data, split_name, validation=validation)
    queries = build_queries(data, split, config.recent_len)  # the context the tower trains on
    out: dict[str, Any] = {"num_queries": len(queries)}

    def run(name: str, fn: Callable[[], np.ndarray]) -> None:
        if name not in models:
            return
        t0 = time.monotonic()
        scores = fn()
        out[name] = _round(ranking_metrics(topk(mask_seen(scores, queries), max(KS)), queries))
        out[name].pop("num_queries", None)
        log.info(
            "%s/%s seed %d: %s (%.1fs)", split_name, name, seed, out[name], time.monotonic() - t0
        )

    tr = split.train
    run("popularity", lambda: baselines.popularity(data, tr, queries))
    run(
        "popularity_recent",
        lambda: baselines.popularity_recent(data, tr, queries, RECENT_WINDOW_DAYS[split_name]),
    )
    run("mf_bpr", lambda: baselines.mf_bpr(data, tr, queries, seed=seed, progress=progress))
    run("item_item", lambda: baselines.item_item(data, tr, queries))
    run("ease", lambda: baselines.ease(data, tr, queries, EASE_LAMBDA))
    if "two_tower" in models or "two_tower_ann" in models:
        model = train_two_tower(data, tr, config, progress=progress)
        ivecs = served_item_vectors(model, data, tr)
        uvecs = user_vectors(model, queries.user, queries.recent, queries.time)
        run("two_tower", lambda: uvecs @ ivecs.T)
        if "two_tower_ann" in models:
            top, ann_recall = ann_eval(ivecs, uvecs, queries, seed=seed)
            m = ranking_metrics(top, queries)
            m.pop("num_queries", None)
            out["two_tower_ann"] = _round({**m, "ann_recall@100": ann_recall})
    if "cold_start" in models:
        out["cold_start"] = _round(cold_start_eval(data, split, config, seed, progress))
    return out


def cold_start_eval(
    data: MovieLens, split: Split, config: TwoTowerConfig, seed: int, progress: bool
) -> dict[str, float]:
    """Hold COLD_FRACTION of items out of training entirely; their vectors come from content.

    Recall@50 is over the full-catalogue ranking, counting only the held-out items among each
    user's test items (users without one are skipped); random = the expected recall@50 of a
    random ranking of the user's unseen items.
    """
    cold = cold_items(data, COLD_FRACTION, seed)
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold] = True
    train = split.train & ~is_cold[data.inter_item]
    cold_split = Split(split.name, train, split.test)
    queries = build_queries(data, cold_split, config.recent_len)
    model = train_two_tower(data, train, config, progress=progress)
    ivecs = served_item_vectors(model, data, train)  # the held-out items: content only
    uvecs = user_vectors(model, queries.user, queries.recent, queries.time)
    top = topk(mask_seen(uvecs @ ivecs.T, queries), 50)
    m = ranking_metrics(top, queries, ks=(50,), relevant=is_cold)
    warm = ranking_metrics(top, queries, ks=(50,), relevant=~is_cold)
    rows = [q for q in range(len(queries)) if is_cold[queries.targets_of(q)].any()]
    unseen = data.num_items - np.diff(queries.seen_ptr)[rows]
    random = float(np.mean(np.minimum(1.0, 50.0 / unseen))) if rows else 0.0
    return {
        "recall@50": m["recall@50"],
        "random_recall@50": random,
        "lift": m["recall@50"] / random if random else 0.0,
        # what the lift costs: the held-out items' share of every user's top 50 (a ranking
        # blind to them: about COLD_FRACTION) and the recall@50 of the other test items
        "cold_share@50": float(is_cold[top].mean()),
        "warm_recall@50": warm["recall@50"],
        "num_items": float(len(cold)),
        "num_queries": m["num_queries"],
    }


def mean_over_seeds(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-seed results -> (means, standard deviations), model by model."""
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    keys = dict.fromkeys(k for r in runs for k in r)
    for key in keys:
        have = [r[key] for r in runs if key in r]
        if isinstance(have[0], dict):
            mean[key] = {m: round(float(np.mean([h[m] for h in have])), 4) for m in have[0]}
            std[key] = {m: round(float(np.std([h[m] for h in have])), 4) for m in have[0]}
        else:
            mean[key] = have[0]
    return mean, std


def cache_key(
    fingerprint: str,
    splits: tuple[str, ...],
    seeds: tuple[int, ...],
    config: TwoTowerConfig,
    validation: bool,
    cold_seeds: tuple[int, ...] = (),
    models: tuple[str, ...] = MODELS,
) -> str:
    blob = json.dumps(
        {
            **({} if set(models) >= set(MODELS) else {"models": sorted(models)}),
            "v": EVAL_VERSION,
            "data": fingerprint,
            "splits": splits,
            "seeds": seeds,
            "config": asdict(config),
            "validation": validation,
            "cold_seeds": cold_seeds,
            "windows": RECENT_WINDOW_DAYS,
            "ease": EASE_LAMBDA,
            "cold": COLD_FRACTION,
            "ann": {**ANN_PARAMS, "ef_search": ANN_EF_SEARCH},  # the key of earlier runs
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_eval(
    data_dir: Path | None = None,
    *,
    splits: tuple[str, ...] = SPLITS,
    seeds: tuple[int, ...] = (0, 1, 2),
    config: TwoTowerConfig | None = None,
    validation: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    cold_seeds: tuple[int, ...] | None = None,
    threads: int = 2,
    models: tuple[str, ...] = MODELS,
) -> list[dict[str, Any]]:
    """The `annfleet eval` result: one object per split with per-model means over seeds.

    ``cold_seeds``: the seeds that also run the (separately trained) cold-start model;
    default all of ``seeds``. ``models``: only these (default all).
    """
    torch.set_num_threads(threads)
    cold_seeds = tuple(seeds) if cold_seeds is None else tuple(cold_seeds)
    data = load_movielens(data_dir)
    config = config or TwoTowerConfig()
    cache_file = None
    if cache_dir is not None:
        key = cache_key(data.fingerprint(), splits, seeds, config, validation, cold_seeds, models)
        cache_file = Path(cache_dir) / f"eval-{key}.json"
        if cache_file.is_file():
            log.info("reusing cached evaluation %s", cache_file)
            cached: list[dict[str, Any]] = json.loads(cache_file.read_text())
            return cached
    results = []
    for name in splits:
        runs = [
            evaluate_split(
                data,
                name,
                seed=s,
                config=config,
                validation=validation,
                progress=progress,
                models=tuple(m for m in models if s in cold_seeds or m != "cold_start"),
            )
            for s in seeds
        ]
        mean, std = mean_over_seeds(runs)
        results.append(
            {
                "split": name,
                **{m: mean[m] for m in MODELS if m in mean},
                "num_queries": mean["num_queries"],
                "seeds": list(seeds),
                "cold_start_seeds": [s for s in seeds if s in cold_seeds],
                "validation": validation,
                "std": std,
            }
        )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(results, indent=2) + "\n")
    return results
