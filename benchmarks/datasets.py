"""Benchmark datasets: synthetic catalogues, user-supplied .npy files, or an existing bundle.

A :class:`Dataset` is the whole catalogue (ids, vectors), the query vectors and the metric.
Synthetic data and everything derived from it (bundles, ground truth, in-process indexes) is
cached under a data directory, keyed by the parameters that produced it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("clustered", "uniform")


def default_data_dir() -> Path:
    """ANNFLEET_BENCH_DATA, else ~/.cache/annfleet/bench (big files never land in the repo)."""
    env = os.environ.get("ANNFLEET_BENCH_DATA")
    return Path(env) if env else Path.home() / ".cache" / "annfleet" / "bench"


def params_key(params: dict[str, Any]) -> str:
    """A short stable hash of JSON-able parameters, for cache directory names."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Dataset:
    """ids (n,) int64, vectors (n, d) float32, queries (nq, d) float32, metric "ip"|"l2"."""

    name: str
    ids: np.ndarray
    vectors: np.ndarray
    queries: np.ndarray
    metric: str
    description: dict[str, Any] = field(default_factory=dict)
    bundle_path: Path | None = None  # set when the dataset *is* an existing bundle
    query_ids: np.ndarray | None = None  # (nq,) user ids of the queries, when they are users

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def key(self) -> str:
        return params_key(self.description)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _clustered(
    n: int, dim: int, clusters: int, rng: np.random.Generator, spread: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random unit centres, L2-normalised; returns (vectors, centres)."""
    centres = _normalise(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 1 << 20
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        assign = rng.integers(0, clusters, size=stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        noise *= spread / np.sqrt(dim)
        out[start:stop] = _normalise(centres[assign] + noise)
    return out, centres


def synthetic(
    items: int,
    dim: int,
    *,
    queries: int = 1000,
    kind: str = "clustered",
    clusters: int = 0,
    seed: int = 0,
    data_dir: Path | None = None,
) -> Dataset:
    """A deterministic synthetic catalogue, cached as .npy under ``data_dir``.

    ``clustered`` uses :func:`annfleet.synthetic.make_catalogue` (the product's default
    catalogue: item ids, L2-normalised clustered vectors, user vectors as queries) when it is
    available, else an equivalent local generator. ``uniform`` draws unit vectors uniformly on
    the sphere — near worst case for graph indexes; a stress point, not a default-chooser.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} unknown; choose one of {KINDS}")
    clusters = clusters or 256  # annfleet.synthetic's default catalogue
    desc = {
        "source": "synthetic",
        "kind": kind,
        "items": items,
        "dim": dim,
        "queries": queries,
        "clusters": clusters if kind == "clustered" else 0,
        "seed": seed,
        "metric": "ip",
    }
    cache = (data_dir or default_data_dir()) / "datasets" / params_key(desc)
    name = f"synthetic-{kind}-{items}x{dim}"
    if (cache / "query_ids.npy").is_file():
        # The stored description (with the generator used), so cache keys derived from it
        # are the same on a hit as on the run that generated the data.
        desc = json.loads((cache / "description.json").read_text())
        return Dataset(
            name,
            np.load(cache / "ids.npy"),
            np.load(cache / "vectors.npy"),
            np.load(cache / "queries.npy"),
            "ip",
            desc,
            query_ids=np.load(cache / "query_ids.npy"),
        )
    rng = np.random.default_rng(seed)
    qids = np.arange(1, queries + 1, dtype=np.int64)
    if kind == "uniform":
        ids = np.arange(items, dtype=np.int64)
        vectors = _normalise(rng.standard_normal((items, dim), dtype=np.float32))
        qs = _normalise(rng.standard_normal((queries, dim), dtype=np.float32))
        desc["generator"] = "annfleet.benchmarks.datasets (gaussian, normalised)"
    else:
        # make_catalogue holds float64 temporaries: above a few million items use the
        # chunked local generator (same recipe) to keep memory bounded.
        made = _make_catalogue(items, dim, clusters, queries, seed) if items <= 2_000_000 else None
        if made is not None:
            ids, vectors, qs, qids = made
            desc["generator"] = "annfleet.synthetic.make_catalogue"
        else:
            ids = np.arange(items, dtype=np.int64)
            vectors, _centres = _clustered(items, dim, clusters, rng)
            qs, _ = _clustered(queries, dim, clusters, rng)
            desc["generator"] = "annfleet.benchmarks.datasets (gaussian blobs)"
    cache.mkdir(parents=True, exist_ok=True)
    for fname, arr in (
        ("ids.npy", ids),
        ("vectors.npy", vectors),
        ("queries.npy", qs),
        ("query_ids.npy", qids),
    ):
        np.save(cache / f".{fname}", arr, allow_pickle=False)
        os.replace(cache / f".{fname}", cache / fname)
    (cache / "description.json").write_text(json.dumps(desc, indent=2))
    return Dataset(name, ids, vectors, qs, "ip", desc, query_ids=qids)


