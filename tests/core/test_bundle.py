"""Bundle format: content-derived id, partitioning, checksum verification, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from annfleet.bundle import Bundle, content_id
from annfleet.errors import BundleError, InvalidArgument
from annfleet.partition import shard_of
from annfleet.server.builder import build_bundle


def small(seed: int = 0, n: int = 3000, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=np.int64) * 10 + 3, rng.standard_normal((n, d)).astype(np.float32)


def test_identical_builds_have_one_id(tmp_path: Path) -> None:
    ids, vectors = small()
    a = build_bundle(
        tmp_path / "a",
        ids,
        vectors,
        num_shards=3,
        index_type="hnsw",
        index_params={"m": 8, "ef_construction": 40},
        progress=False,
    )
    b = build_bundle(
        tmp_path / "b",
        ids,
        vectors,
        num_shards=3,
        index_type="hnsw",
        index_params={"m": 8, "ef_construction": 40},
        progress=False,
    )
    c = build_bundle(
        tmp_path / "c",
        ids,
        vectors * 2,
        num_shards=3,
        index_type="hnsw",
        index_params={"m": 8, "ef_construction": 40},
        progress=False,
    )
    assert a.id == b.id
    assert a.id != c.id
    assert a.id == content_id(a.manifest)


def test_layout_and_partitioning(tmp_path: Path) -> None:
    ids, vectors = small()
    bundle = build_bundle(
        tmp_path / "b", ids, vectors, num_shards=4, index_type="flat", progress=False
    )
    seen = []
    for s in range(4):
        shard_ids = np.load(bundle.shard_dir(s) / "ids.npy", allow_pickle=False)
        shard_vectors = np.load(bundle.shard_dir(s) / "vectors.npy", allow_pickle=False)
        assert (shard_of(shard_ids, 4) == s).all()
        assert bundle.shard(s)["num_items"] == len(shard_ids)
        rows = np.searchsorted(ids, shard_ids)
        assert np.array_equal(shard_vectors, vectors[rows])
        seen.append(shard_ids)
    assert sorted(np.concatenate(seen).tolist()) == ids.tolist()
    assert set(bundle.manifest["files"]) >= {f"shard-0{s}/index.faiss" for s in range(4)}
    assert bundle.manifest["partitioning"] == {"scheme": "splitmix64-mod", "num_shards": 4}


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    ids, vectors = small()
    bundle = build_bundle(
        tmp_path / "b", ids, vectors, num_shards=2, index_type="flat", progress=False
    )
    Bundle.open(bundle.path)  # verifies
    target = bundle.shard_dir(1) / "index.faiss"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for shard-01/index.faiss"):
        Bundle.open(bundle.path)
    Bundle.open(bundle.path, only=["shard-00/"])  # the other shard is still fine


def test_missing_file_and_edited_manifest(tmp_path: Path) -> None:
    ids, vectors = small()
    bundle = build_bundle(
        tmp_path / "b", ids, vectors, num_shards=2, index_type="flat", progress=False
    )
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    (copy / "shard-00" / "ids.npy").unlink()
    with pytest.raises(BundleError, match=r"shard-00/ids\.npy is missing"):
        Bundle.open(copy)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["model"]["dim"] = 99
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="edited after the build"):
        Bundle.open(bundle.path)
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle.open(tmp_path / "nowhere")


def test_a_bundle_placed_by_another_scheme_is_refused(tmp_path: Path) -> None:
    ids, vectors = small()
    bundle = build_bundle(
        tmp_path / "b", ids, vectors, num_shards=2, index_type="flat", progress=False
    )
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["partitioning"]["scheme"] = "by-category"  # another builder's, consistently hashed
    manifest["bundle_id"] = content_id(manifest)
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="partitioning scheme 'by-category' is not supported"):
        Bundle.open(bundle.path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, v: (i, v[:, :0]), "non-empty 2-d"),
        (lambda i, v: (i[:-1], v), "to match vectors"),
        (lambda i, v: (np.zeros_like(i), v), "duplicates"),
        (lambda i, v: (i, np.where(np.arange(len(v))[:, None] == 5, np.nan, v)), "NaN or Inf"),
    ],
)
def test_bad_input_is_rejected(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    ids, vectors = change(*small())
    with pytest.raises(InvalidArgument, match=message):
        build_bundle(tmp_path / "b", ids, vectors, num_shards=2, progress=False)
    assert not (tmp_path / "b").exists()


def test_bad_index_params_and_existing_out(tmp_path: Path) -> None:
    ids, vectors = small()
    for index_type, params, message in [
        ("hnsw", {"nlist": 3}, "unknown hnsw index parameter"),
        ("hnsw", {"ef_search": 9}, "ef_search: search parameter"),
        (
            "ivfpq",
            {"pq_m": 5},
            r"pq_m=5 must divide dim 16 \(e.g. 1, 2, 4, 8, 16; pq_m 0 picks 8\)",
        ),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            build_bundle(
                tmp_path / "b",
                ids,
                vectors,
                num_shards=2,
                index_type=index_type,
                index_params=params,
                progress=False,
            )
    build_bundle(tmp_path / "b", ids, vectors, num_shards=2, index_type="flat", progress=False)
    with pytest.raises(InvalidArgument, match="exists"):
        build_bundle(tmp_path / "b", ids, vectors, num_shards=2, index_type="flat", progress=False)


def test_users_and_tables_round_trip(tmp_path: Path) -> None:
    ids, vectors = small()
    users = np.arange(5, dtype=np.int64)
    bundle = build_bundle(
        tmp_path / "b",
        ids,
        vectors,
        num_shards=2,
        index_type="flat",
        user_ids=users,
        user_vectors=vectors[:5],
        tables={"popular_ids": ids[:10], "item_titles": {"ids": [3], "titles": ["x"]}},
        progress=False,
    )
    got_ids, got_vectors = bundle.users()  # type: ignore[misc]
    assert got_ids.tolist() == users.tolist() and np.array_equal(got_vectors, vectors[:5])
    assert bundle.table("popular_ids").tolist() == ids[:10].tolist()
    assert bundle.table("item_titles") == {"ids": [3], "titles": ["x"]}
    assert bundle.table("nope") is None


@pytest.mark.parametrize(("dim", "pq_m"), [(50, 10), (64, 16), (32, 16), (16, 8), (17, 1), (2, 1)])
def test_auto_pq_m_is_the_largest_divisor_up_to_16_with_2_dims_each(dim: int, pq_m: int) -> None:
    from annfleet.server.index import auto_pq_m

    assert auto_pq_m(dim) == pq_m


def test_ivfpq_on_50_dims_builds_with_the_default_pq_m(tmp_path: Path) -> None:
    ids, vectors = small(n=2000, d=50)  # GloVe-like: 16 does not divide 50
    bundle = build_bundle(
        tmp_path / "b", ids, vectors, num_shards=2, index_type="ivfpq", progress=False
    )
    for s in range(2):
        assert bundle.shard(s)["index"]["params"]["pq_m"] == 10
        assert "PQ10x" in bundle.shard(s)["index"]["factory"]


def test_bundle_path_of_an_unknown_users_home_is_invalid_argument() -> None:
    """``~name/...`` of a user this machine does not know: a clear INVALID_ARGUMENT (found by
    the fuzz of ShardAdmin.Prepare), never an internal RuntimeError."""
    from annfleet.bundle import bundle_path

    with pytest.raises(InvalidArgument, match="no_such_user_annfleet"):
        bundle_path("~no_such_user_annfleet/bundles/v2")
    assert bundle_path("file:///b/v2") == Path("/b/v2")
