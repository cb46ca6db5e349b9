"""``trending``: exponentially time-decayed engagement counts, per region and global.

An item's decayed count at time ``now`` is ``sum_i w_i * 2 ** (-(now - t_i) / half_life)``
over its events (weight w_i at unix time t_i). It is kept as
``L = log2(sum_i w_i * 2 ** (t_i / half_life))`` (see annfleet.router.state), so ranking by L
ranks by decayed count at any ``now`` and the score returned, ``L - now / half_life``, is
log2 of the decayed count.

Two parts add up: the **seed**, computed when the bundle loads from its
``engagement_events`` table (item id, unix time, user id; one row per interaction), and the
**live** part in the state store, moved by ``RecordEngagement``. Scopes: ``global``,
``zip:<region>`` (the user's zip region in the bundle's user table: MovieLens' first zip
digit, ``CA`` for Canada) and ``country:<CC>`` (the request's / event's country). A request
is answered from its region (country if the context has one, else the user's zip region),
then from ``global`` for the rest of k.

In a scope, the candidates are the live part's top m not excluded and the seed's top n not
excluded, each scored by its whole count (seed + live); the best n of them are returned. The
live top is read in steps, m = n + min(e, n) first (e: the request's exclusions), doubled
while fewer than n of it are not excluded, up to n + e: a user's exclusions (seen items,
blocked ones) rarely sit in the top, so a request does not read thousands of live entries
for them.
"""

from __future__ import annotations

import math

import numpy as np

from annfleet.bundle import Bundle
from annfleet.config import TrendingSourceConfig
from annfleet.router.sources import (
    EMPTY_IDS,
    Candidates,
    Source,
    SourceRequest,
    first_not_in,
    isin_sorted,
)
from annfleet.router.state import StateStore

TABLE_EVENTS = "engagement_events"
GLOBAL = "global"


class Regions:
    """User id -> zip region, from the bundle's ``user_features`` table (column 5 holds the
    zip-region code; the vocabulary is ``manifest["user_tower"]["vocabs"]["zip_region"]``)."""

    def __init__(self, regions: dict[int, str]) -> None:
        self._region = regions

    def of(self, user_id: int) -> str:
        return self._region.get(int(user_id), "")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Regions:
        users = bundle.table("user_features")
        vocab = bundle.manifest.get("user_tower", {}).get("vocabs", {}).get("zip_region")
        if users is None or not vocab or np.ndim(users) != 2 or np.shape(users)[1] < 6:
            return cls({})
        return cls(
            {
                int(u): vocab[int(code)]
                for u, code in zip(users[:, 0], users[:, 5], strict=True)
                if 0 < int(code) < len(vocab) and vocab[int(code)]
            }
        )


def region_scope(user_id: int, country: str, regions: Regions) -> str:
    """The request's regional scope: its country if given, else the user's zip region."""
    if country:
        return f"country:{country.upper()}"
    zip_region = regions.of(user_id)
    return f"zip:{zip_region}" if zip_region else ""


def event_scopes(user_id: int, country: str, regions: Regions) -> list[str]:
    """Every scope one engagement event counts in."""
    scopes = [GLOBAL]
    zip_region = regions.of(user_id)
    if zip_region:
        scopes.append(f"zip:{zip_region}")
    if country:
        scopes.append(f"country:{country.upper()}")
    return scopes


