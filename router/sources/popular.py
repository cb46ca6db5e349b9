"""``popular``: the bundle's all-time popularity list (``popular_ids``), the backfill that
covers the whole catalogue so k stays full. Score = 1 - rank / len(list)."""

from __future__ import annotations

import numpy as np

from annfleet.config import SourceSettings
from annfleet.router.sources import Candidates, Source, SourceRequest, isin_sorted


class PopularSource(Source):
    name = "popular"

    def __init__(self, settings: SourceSettings, popular_ids: np.ndarray) -> None:
        super().__init__(settings)
        self.ids = np.asarray(popular_ids, np.int64)
        n = max(len(self.ids), 1)
        self.scores = (1.0 - np.arange(len(self.ids)) / n).astype(np.float32)

    async def fetch(self, request: SourceRequest) -> Candidates:
        # Only the first k + len(exclude) entries can be among the first k not excluded.
        head = slice(0, request.k + len(request.exclude))
        ids, scores = self.ids[head], self.scores[head]
        if len(request.exclude):
            keep = ~isin_sorted(ids, request.exclude)
            ids, scores = ids[keep], scores[keep]
        return Candidates(ids[: request.k], scores[: request.k])
