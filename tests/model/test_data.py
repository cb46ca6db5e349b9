"""Loader and splits on the real MovieLens-100k files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from annfleet.model.data import (
    MovieLens,
    age_bucket,
    fine_year_bucket,
    global_split,
    load_movielens,
    make_split,
    per_user_split,
    recbole_data_dir,
)
from annfleet.model.features import build_queries, recent_before


def test_loader_counts(movielens: MovieLens) -> None:
    assert movielens.num_interactions == 100_000
    assert movielens.num_users == 943
    assert movielens.num_items == 1_682
    assert movielens.inter_user.min() >= 1 and movielens.inter_item.min() >= 1
    assert movielens.item_title.shape == (1_683, 8)
    assert movielens.user_feats.shape == (944, 4)
    assert (movielens.user_feats[0] == 0).all()
    assert movielens.titles[0] == "Toy Story"


def test_loader_accepts_a_directory(tmp_path: Path) -> None:
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        shutil.copy(recbole_data_dir() / name, tmp_path / name)
    data = load_movielens(tmp_path)
    assert data.num_interactions == 100_000
    assert data.root == tmp_path


def test_sorted_by_user_time_row(movielens: MovieLens) -> None:
    key = np.stack([movielens.inter_user, movielens.inter_ts, movielens.inter_row], axis=1)
    diffs = np.diff(key, axis=0)
    # lexicographic non-decrease
    first_nonzero = np.argmax(diffs != 0, axis=1)
    assert (diffs[np.arange(len(diffs)), first_nonzero] >= 0).all()


def test_per_user_split_sizes_and_no_leakage(movielens: MovieLens) -> None:
    split = per_user_split(movielens)
    assert not (split.train & split.test).any()
    assert (split.train | split.test).all()
    for u in range(1, movielens.num_users + 1):
        rows = movielens.inter_user == u
        n = int(rows.sum())
        tr, te = rows & split.train, rows & split.test
        assert te.sum() == max(1, n // 10)
        # every test interaction is later than the user's train ones: (time, file row) order
        last_train = (
            movielens.inter_ts[tr].max(),
            movielens.inter_row[tr & (movielens.inter_ts == movielens.inter_ts[tr].max())].max(),
        )
        for ts, row in zip(movielens.inter_ts[te], movielens.inter_row[te], strict=True):
            assert (ts, row) > last_train or ts > last_train[0]
            assert ts >= last_train[0]


def test_global_split(movielens: MovieLens) -> None:
    split = global_split(movielens)
    assert movielens.inter_ts[split.train].max() < movielens.inter_ts[split.test].min()
    assert abs(split.test.mean() - 0.1) < 0.01


def test_validation_split_is_inside_train(movielens: MovieLens) -> None:
    full = make_split(movielens, "per_user")
    val = make_split(movielens, "per_user", validation=True)
    assert not (val.test & full.test).any() and not (val.train & full.test).any()
    assert ((val.train | val.test) == full.train).all()


def test_recent_items_strictly_earlier(movielens: MovieLens) -> None:
    split = per_user_split(movielens)
    recent, last_ts = recent_before(movielens, split.train, 5)
    idx = np.flatnonzero(split.train)
    # user 1's first five train interactions, in (time, row) order
    first = idx[movielens.inter_user[idx] == movielens.inter_user[idx[0]]][:5]
    items = movielens.inter_item[first]
    assert (recent[0] == 0).all() and last_ts[0] == -1
    assert list(recent[1]) == [0, 0, 0, 0, items[0]]
    assert list(recent[4]) == [0, *items[:4]]
    assert last_ts[4] == movielens.inter_ts[first[3]]


def test_queries_context_is_train_only(movielens: MovieLens) -> None:
    split = per_user_split(movielens)
    q = build_queries(movielens, split)
    assert len(q) == 943
    for i in range(0, len(q), 97):
        seen = set(q.seen_of(i).tolist())
        assert seen.isdisjoint(q.targets_of(i).tolist())
        assert set(q.recent[i][q.recent[i] > 0].tolist()) <= seen


def test_age_bucket() -> None:
    assert [age_bucket(a) for a in (0, 7, 18, 24, 25, 49, 56, 73)] == [0, 1, 2, 2, 3, 5, 7, 7]


def test_fine_year_bucket() -> None:
    years = np.array([0, 1950, 1989, 1990, 1995, 1998, 2000, 2010])
    assert fine_year_bucket(years).tolist() == [0, 1, 1, 2, 7, 10, 12, 12]


def test_release_years_loaded(movielens: MovieLens) -> None:
    assert movielens.item_release_year[0] == 0  # padding row
    assert movielens.item_release_year[1] == 1995  # Toy Story
    assert movielens.item_release_year.max() == 1998
