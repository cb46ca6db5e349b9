"""Adaptive batching: concurrent searches share shard RPCs and get the same answers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import ANN_ONLY, exact_topk

from annfleet.bundle import Bundle
from annfleet.client import AsyncClient
from annfleet.config import RouterConfig
from annfleet.synthetic import Catalogue


def shard_searches() -> float:
    labels = {"service": "IndexShard", "method": "Search", "code": "OK"}
    return REGISTRY.get_sample_value("annfleet_requests_total", labels) or 0.0


@pytest.mark.parametrize("in_flight", [1, 2])
def test_concurrent_searches_are_batched_and_exact(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    in_flight: int,
) -> None:
    cluster = cluster_factory(
        flat_bundle,
        RouterConfig(oversample=3.0, coalesce_in_flight=in_flight),
        sources=ANN_ONLY,
    )
    queries = catalogue.user_vectors[:64]
    expected, _ = exact_topk(catalogue.vectors, catalogue.ids, queries, 20)

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        async with AsyncClient(cluster.router_target, timeout=10) as client:
            searched = await asyncio.gather(*(client.search(q, 20) for q in queries))
            users = catalogue.user_ids[:64].tolist()
            retrieved = await asyncio.gather(*(client.retrieve(u, 20) for u in users))
        return [r.ids[0] for r in searched], [r.ids for r in retrieved]

    before = shard_searches()
    searched, retrieved = asyncio.run(main())
    rpcs = shard_searches() - before
    assert np.array_equal(np.stack(searched), expected)
    assert np.array_equal(np.stack(retrieved), expected)  # user vectors are the queries
    # 128 requests x 3 shards would be 384 shard RPCs without batching.
    assert rpcs < 384, rpcs
