"""Export -> shard servers + router -> Retrieve answered with the exported TorchScript tower,
alone (exact ANN) and blended with every source the MovieLens bundle has."""

from __future__ import annotations

import numpy as np
from support import ANN_ONLY, exact_topk, patient

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import RouterConfig, SourcesConfig
from annfleet.router.tower import TowerEmbedder
from annfleet.router.users import RequestContext

WHEN = 893_286_638  # a timestamp inside the data's range


def _catalogue(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([np.load(bundle.shard_dir(s) / "ids.npy") for s in range(2)])
    vectors = np.concatenate([np.load(bundle.shard_dir(s) / "vectors.npy") for s in range(2)])
    return ids, vectors


def _seen(bundle: Bundle, user_id: int) -> list[int]:
    """User's rated items from the raw MovieLens file (independent of the bundle tables)."""
    from annfleet.model.data import load_movielens

    data = load_movielens()
    rows = data.inter_user == int(np.flatnonzero(data.user_ids == user_id)[0]) + 1
    return data.item_ids[data.inter_item[rows] - 1].tolist()


def test_router_answers_with_the_exported_tower(cluster_factory, small_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(small_bundle, RouterConfig(oversample=2.0), sources=ANN_ONLY)
    embedder = TowerEmbedder(small_bundle)
    ids, vectors = _catalogue(small_bundle)
    titles = dict(zip(*small_bundle.table("item_titles").values(), strict=True))
    recent = (50, 172, 181)
    with Client(cluster.router_target, timeout=30) as client:
        known = client.retrieve(1, 20, recent_items=recent, timestamp=WHEN, include_titles=True)
        stranger = client.retrieve(10**9, 20, recent_items=recent, timestamp=WHEN)
        no_context = client.retrieve(10**9, 5)

    # Expected: the exact top 20 among items user 1 has not seen (bundle table + context).
    seen = set(_seen(small_bundle, 1)) | set(recent)
    assert len(seen) > 20 and not seen & set(known.ids.tolist())
    unseen = ~np.isin(ids, list(seen))
    query = embedder.embed(1, RequestContext(recent_item_ids=recent, timestamp=WHEN))
    expected, _ = exact_topk(vectors[unseen], ids[unseen], query[None, :], 20)
    assert known.ids.tolist() == expected[0].tolist()
    assert known.bundle_id == small_bundle.id and not known.coverage.degraded
    assert known.source_names == ["ann"] * 20
    assert list(known.titles) == [titles[int(i)] for i in known.ids]
    assert all(known.titles)

    # An unknown user is embedded from the context alone, not refused.
    query = embedder.embed(10**9, RequestContext(recent_item_ids=recent, timestamp=WHEN))
    unseen = ~np.isin(ids, list(recent))  # a stranger has seen only the context items
    expected, _ = exact_topk(vectors[unseen], ids[unseen], query[None, :], 20)
    assert stranger.ids.tolist() == expected[0].tolist()
    assert stranger.ids.tolist() != known.ids.tolist()
    assert len(no_context.ids) == 5


def test_every_movielens_source_serves_through_the_router(
    cluster_factory, small_bundle: Bundle
) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(
        small_bundle, RouterConfig(oversample=2.0), sources=patient(SourcesConfig())
    )
    recent = (50, 172, 181)
    k = 100
    with Client(cluster.router_target, timeout=30) as client:
        first = client.retrieve(1, k, recent_items=recent, timestamp=WHEN)
        engaged = [int(i) for i in first.ids[:5]]
        assert client.record_engagement([(1, item, "view") for item in engaged]) == 5
        after = client.retrieve(1, k, recent_items=recent, timestamp=WHEN)
    for result in (first, after):
        assert len(result.ids) == k and len(set(result.ids.tolist())) == k
        assert result.dropped_sources == {}
        assert set(result.source_counts) >= {
            "ann",
            "trending",
            "co_engagement",
            "content",
            "exploration",
        }
        assert not set(recent) & set(result.ids.tolist())
    assert not set(engaged) & set(after.ids.tolist())  # engaged items never come back


def test_live_recent_items_carry_their_engagement_time_to_the_tower(
    cluster_factory, small_bundle: Bundle
) -> None:  # type: ignore[no-untyped-def]
    """Items the router takes from the live state were engaged when their events say, not at
    the request's time: the tower's time-since-last-item feature sees the real gap, as in
    training (a zero gap here was a training/serving skew)."""
    from annfleet.client import Engagement

    embedder = TowerEmbedder(small_bundle)
    month_ago = WHEN - 30 * 86_400
    live = RequestContext(recent_item_ids=(50, 172), timestamp=WHEN, recent_timestamp=month_ago)
    as_if_now = RequestContext(recent_item_ids=(50, 172), timestamp=WHEN)
    gap = embedder.inputs(10**9, live)[2][0, 2]
    assert gap != embedder.inputs(10**9, as_if_now)[2][0, 2]  # a month vs no time at all
    assert not np.allclose(embedder.embed(10**9, live), embedder.embed(10**9, as_if_now))

    cluster = cluster_factory(small_bundle, RouterConfig(oversample=2.0), sources=ANN_ONLY)
    user = 10**9 + 7  # unknown to the bundle: its history is only what is recorded here
    with Client(cluster.router_target, timeout=30) as client:
        events = [
            Engagement(user, 50, "click", month_ago - 60),
            Engagement(user, 172, "click", month_ago),
        ]
        assert client.record_engagement(events) == 2
        answer = client.retrieve(user, 20, timestamp=WHEN)
    ids, vectors = _catalogue(small_bundle)
    unseen = ~np.isin(ids, [50, 172])
    expected, _ = exact_topk(vectors[unseen], ids[unseen], embedder.embed(user, live)[None, :], 20)
    assert answer.ids.tolist() == expected[0].tolist()
