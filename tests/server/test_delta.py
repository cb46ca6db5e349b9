"""Live updates of one bundle shard (server/delta.py) on real faiss indexes, against a
brute-force reference over the live set."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annfleet.bundle import Bundle
from annfleet.errors import BundleError, InvalidArgument, NotFound, ResourceExhausted
from annfleet.partition import shard_of
from annfleet.server.delta import LOG_NAME, Delta, UpdateLog, updates_dir
from annfleet.server.holdings import load_shard
from annfleet.server.index import ExactPacing, ShardIndex, set_threads

SHARD = 0
set_threads(1)  # as in the shard's executor threads; OpenMP spinning on a shared machine is slow


def fresh_ids(bundle: Bundle, n: int, start: int = 10_000_000) -> np.ndarray:
    """n ids that shard SHARD owns and the bundle does not have."""
    candidates = np.arange(start, start + 20 * n, dtype=np.int64)
    return candidates[shard_of(candidates, bundle.num_shards) == SHARD][:n]


@functools.cache
def loaded(path: Path) -> ShardIndex:
    return load_shard(path, SHARD)[1]


def make_delta(
    bundle: Bundle, log_dir: Path | None = None, max_items: int = 1000, compact_records: int = 0
) -> Delta:
    base = loaded(bundle.path)  # one faiss index; each ShardIndex gets its own hidden mask
    index = ShardIndex(base.index, base.ids, base.vectors, base.metric, base.spec)
    log = None
    if log_dir is not None:
        header = {"bundle_id": bundle.id, "shard_id": SHARD, "num_shards": 3, "dim": 32}
        log = UpdateLog(log_dir, header)
    delta = Delta(
        index,
        shard_id=SHARD,
        num_shards=3,
        log=log,
        max_items=max_items,
        compact_records=compact_records,
    )
    delta.replay()
    return delta


def live_set(delta: Delta) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every searchable item, from the bundle files and the delta rows."""
    index: ShardIndex = delta.index
    keep = ~index.hidden.contains(np.arange(len(index.ids)))
    rows = delta.rows
    ids = np.concatenate([index.ids[keep], rows.ids[: rows.n]])
    vectors = np.concatenate([np.asarray(index.vectors)[keep], rows.vectors[: rows.n]])
    return ids, vectors


def reference(delta: Delta, queries: np.ndarray, k: int) -> np.ndarray:
    ids, vectors = live_set(delta)
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return ids[order]


def test_upsert_is_searchable_and_replaces_the_bundle_copy(flat_bundle: Bundle) -> None:
    delta = make_delta(flat_bundle)
    index = delta.index
    new = fresh_ids(flat_bundle, 2)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 32)).astype(np.float32) * 10  # far ahead of everything
    assert delta.upsert(new, vectors) == (2, 0)
    ids, _ = delta.search(vectors, 3)
    assert ids[0, 0] == new[0] and ids[1, 0] == new[1]

    old_id, old_vector = index.ids[5], np.asarray(index.vectors[5:6])
    moved = -10 * old_vector  # far from where it was
    assert delta.upsert(np.array([old_id]), moved) == (0, 1)
    ids, _ = delta.search(moved, 5)
    assert ids[0, 0] == old_id and np.count_nonzero(ids == old_id) == 1
    ids, _ = delta.search(old_vector, 5)
    assert old_id not in ids[0]  # its old vector is gone with the bundle copy
    assert (delta.upserted, delta.deleted, delta.num_items) == (3, 0, len(index.ids) + 2)

    # Upserting an upserted id again replaces its row.
    again = rng.standard_normal((1, 32)).astype(np.float32) * 10
    assert delta.upsert(new[:1], again) == (0, 1)
    assert delta.search(again, 1)[0][0, 0] == new[0] and delta.upserted == 3


