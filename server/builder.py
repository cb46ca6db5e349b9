"""Write a retrieval bundle: partition the items, build every shard's faiss index, hash it all.

The format (layout, manifest, ids) is ``annfleet.bundle``'s; this module lives beside
``server/index.py`` because building an index needs faiss.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.bundle import FORMAT_VERSION, MANIFEST, Bundle, content_id, sha256_file, shard_dirname
from annfleet.errors import InvalidArgument
from annfleet.partition import SCHEME, shard_of
from annfleet.server.index import IndexSpec, build_index, set_threads, write_index
from annfleet.validation import METRICS

log = logging.getLogger(__name__)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)


def _check_vectors(
    name: str, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InvalidArgument(f"{name} vectors must be a non-empty 2-d array, got {vectors.shape}")
    if ids.shape != (vectors.shape[0],):
        raise InvalidArgument(
            f"{name} ids have shape {ids.shape}, expected ({vectors.shape[0]},) to match vectors"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidArgument(f"{name} ids must be integers, got {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"{name} ids contain duplicates")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"{name} vectors contain NaN or Inf")
    return ids.astype(np.int64), vectors


def _build_shard_index(
    shard_dir: str, index_type: str, params: dict[str, int], metric: str, seed: int
) -> dict[str, int]:
    """Worker: build shard_dir/index.faiss from shard_dir/vectors.npy (faiss releases the GIL)."""
    set_threads(1)  # one build per core, and a deterministic HNSW graph
    vectors = np.load(Path(shard_dir) / "vectors.npy", allow_pickle=False)
    spec = IndexSpec(index_type, params).resolved(*vectors.shape)
    write_index(build_index(vectors, spec, metric, seed=seed), Path(shard_dir) / "index.faiss")
    return spec.params


def build_bundle(
    out: Path,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    *,
    num_shards: int,
    index_type: str = "hnsw",
    index_params: Mapping[str, int] | None = None,
    metric: str = "ip",
    model: Mapping[str, Any] | None = None,
    user_ids: np.ndarray | None = None,
    user_vectors: np.ndarray | None = None,
    tables: Mapping[str, np.ndarray | Mapping[str, Any] | list[Any]] | None = None,
    files: Mapping[str, bytes | Path] | None = None,
    extra: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    seed: int = 0,
) -> Bundle:
    """Partition items onto shards, build every shard's index in parallel, write the bundle.

    item_ids (n,) int, item_vectors (n, d) float32. ``tables`` become ``tables/<name>.npy``
    (arrays) or ``tables/<name>.json`` (JSON-able values); ``files`` are copied verbatim to
    the given relative paths (e.g. ``{"user_tower.pt": path}``); ``extra`` is merged into the
    manifest (e.g. the tower's input spec, eval figures). Written to a temporary directory and
    renamed into place, so ``out`` is either absent or complete.
    """
    ids, vectors = _check_vectors("item", item_ids, item_vectors)
    if metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r} unknown; choose one of {METRICS}")
    if not 1 <= num_shards <= len(ids):
        raise InvalidArgument(f"num_shards must be in [1, {len(ids)}], got {num_shards}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InvalidArgument(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    # Validate the spec up front so a typo fails before any work.
    spec = IndexSpec(index_type, dict(index_params or {})).resolved(
        len(ids) // num_shards, vectors.shape[1]
    )
    if index_type == "ivfpq" and not (index_params or {}).get("pq_m"):
        log.info("ivfpq pq_m auto: %d for dim %d", spec.params["pq_m"], vectors.shape[1])

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        assignment = shard_of(ids, num_shards)
        shard_sizes = []
        for shard_id in range(num_shards):
            members = np.flatnonzero(assignment == shard_id)
            if len(members) == 0:
                raise InvalidArgument(f"shard {shard_id} would be empty; use fewer shards")
            shard_dir = tmp / shard_dirname(shard_id)
            _save_npy(shard_dir / "ids.npy", ids[members])
            _save_npy(shard_dir / "vectors.npy", vectors[members])
            shard_sizes.append(len(members))
        resolved = _build_indexes(
            tmp, num_shards, index_type, dict(index_params or {}), metric, seed, workers, progress
        )

        manifest_extra: dict[str, Any] = {}
        if user_ids is not None or user_vectors is not None:
            if user_ids is None or user_vectors is None:
                raise InvalidArgument("user ids and user vectors must be given together")
            uids, uvecs = _check_vectors("user", user_ids, user_vectors)
            if uvecs.shape[1] != vectors.shape[1]:
                raise InvalidArgument(
                    f"user vectors have dim {uvecs.shape[1]}, item vectors {vectors.shape[1]}"
                )
            _save_npy(tmp / "users" / "ids.npy", uids)
            _save_npy(tmp / "users" / "vectors.npy", uvecs)
            manifest_extra["users"] = {
                "count": len(uids),
                "ids": "users/ids.npy",
                "vectors": "users/vectors.npy",
            }
        table_paths: dict[str, str] = {}
        for name, value in (tables or {}).items():
            if isinstance(value, np.ndarray):
                rel = f"tables/{name}.npy"
                _save_npy(tmp / rel, value)
            else:
                rel = f"tables/{name}.json"
                (tmp / "tables").mkdir(exist_ok=True)
                (tmp / rel).write_text(json.dumps(value))
            table_paths[name] = rel
        for rel, content in (files or {}).items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)

        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model": {
                "name": "embeddings",
                "version": "0",
                **(model or {}),
                "dim": int(vectors.shape[1]),
                "metric": metric,
            },
            "num_items": len(ids),
            "partitioning": {"scheme": SCHEME, "num_shards": num_shards},
            "shards": [
                {
                    "shard_id": s,
                    "dir": shard_dirname(s),
                    "num_items": shard_sizes[s],
                    "index": {
                        "type": index_type,
                        "params": resolved[s],
                        "factory": IndexSpec(index_type, resolved[s]).factory_string(
                            vectors.shape[1]
                        ),
                    },
                }
                for s in range(num_shards)
            ],
            "tables": table_paths,
            **manifest_extra,
            **(extra or {}),
        }
        manifest["files"] = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest["bundle_id"] = content_id(manifest)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle %s written to %s", manifest["bundle_id"], out)
    return Bundle.open(out, verify=False)


def _build_indexes(
    root: Path,
    num_shards: int,
    index_type: str,
    params: dict[str, int],
    metric: str,
    seed: int,
    workers: int | None,
    progress: bool,
) -> list[dict[str, int]]:
    """Build every shard's index, ``workers`` shards at a time; returns resolved params."""
    workers = max(1, min(workers or os.cpu_count() or 1, num_shards))
    resolved: list[dict[str, int]] = [{} for _ in range(num_shards)]
    bar = _progress(num_shards, f"building {num_shards} {index_type} shard indexes", progress)
    # Threads, not processes: faiss releases the GIL, and nothing re-imports the caller's
    # __main__ (as a spawned process pool would).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build") as pool:
        futures = {
            pool.submit(
                _build_shard_index,
                str(root / shard_dirname(s)),
                index_type,
                params,
                metric,
                seed + s,
            ): s
            for s in range(num_shards)
        }
        for future in as_completed(futures):
            resolved[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return resolved


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="shard")
