"""Diversity of the lists Retrieve serves, measured off the request path.

Three figures per bundle over a sliding window of sampled served lists (the seeds' diversity
metrics):

- **intra-list distance**: per list, the mean over its item pairs of the cosine distance
  ``1 - cos(f_i, f_j)`` of the items' content features (the ``content`` source's
  L2-normalised rows: MovieLens genres multi-hot + release-year bucket); averaged over the
  lists. Items without features (unknown to the bundle, or an all-zero row) are left out of
  their list; a list with fewer than two featured items does not count. Bundles without a
  content table (or with the ``content`` source off) have no intra-list distance;
- **catalogue coverage**: distinct items served in the window / items in the bundle;
- **Gini of exposure**: the Gini coefficient of the per-item serve counts in the window over
  the whole catalogue (an item never served counts 0): 0 when every item is served equally
  often, ``(n - 1) / n`` when one item takes every serve.

The request path only calls :meth:`DiversityMonitor.offer`: a coin flip and, for a sampled
list, an ``append`` to a bounded deque (``sources.diversity_window`` lists per bundle; the
oldest falls out). A background task recomputes the gauges every
``sources.diversity_interval_s`` in a worker thread, vectorised over the whole window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annfleet.config import SourcesConfig
from annfleet.metrics import DIVERSITY_COVERAGE, DIVERSITY_GINI, DIVERSITY_ILD, DIVERSITY_LISTS
from annfleet.router.background import SampledBackground
from annfleet.router.sources import ItemTable

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- pure functions
CHUNK_ROWS = 1 << 16  # feature rows gathered at once (bounds the temporary memory)


def intra_list_distances(rows: np.ndarray, lengths: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine distance of each list.

    rows (T,) int64 feature rows of every list's items concatenated (-1 = no features),
    lengths (L,) int64 items per list (sum T), features (N, d) float32 rows of unit or zero
    norm -> (L,) float64, NaN for a list with fewer than two featured items.

    For n unit rows x_i with sum s: sum over pairs i<j of cos = (|s|^2 - n) / 2, so a list
    costs O(n d), not O(n^2 d). Lists are gathered at most ``CHUNK_ROWS`` rows at a time.
    """
    lengths = np.asarray(lengths, np.int64)
    rows = np.asarray(rows, np.int64)
    out = np.full(len(lengths), np.nan)
    if len(lengths) == 0 or len(features) == 0:
        return out
    ends = np.cumsum(lengths)
    first = 0
    while first < len(lengths):
        start = ends[first] - lengths[first]
        # whole lists, at least one, up to CHUNK_ROWS rows
        last = max(first + 1, int(np.searchsorted(ends, start + CHUNK_ROWS, side="right")))
        chunk = rows[start : ends[last - 1]]
        segment = np.repeat(np.arange(first, last), lengths[first:last])
        keep = chunk >= 0
        chunk, segment = chunk[keep], segment[keep]
        if len(chunk):
            x = features[chunk]
            featured = np.einsum("ij,ij->i", x, x) > 0.5  # unit rows; zero rows add nothing
            starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
            present = segment[starts]  # lists with an item the bundle knows, in order
            sums = np.add.reduceat(x, starts, axis=0, dtype=np.float64)
            n = np.add.reduceat(featured, starts, dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_cos = (np.einsum("ij,ij->i", sums, sums) - n) / (n * (n - 1))
            out[present] = np.where(n >= 2, 1.0 - mean_cos, np.nan)
        first = last
    return out


def catalogue_coverage(served_rows: np.ndarray, catalogue_size: int) -> float:
    """Distinct catalogue rows in served_rows (T,) int64 (-1 = not in the catalogue) /
    catalogue_size; 0 for an empty catalogue."""
    if catalogue_size <= 0:
        return 0.0
    rows = np.asarray(served_rows, np.int64)
    return float(len(np.unique(rows[rows >= 0]))) / catalogue_size


def exposure_gini(counts: np.ndarray, catalogue_size: int) -> float:
    """Gini coefficient of exposure over a catalogue of ``catalogue_size`` items, of which
    those served have the positive serve counts ``counts`` (m,) (the other n - m count 0).

    With x sorted ascending over all n items (ranks i = 1..n),
    G = 2 sum_i i x_i / (n sum x) - (n + 1) / n; the zeros take ranks 1..n-m and add
    nothing, so only the m served counts are sorted. 0 when nothing was served.
    """
    n = int(catalogue_size)
    x = np.sort(np.asarray(counts, np.float64)[np.asarray(counts) > 0])
    total = float(x.sum())
    if n <= 0 or total == 0.0:
        return 0.0
    if len(x) > n:
        raise ValueError(f"{len(x)} served items in a catalogue of {n}")
    ranks = np.arange(n - len(x) + 1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks @ x) / (n * total) - (n + 1) / n)