def test_paced_exact_search_over_the_bundle_and_the_upserted_rows(flat_bundle: Bundle) -> None:
    """shards.exact_chunk_items / exact_duty reach both scans of an exact search: the bundle's
    vectors and the upserted rows (more of them than a chunk), with the one-call hits."""
    delta = make_delta(flat_bundle)
    rng = np.random.default_rng(3)
    new = fresh_ids(flat_bundle, 40)
    delta.upsert(new, rng.standard_normal((40, 32)).astype(np.float32) * 3)
    delta.delete(delta.index.ids[:30])
    queries = rng.standard_normal((2, 32)).astype(np.float32) * 3
    whole = delta.exact(queries, 60)
    paced = delta.exact(queries, 60, pacing=ExactPacing(chunk=13, duty=0.8))
    # Same ids; scores to float32 rounding (BLAS may sum a chunk's dot products in another
    # order than the whole matrix's: it picks kernels by shape, e.g. on AVX-512 machines).
    assert np.array_equal(paced[0], whole[0])
    np.testing.assert_allclose(paced[1], whole[1], rtol=1e-6, atol=1e-6)
    assert np.isin(new, paced[0]).any()  # the upserted rows took part
    assert np.array_equal(paced[0], reference(delta, queries, 60))


def test_deleted_items_never_come_back(flat_bundle: Bundle) -> None:
    delta = make_delta(flat_bundle)
    index = delta.index
    victims = index.ids[:50]
    own_vectors = np.asarray(index.vectors[:50])
    assert delta.delete(victims) == (50, 0)
    ids, _ = delta.search(own_vectors, 100)
    assert not np.isin(ids, victims).any()
    exact_ids, _ = delta.exact(own_vectors, 100)
    assert not np.isin(exact_ids, victims).any()
    assert delta.deleted == 50 and delta.num_items == len(index.ids) - 50

    with pytest.raises(NotFound, match=r"already deleted\): \[" + str(victims[0])):
        delta.delete(victims[:1])
    assert delta.delete(np.concatenate([victims[:1], index.ids[60:61]]), missing_ok=True) == (
        1,
        1,
    )

    # An upserted item can be deleted too, and a deleted bundle id can come back by upsert.
    new = fresh_ids(flat_bundle, 1)
    vec = np.full((1, 32), 3.0, np.float32)
    delta.upsert(new, vec)
    delta.delete(new)
    assert new[0] not in delta.search(vec, 10)[0]
    assert delta.upsert(victims[:1], vec) == (1, 0)
    assert delta.search(vec, 1)[0][0, 0] == victims[0]
    assert delta.deleted == 50  # 51 deleted, one of them back


FOREIGN = next(i for i in range(10**6, 10**7) if shard_of(np.array([i]), 3)[0] != SHARD)


@pytest.mark.parametrize(
    ("pick", "vectors", "message"),
    [
        (lambda new: np.array([-1]), np.ones((1, 32)), "-1 is reserved"),
        (lambda new: new[[0, 0]], np.ones((2, 32)), "duplicates"),
        (lambda new: np.array([FOREIGN]), np.ones((1, 32)), "belong to other shards"),
        (lambda new: new[:1], np.ones((1, 16)), r"expected \(n, 32\)"),
        (lambda new: new[:1], np.full((1, 32), np.nan), "NaN or Inf"),
        (lambda new: new, np.ones((1, 32)), "2 ids but 1 vectors"),
    ],
)
def test_bad_upserts_change_nothing(
    flat_bundle: Bundle, pick: Callable[[np.ndarray], np.ndarray], vectors: np.ndarray, message: str
) -> None:
    delta = make_delta(flat_bundle)
    with pytest.raises(InvalidArgument, match=message):
        delta.upsert(pick(fresh_ids(flat_bundle, 2)), vectors.astype(np.float32))
    assert delta.upserted == 0 and delta.index.hidden.count == 0


def test_capacity_is_bounded(flat_bundle: Bundle) -> None:
    delta = make_delta(flat_bundle, max_items=3)
    new = fresh_ids(flat_bundle, 4)
    delta.upsert(new[:3], np.ones((3, 32), np.float32))
    with pytest.raises(ResourceExhausted, match="max_delta_items 3"):
        delta.upsert(new[3:], np.ones((1, 32), np.float32))
    delta.upsert(new[:1], np.zeros((1, 32), np.float32))  # a replacement needs no room


