"""``co_engagement``: item-item neighbours of the user's recent items.

Neighbours come from the bundle (``coengagement_ids`` / ``coengagement_scores``: per row of
``item_ids``, the most co-engaged items by cosine, -1 padded) and from live co-engagement in
the state store (``RecordEngagement`` counts, for each engaged item, the user's previous
items as its neighbours and back). For the user's last ``recent`` items r (recency weight
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
        recent = last_unique(request.context.recent_item_ids, self.config.recent)
        if not recent:
            return Candidates.empty()
        weights = recency_weights(len(recent), self.config.recency_decay)
        score: dict[int, float] = {}
        rows = self.items.rows(recent)
        for w, row in zip(weights, rows, strict=True):
            if row < 0:
                continue
            for j, s in zip(self.neighbour_ids[row], self.neighbour_scores[row], strict=True):
                if j >= 0:
                    score[int(j)] = score.get(int(j), 0.0) + w * float(s)
        live = await self.state.co_engaged(recent)
        for w, r in zip(weights, recent, strict=True):
            for j, count in live.get(r, {}).items():
                score[j] = score.get(j, 0.0) + w * self.config.live_weight * float(np.log1p(count))
        for r in recent:
            score.pop(r, None)
        if not score:
            return Candidates.empty()
        ids = np.fromiter(score, np.int64, len(score))
        values = np.fromiter(score.values(), np.float64, len(score))
        return top_k(ids, values, request.k, request.exclude)
