"""Router + shard servers (real grpc.aio, port 0) through the real client."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from support import ANN_ONLY, exact_topk

from annfleet.bundle import Bundle
from annfleet.client import (
    AsyncClient,
    AsyncScatterClient,
    Client,
    InvalidArgument,
    NotFound,
    ScatterClient,
    Unavailable,
)
from annfleet.config import PopularSourceConfig, RouterConfig
from annfleet.synthetic import Catalogue

EXACT_MERGE = RouterConfig(oversample=3.0)  # 3 shards: every shard returns k, merge is exact


def test_flat_cluster_equals_exact_search(
    cluster_factory,
    flat_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, EXACT_MERGE)
    queries = catalogue.user_vectors[:50]
    expected_ids, expected_scores = exact_topk(catalogue.vectors, catalogue.ids, queries, 100)
    with Client(cluster.router_target, timeout=10) as client:
        result = client.search(queries, 100)
    assert result.ids.shape == (50, 100)
    assert np.array_equal(result.ids, expected_ids)
    assert np.allclose(result.scores, expected_scores, atol=1e-5)
    assert result.bundle_id == flat_bundle.id and result.metric == "ip"
    assert result.coverage.shards_answered == 3 and not result.coverage.degraded
    with ScatterClient(cluster.shard_targets, timeout=10) as scatter:
        direct = scatter.search(queries, 100)
    assert np.array_equal(direct.ids, expected_ids)


def test_default_per_shard_k_keeps_small_k_exact(
    cluster_factory,
    flat_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    # The default router asks each shard for fewer than k (router.topk_probability): at
    # k = 10 over 3 shards, 9 each (a fixed 2x oversampling asked 7, and lost a true top-10
    # hit whenever a shard held 8 or more of them: ~1% of queries; it fails here).
    cluster = cluster_factory(flat_bundle, RouterConfig())
    queries = catalogue.user_vectors[:300]
    with Client(cluster.router_target, timeout=10) as client:
        for k in (10, 100):
            expected_ids, expected_scores = exact_topk(catalogue.vectors, catalogue.ids, queries, k)
            result = client.search(queries, k)
            # the same k items in every row (near-equal scores may swap places in float32)
            assert np.array_equal(np.sort(result.ids, axis=1), np.sort(expected_ids, axis=1)), k
            assert np.allclose(result.scores, expected_scores, atol=1e-5)


def test_hnsw_cluster_recall_at_100(
    cluster_factory,
    hnsw_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(hnsw_bundle)  # default topk_probability: per-shard k < k
    queries = catalogue.user_vectors[:200]
    expected_ids, _ = exact_topk(catalogue.vectors, catalogue.ids, queries, 100)
    with Client(cluster.router_target, timeout=10) as client:
        result = client.search(queries, 100)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(result.ids, expected_ids, strict=True))
    recall = hits / expected_ids.size
    assert recall >= 0.95, f"recall@100 {recall:.3f}"


def test_shard_down_gives_degraded_answer_with_k_full(
    cluster_factory,
    flat_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    # Each shard asked for about its share of k (the median), so two survivors are short.
    router = RouterConfig(min_coverage=0.5, oversample=1.0, topk_probability=0.5)
    cluster = cluster_factory(flat_bundle, router)
    cluster.stop_shard(1)
    shard1 = set(np.load(flat_bundle.shard_dir(1) / "ids.npy").tolist())
    queries = catalogue.user_vectors[:5]
    with Client(cluster.router_target, timeout=10) as client:
        result = client.search(queries, 300)
        retrieved = client.retrieve(int(catalogue.user_ids[0]), 50)
    assert result.coverage.degraded
    assert (result.coverage.shards_answered, result.coverage.shards_asked) == (2, 3)
    assert result.coverage.answered_shard_ids == (0, 2)
    assert (result.ids >= 0).all(), "k stays full from the surviving shards"
    assert not shard1 & set(result.ids.ravel().tolist())
    # Exactly the best 300 of the surviving shards' items.
    alive = ~np.isin(catalogue.ids, list(shard1))
    expected, _ = exact_topk(catalogue.vectors[alive], catalogue.ids[alive], queries, 300)
    assert np.array_equal(result.ids, expected)
    assert retrieved.coverage.degraded and len(retrieved.ids) == 50


def test_below_min_coverage_search_is_unavailable_and_retrieve_backfills(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, RouterConfig(min_coverage=0.9), sources=ANN_ONLY)
    ann = cluster_factory(
        flat_bundle,
        RouterConfig(min_coverage=0.9),
        sources=replace(ANN_ONLY, popular=PopularSourceConfig(enabled=False)),
    )
    for c in (cluster, ann):
        c.stop_shard(0)
    user = int(catalogue.user_ids[0])
    with Client(cluster.router_target, timeout=5, retries=1) as client:
        with pytest.raises(Unavailable, match=r"only 2 of 3 shards answered"):
            client.search(catalogue.vectors[:1], 10)
        # Below min_coverage the ANN source is dropped and the popularity source fills k.
        filled = client.retrieve(user, 10)
        cluster.stop_shard(1)
        cluster.stop_shard(2)
        down = client.retrieve(user, 10)
    for result in (filled, down):
        assert result.source_names == ["popular"] * 10
        assert result.ids.tolist() == catalogue.popular_ids[:10].tolist()
        assert result.coverage.degraded and result.coverage.shards_answered == 0
    assert "only 2 of 3 shards answered" in filled.dropped_sources["ann"]
    assert "only 0 of 3 shards answered" in down.dropped_sources["ann"]
    # With no other source to fill in, the ANN's failure is the answer.
    with (
        Client(ann.router_target, timeout=5, retries=1) as client,
        pytest.raises(Unavailable, match=r"only 2 of 3 shards answered"),
    ):
        client.retrieve(user, 10)


def test_retrieve_excludes_and_backfills(
    cluster_factory,
    flat_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, EXACT_MERGE, sources=ANN_ONLY)
    user = int(catalogue.user_ids[3])
    with Client(cluster.router_target, timeout=10) as client:
        first = client.retrieve(user, 20)
        expected, _ = exact_topk(catalogue.vectors, catalogue.ids, catalogue.user_vectors[3:4], 20)
        assert first.ids.tolist() == expected[0].tolist()
        assert first.source_names == ["ann"] * 20 and first.bundle_id == flat_bundle.id
        excluded = client.retrieve(user, 20, exclude=first.ids[:5].tolist())
        assert not set(first.ids[:5].tolist()) & set(excluded.ids.tolist())
        assert excluded.ids[:15].tolist() == first.ids[5:].tolist()
        assert len(excluded.ids) == 20
    # Exclusions are filtered inside the shards, so even at max_k the ANN alone fills k.
    capped = cluster_factory(flat_bundle, RouterConfig(max_k=30, oversample=3.0), sources=ANN_ONLY)
    with Client(capped.router_target, timeout=10) as client:
        filled = client.retrieve(user, 30, exclude=first.ids[:10].tolist())
    keep = ~np.isin(catalogue.ids, first.ids[:10])
    expected, _ = exact_topk(
        catalogue.vectors[keep], catalogue.ids[keep], catalogue.user_vectors[3:4], 30
    )
    assert filled.ids.tolist() == expected[0].tolist()
    assert filled.source_names == ["ann"] * 30 and filled.source_counts == {"ann": 30}


def test_bad_input_through_the_router(
    cluster_factory,
    flat_bundle: Bundle,  # type: ignore[no-untyped-def]
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, RouterConfig(max_k=1000, max_batch=16))
    with Client(cluster.router_target, timeout=5) as client:
        cases = [
            (
                lambda: client.search(np.zeros((1, 8), np.float32), 5),
                InvalidArgument,
                "dim 8 does not match the bundle dim 32",
            ),
            (
                lambda: client.search(np.full((2, 32), np.inf, np.float32), 5),
                InvalidArgument,
                "NaN or Inf",
            ),
            (lambda: client.search(catalogue.vectors[:1], 0), InvalidArgument, "k must be > 0"),
            (
                lambda: client.search(catalogue.vectors[:1], 1001),
                InvalidArgument,
                "exceeds max_k 1000",
            ),
            (
                lambda: client.search(catalogue.vectors[:17], 5),
                InvalidArgument,
                "exceeds max_batch 16",
            ),
            (lambda: client.retrieve(10**9, 5), NotFound, "unknown user id 1000000000"),
            (lambda: client.retrieve(1, -1 % 2**32), InvalidArgument, "exceeds max_k"),
        ]
        for call, error, message in cases:
            with pytest.raises(error, match=message):
                call()
        assert len(client.retrieve(int(catalogue.user_ids[0]), 5).ids) == 5  # still serving


def test_async_clients(cluster_factory, flat_bundle: Bundle, catalogue: Catalogue) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(flat_bundle, EXACT_MERGE)

    async def main() -> tuple[np.ndarray, np.ndarray, list[int]]:
        async with AsyncClient(cluster.router_target, timeout=10) as client:
            results = await asyncio.gather(
                *(client.search(catalogue.vectors[i], 10) for i in range(20))
            )
            retrieved = await client.retrieve(int(catalogue.user_ids[1]), 7)
        async with AsyncScatterClient(cluster.shard_targets, timeout=10) as scatter:
            direct = await scatter.search(catalogue.vectors[:20], 10)
        return np.concatenate([r.ids for r in results]), direct.ids, retrieved.ids.tolist()

    via_router, direct, retrieved = asyncio.run(main())
    assert np.array_equal(via_router, direct)
    assert via_router[:, 0].tolist() == catalogue.ids[:20].tolist()  # each item finds itself
    assert len(retrieved) == 7


def test_malformed_exclude_ids_are_invalid_argument(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
) -> None:
    import grpc

    from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc

    cluster = cluster_factory(flat_bundle)
    with grpc.insecure_channel(cluster.router_target) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Retrieve(
                retrieval_pb2.RetrieveRequest(user_id=1, k=5, exclude_ids=b"\x01" * 9), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exclude_ids: 9 bytes" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(retrieval_pb2.SearchRequest(queries=b"\x00" * 10, dim=32, k=5), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_retrieve_filters_seen_items(cluster_factory, bundles_dir, catalogue: Catalogue) -> None:  # type: ignore[no-untyped-def]
    from annfleet.model.tables import seen_table
    from annfleet.server.builder import build_bundle

    user = int(catalogue.user_ids[0])
    plain = exact_topk(catalogue.vectors, catalogue.ids, catalogue.user_vectors[:1], 30)[0][0]
    seen = plain[::3]  # the user has engaged with every third of their best items
    bundle = build_bundle(
        bundles_dir / "seen",
        catalogue.ids,
        catalogue.vectors,
        num_shards=3,
        index_type="flat",
        user_ids=catalogue.user_ids,
        user_vectors=catalogue.user_vectors,
        tables=seen_table(catalogue.user_ids, np.full(len(seen), user), seen),
        progress=False,
    )
    filtering = cluster_factory(bundle, RouterConfig(oversample=3.0), sources=ANN_ONLY)
    keeping = cluster_factory(
        bundle, RouterConfig(oversample=3.0, filter_seen=False), sources=ANN_ONLY
    )
    with Client(filtering.router_target, timeout=10) as client:
        filtered = client.retrieve(user, 10, recent_items=[int(plain[1])])
        other = client.retrieve(int(catalogue.user_ids[1]), 10)
    with Client(keeping.router_target, timeout=10) as client:
        kept = client.retrieve(user, 10, recent_items=[int(plain[1])])
    dropped = set(seen.tolist()) | {int(plain[1])}
    assert filtered.ids.tolist() == [i for i in plain.tolist() if i not in dropped][:10]
    assert kept.ids.tolist() == plain[:10].tolist()
    assert len(other.ids) == 10  # users without seen items are unaffected
