"""Bundle builds split across machines (`build-bundle --only-shard I` per shard, then
`--finalize`): the same bundle and bundle_id as a one-machine build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annfleet.bundle import MANIFEST, Bundle
from annfleet.errors import InvalidArgument
from annfleet.server.builder import build_bundle, build_shard_part, finalize_bundle, parts_dir

ANNFLEET = [sys.executable, "-m", "annfleet.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ANNFLEET, *args], capture_output=True, text=True, timeout=300)


def inputs(tmp_path: Path, n: int = 3000, dim: int = 16) -> list[str]:
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal((n, dim)).astype(np.float32))
    np.save(tmp_path / "ids.npy", rng.permutation(10 * n)[:n].astype(np.int64))
    np.save(tmp_path / "u.npy", rng.standard_normal((20, dim)).astype(np.float32))
    np.save(tmp_path / "uid.npy", np.arange(20, dtype=np.int64))
    return [
        "--vectors", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.npy"),
        "--user-vectors", str(tmp_path / "u.npy"), "--user-ids", str(tmp_path / "uid.npy"),
    ]  # fmt: skip


def manifest(path: Path) -> dict[str, object]:
    data = json.loads((path / MANIFEST).read_text())
    data.pop("created")
    return data


@pytest.mark.parametrize(
    "index", [["--index", "hnsw", "--m", "8"], ["--index", "ivfpq", "--nlist", "16", "--pq-m", "4"]]
)
def test_split_build_gives_the_same_bundle_as_one_machine(tmp_path: Path, index: list[str]) -> None:
    args = [*inputs(tmp_path), "--shards", "3", *index]
    whole = cli("build-bundle", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    split = tmp_path / "split"
    for shard in (2, 0, 1):  # any order, as the pods of an Indexed Job finish
        done = cli("build-bundle", *args, "--out", str(split), "--only-shard", str(shard))
        assert done.returncode == 0, done.stderr
        assert not split.exists()  # nothing is a bundle until finalize
    done = cli("build-bundle", *args, "--out", str(split), "--finalize")
    assert done.returncode == 0, done.stderr
    a, b = Bundle.open(tmp_path / "whole"), Bundle.open(split)  # verifies every sha256
    assert a.id == b.id
    assert manifest(a.path) == manifest(b.path)
    for rel in a.manifest["files"]:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    assert not parts_dir(split).exists()
    assert b.id in done.stdout


def test_finalize_waits_for_missing_shards_and_names_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids, vectors = np.arange(900, dtype=np.int64), rng.standard_normal((900, 8)).astype(np.float32)
    out = tmp_path / "b"
    kw = {"num_shards": 3, "index_type": "flat"}
    build_shard_part(out, ids, vectors, shard_id=1, **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="shard-00, shard-02"):
        finalize_bundle(out, ids, vectors, wait_s=0.2, poll_s=0.05, **kw)  # type: ignore[arg-type]
    assert not out.exists()
    # a part built from other inputs is refused, not mixed in
    build_shard_part(out, ids + 1, vectors, shard_id=0, **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="other inputs"):
        finalize_bundle(out, ids, vectors, **kw)  # type: ignore[arg-type]
    for shard in (0, 2):
        build_shard_part(out, ids, vectors, shard_id=shard, **kw)  # type: ignore[arg-type]
    bundle = finalize_bundle(out, ids, vectors, **kw)  # type: ignore[arg-type]
    reference = build_bundle(tmp_path / "ref", ids, vectors, progress=False, **kw)  # type: ignore[arg-type]
    assert bundle.id == reference.id


def test_only_shard_reads_a_memory_mapped_matrix(tmp_path: Path) -> None:
    args = [*inputs(tmp_path, n=1200), "--shards", "2", "--index", "flat"]
    done = cli("build-bundle", *args, "--out", str(tmp_path / "b"), "--only-shard", "5")
    assert done.returncode == 2
    assert "shard 5 out of range for 2 shards" in done.stderr
    done = cli(
        "build-bundle", *args, "--out", str(tmp_path / "b"), "--only-shard", "0", "--finalize"
    )
    assert done.returncode != 0 and "separate steps" in done.stderr