def test_log_replays_and_survives_a_torn_record(flat_bundle: Bundle, tmp_path: Path) -> None:
    log_dir = updates_dir(tmp_path, flat_bundle.id, SHARD, 0)
    delta = make_delta(flat_bundle, log_dir)
    new = fresh_ids(flat_bundle, 3)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3, 32)).astype(np.float32)
    delta.upsert(new, vectors)
    delta.delete(np.concatenate([delta.index.ids[:4], new[:1]]))
    delta.upsert(delta.index.ids[10:11], vectors[2:3] * 2)
    queries = rng.standard_normal((5, 32)).astype(np.float32)
    before = delta.search(queries, 20)

    # A crash in the middle of writing a record leaves a torn last line: dropped.
    with (log_dir / LOG_NAME).open("ab") as f:
        f.write(b'{"seq": 4, "op": "del')
    again = make_delta(flat_bundle, log_dir)
    assert again.log is not None and again.log.records == 3
    assert np.array_equal(again.search(queries, 20)[0], before[0])
    assert (again.upserted, again.deleted) == (delta.upserted, delta.deleted)
    assert (log_dir / LOG_NAME).read_bytes().endswith(b"\n")
    again.delete(new[1:2])  # appends after the dropped record
    assert make_delta(flat_bundle, log_dir).upserted == delta.upserted - 1

    # Nothing in the log is unpickled: a segment that is not a plain .npy is refused.
    lines = (log_dir / LOG_NAME).read_text().splitlines()
    segment = json.loads(lines[1])["ids"]
    np.save(log_dir / segment, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match=f"cannot read segment {segment}"):
        make_delta(flat_bundle, log_dir)


def test_log_is_compacted_and_replays_to_the_same_state(
    flat_bundle: Bundle, tmp_path: Path
) -> None:
    """Many small updates: the log is rewritten as a snapshot (old segments gone, a few
    records left), and a shard that loads it again serves exactly what it served before,
    deletes of ids the bundle never had included (what a rollout carries over)."""
    log_dir = tmp_path / "log"
    delta = make_delta(flat_bundle, log_dir, compact_records=10)
    assert delta.log is not None
    rng = np.random.default_rng(7)
    new = fresh_ids(flat_bundle, 6)
    bundle_ids = delta.index.ids
    for round_ in range(12):  # the same few items updated again and again
        delta.upsert(new[:4], rng.standard_normal((4, 32)).astype(np.float32))
        delta.upsert(bundle_ids[:2], rng.standard_normal((2, 32)).astype(np.float32))
        if round_ % 3 == 0:
            delta.upsert(new[4:], rng.standard_normal((2, 32)).astype(np.float32))
            delta.delete(new[4:5])  # an id the bundle never had: forgotten, not lost
            delta.delete(bundle_ids[2 + round_ : 3 + round_])
    assert delta.log.generation >= 1
    assert delta.log.records < 10 + 3
    referenced = {
        json.loads(line)[key]
        for line in (log_dir / LOG_NAME).read_text().splitlines()[1:]
        for key in ("ids", "vectors")
        if key in json.loads(line)
    }
    assert {p.name for p in log_dir.glob("*.npy")} == referenced  # old segments removed

    queries = rng.standard_normal((6, 32)).astype(np.float32)
    again = make_delta(flat_bundle, log_dir, compact_records=10)
    assert np.array_equal(again.search(queries, 30)[0], delta.search(queries, 30)[0])
    assert np.array_equal(again.exact(queries, 30)[0], delta.exact(queries, 30)[0])
    assert [a.tolist() for a in again.updates()] == [a.tolist() for a in delta.updates()]
    assert int(new[4]) in again.updates()[1].tolist()
    assert (again.upserted, again.deleted) == (delta.upserted, delta.deleted)
    # it keeps appending after a compaction, and a torn record is still dropped
    again.delete(new[:1])
    with (log_dir / LOG_NAME).open("ab") as f:
        f.write(b'{"seq": 99, "op": "del')
    third = make_delta(flat_bundle, log_dir)
    assert not third.has(new[:1]).any() and third.upserted == delta.upserted - 1


