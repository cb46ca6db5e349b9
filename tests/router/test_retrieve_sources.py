"""Retrieve through the real router and client with every source: sources per candidate,
RecordEngagement (an engaged item never comes back, a bad batch applies nothing, engagement
moves trending and the social source), and a source past its budget dropped with k full."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import ANN_ONLY, LoopThread, exact_topk, patient, start_observed_shard

from annfleet.arrays import decode_ids
from annfleet.bundle import Bundle
from annfleet.client import AsyncClient, Client, Engagement, InvalidArgument, RetrieveResult
from annfleet.config import (
    AnnSourceConfig,
    RouterConfig,
    SocialSourceConfig,
    SourcesConfig,
    TrendingSourceConfig,
)
from annfleet.errors import ConfigError
from annfleet.names import SOURCE_NAMES
from annfleet.partition import shard_of
from annfleet.router.main import RouterServer, start_router
from annfleet.server.main import start_shard_server
from annfleet.synthetic import Catalogue

ROUTER = RouterConfig(oversample=3.0)


def social_config(tmp_path: Path, follower: int, followee: int) -> SourcesConfig:
    graph = tmp_path / "follows.txt"
    graph.write_text(f"# follower followee\n{follower} {followee}\n")
    return patient(SourcesConfig(social=SocialSourceConfig(enabled=True, graph=str(graph))))


def check_sources_reported(result: RetrieveResult, k: int) -> None:
    """Every candidate names its sources; the counts per source are the masks' bits."""
    assert len(result.ids) == k and len(set(result.ids.tolist())) == k
    per_candidate = result.sources_per_candidate
    assert all(per_candidate)
    for primary, names in zip(result.source_names, per_candidate, strict=True):
        assert primary in names
    counted: dict[str, int] = {}
    for names in per_candidate:
        for name in names:
            counted[name] = counted.get(name, 0) + 1
    assert result.source_counts == counted


def test_every_source_reported_and_engagement_feeds_back(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    tmp_path: Path,
) -> None:
    alice, bob = int(catalogue.user_ids[0]), int(catalogue.user_ids[1])
    cluster = cluster_factory(flat_bundle, ROUTER, sources=social_config(tmp_path, alice, bob))
    k = 40
    with Client(cluster.router_target, timeout=10) as client:
        first = client.retrieve(alice, k)
        check_sources_reported(first, k)
        assert first.dropped_sources == {}
        # The flat bundle has no engagement yet: ann, exploration and popular serve.
        assert {"ann", "exploration"} <= set(first.source_counts)
        assert "trending" not in first.source_counts and "social" not in first.source_counts

        # Alice engages with her top ANN candidates; Bob (whom she follows) with two items.
        engaged = [int(i) for i in first.ids[:3]]
        bobs = [int(i) for i in catalogue.ids[-2:]]
        applied = client.record_engagement(
            [(alice, engaged[0]), Engagement(alice, engaged[1], "view"), (alice, engaged[2], 4)]
            + [Engagement(bob, item, "like") for item in bobs]
        )
        assert applied == 5
        after = [client.retrieve(alice, k) for _ in range(3)]
        after.append(client.retrieve(alice, k, exclude=bobs[:1]))
        for result in after:
            check_sources_reported(result, k)
            assert not set(engaged) & set(result.ids.tolist())  # engaged: never again
        # Bob's likes reach Alice through the social source and trending, both recorded.
        got = dict(zip(after[0].ids.tolist(), after[0].sources_per_candidate, strict=True))
        for item in bobs:
            assert {"social", "trending"} <= set(got[item]), got.get(item)
        assert bobs[0] not in after[-1].ids.tolist()  # exclude_ids still applies
        # Bob himself gets neither his own likes nor social candidates (he follows nobody).
        bob_list = client.retrieve(bob, k)
        assert not set(bobs) & set(bob_list.ids.tolist())
        assert "social" not in bob_list.source_counts


def test_a_bad_event_names_its_index_and_applies_nothing(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, ROUTER, sources=patient(SourcesConfig()))
    user, k = int(catalogue.user_ids[2]), 30
    unknown = int(catalogue.ids.max()) + 1
    with Client(cluster.router_target, timeout=10) as client:
        before = client.retrieve(user, k)
        top = int(before.ids[0])
        cases = [
            (
                [(user, top), (user, int(before.ids[1])), (user, unknown)],
                r"events\[2\]: unknown item",
            ),
            ([(user, top), (user, top, 0)], r"events\[1\]: unknown event type 0"),
            (
                [(user, top), Engagement(user, top, "click", timestamp=2**40)],
                r"events\[1\]: timestamp .* in the future",
            ),
        ]
        for events, message in cases:
            with pytest.raises(InvalidArgument, match=message):
                client.record_engagement(events)
        with pytest.raises(InvalidArgument, match=r"unknown event type 'share'"):
            client.record_engagement([(user, top, "share")])  # refused by the client
        again = client.retrieve(user, k)
        assert again.ids.tolist() == before.ids.tolist()  # nothing of the batches applied
        assert "trending" not in again.source_counts
        assert client.record_engagement([]) == 0


