"""A router restart with Redis state loses nothing, through the real router and client:
engagement recorded on one router is what a new router on the same redis-server serves by."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from support import ANN_ONLY, RedisServer, patient

from annfleet.bundle import Bundle
from annfleet.client import Client, Engagement
from annfleet.config import (
    RouterConfig,
    SocialSourceConfig,
    SourcesConfig,
    StateConfig,
    TrendingSourceConfig,
)
from annfleet.router.main import start_router
from annfleet.synthetic import Catalogue

_prefixes = itertools.count()


def test_a_restarted_router_serves_by_the_engagement_the_first_one_recorded(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    alice, bob, carol = (int(u) for u in catalogue.user_ids[3:6])
    graph = tmp_path / "follows.txt"
    graph.write_text(f"{alice} {bob}\n")  # alice follows bob
    # trending weighs more than the ANN here, so its top items are in every list of k.
    sources = patient(
        SourcesConfig(
            social=SocialSourceConfig(enabled=True, graph=str(graph)),
            trending=TrendingSourceConfig(weight=2.0),
        )
    )
    state = StateConfig(
        backend="redis", url=redis_server.url, prefix=f"restart{next(_prefixes)}:", timeout_s=2.0
    )
    router_config = RouterConfig(oversample=3.0)
    cluster = cluster_factory(flat_bundle, router_config, sources=sources, state=state)
    k = 40
    with Client(cluster.router_target, timeout=10) as client:
        seen = [int(i) for i in client.retrieve(alice, k).ids[:2]]
        bobs = [int(i) for i in catalogue.ids[-2:]]
        events = [Engagement(alice, i, "view") for i in seen]
        events += [Engagement(bob, i, "like") for i in bobs]
        assert client.record_engagement(events) == 4

    # Router 1 goes away; router 2 starts on the same shards and the same redis-server.
    cluster.lt.run(cluster.router.stop(0))
    cluster.router = cluster.lt.run(
        start_router(
            flat_bundle.path,
            [[t] for t in cluster.shard_targets],
            router_config,
            sources=sources,
            state=state,
        )
    )
    with Client(cluster.router_target, timeout=10) as client:
        after = client.retrieve(alice, k)
        assert "state" not in after.dropped_sources and len(after.ids) == k
        assert not set(seen) & set(after.ids.tolist())  # alice's seen items: never again
        got = dict(zip(after.ids.tolist(), after.sources_per_candidate, strict=True))
        for item in bobs:  # bob's recent items (social) and the trending counts survived
            assert {"social", "trending"} <= set(got[item]), got.get(item)
        trending = client.retrieve(carol, k)
        got = dict(zip(trending.ids.tolist(), trending.sources_per_candidate, strict=True))
        assert all("trending" in got.get(i, ()) for i in [*seen, *bobs]), trending.source_counts


def test_redis_down_keeps_the_blocked_items_the_router_last_read(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
    tmp_path: Path,
) -> None:
    """With the state store down, Retrieve serves without live state but still leaves out the
    blocked items as last read (a blocked item is never served because redis went away)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (tests/install-deps.sh installs it)")
    server = RedisServer(binary, str(tmp_path))
    try:
        state = StateConfig(backend="redis", url=server.url, timeout_s=0.5)
        cluster = cluster_factory(flat_bundle, RouterConfig(), sources=ANN_ONLY, state=state)
        alice = int(catalogue.user_ids[6])
        with Client(cluster.router_target, timeout=10) as client:
            top = [int(i) for i in client.retrieve(alice, 20).ids[:2]]
            cluster.lt.run(cluster.router.service.state.env.store.set_blocked(top))
            blocked = client.retrieve(alice, 20)
            assert not set(top) & set(blocked.ids.tolist()) and len(blocked.ids) == 20
            server.close()
            down = client.retrieve(alice, 21)  # another k: not the cached list of 20
            assert "state" in down.dropped_sources, down.dropped_sources
            assert not set(top) & set(down.ids.tolist())
            assert down.ids[:20].tolist() == blocked.ids.tolist()
    finally:
        server.close()
