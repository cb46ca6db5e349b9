"""merge_topk / merge_rows against a brute-force reference (exact expectations, hypothesis)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from annfleet.merge import binomial_cut, merge_rows, merge_topk, per_shard_k


def reference(ids: np.ndarray, scores: np.ndarray, k: int, higher: bool) -> list[int]:
    pairs = [
        (-s if higher else s, i)
        for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
        if i >= 0
    ]
    return [i for _, i in sorted(pairs)[:k]]


def test_merge_picks_best_and_breaks_ties_by_id() -> None:
    ids = np.array([7, 3, 9, 1, -1, 5], dtype=np.int64)
    scores = np.array([0.5, 0.9, 0.9, 0.1, 5.0, 0.5], dtype=np.float32)
    best_ids, best_scores = merge_topk(ids, scores, 4)
    assert best_ids.tolist() == [3, 9, 5, 7]
    assert best_scores.tolist() == [np.float32(0.9), np.float32(0.9), 0.5, 0.5]


def test_merge_l2_lower_is_better() -> None:
    ids = np.array([1, 2, 3], dtype=np.int64)
    scores = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    assert merge_topk(ids, scores, 2, higher_is_better=False)[0].tolist() == [2, 3]


def test_merge_returns_fewer_when_fewer_valid() -> None:
    ids = np.array([-1, 4, -1], dtype=np.int64)
    scores = np.array([9.0, 1.0, 9.0], dtype=np.float32)
    best_ids, _ = merge_topk(ids, scores, 3)
    assert best_ids.tolist() == [4]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 50), st.integers(-20, 20)), min_size=0, max_size=60),
    st.integers(1, 70),
    st.booleans(),
)
def test_merge_matches_reference(pairs: list[tuple[int, int]], k: int, higher: bool) -> None:
    # Unique ids (as across shards); small integer scores make ties common.
    seen: set[int] = set()
    pairs = [(i, s) for i, s in pairs if i < 0 or not (i in seen or seen.add(i))]
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    scores = np.array([p[1] / 4 for p in pairs], dtype=np.float32)
    got, got_scores = merge_topk(ids, scores, k, higher_is_better=higher)
    assert got.tolist() == reference(ids, scores, k, higher)
    assert len(got_scores) == len(got)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(0, 40),
    st.integers(1, 50),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 2**32 - 100, 2**40]),  # ids packed with scores, and ids too large
)
def test_merge_rows_matches_reference_row_by_row(
    nq: int, m: int, k: int, higher: bool, seed: int, base: int
) -> None:
    rng = np.random.default_rng(seed)
    ids = np.full((nq, m), -1, dtype=np.int64)
    for row in range(nq):  # unique ids per row (as across shards), some padding
        ids[row] = base + rng.permutation(100)[:m]
        ids[row, rng.random(m) < 0.2] = -1
    scores = (rng.integers(-8, 8, size=(nq, m)) / 4).astype(np.float32)  # ties are common
    scores[rng.random((nq, m)) < 0.05] = -0.0  # -0.0 and 0.0 are equal scores
    scores[rng.random((nq, m)) < 0.05] = -np.inf if higher else np.inf  # a worst-score hit
    got_ids, got_scores = merge_rows(ids, scores, k, higher_is_better=higher)
    assert got_ids.shape == got_scores.shape == (nq, k)
    worst = -math.inf if higher else math.inf
    for row in range(nq):
        want = reference(ids[row], scores[row], k, higher)
        n = len(want)
        assert got_ids[row, :n].tolist() == want
        score_of = dict(zip(ids[row].tolist(), scores[row].tolist(), strict=True))
        assert got_scores[row, :n].tolist() == [score_of[i] for i in want]
        assert (got_ids[row, n:] == -1).all() and (got_scores[row, n:] == worst).all()


def test_merge_rows_pads() -> None:
    ids = np.array([[1, 2, -1], [-1, -1, -1]], dtype=np.int64)
    scores = np.array([[0.1, 0.2, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    out_ids, out_scores = merge_rows(ids, scores, 3)
    assert out_ids.tolist() == [[2, 1, -1], [-1, -1, -1]]
    assert math.isinf(out_scores[1, 0]) and out_scores[1, 0] < 0


def _tail(k: int, share: Fraction, m: int) -> Fraction:
    """P(Binomial(k, share) > m), exactly."""
    terms = (math.comb(k, i) * share**i * (1 - share) ** (k - i) for i in range(m + 1, k + 1))
    return sum(terms, Fraction(0))


def test_per_shard_k_is_the_smallest_count_the_probability_allows() -> None:
    for shards, k, probability in [(4, 10, 0.9999), (4, 100, 0.9999), (2, 100, 0.999),
                                   (8, 60, 0.99), (3, 37, 0.9999)]:  # fmt: skip
        share = 1 / shards
        m = per_shard_k(k, share, shards=shards, probability=probability)
        eps = Fraction(1 - probability).limit_denominator(10**9) / shards
        assert _tail(k, Fraction(1, shards), m) <= eps * (1 + Fraction(1, 10**6))
        assert _tail(k, Fraction(1, shards), m - 1) > eps * (1 - Fraction(1, 10**6))
        assert math.ceil(k * share) <= m <= k
        assert m * shards >= k  # the shards together always have k to merge


def test_binomial_cut_equals_the_tail_summed_from_the_top() -> None:
    def summed(n: int, p: float, eps: float) -> int:  # every term, from m = n down
        tail, m = 0.0, n
        while m > 0:
            log_mass = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1)
            mass = math.exp(log_mass + m * math.log(p) + (n - m) * math.log1p(-p))
            if tail + mass > eps:
                break
            tail += mass
            m -= 1
        return m

    for n in (1, 7, 100, 999, 4096):
        for p in (0.001, 0.1, 0.25, 1 / 3, 0.5, 0.9):
            for eps in (0.25, 1e-3, 2.5e-5, 1e-12):
                assert binomial_cut(n, p, eps) == summed(n, p, eps), (n, p, eps)


def test_per_shard_k_bounds() -> None:
    assert per_shard_k(100, 0.25, shards=4, probability=1.0) == 100  # exact merge
    assert per_shard_k(100, 0.25, shards=4, oversample=4.0, probability=0.9999) == 100
    assert per_shard_k(100, 0.25, shards=4, oversample=3.0, probability=0.9999) == 75  # floor
    assert per_shard_k(100, 1.0, shards=1, probability=0.9) == 100  # one shard holds it all
    assert per_shard_k(1, 0.001, shards=1000, probability=0.9999) == 1  # never zero
    assert per_shard_k(4096, 0.25, shards=4, probability=0.9999) < 4096 // 3  # large k: cheap
    # A lower probability never asks for more.
    ks = [per_shard_k(1000, 0.25, shards=4, probability=p) for p in (0.5, 0.9, 0.99, 0.9999)]
    assert ks == sorted(ks) and ks[0] >= 250