def test_a_hanging_source_is_dropped_past_its_budget_and_k_stays_full(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    base = patient(SourcesConfig())  # only the hanging source can miss its budget
    hanging = replace(
        base, trending=TrendingSourceConfig(budget_ms=100.0, delay_ms=30_000.0, quota=0.3)
    )
    ann_hangs = replace(base, ann=AnnSourceConfig(budget_ms=100.0, delay_ms=30_000.0))
    slow_trending = cluster_factory(flat_bundle, ROUTER, sources=hanging)
    slow_ann = cluster_factory(flat_bundle, ROUTER, sources=ann_hangs)
    user, k = int(catalogue.user_ids[4]), 50
    # Make trending non-empty, so dropping it takes real candidates away.
    items = [int(i) for i in catalogue.ids[:20]]

    async def main() -> tuple[list[RetrieveResult], list[RetrieveResult]]:
        async with (
            AsyncClient(slow_trending.router_target, timeout=10) as a,
            AsyncClient(slow_ann.router_target, timeout=10) as b,
        ):
            for client in (a, b):  # each router has its own (memory) state
                await client.record_engagement([(int(catalogue.user_ids[5]), i) for i in items])
            got_a = await asyncio.gather(*(a.retrieve(user, k) for _ in range(4)))
            got_b = await asyncio.gather(*(b.retrieve(user, k) for _ in range(4)))
        return list(got_a), list(got_b)

    without_trending, without_ann = asyncio.run(main())
    for result in without_trending:
        check_sources_reported(result, k)
        assert result.dropped_sources == {"trending": "budget"}
        assert "trending" not in result.source_counts
        assert result.source_counts["ann"] >= 30  # its own quota and trending's share
        assert not result.coverage.degraded
    for result in without_ann:
        check_sources_reported(result, k)
        assert result.dropped_sources == {"ann": "budget"}
        assert set(result.source_counts) <= set(SOURCE_NAMES.values()) - {"ann"}
        assert result.coverage.degraded and result.coverage.shards_answered == 0
    assert np.isin(items, without_ann[0].ids).sum() >= 15  # trending filled in


@contextlib.contextmanager
def observed_ann_router(
    loop_thread: LoopThread, bundle: Bundle
) -> Iterator[tuple[list[Any], RouterServer]]:
    """Observed shards (their Search requests recorded) behind an ANN-only router."""
    shards = [loop_thread.run(start_observed_shard(bundle, i)) for i in range(bundle.num_shards)]
    targets = [f"127.0.0.1:{s.port}" for s in shards]
    router = loop_thread.run(
        start_router(bundle.path, targets, RouterConfig(oversample=3.0), sources=ANN_ONLY)
    )
    try:
        yield shards, router
    finally:
        loop_thread.run(router.stop(0))
        for shard in shards:
            loop_thread.run(shard.stop(0))


def test_exclusions_go_to_the_shards_that_own_them_and_k_is_not_inflated(
    loop_thread: LoopThread, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    user, k = int(catalogue.user_ids[6]), 20
    with (
        observed_ann_router(loop_thread, flat_bundle) as (shards, router),
        Client(f"127.0.0.1:{router.port}", timeout=10) as client,
    ):
        plain = client.retrieve(user, k)
        engaged = [int(i) for i in plain.ids[:5]]
        client.record_engagement([(user, item) for item in engaged])
        exclude = [int(i) for i in plain.ids[5:8]]
        for shard in shards:
            shard.service.requests.clear()
        got = client.retrieve(user, k, exclude=exclude)
    dropped = np.array(engaged + exclude, np.int64)
    keep = ~np.isin(catalogue.ids, dropped)
    expected, _ = exact_topk(
        catalogue.vectors[keep], catalogue.ids[keep], catalogue.user_vectors[6:7], k
    )
    assert got.ids.tolist() == expected[0].tolist()
    owner = shard_of(dropped, flat_bundle.num_shards)
    for i, shard in enumerate(shards):
        (request,) = shard.service.requests  # one search per shard, no second round
        assert sorted(decode_ids(request.exclude_ids).tolist()) == sorted(
            dropped[owner == i].tolist()
        )
        assert request.k == k  # per-shard k (oversample 3 over 3 shards), not k + 8


def test_a_blocked_set_past_the_pushdown_limit_stays_out_without_going_to_the_shards(
    loop_thread: LoopThread,
    flat_bundle: Bundle,
    catalogue: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past BLOCKED_PUSHDOWN_MAX (2 here instead of 4096) the blocked ids are not sent to
    the sources and shards, only the request's own exclusions are; the blender still leaves
    every blocked id out, and k stays full: the ANN (asked for k here: depth 0) delivers the
    rest of its exact top k, the popular backfill the others."""
    from annfleet.router import candidates

    monkeypatch.setattr(candidates, "BLOCKED_PUSHDOWN_MAX", 2)
    user, k = int(catalogue.user_ids[7]), 20
    with (
        observed_ann_router(loop_thread, flat_bundle) as (shards, router),
        Client(f"127.0.0.1:{router.port}", timeout=10) as client,
    ):
        plain = client.retrieve(user, k)
        blocked = [int(i) for i in plain.ids[:5]]  # past the limit of 2
        exclude = [int(i) for i in plain.ids[5:7]]
        store = router.service.state.env.store  # type: ignore[union-attr]
        loop_thread.run(store.set_blocked(blocked))
        for shard in shards:
            shard.service.requests.clear()
        got = client.retrieve(user, k, exclude=exclude)
    dropped = np.array(blocked + exclude, np.int64)
    keep = ~np.isin(catalogue.ids, dropped)
    expected, _ = exact_topk(
        catalogue.vectors[keep], catalogue.ids[keep], catalogue.user_vectors[7:8], k
    )
    assert len(got.ids) == k and not set(blocked) & set(got.ids.tolist())
    assert got.ids[: k - 5].tolist() == expected[0][: k - 5].tolist()  # the ANN's, in order
    assert got.source_counts == {"ann": k - 5, "popular": 5}
    sent = [decode_ids(r.exclude_ids).tolist() for shard in shards for r in shard.service.requests]
    assert sorted(i for ids in sent for i in ids) == sorted(exclude)  # only the request's own


def test_the_learned_blend_through_the_router(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    tmp_path: Path,
) -> None:
    """``sources.blend: learned`` with a fusion whose only table is the ANN's (one bucket per
    rank, falling): the ANN's list comes first in its own order, exploration keeps its floor
    (last: no table), every candidate names its sources, an engaged item never comes back."""
    fusion = tmp_path / "fusion.json"
    fusion.write_text(
        json.dumps(
            {
                "edges": list(range(201)),
                "tables": {"ann": [-r / 100 for r in range(200)] + [-10.0]},
                "agreement": [0.0, 0.0],
                "bias": 0.0,
            }
        )
    )
    learned = patient(replace(SourcesConfig(), blend="learned", fusion=str(fusion)))
    cluster = cluster_factory(flat_bundle, ROUTER, sources=learned)
    reference = cluster_factory(flat_bundle, ROUTER, sources=ANN_ONLY)
    user, k = int(catalogue.user_ids[2]), 40
    with (
        Client(cluster.router_target, timeout=10) as client,
        Client(reference.router_target, timeout=10) as ann,
    ):
        got = client.retrieve(user, k)
        check_sources_reported(got, k)
        want = ann.retrieve(user, k).ids.tolist()
        assert got.ids.tolist()[: k - 1] == want[: k - 1]  # 40 * 0.02 -> 1 exploration slot
        assert "exploration" in got.sources_per_candidate[-1]
        assert (np.diff(got.scores) <= 1e-6).all()
        client.record_engagement([(user, want[0])])
        again = client.retrieve(user, k)
        check_sources_reported(again, k)
        assert want[0] not in again.ids.tolist()


def test_a_malformed_fusion_file_fails_the_routers_start_naming_it(
    loop_thread: LoopThread, flat_bundle: Bundle, tmp_path: Path
) -> None:
    bad = tmp_path / "fusion.json"
    bad.write_text('{"edges": [0, 1]}')
    learned = patient(replace(SourcesConfig(), blend="learned", fusion=str(bad)))
    shards = [
        loop_thread.run(start_shard_server(flat_bundle.path, i))
        for i in range(flat_bundle.num_shards)
    ]
    try:
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            loop_thread.run(
                start_router(
                    flat_bundle.path,
                    [[f"127.0.0.1:{s.port}"] for s in shards],
                    ROUTER,
                    sources=learned,
                )
            )
    finally:
        for shard in shards:
            loop_thread.run(shard.stop(0))


def test_a_blocked_item_leaves_every_source_until_unblocked(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    loop_thread: LoopThread,
    tmp_path: Path,
) -> None:
    """RouterAdmin.Block (what `annfleet items delete` calls): a blocked id is never served,
    whichever source has it (here: live trending), and comes back when unblocked. The
    in-memory store keeps the blocked set in its file: a restarted router still blocks it."""
    import grpc

    from annfleet.auth import metadata
    from annfleet.v1 import admin_pb2, admin_pb2_grpc

    token = "block-test-token"
    no_ann = patient(replace(SourcesConfig(), ann=AnnSourceConfig(enabled=False)))
    blocked_file = tmp_path / "blocked-items.npy"
    cluster = cluster_factory(
        flat_bundle,
        ROUTER,
        sources=no_ann,
        admin_port=0,
        admin_token=token,
        blocked_file=blocked_file,
    )
    alice, bob = int(catalogue.user_ids[0]), int(catalogue.user_ids[1])
    hot = [int(i) for i in catalogue.ids[-3:]]
    with (
        Client(cluster.router_target, timeout=10) as client,
        grpc.insecure_channel(f"127.0.0.1:{cluster.router.admin_port}") as channel,
    ):
        admin = admin_pb2_grpc.RouterAdminStub(channel)
        auth = metadata(token)
        client.record_engagement([Engagement(bob, item, "like") for item in hot])
        got = client.retrieve(alice, 40)
        by_id = dict(zip(got.ids.tolist(), got.sources_per_candidate, strict=True))
        assert all("trending" in by_id.get(item, ()) for item in hot), by_id
        reply = admin.Block(admin_pb2.BlockRequest(item_ids=hot[:2]), metadata=auth)
        assert reply.blocked == 2
        status = admin.Status(admin_pb2.StatusRequest(skip_replicas=True), metadata=auth)
        assert status.blocked_items == 2
        listed = admin.Blocked(admin_pb2.BlockedRequest(limit=1), metadata=auth)
        assert listed.count == 2 and decode_ids(listed.item_ids).tolist() == [min(hot[:2])]
        listed = admin.Blocked(admin_pb2.BlockedRequest(), metadata=auth)
        assert decode_ids(listed.item_ids).tolist() == sorted(hot[:2])
        for _ in range(3):
            result = client.retrieve(alice, 40)
            assert not set(hot[:2]) & set(result.ids.tolist())
            assert hot[2] in result.ids.tolist() and len(result.ids) == 40
        reply = admin.Block(admin_pb2.BlockRequest(item_ids=hot[:1], unblock=True), metadata=auth)
        assert reply.blocked == 1
        back = client.retrieve(alice, 40).ids.tolist()
        assert hot[0] in back and hot[1] not in back
        for bad in (admin_pb2.BlockRequest(), admin_pb2.BlockRequest(item_ids=[-5])):
            with pytest.raises(grpc.RpcError) as refused:
                admin.Block(bad, metadata=auth)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as anonymous:
            admin.Block(admin_pb2.BlockRequest(item_ids=[1]))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Another router on the same shards and file (a restarted one, its live state gone):
    # when the hot items trend again, hot[1] is still blocked and nothing else is.
    assert np.load(blocked_file, allow_pickle=False).tolist() == [hot[1]]
    again = loop_thread.run(
        start_router(
            flat_bundle.path,
            cluster.shard_targets,
            ROUTER,
            sources=no_ann,
            blocked_file=blocked_file,
        )
    )
    try:
        with Client(f"127.0.0.1:{again.port}", timeout=10) as client:
            client.record_engagement([Engagement(bob, item, "like") for item in hot])
            result = client.retrieve(alice, 40)
            assert hot[1] not in result.ids.tolist() and len(result.ids) == 40
            assert {hot[0], hot[2]} <= set(result.ids.tolist())
    finally:
        loop_thread.run(again.stop(0))
    # A file that is not a list of ids refuses the start: the router cannot tell what to block.
    blocked_file.write_bytes(b"not a npy file")
    with pytest.raises(ConfigError, match=r"blocked items file .*blocked-items\.npy"):
        loop_thread.run(
            start_router(flat_bundle.path, cluster.shard_targets, blocked_file=blocked_file)
        )
