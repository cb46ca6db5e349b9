"""Write a retrieval bundle: partition the items, build every shard's faiss index, hash it all.

The format (layout, manifest, ids) is ``annfleet.bundle``'s; this module lives beside
``server/index.py`` because building an index needs faiss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.arrays import load_npy
from annfleet.bundle import FORMAT_VERSION, MANIFEST, Bundle, content_id, sha256_file, shard_dirname
from annfleet.errors import InvalidArgument
from annfleet.partition import SCHEME, shard_of
from annfleet.server.index import IndexSpec, build_index, set_threads, write_index
from annfleet.validation import METRICS

log = logging.getLogger(__name__)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)


def _check_ids(name: str, ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,):
        raise InvalidArgument(
            f"{name} ids have shape {ids.shape}, expected ({n},) to match vectors"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidArgument(f"{name} ids must be integers, got {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument(f"{name} ids contain duplicates")
    return ids.astype(np.int64)


def _check_shape(name: str, vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InvalidArgument(f"{name} vectors must be a non-empty 2-d array, got {vectors.shape}")


def _check_vectors(
    name: str, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.asarray(vectors)
    _check_shape(name, vectors)
    ids = _check_ids(name, ids, vectors.shape[0])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"{name} vectors contain NaN or Inf")
    return ids, vectors


def _build_shard_index(
    shard_dir: str, index_type: str, params: dict[str, int], metric: str, seed: int
) -> dict[str, int]:
    """Worker: build shard_dir/index.faiss from shard_dir/vectors.npy (faiss releases the GIL)."""
    set_threads(1)  # one build per core, and a deterministic HNSW graph
    vectors = load_npy(Path(shard_dir) / "vectors.npy")
    spec = IndexSpec(index_type, params).resolved(*vectors.shape)
    write_index(build_index(vectors, spec, metric, seed=seed), Path(shard_dir) / "index.faiss")
    return spec.params


@dataclass(frozen=True)
class _Inputs:
    """What every step of one build agrees on (one machine, or one pod per shard)."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d), any float dtype; may be memory-mapped
    num_shards: int
    index_type: str
    params: dict[str, int]
    metric: str
    seed: int
    assignment: np.ndarray  # (n,) shard of each item
    digest: str  # of the ids and every build parameter: parts of other inputs are refused

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def members(self, shard_id: int) -> np.ndarray:
        members = np.flatnonzero(self.assignment == shard_id)
        if len(members) == 0:
            raise InvalidArgument(f"shard {shard_id} would be empty; use fewer shards")
        return members