def log2_counts(
    items: np.ndarray, times: np.ndarray, weights: np.ndarray, half_life_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Events -> (ids (m,) int64 unique, L (m,) float64), L = log2 sum w * 2 ** (t / h)."""
    if len(items) == 0:
        return EMPTY_IDS, np.empty(0, np.float64)
    ids, rows = np.unique(np.asarray(items, np.int64), return_inverse=True)
    x = np.asarray(times, np.float64) / half_life_s
    top = x.max()
    sums = np.bincount(rows, weights=np.asarray(weights, np.float64) * np.exp2(x - top))
    with np.errstate(divide="ignore"):
        return ids, top + np.log2(sums)


class ScopeCounts:
    """One scope's seed: ids ranked by L (descending, ties by id) and an id -> L lookup."""

    def __init__(self, ids: np.ndarray, logs: np.ndarray) -> None:
        keep = np.isfinite(logs)
        ids, logs = ids[keep], logs[keep]
        order = np.lexsort((ids, -logs))
        self.ids, self.logs = ids[order], logs[order]
        by_id = np.argsort(self.ids)
        self._sorted_ids, self._sorted_logs = self.ids[by_id], self.logs[by_id]

    def top(self, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` ranked ids not in ``exclude`` (sorted unique), with their L."""
        at = first_not_in(self.ids, n, exclude)
        return self.ids[at], self.logs[at]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """(n,) float64 L of ``ids``, -inf where the seed has none."""
        if len(self._sorted_ids) == 0:
            return np.full(len(ids), -math.inf)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
        return np.where(self._sorted_ids[pos] == ids, self._sorted_logs[pos], -math.inf)


def seed_counts(
    events: np.ndarray | None, regions: Regions, half_life_s: float
) -> dict[str, ScopeCounts]:
    """The bundle's events (n, 3) [item id, unix time, user id] -> seed counts per scope."""
    if events is None or len(events) == 0:
        return {}
    events = np.asarray(events, np.int64)
    items, times, users = events[:, 0], events[:, 1], events[:, 2]
    weights = np.ones(len(events))
    scopes: dict[str, ScopeCounts] = {
        GLOBAL: ScopeCounts(*log2_counts(items, times, weights, half_life_s))
    }
    zips = np.array([regions.of(int(u)) for u in users])
    for zip_region in sorted(set(zips.tolist()) - {""}):
        mask = zips == zip_region
        scopes[f"zip:{zip_region}"] = ScopeCounts(
            *log2_counts(items[mask], times[mask], weights[mask], half_life_s)
        )
    return scopes


class TrendingSource(Source):
    name = "trending"

    def __init__(
        self,
        settings: TrendingSourceConfig,
        state: StateStore,
        regions: Regions,
        seeds: dict[str, ScopeCounts] | None = None,
    ) -> None:
        super().__init__(settings)
        self.half_life_s = settings.half_life_s
        self.state = state
        self.regions = regions
        self.seeds = seeds or {}

    @classmethod
    def from_bundle(
        cls, settings: TrendingSourceConfig, state: StateStore, bundle: Bundle
    ) -> TrendingSource:
        regions = Regions.from_bundle(bundle)
        seeds = seed_counts(bundle.table(TABLE_EVENTS), regions, settings.half_life_s)
        return cls(settings, state, regions, seeds)

    def key(self, scope: str) -> str:
        """State-store key of a scope: counts under another half-life are other numbers."""
        return f"{self.half_life_s:g}s:{scope}"

    def updates(
        self, user_id: int, country: str, item_id: int, weight: float, timestamp: float
    ) -> list[tuple[str, int, float]]:
        """The (scope key, item, log2 weight at reference 0) entries of one event."""
        x = math.log2(weight) + timestamp / self.half_life_s
        return [
            (self.key(s), int(item_id), x) for s in event_scopes(user_id, country, self.regions)
        ]

    async def _live_top(
        self, key: str, n: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """The live part's top m (module doc): ids, L, and whether the scope holds more."""
        full = n + len(exclude)
        m = n + min(len(exclude), n)
        while True:
            ids, logs = await self.state.trending_top(key, m)
            if len(ids) < m or m >= full:
                return ids, logs, len(ids) >= m
            if len(exclude) == 0 or np.count_nonzero(~isin_sorted(ids, exclude)) >= n:
                return ids, logs, True
            m = min(full, 2 * m)

    async def _scope(
        self, scope: str, n: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` of seed + live in one scope (from the union of each part's top)."""
        key = self.key(scope)
        live_ids, live_logs, cut = await self._live_top(key, n, exclude)
        seed = self.seeds.get(scope)
        seed_ids, seed_logs = seed.top(n, exclude) if seed is not None else (EMPTY_IDS, EMPTY_IDS)
        if not len(live_ids):  # nothing live in this scope: the seed's top as it ranks them
            return seed_ids, seed_logs.astype(np.float64)
        ids = np.union1d(live_ids, seed_ids)  # sorted unique
        if len(exclude):
            ids = ids[~isin_sorted(ids, exclude)]
        if len(ids) == 0:
            return EMPTY_IDS, np.empty(0, np.float64)
        live = np.full(len(ids), -math.inf)
        known = np.zeros(len(ids), bool)
        if len(live_ids):  # each live id's place in ``ids`` (sorted), where it is there
            at = np.minimum(np.searchsorted(ids, live_ids), len(ids) - 1)
            there = ids[at] == live_ids
            known[at[there]] = True
            live[at[there]] = live_logs[there]
        if (~known).any() and cut:
            # The live top was cut: read the live part of the seed's items too.
            live[~known] = await self.state.trending_scores(key, ids[~known])
        seeded = seed.lookup(ids) if seed is not None else np.full(len(ids), -math.inf)
        logs = np.logaddexp2(seeded, live)
        order = np.lexsort((ids, -logs))[:n]
        return ids[order], logs[order]

    async def fetch(self, request: SourceRequest) -> Candidates:
        region = region_scope(request.user_id, request.context.country, self.regions)
        scopes = [region, GLOBAL] if region else [GLOBAL]
        shift = request.now / self.half_life_s
        out_ids: list[np.ndarray] = []
        out_scores: list[np.ndarray] = []
        exclude = request.exclude
        need = request.k
        for scope in scopes:
            ids, logs = await self._scope(scope, need, exclude)
            out_ids.append(ids)
            out_scores.append((logs - shift).astype(np.float32))
            need -= len(ids)
            if need <= 0:
                break
            exclude = np.union1d(exclude, ids)
        return Candidates(np.concatenate(out_ids), np.concatenate(out_scores))