def test_compaction_waits_until_the_log_outweighs_its_snapshot(
    flat_bundle: Bundle, tmp_path: Path
) -> None:
    """Each update a new item: the snapshot is as big as the log, so nothing is rewritten."""
    delta = make_delta(flat_bundle, tmp_path / "log", compact_records=4)
    assert delta.log is not None
    for item in fresh_ids(flat_bundle, 8):
        delta.upsert(np.array([item]), np.ones((1, 32), np.float32))
    assert (delta.log.generation, delta.log.records) == (0, 8)


def test_log_of_another_bundle_is_refused(flat_bundle: Bundle, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    delta = make_delta(flat_bundle, log_dir)
    delta.delete(delta.index.ids[:1])
    header = {"bundle_id": "bother", "shard_id": SHARD, "num_shards": 3, "dim": 32}
    with pytest.raises(BundleError, match="update log of bundle_id 'b"):
        list(UpdateLog(log_dir, header).replay())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete"]),
            st.lists(st.integers(0, 59), min_size=1, max_size=8, unique=True),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_search_and_exact_match_a_reference_after_any_updates(
    hnsw_bundle: Bundle, ops: list[tuple[str, list[int]]]
) -> None:
    """Any mix of upserts and deletes over bundle and new ids: exact() equals brute force over
    the live set, and search() never returns an id twice or a deleted one."""
    delta = make_delta(hnsw_bundle)
    pool = np.concatenate([delta.index.ids[:30], fresh_ids(hnsw_bundle, 30)])
    rng = np.random.default_rng(len(ops))
    deleted: set[int] = set()
    for op, picks in ops:
        ids = pool[picks]
        if op == "upsert":
            delta.upsert(ids, rng.standard_normal((len(ids), 32)).astype(np.float32))
            deleted -= set(ids.tolist())
        else:
            delta.delete(ids, missing_ok=True)
            deleted |= set(ids.tolist())
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    exact_ids, _ = delta.exact(queries, 25)
    assert np.array_equal(exact_ids, reference(delta, queries, 25))
    ids, _ = delta.search(queries, 25)
    for row in ids:
        hits = row[row >= 0]
        assert len(set(hits.tolist())) == len(hits)
        assert not set(hits.tolist()) & deleted


def test_updates_lists_what_a_rollout_carries(flat_bundle: Bundle, tmp_path: Path) -> None:
    delta = make_delta(flat_bundle, tmp_path / "log")
    bundle_ids = delta.index.ids
    new = fresh_ids(flat_bundle, 3)
    vectors = np.ones((3, delta.index.dim), np.float32)
    delta.upsert(np.concatenate([new, bundle_ids[:1]]), np.ones((4, delta.index.dim), np.float32))
    delta.delete(np.concatenate([bundle_ids[1:3], new[:1]]))  # two bundle items, one new id
    upserted, deleted = delta.updates()
    assert upserted.tolist() == sorted([*new[1:].tolist(), int(bundle_ids[0])])
    # a replaced bundle item is upserted, not deleted; a deleted upsert-only id is deleted
    assert deleted.tolist() == sorted([*bundle_ids[1:3].tolist(), int(new[0])])
    delta.upsert(new[:1], vectors[:1])  # back again: no longer deleted
    assert int(new[0]) not in delta.updates()[1].tolist()
    assert delta.has(np.array([new[0], bundle_ids[1], bundle_ids[5]])).tolist() == [
        True,
        False,
        True,
    ]
    # the log replays to the same lists
    replayed = make_delta(flat_bundle, tmp_path / "log")  # replays the log
    assert [a.tolist() for a in replayed.updates()] == [a.tolist() for a in delta.updates()]
