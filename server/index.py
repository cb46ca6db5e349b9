"""The only module that calls faiss: build, save, load and search one shard's index.

Scores are in the metric's own units: inner product for ``ip`` (higher is better),
squared L2 distance for ``l2`` (lower is better). Rows with fewer than k hits are padded
with id -1 and the worst possible score.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from annfleet.arrays import load_npy
from annfleet.config import SearchConfig
from annfleet.errors import BundleError, InvalidArgument
from annfleet.merge import merge_rows
from annfleet.validation import MIN_INDEX_PARAMS, higher_is_better, worst_score

# faiss switches from its own kernels to BLAS above this many queries x items; the default
# (128000) makes batched exact search ~9x slower at our sizes.
faiss.cvar.distance_compute_blas_threshold = 20

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}

# Build parameters (they belong to the bundle). What a search uses when a request says 0 is
# the serving config's ``search:`` section (SearchConfig), never the bundle's.
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200},
    "ivfpq": {"nlist": 1024, "pq_m": 0, "nbits": 8},  # pq_m 0 = auto_pq_m(dim)
}
SEARCH_PARAMS = tuple(f.name for f in fields(SearchConfig))
MAX_AUTO_PQ_M = 16


def auto_pq_m(dim: int) -> int:
    """IVF-PQ sub-quantizers for ``dim``: the largest divisor of dim that is <= 16 and leaves
    >= 2 dims per sub-quantizer (64 -> 16, 50 -> 10, 32 -> 16, 16 -> 8); 1 if none does."""
    fits = [m for m in range(1, MAX_AUTO_PQ_M + 1) if dim % m == 0 and dim // m >= 2]
    return max(fits, default=1)


@dataclass(frozen=True)
class IndexSpec:
    """Which index a shard gets and its build parameters."""

    type: str = "hnsw"
    params: dict[str, int] = field(default_factory=dict)

    def resolved(self, num_items: int, dim: int) -> IndexSpec:
        """Fill defaults and adapt size-dependent parameters to a shard of ``num_items``."""
        if self.type not in INDEX_TYPES:
            raise InvalidArgument(f"index type {self.type!r} unknown; choose one of {INDEX_TYPES}")
        searched = sorted(set(self.params) & set(SEARCH_PARAMS))
        if searched:
            raise InvalidArgument(
                f"{', '.join(searched)}: search parameter(s), not build ones; set them in the "
                "serving config's search: section or per request"
            )
        unknown = set(self.params) - set(DEFAULT_PARAMS[self.type])
        if unknown:
            raise InvalidArgument(
                f"unknown {self.type} index parameter(s) {sorted(unknown)}; "
                f"known: {sorted(DEFAULT_PARAMS[self.type])}"
            )
        params = {**DEFAULT_PARAMS[self.type], **self.params}
        for name, value in sorted(params.items()):
            low = MIN_INDEX_PARAMS[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                auto = " (0 = auto)" if name == "pq_m" else ""
                raise InvalidArgument(
                    f"{self.type} index parameter {name} must be an integer >= {low}{auto}, "
                    f"got {value!r}"
                )
        if self.type == "ivfpq":
            # k-means wants >= 39 points per centroid; keep small shards trainable.
            params["nlist"] = max(1, min(params["nlist"], num_items // 39))
            # PQ codebooks want >= 39 points per centroid too: fewer bits for small shards.
            params["nbits"] = max(4, min(params["nbits"], int(math.log2(max(num_items // 39, 16)))))
            if params["pq_m"] == 0:
                params["pq_m"] = auto_pq_m(dim)
            elif dim % params["pq_m"]:
                divisors = [m for m in range(1, MAX_AUTO_PQ_M + 1) if dim % m == 0]
                raise InvalidArgument(
                    f"ivfpq pq_m={params['pq_m']} must divide dim {dim} (e.g. "
                    f"{', '.join(map(str, divisors))}; pq_m 0 picks {auto_pq_m(dim)})"
                )
        return IndexSpec(self.type, params)

    def factory_string(self, dim: int) -> str:
        p = self.params
        if self.type == "hnsw":
            return f"HNSW{p['m']},Flat"
        if self.type == "ivfpq":
            return f"IVF{p['nlist']},PQ{p['pq_m']}x{p['nbits']}"
        return "Flat"


def build_index(vectors: np.ndarray, spec: IndexSpec, metric: str, seed: int = 0) -> faiss.Index:
    """vectors (n, d) float32 -> a trained, populated faiss index (positions 0..n-1)."""
    n, dim = vectors.shape
    spec = spec.resolved(n, dim)
    p = spec.params
    faiss_metric = METRICS[metric]
    index: faiss.Index
    if spec.type == "flat":
        index = faiss.IndexFlat(dim, faiss_metric)
    elif spec.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, p["m"], faiss_metric)
        index.hnsw.efConstruction = p["ef_construction"]
    else:
        quantizer = faiss.IndexFlat(dim, faiss_metric)
        index = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["pq_m"], p["nbits"], faiss_metric)
        index.cp.seed = seed
        index.pq.cp.seed = seed
        rng = np.random.default_rng(seed)
        train_n = min(n, max(256 * p["nlist"], 1 << 16))
        sample = vectors[np.sort(rng.choice(n, size=train_n, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def set_threads(n: int) -> None:
    """Threads faiss may use for one search or build in this process."""
    faiss.omp_set_num_threads(max(1, n))


class ShardIndex:
    """One shard's faiss index + its item ids and stored vectors (for exact re-rank).

    ``defaults`` (the serving config's ``search:``) fill search parameters a request leaves
    at 0; search defaults an older bundle stored in its manifest are not used.
    """

    def __init__(
        self,
        index: faiss.Index,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        spec: IndexSpec,
        defaults: SearchConfig | None = None,
    ) -> None:
        if index.ntotal != len(ids) or len(ids) != len(vectors):
            raise BundleError(
                f"shard is inconsistent: index has {index.ntotal} vectors, ids.npy {len(ids)}, "
                f"vectors.npy {len(vectors)}"
            )
        if index.d != vectors.shape[1]:
            raise BundleError(f"index dim {index.d} != vectors.npy dim {vectors.shape[1]}")
        self.index = index
        self.ids = ids
        self.vectors = vectors
        self.metric = metric
        self.spec = spec
        self.defaults = defaults or SearchConfig()
        self.dim = int(index.d)
        self.hidden = PositionMask(len(ids))  # deleted/replaced items (server/delta.py)
        self._order: np.ndarray | None = None  # argsort of ids, built on first lookup

    @classmethod
    def load(
        cls,
        shard_dir: Path,
        metric: str,
        spec: IndexSpec,
        defaults: SearchConfig | None = None,
    ) -> ShardIndex:
        ids = load_npy(shard_dir / "ids.npy")
        vectors = load_npy(shard_dir / "vectors.npy", mmap_mode="r")
        try:
            index = faiss.read_index(str(shard_dir / "index.faiss"))
        except RuntimeError as exc:
            raise BundleError(f"{shard_dir / 'index.faiss'}: not a readable faiss index") from exc
        return cls(index, ids, vectors, metric, spec, defaults)

    def describe(self) -> dict[str, Any]:
        return {"type": self.spec.type, "params": self.spec.params, "num_items": len(self.ids)}

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """ids (n,) int64 -> (n,) int64 positions in this index, -1 where it lacks the id."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, np.int64)
        if self._order is None:  # a benign race: two threads may both build it
            self._order = np.argsort(self.ids, kind="stable")
        where = np.minimum(np.searchsorted(self.ids, ids, sorter=self._order), len(self.ids) - 1)
        positions = self._order[where]
        return np.where(self.ids[positions] == ids, positions, -1).astype(np.int64)

    def _excluded(self, exclude: npt.ArrayLike | None) -> np.ndarray:
        """(m,) int64 positions of the excluded ids this index holds."""
        ids = np.asarray(exclude if exclude is not None else [], np.int64).ravel()
        if len(ids) == 0:
            return np.empty(0, np.int64)
        positions = self.positions(ids)
        return np.unique(positions[positions >= 0])

    def selector(self, excluded: np.ndarray) -> Any:
        """The faiss IDSelector of what a search may return: not hidden and not in
        ``excluded`` (positions); None when everything may be returned. The returned object
        keeps the selectors it combines alive."""
        hidden = self.hidden.selector if self.hidden.count else None
        if not len(excluded):
            return hidden
        not_excluded = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))  # type: ignore[call-arg,arg-type]
        if hidden is None:
            return not_excluded
        both = faiss.IDSelectorAnd(hidden, not_excluded)  # type: ignore[call-arg,arg-type]
        both.referenced_objects = [hidden, not_excluded]  # type: ignore[attr-defined]  # keep alive
        return both

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        rerank: int = 0,
        exclude: npt.ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (nq, d) float32 -> ids (nq, k) int64, scores (nq, k) float32, best first.

        Positions in ``self.hidden`` (deleted or replaced items) and the ids in ``exclude``
        ((e,) int64, for every query) are skipped inside faiss (an IDSelector in the search
        parameters: HNSW, IVF and flat all honour it), so k is not inflated for them.
        """
        if queries.shape[1] != self.dim:
            raise InvalidArgument(f"queries have dim {queries.shape[1]}, this index has {self.dim}")
        p, d = self.spec.params, self.defaults
        fetch = k
        sel = self.selector(self._excluded(exclude))
        params: faiss.SearchParameters | None = None
        if self.spec.type == "hnsw":
            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # stubs lag faiss
                efSearch=max(ef_search or d.ef_search, k), sel=sel
            )
        elif self.spec.type == "ivfpq":
            params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
                nprobe=min(nprobe or d.nprobe, p["nlist"]), sel=sel
            )
            fetch = max(k, rerank or d.rerank)
        elif sel is not None:
            params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
        fetch = min(fetch, len(self.ids)) if len(self.ids) else 1
        x = np.ascontiguousarray(queries, dtype=np.float32)
        scores, positions = self.index.search(x, fetch, params=params)
        if self.spec.type == "ivfpq":
            scores, positions = self._rerank(x, positions, k)
        return self._to_ids(positions, scores, k)

    def exact(
        self,
        queries: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        pacing: ExactPacing | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the stored vectors but hidden and excluded ones -> ids, scores
        (nq, k); ``pacing`` (chunks and pauses, ``ExactPacing``) does not change them."""
        if queries.shape[1] != self.dim:
            raise InvalidArgument(f"queries have dim {queries.shape[1]}, this index has {self.dim}")
        excluded = self._excluded(exclude)
        skip = self.hidden.count + len(excluded)
        fetch = max(1, min(k + skip, len(self.ids)))
        positions, scores = exact_search(self.vectors, queries, fetch, self.metric, pacing)
        if skip:
            valid = positions >= 0
            drop = valid & self.hidden.contains(np.where(valid, positions, 0))
            drop |= valid & np.isin(positions, excluded)
            positions = np.where(drop, -1, positions)
            order = np.argsort(drop, axis=1, kind="stable")  # kept hits first, in rank order
            positions = np.take_along_axis(positions, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        return self._to_ids(positions, scores, k)

    def _rerank(
        self, queries: np.ndarray, positions: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores from the stored vectors for the approximate candidates, best k kept."""
        valid = positions >= 0
        cand = self.vectors[np.where(valid, positions, 0)]  # (nq, fetch, d)
        if higher_is_better(self.metric):
            exact = np.einsum("qd,qfd->qf", queries, cand)
            exact[~valid] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        else:
            exact = ((cand - queries[:, None, :]) ** 2).sum(axis=2)
            exact[~valid] = np.inf
            order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        return (
            np.take_along_axis(exact, order, axis=1).astype(np.float32),
            np.take_along_axis(positions, order, axis=1),
        )

    def _to_ids(
        self, positions: np.ndarray, scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = positions.shape[0]
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), worst_score(self.metric), dtype=np.float32)
        width = min(k, positions.shape[1])
        pos = positions[:, :width]
        valid = pos >= 0
        out_ids[:, :width] = np.where(valid, self.ids[np.where(valid, pos, 0)], -1)
        out_scores[:, :width] = np.where(valid, scores[:, :width], worst_score(self.metric))
        return out_ids, out_scores


@dataclass(frozen=True)
class ExactPacing:
    """How a brute-force scan shares the CPU: ``chunk`` rows at a time (0 = all in one
    call), and after each chunk a pause so that scanning takes at most ``duty`` of the scan's
    wall time (1 = no pause). Each chunk is one faiss call (the GIL released); the hits are
    those of one call over every row."""

    chunk: int = 0
    duty: float = 1.0

    def rest(self, scanned_s: float) -> None:
        """Pause after a chunk that took ``scanned_s`` seconds."""
        if self.duty < 1.0:
            time.sleep(scanned_s * (1.0 / self.duty - 1.0))


def exact_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    pacing: ExactPacing | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ground truth over vectors (n, d) float32, not copied: positions (nq, k)
    int64 (-1 pads when n < k) and scores (nq, k) float32, best first. ``pacing`` scans in
    chunks merging a running top-k (equal scores: the smaller position first)."""
    x = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(vectors)
    step = pacing.chunk if pacing and 0 < pacing.chunk < n else n
    if step >= n:
        return _knn(vectors, x, k, metric)
    best: tuple[np.ndarray, np.ndarray] | None = None
    for start in range(0, n, step):
        began = time.perf_counter()
        positions, scores = _knn(vectors[start : start + step], x, k, metric)
        positions = np.where(positions >= 0, positions + start, -1)
        if best is not None:
            positions, scores = merge_rows(
                np.concatenate([best[0], positions], axis=1),
                np.concatenate([best[1], scores], axis=1),
                k,
                higher_is_better=higher_is_better(metric),
            )
        best = positions, scores
        if start + step < n:
            assert pacing is not None
            pacing.rest(time.perf_counter() - began)
    assert best is not None
    return best


def _knn(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    scores, positions = faiss.knn(
        queries, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=METRICS[metric]
    )
    scores = np.where(positions >= 0, scores, worst_score(metric)).astype(np.float32)
    return positions.astype(np.int64), scores


class PositionMask:
    """Positions of one shard index hidden from search (deleted or replaced items).

    A bitmap of kept positions behind a faiss ``IDSelectorBitmap``; bits are cleared in
    place (never set again), so a search that starts after ``hide`` returns never sees them.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.bits = np.full((n + 7) // 8, 0xFF, dtype=np.uint8)
        self.selector = faiss.IDSelectorBitmap(self.bits)  # type: ignore[call-arg,arg-type]
        self.count = 0

    def hide(self, positions: np.ndarray) -> None:
        """positions (m,) int64 in [0, n); hiding one twice is a no-op."""
        positions = np.unique(np.asarray(positions, dtype=np.int64))
        new = positions[~self.contains(positions)]
        np.bitwise_and.at(self.bits, new >> 3, ~(np.uint8(1) << (new & 7).astype(np.uint8)))
        self.count += len(new)

    def positions(self) -> np.ndarray:
        """Every hidden position, ascending (m,) int64."""
        kept = np.unpackbits(self.bits, bitorder="little")[: self.n]
        return np.flatnonzero(kept == 0).astype(np.int64)

    def contains(self, positions: np.ndarray) -> np.ndarray:
        """positions (...) int64 in [0, n) -> bool (...), True where hidden."""
        positions = np.asarray(positions, dtype=np.int64)
        return (self.bits[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1 == 0


def spec_to_json(spec: IndexSpec) -> str:
    return json.dumps({"type": spec.type, "params": spec.params}, sort_keys=True)
