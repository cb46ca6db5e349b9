"""``content``: items nearest by content features to the user's recent items (cold start:
an item with no interaction at all is as reachable as any other).

Features are the bundle's item feature table named by ``manifest["item_features"]``
(``content_table``, else ``table``: MovieLens genres multi-hot plus a release-year one-hot),
rows aligned with ``item_ids``, L2-normalised here. The user's profile is the recency
weighted sum of the rows of their last ``recent`` items (``SourceRequest.recent_items``: the
bundle's record of them, then live and the request's); item j scores the cosine between its
row and the profile. Ties go to the smaller id.
"""

from __future__ import annotations

import numpy as np

from annfleet.bundle import Bundle
from annfleet.config import ContentSourceConfig
from annfleet.router.sources import (
    Candidates,
    ItemTable,
    Source,
    SourceRequest,
    last_unique,
    recency_weights,
)


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """(N, d) -> float32 rows of unit L2 norm (all-zero rows stay zero)."""
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


class ContentSource(Source):
    name = "content"

    def __init__(
        self, settings: ContentSourceConfig, items: ItemTable, features: np.ndarray
    ) -> None:
        super().__init__(settings)
        self.config = settings
        self.items = items
        self.features = normalise_rows(features)  # (N, d), rows aligned with items

    @classmethod
    def from_bundle(
        cls, settings: ContentSourceConfig, bundle: Bundle, items: ItemTable
    ) -> ContentSource | None:
        spec = bundle.manifest.get("item_features", {})
        name = spec.get("content_table") or spec.get("table")
        features = bundle.table(name) if name else None
        if features is None or np.ndim(features) != 2 or len(features) != len(items):
            return None
        return cls(settings, items, features)

    async def fetch(self, request: SourceRequest) -> Candidates:
        recent = last_unique(request.recent_items, self.config.recent)
        rows = self.items.rows(recent)
        weights = recency_weights(len(recent), self.config.recency_decay)[rows >= 0]
        rows = rows[rows >= 0]
        if len(rows) == 0:
            return Candidates.empty()
        profile = (weights[:, None] * self.features[rows]).sum(axis=0)
        norm = float(np.linalg.norm(profile))
        if norm == 0.0:
            return Candidates.empty()
        scores = self.features @ (profile / norm).astype(np.float32)
        return self.items.top_k(scores, request.k, request.exclude, np.asarray(recent, np.int64))
