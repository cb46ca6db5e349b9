"""``co_engagement``: item-item neighbours of the user's recent items.

Neighbours come from the bundle (``coengagement_ids`` / ``coengagement_scores``: per row of
``item_ids``, the most co-engaged items by cosine, -1 padded) and from live co-engagement in
the state store (``RecordEngagement`` counts, for each engaged item, the user's previous
items as its neighbours and back; the store serves an item's ``state.co_neighbours`` most
co-engaged). For the user's last ``recent`` items r (the bundle's
record of them, then live and the request's: ``SourceRequest.recent_items``; recency weight
``recency_decay ** i`` for the i-th most recent), item j scores
``sum_r w_r * (cosine(r, j) + live_weight * log1p(live_count(r, j)))``; the recent items
themselves and the excluded ones are left out.
"""

from __future__ import annotations

import numpy as np

from annfleet.bundle import Bundle
from annfleet.config import CoEngagementSourceConfig
from annfleet.router.sources import (
    Candidates,
    ItemTable,
    Source,
    SourceRequest,
    isin_sorted,
    last_unique,
    recency_weights,
    top_k,
)
from annfleet.router.state import StateStore

TABLE_IDS = "coengagement_ids"
TABLE_SCORES = "coengagement_scores"


class CoEngagementSource(Source):
    name = "co_engagement"

    def __init__(
        self,
        settings: CoEngagementSourceConfig,
        state: StateStore,
        items: ItemTable,
        neighbour_ids: np.ndarray,
        neighbour_scores: np.ndarray,
    ) -> None:
        super().__init__(settings)
        self.config = settings
        self.state = state
        self.items = items
        self.neighbour_ids = np.asarray(neighbour_ids, np.int64)  # (N, m), -1 padded
        self.neighbour_scores = np.asarray(neighbour_scores, np.float32)  # (N, m)

    @classmethod
    def from_bundle(
        cls, settings: CoEngagementSourceConfig, state: StateStore, bundle: Bundle, items: ItemTable
    ) -> CoEngagementSource | None:
        ids, scores = bundle.table(TABLE_IDS), bundle.table(TABLE_SCORES)
        if ids is None or scores is None or len(ids) != len(items):
            return None
        return cls(settings, state, items, ids, scores)

    async def fetch(self, request: SourceRequest) -> Candidates:
        recent = last_unique(request.recent_items, self.config.recent)
        if not recent:
            return Candidates.empty()
        weights = recency_weights(len(recent), self.config.recency_decay)
        # Every (neighbour, gain) pair in order, the bundle's then the live ones, summed per
        # neighbour at once (np.bincount adds in that order, as a running sum would).
        rows = self.items.rows(recent)
        known = rows >= 0
        neighbours = [self.neighbour_ids[rows[known]].ravel()]
        scores = self.neighbour_scores[rows[known]].astype(np.float64)
        gains = [(weights[known][:, None] * scores).ravel()]
        live = await self.state.co_engaged(recent)
        for w, r in zip(weights, recent, strict=True):
            got = live.get(r)
            if got is not None:
                neighbours.append(got.ids)
                gains.append(w * self.config.live_weight * np.log1p(got.counts.astype(np.float64)))
        every, gain = np.concatenate(neighbours), np.concatenate(gains)
        keep = (every >= 0) & ~isin_sorted(every, np.unique(np.asarray(recent, np.int64)))
        ids, inverse = np.unique(every[keep], return_inverse=True)
        if not len(ids):
            return Candidates.empty()
        totals = np.bincount(inverse, weights=gain[keep], minlength=len(ids))
        return top_k(ids, totals, request.k, request.exclude)
