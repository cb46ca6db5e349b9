"""Export -> Bundle.open(verify=True) -> the router's TowerEmbedder."""

from __future__ import annotations

import numpy as np

from annfleet.bundle import Bundle
from annfleet.router.tower import TowerEmbedder
from annfleet.router.users import RequestContext, load_embedder


def test_bundle_verifies_and_has_tables(small_bundle: Bundle) -> None:
    bundle = Bundle.open(small_bundle.path, verify=True)
    assert bundle.dim == 16 and bundle.num_shards == 2
    assert bundle.manifest["model"]["training_data_fingerprint"]
    assert sum(s["num_items"] for s in bundle.manifest["shards"]) == 1682
    popular = bundle.table("popular_ids")
    assert popular.dtype == np.int64 and popular[0] == 50  # Star Wars has the most ratings
    titles = bundle.table("item_titles")
    assert len(titles["ids"]) == len(titles["titles"]) == 1682
    users = bundle.users()
    assert users is not None and users[1].shape == (943, 16)
    assert "user_tower.pt" in bundle.manifest["files"]
    assert bundle.table("coengagement_ids").shape == (1682, 20)


def test_tower_embeds_known_user_like_the_precomputed_vector(small_bundle: Bundle) -> None:
    embedder = load_embedder(small_bundle)
    assert isinstance(embedder, TowerEmbedder) and embedder.blocking
    ids, vectors = small_bundle.users()  # type: ignore[misc]
    last_ts = small_bundle.table("user_last_ts")
    row = int(np.flatnonzero(ids == 1)[0])
    vec = embedder.embed(1, RequestContext(timestamp=int(last_ts[row])))
    assert vec.shape == (16,) and vec.dtype == np.float32
    assert np.allclose(vec, vectors[row], atol=1e-5)
    # fresh context changes the embedding
    other = embedder.embed(1, RequestContext(recent_item_ids=(50, 172, 181)))
    assert not np.allclose(other, vec)


def test_unknown_user_is_embedded_from_context(small_bundle: Bundle) -> None:
    embedder = TowerEmbedder(small_bundle)
    a = embedder.embed(10**9, RequestContext(recent_item_ids=(1, 50, 100), timestamp=893286638))
    b = embedder.embed(10**9, RequestContext(recent_item_ids=(96, 98), timestamp=893286638))
    c = embedder.embed(10**9, RequestContext())  # no context at all: still a vector
    for v in (a, b, c):
        assert v.shape == (16,) and np.isfinite(v).all()
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    assert not np.allclose(a, b)
    # unknown item ids in the context are ignored, not an error
    d = embedder.embed(
        10**9, RequestContext(recent_item_ids=(1, 50, 100, 999_999), timestamp=893286638)
    )
    assert np.allclose(a, d, atol=1e-6)


def test_the_default_movielens_bundle_is_keyed_by_build_not_search_params(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from annfleet.cli import default_bundle_path
    from annfleet.config import ClusterConfig, SearchConfig

    base = ClusterConfig(data_dir=str(tmp_path))
    edited = replace(base, search=SearchConfig(ef_search=512, nprobe=4, rerank=64))
    assert default_bundle_path(edited) == default_bundle_path(base)
    assert default_bundle_path(replace(base, index=replace(base.index, m=16))) != (
        default_bundle_path(base)
    )