def _make_catalogue(
    items: int, dim: int, clusters: int, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        from annfleet.synthetic import make_catalogue
    except ImportError:
        return None
    try:
        cat = make_catalogue(items, dim, clusters=clusters, users=queries, seed=seed)
    except TypeError as exc:  # signature drift: fall back rather than fail the benchmark
        log.warning("annfleet.synthetic.make_catalogue unusable (%s); using local generator", exc)
        return None
    return (
        np.asarray(cat.ids, dtype=np.int64),
        np.ascontiguousarray(cat.vectors, dtype=np.float32),
        np.ascontiguousarray(cat.user_vectors[:queries], dtype=np.float32),
        np.asarray(cat.user_ids[:queries], dtype=np.int64),
    )


def from_files(
    vectors: Path,
    queries: Path,
    *,
    ids: Path | None = None,
    metric: str = "ip",
    limit_queries: int = 0,
) -> Dataset:
    """User data: vectors (n, d) and queries (nq, d) .npy float32 (no pickle)."""
    vecs = np.ascontiguousarray(np.load(vectors, allow_pickle=False), dtype=np.float32)
    qs = np.ascontiguousarray(np.load(queries, allow_pickle=False), dtype=np.float32)
    if vecs.ndim != 2 or qs.ndim != 2 or vecs.shape[1] != qs.shape[1]:
        raise ValueError(f"vectors {vecs.shape} and queries {qs.shape} must be 2-d with one dim")
    item_ids = (
        np.load(ids, allow_pickle=False).astype(np.int64)
        if ids
        else np.arange(len(vecs), dtype=np.int64)
    )
    if limit_queries:
        qs = qs[:limit_queries]
    st = vectors.stat()
    desc = {
        "source": "files",
        "vectors": str(vectors.resolve()),
        "queries": str(queries),
        "size": st.st_size,
        "mtime": int(st.st_mtime),
        "nq": len(qs),
        "metric": metric,
    }
    return Dataset(vectors.stem, item_ids, vecs, qs, metric, desc)


def from_bundle(path: Path, *, limit_queries: int = 1000, seed: int = 0) -> Dataset:
    """An existing bundle: its items (all shards), queries = a sample of its user vectors."""
    from annfleet.bundle import Bundle

    bundle = Bundle.open(path, verify=False)
    ids = np.concatenate(
        [bundle.load_array(f"{bundle.shard(s)['dir']}/ids.npy") for s in range(bundle.num_shards)]
    )
    vectors = np.concatenate(
        [
            bundle.load_array(f"{bundle.shard(s)['dir']}/vectors.npy")
            for s in range(bundle.num_shards)
        ]
    )
    users = bundle.users()
    if users is None:
        raise ValueError(f"bundle {path} has no user vectors to use as queries")
    user_ids, user_vectors = users
    rng = np.random.default_rng(seed)
    pick = np.sort(
        rng.choice(len(user_vectors), size=min(limit_queries, len(user_vectors)), replace=False)
    )
    qs = np.ascontiguousarray(user_vectors[pick], dtype=np.float32)
    desc = {
        "source": "bundle",
        "bundle_id": bundle.id,
        "path": str(Path(path).resolve()),
        "nq": len(qs),
        "metric": bundle.metric,
    }
    return Dataset(
        f"bundle-{bundle.id}",
        ids.astype(np.int64),
        np.ascontiguousarray(vectors, dtype=np.float32),
        qs,
        bundle.metric,
        desc,
        bundle_path=Path(path),
        query_ids=user_ids[pick].astype(np.int64),
    )
