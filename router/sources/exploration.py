"""``exploration``: Thompson sampling over low-impression items.

Per request, a pool of ``pool`` items is drawn from the catalogue (all of it when smaller);
items with ``max_impressions`` impressions or more are left out (they have been explored);
each remaining item draws theta ~ Beta(clicks + 1, impressions - clicks + 1) from its live
posterior (state store) and the k largest draws are returned, score = theta. An item never
shown draws from Beta(1, 1); one that was shown and clicked draws high; one shown often and
never clicked draws low, then leaves the pool.
"""

from __future__ import annotations

import numpy as np

from annfleet.config import ExplorationSourceConfig
from annfleet.router.sources import Candidates, ItemTable, Source, SourceRequest, top_k
from annfleet.router.state import StateStore


class ExplorationSource(Source):
    name = "exploration"

    def __init__(
        self,
        settings: ExplorationSourceConfig,
        state: StateStore,
        items: ItemTable,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(settings)
        self.config = settings
        self.state = state
        self.items = items
        self.rng = rng or np.random.default_rng(None if settings.seed < 0 else settings.seed)

    async def fetch(self, request: SourceRequest) -> Candidates:
        ids = self.items.ids
        rows = None
        if len(ids) > self.config.pool:
            rows = self.rng.choice(len(ids), self.config.pool, replace=False)
            ids = ids[rows]
        if len(request.exclude):  # over the catalogue's rows: no np.isin over the pool
            excluded = self.items.row_mask(request.exclude)
            ids = ids[~(excluded[rows] if rows is not None else excluded)]
        if len(ids) == 0:
            return Candidates.empty()
        impressions, clicks = await self.state.posteriors(ids)
        low = impressions < self.config.max_impressions
        ids, impressions, clicks = ids[low], impressions[low], clicks[low]
        clicks = np.minimum(clicks, impressions) if len(ids) else clicks
        return top_k(ids, self.thompson(impressions, clicks), request.k)

    def thompson(self, impressions: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        """theta ~ Beta(clicks + 1, impressions - clicks + 1) per item (clicks <= impressions).

        An item never shown draws from Beta(1, 1), the uniform distribution: drawn as such
        (~30x cheaper than a Beta draw, and most of a catalogue was never shown)."""
        theta = np.empty(len(impressions), np.float64)
        fresh = impressions == 0
        theta[fresh] = self.rng.random(int(fresh.sum()))
        shown = ~fresh
        if shown.any():
            theta[shown] = self.rng.beta(
                clicks[shown] + 1.0, impressions[shown] - clicks[shown] + 1.0
            )
        return theta