def _inputs(
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    num_shards: int,
    index_type: str,
    index_params: Mapping[str, int] | None,
    metric: str,
    seed: int,
) -> _Inputs:
    vectors = np.asarray(item_vectors)  # a memory map stays one: rows are read per shard
    _check_shape("item", vectors)
    ids = _check_ids("item", item_ids, vectors.shape[0])
    if metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r} unknown; choose one of {METRICS}")
    if not 1 <= num_shards <= len(ids):
        raise InvalidArgument(f"num_shards must be in [1, {len(ids)}], got {num_shards}")
    params = dict(index_params or {})
    # Validate the spec up front so a typo fails before any work.
    spec = IndexSpec(index_type, params).resolved(len(ids) // num_shards, vectors.shape[1])
    if index_type == "ivfpq" and not params.get("pq_m"):
        log.info("ivfpq pq_m auto: %d for dim %d", spec.params["pq_m"], vectors.shape[1])
    digest = hashlib.sha256(ids.tobytes())
    digest.update(
        json.dumps(
            [vectors.shape[1], num_shards, index_type, sorted(params.items()), metric, seed]
        ).encode()
    )
    return _Inputs(
        ids,
        vectors,
        num_shards,
        index_type,
        params,
        metric,
        seed,
        shard_of(ids, num_shards),
        digest.hexdigest(),
    )


def parts_dir(out: Path) -> Path:
    """Where a build keeps finished shards until the manifest is written: ``.<name>.parts``."""
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def _write_part(parts: Path, inputs: _Inputs, shard_id: int) -> dict[str, Any]:
    """Build one shard (ids, vectors, index) into ``parts``; a finished part is reused."""
    name = shard_dirname(shard_id)
    marker_path = parts / f"{name}.json"
    if marker_path.exists() and (parts / name).is_dir():
        marker = json.loads(marker_path.read_text())
        if marker.get("inputs") == inputs.digest:
            log.info("%s already built in %s", name, parts)
            return dict(marker)
    members = inputs.members(shard_id)
    vectors = np.ascontiguousarray(inputs.vectors[members], dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"item vectors contain NaN or Inf (shard {shard_id})")
    tmp = parts / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save_npy(tmp / "ids.npy", inputs.ids[members])
        _save_npy(tmp / "vectors.npy", vectors)
        del vectors
        resolved = _build_shard_index(
            str(tmp), inputs.index_type, inputs.params, inputs.metric, inputs.seed + shard_id
        )
        files = {f"{name}/{p.name}": sha256_file(p) for p in sorted(tmp.iterdir())}
        shutil.rmtree(parts / name, ignore_errors=True)
        tmp.rename(parts / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    marker = {
        "shard_id": shard_id,
        "num_items": len(members),
        "params": resolved,
        "inputs": inputs.digest,
        "files": files,
    }
    staged = marker_path.with_name(f".{marker_path.name}.tmp-{os.getpid()}")
    staged.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    staged.replace(marker_path)  # the marker appears only once the part is complete
    return marker


def build_shard_part(
    out: Path,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    *,
    shard_id: int,
    num_shards: int,
    index_type: str = "hnsw",
    index_params: Mapping[str, int] | None = None,
    metric: str = "ip",
    seed: int = 0,
) -> dict[str, Any]:
    """One step of a split build: partition as ``build_bundle`` does and build only shard
    ``shard_id`` into ``parts_dir(out)`` (e.g. one Kubernetes Job pod per shard). The
    vectors may be memory-mapped: only this shard's rows are read. Returns the part record
    that ``finalize_bundle`` reads."""
    inputs = _inputs(item_ids, item_vectors, num_shards, index_type, index_params, metric, seed)
    if not 0 <= shard_id < num_shards:
        raise InvalidArgument(f"shard {shard_id} out of range for {num_shards} shards")
    parts = parts_dir(Path(out))
    parts.mkdir(parents=True, exist_ok=True)
    return _write_part(parts, inputs, shard_id)


def finalize_bundle(
    out: Path,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    *,
    num_shards: int,
    index_type: str = "hnsw",
    index_params: Mapping[str, int] | None = None,
    metric: str = "ip",
    seed: int = 0,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
    **bundle: Any,
) -> Bundle:
    """The last step of a split build: wait (up to ``wait_s``) until every shard part is
    built from these same inputs, then write the bundle exactly as ``build_bundle`` does
    (same files, same manifest, same ``bundle_id``). ``bundle`` takes ``build_bundle``'s
    model, users, tables, files, extra and overwrite arguments."""
    inputs = _inputs(item_ids, item_vectors, num_shards, index_type, index_params, metric, seed)
    out = Path(out)
    check_out(out, bundle.get("overwrite", False))
    parts = parts_dir(out)
    deadline = time.monotonic() + wait_s
    while True:
        markers, missing = _read_parts(parts, inputs)
        if not missing:
            break
        if time.monotonic() >= deadline:
            raise InvalidArgument(
                f"{len(missing)} of {num_shards} shards not built in {parts}: "
                f"{', '.join(shard_dirname(s) for s in missing)} (build-bundle --only-shard I)"
            )
        time.sleep(poll_s)
    return _finalize(out, inputs, markers, **bundle)


def _read_parts(parts: Path, inputs: _Inputs) -> tuple[list[dict[str, Any]], list[int]]:
    markers: list[dict[str, Any]] = []
    missing: list[int] = []
    for shard_id in range(inputs.num_shards):
        path = parts / f"{shard_dirname(shard_id)}.json"
        if not path.exists():
            missing.append(shard_id)
            continue
        marker = json.loads(path.read_text())
        if marker.get("inputs") != inputs.digest:
            raise InvalidArgument(
                f"{path} was built from other inputs (ids, shard count, index or parameters) "
                "than these; rebuild it or remove it"
            )
        markers.append(marker)
    return markers, missing


def check_out(out: Path, overwrite: bool) -> None:
    """InvalidArgument when ``out`` exists and may not be replaced (check before long work)."""
    if out.exists() and not overwrite:
        raise InvalidArgument(f"{out} exists; pass overwrite=True (--overwrite) to replace it")


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
    renamed into place, so ``out`` is either absent or complete. The shards go through the
    same parts as a split build (``build_shard_part`` + ``finalize_bundle``), so both give
    the same bundle and ``bundle_id``.
    """
    inputs = _inputs(item_ids, item_vectors, num_shards, index_type, index_params, metric, seed)
    out = Path(out)
    check_out(out, overwrite)
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    try:
        markers = _build_parts(parts, inputs, workers, progress)
        return _finalize(
            out,
            inputs,
            markers,
            model=model,
            user_ids=user_ids,
            user_vectors=user_vectors,
            tables=tables,
            files=files,
            extra=extra,
            overwrite=overwrite,
        )
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _finalize(
    out: Path,
    inputs: _Inputs,
    markers: list[dict[str, Any]],
    *,
    model: Mapping[str, Any] | None = None,
    user_ids: np.ndarray | None = None,
    user_vectors: np.ndarray | None = None,
    tables: Mapping[str, np.ndarray | Mapping[str, Any] | list[Any]] | None = None,
    files: Mapping[str, bytes | Path] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Move the built shards in, write users, tables, files and the manifest, rename."""
    parts = parts_dir(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [shard_dirname(s) for s in range(inputs.num_shards)]
    try:
        for name in names:
            (parts / name).rename(tmp / name)
        manifest_extra: dict[str, Any] = {}
        if user_ids is not None or user_vectors is not None:
            if user_ids is None or user_vectors is None:
                raise InvalidArgument("user ids and user vectors must be given together")
            uids, uvecs = _check_vectors("user", user_ids, user_vectors)
            if uvecs.shape[1] != inputs.dim:
                raise InvalidArgument(
                    f"user vectors have dim {uvecs.shape[1]}, item vectors {inputs.dim}"
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
                "dim": inputs.dim,
                "metric": inputs.metric,
            },
            "num_items": len(inputs.ids),
            "partitioning": {"scheme": SCHEME, "num_shards": inputs.num_shards},
            "shards": [
                {
                    "shard_id": m["shard_id"],
                    "dir": shard_dirname(m["shard_id"]),
                    "num_items": m["num_items"],
                    "index": {
                        "type": inputs.index_type,
                        "params": m["params"],
                        "factory": IndexSpec(inputs.index_type, m["params"]).factory_string(
                            inputs.dim
                        ),
                    },
                }
                for m in markers
            ],
            "tables": table_paths,
            **manifest_extra,
            **(extra or {}),
        }
        # shard files were hashed where they were built; the rest here
        hashes = {rel: digest for m in markers for rel, digest in m["files"].items()}
        for p in sorted(tmp.rglob("*")):
            rel = str(p.relative_to(tmp))
            if p.is_file() and not rel.startswith(tuple(f"{n}/" for n in names)):
                hashes[rel] = sha256_file(p)
        manifest["files"] = dict(sorted(hashes.items()))
        manifest["bundle_id"] = content_id(manifest)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        for name in names:  # the built shards go back, so a retry need not rebuild them
            if (tmp / name).is_dir() and not (parts / name).exists():
                (tmp / name).rename(parts / name)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    log.info("bundle %s written to %s", manifest["bundle_id"], out)
    return Bundle.open(out, verify=False)


def _build_parts(
    parts: Path, inputs: _Inputs, workers: int | None, progress: bool
) -> list[dict[str, Any]]:
    """Build every shard's part, ``workers`` shards at a time; the part records in order."""
    n = inputs.num_shards
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    markers: list[dict[str, Any]] = [{} for _ in range(n)]
    bar = _progress(n, f"building {n} {inputs.index_type} shard indexes", progress)
    # Threads, not processes: faiss releases the GIL, and nothing re-imports the caller's
    # __main__ (as a spawned process pool would).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build") as pool:
        futures = {pool.submit(_write_part, parts, inputs, s): s for s in range(n)}
        for future in as_completed(futures):
            markers[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return markers


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
