"""``ann``: the two-tower ANN over every shard, as a source over the router's searcher.

The adapter takes two callables so the source knows nothing of gRPC: ``embed(user_id,
context)`` -> (dim,) float32 query vector (cached, tower or user table), and
``search(vector, k, exclude, deadline, params)`` -> :class:`Candidates` (the scatter over the
shards, with ``exclude`` pushed down to them; ``detail`` carries the scatter result for
coverage; ``params`` the request's SearchParams or None).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from annfleet.config import SourceSettings
from annfleet.router.sources import Candidates, Source, SourceRequest, isin_sorted
from annfleet.router.users import RequestContext

EmbedFn = Callable[[int, RequestContext], Awaitable[np.ndarray]]
SearchFn = Callable[[np.ndarray, int, np.ndarray, float, Any], Awaitable[Candidates]]


class AnnSource(Source):
    name = "ann"
    remote = True

    def __init__(self, settings: SourceSettings, embed: EmbedFn, search: SearchFn) -> None:
        super().__init__(settings)
        self.embed = embed
        self.search = search

    async def fetch(self, request: SourceRequest) -> Candidates:
        vector = await self.embed(request.user_id, request.context)
        found = await self.search(
            vector, request.k, request.exclude, request.deadline, request.params
        )
        # Keep the searcher's order (metric-aware); drop padding and anything excluded in
        # case the searcher could not push the exclusion down.
        keep = found.ids >= 0
        if len(request.exclude):
            keep &= ~isin_sorted(found.ids, request.exclude)
        return Candidates(
            found.ids[keep][: request.k], found.scores[keep][: request.k], found.detail
        )