@dataclass(frozen=True)
class DiversityFigures:
    lists: int  # served lists in the window
    intra_list_distance: float  # NaN without features or without a list of 2+ featured items
    coverage: float
    gini: float


def window_figures(
    lists: Sequence[np.ndarray], items: ItemTable, features: np.ndarray | None
) -> DiversityFigures:
    """The three figures of a window of served lists (each (k,) int64 item ids)."""
    if not lists:
        return DiversityFigures(0, math.nan, 0.0, 0.0)
    lengths = np.fromiter((len(ids) for ids in lists), np.int64, len(lists))
    rows = items.rows(np.concatenate(lists).astype(np.int64, copy=False))
    counts = np.bincount(rows[rows >= 0], minlength=len(items))
    counts = counts[counts > 0]
    ild = math.nan
    if features is not None:
        per_list = intra_list_distances(rows, lengths, features)
        if np.isfinite(per_list).any():
            ild = float(np.nanmean(per_list))
    return DiversityFigures(
        len(lists), ild, len(counts) / max(len(items), 1), exposure_gini(counts, len(items))
    )


# ---------------------------------------------------------------------------- the monitor
def _publish(bundle_id: str, fig: DiversityFigures) -> None:
    DIVERSITY_LISTS.labels(bundle_id).set(fig.lists)
    if not fig.lists:
        return
    DIVERSITY_COVERAGE.labels(bundle_id).set(fig.coverage)
    DIVERSITY_GINI.labels(bundle_id).set(fig.gini)
    if not math.isnan(fig.intra_list_distance):
        DIVERSITY_ILD.labels(bundle_id).set(fig.intra_list_distance)


@dataclass
class _Window:
    items: ItemTable
    features: np.ndarray | None
    lists: collections.deque[np.ndarray]
    holders: int = 1  # generators registered for this bundle (a rollback loads it again)


class DiversityMonitor(SampledBackground):
    """Samples served lists (``offer``) and keeps the diversity gauges of every bundle that
    is being served (``register`` / ``release``) up to date from a background task."""

    def __init__(self, config: SourcesConfig, *, seed: int | None = None) -> None:
        self.rate = config.diversity_sample_rate
        self.window = config.diversity_window
        self.interval_s = config.diversity_interval_s
        self._random = random.Random(seed)
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()  # the windows are read from a worker thread
        self._task: asyncio.Task[None] | None = None

    def register(self, bundle_id: str, items: ItemTable, features: np.ndarray | None) -> None:
        """A bundle's candidate generator serves from now on; ``features`` (N, d) rows aligned
        with ``items`` (unit or zero norm), None = no intra-list distance."""
        with self._lock:
            window = self._windows.get(bundle_id)
            if window is not None:
                window.holders += 1
                return
            self._windows[bundle_id] = _Window(
                items, features, collections.deque(maxlen=self.window)
            )

    def release(self, bundle_id: str) -> None:
        """The generator is gone; the last one takes the bundle's window and gauges."""
        with self._lock:
            window = self._windows.get(bundle_id)
            if window is None:
                return
            window.holders -= 1
            if window.holders > 0:
                return
            del self._windows[bundle_id]
            for gauge in (DIVERSITY_ILD, DIVERSITY_COVERAGE, DIVERSITY_GINI, DIVERSITY_LISTS):
                with contextlib.suppress(KeyError):
                    gauge.remove(bundle_id)

    # ------------------------------------------------------------------ request path
    def offer(self, bundle_id: str, ids: np.ndarray) -> None:
        """Maybe keep a served list ((k,) int64, not copied: served lists are not mutated).
        Never waits, never raises."""
        if self.rate <= 0 or (self.rate < 1 and self._random.random() >= self.rate):
            return
        window = self._windows.get(bundle_id)
        if window is not None and len(ids):
            with self._lock:
                window.lists.append(ids)

    # ------------------------------------------------------------------ off the request path
    def measure(self) -> dict[str, DiversityFigures]:
        """Compute and publish every bundle's figures now (blocking: run it in a thread)."""
        with self._lock:
            snapshot = [(b, w.items, w.features, list(w.lists)) for b, w in self._windows.items()]
        figures = {
            bundle_id: window_figures(lists, items, features)
            for bundle_id, items, features, lists in snapshot
        }
        with self._lock:  # a bundle released meanwhile keeps no gauge (release removes them)
            figures = {b: fig for b, fig in figures.items() if b in self._windows}
            for bundle_id, fig in figures.items():
                _publish(bundle_id, fig)
        return figures

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.measure)
            except Exception:  # a bug here must not stop serving; say it and go on
                log.exception("diversity metrics: measuring failed")
