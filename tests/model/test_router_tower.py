"""Export -> shard servers + router -> Retrieve answered with the exported TorchScript tower."""

from __future__ import annotations

import numpy as np
from support import exact_topk

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import RouterConfig
from annfleet.router.tower import TowerEmbedder
from annfleet.router.users import RequestContext

WHEN = 893_286_638  # a timestamp inside the data's range


def _catalogue(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([np.load(bundle.shard_dir(s) / "ids.npy") for s in range(2)])
    vectors = np.concatenate([np.load(bundle.shard_dir(s) / "vectors.npy") for s in range(2)])
    return ids, vectors


def test_router_answers_with_the_exported_tower(cluster_factory, small_bundle: Bundle) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(small_bundle, RouterConfig(oversample=2.0))  # 2 shards: exact
    embedder = TowerEmbedder(small_bundle)
    ids, vectors = _catalogue(small_bundle)
    titles = dict(zip(*small_bundle.table("item_titles").values(), strict=True))
    recent = (50, 172, 181)
    with Client(cluster.router_target, timeout=30) as client:
        known = client.retrieve(1, 20, recent_items=recent, timestamp=WHEN, include_titles=True)
        stranger = client.retrieve(10**9, 20, recent_items=recent, timestamp=WHEN)
        no_context = client.retrieve(10**9, 5)

    query = embedder.embed(1, RequestContext(recent_item_ids=recent, timestamp=WHEN))
    expected, _ = exact_topk(vectors, ids, query[None, :], 20)
    assert known.ids.tolist() == expected[0].tolist()
    assert known.bundle_id == small_bundle.id and not known.coverage.degraded
    assert known.source_names == ["ann"] * 20
    assert list(known.titles) == [titles[int(i)] for i in known.ids]
    assert all(known.titles)

    # An unknown user is embedded from the context alone, not refused.
    query = embedder.embed(10**9, RequestContext(recent_item_ids=recent, timestamp=WHEN))
    expected, _ = exact_topk(vectors, ids, query[None, :], 20)
    assert stranger.ids.tolist() == expected[0].tolist()
    assert stranger.ids.tolist() != known.ids.tolist()
    assert len(no_context.ids) == 5
