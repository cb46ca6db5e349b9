"""Ranking metrics with exact expectations on tiny inputs."""

from __future__ import annotations

import numpy as np

from annfleet.model.features import Queries
from annfleet.model.metrics import mask_seen, ranking_metrics, topk


def _queries() -> Queries:
    z = np.zeros((2, 1), dtype=np.int64)
    return Queries(
        users=np.array([1, 2]),
        user=z,
        recent=z,
        time=z,
        query_ts=np.zeros(2),
        seen_ptr=np.array([0, 1, 1]),
        seen=np.array([3]),
        target_ptr=np.array([0, 2, 3]),
        targets=np.array([1, 4, 2]),
    )


def test_topk_excludes_seen_and_padding() -> None:
    q = _queries()
    scores = np.array([[9.0, 1.0, 2.0, 8.0, 0.5], [9.0, 1.0, 2.0, 3.0, 3.0]], dtype=np.float32)
    top = topk(mask_seen(scores, q), 3)
    assert top.tolist() == [[2, 1, 4], [3, 4, 2]]  # ties broken by lower index


def test_recall_and_ndcg() -> None:
    q = _queries()
    top = np.array([[1, 2, 4], [3, 4, 2]])
    m = ranking_metrics(top, q, ks=(1, 3))
    assert m["recall@1"] == 0.25  # user 1: 1/2, user 2: 0
    assert m["recall@3"] == 1.0
    ndcg1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    ndcg2 = (1 / np.log2(4)) / 1
    assert np.isclose(m["ndcg@50"], (ndcg1 + ndcg2) / 2)


def test_ann_eval_recall_against_exact() -> None:
    from annfleet.model.evaluate import ann_eval

    rng = np.random.default_rng(0)
    items = rng.standard_normal((501, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.standard_normal((2, 16)).astype(np.float32)
    q = _queries()
    top, recall = ann_eval(items, users, q)
    assert recall >= 0.98  # HNSW (M=32, efSearch>=128) on 500 items is near-exact
    assert top.shape == (2, 100)
    assert 3 not in top[0]  # user 1's seen item is excluded
    assert 0 not in top  # padding row is never an item
    exact = np.argsort(-(users[1] @ items[1:].T), kind="stable")[:100] + 1
    assert len(np.intersect1d(top[1], exact)) >= 98
