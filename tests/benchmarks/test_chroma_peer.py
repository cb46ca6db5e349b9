"""The Chroma server peer on a tiny dataset: a real `chroma run` process, recall vs exact.

Skips when chromadb (the `bench-peers` extra) is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "chromadb", reason="chromadb not installed (pip install 'annfleet[bench-peers]')"
)

from annfleet.benchmarks.cli import main
from annfleet.benchmarks.systems import ChromaPeer, make_peer

pytestmark = pytest.mark.slow

K = 10
# A deliberately sparse graph (M=4, efConstruction=8), so efSearch visibly changes recall.
BUILD = {"m": 4, "ef_construction": 8}
EF_LOW, EF_HIGH = K, 500


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean overlap of the found ids (-1 = none) with the exact top k, per query."""
    hits = [len(set(f[f >= 0]) & set(t)) / K for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, queries, exact top-k ids): ids are not row positions."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((60, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 7
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]]
    return ids, vectors, queries, truth


def test_chroma_keeps_the_build_params_and_search_ef_changes_recall(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ids, vectors, queries, truth = data
    peer, why = make_peer("chroma", ids, vectors, "ip", BUILD, progress=False)
    assert peer is not None, why
    assert isinstance(peer, ChromaPeer)
    try:
        stored = peer.stored_config()
        assert stored["space"] == "ip"
        assert stored["max_neighbors"] == BUILD["m"]
        assert stored["ef_construction"] == BUILD["ef_construction"]
        recall = {}
        for ef in (EF_LOW, EF_HIGH):
            found = np.stack([peer.search(q, K, {"ef_search": ef}) for q in queries])
            assert peer.stored_config()["ef_search"] == ef == peer.ef_search
            recall[ef] = _recall(found, truth)
        assert peer.server.restarts >= 1  # the loaded index only takes a new ef on reload
        assert recall[EF_HIGH] >= 0.95, recall
        # ef_search really reaches the index: the sparse graph loses recall at ef = k.
        assert recall[EF_LOW] <= recall[EF_HIGH] - 0.2, recall
    finally:
        peer.close()
    assert peer.server.proc is not None and peer.server.proc.poll() is not None


def test_harness_runs_chroma_against_the_same_ground_truth(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ids, vectors, queries, truth = data
    np.save(tmp_path / "x.npy", vectors)
    np.save(tmp_path / "q.npy", queries)
    np.save(tmp_path / "ids.npy", ids)
    code = main(_harness_args(tmp_path, "chroma", f"{EF_LOW},{EF_HIGH}", throughput=True))
    assert code == 0
    out = tmp_path / "results" / "chroma"
    result = json.loads((out / "results.json").read_text())
    assert not [n for n in result["notes"] if n.startswith("skipped")], result["notes"]
    rows = {(r["series"], r["params"]["ef_search"]): (i, r) for i, r in enumerate(result["rows"])}
    assert {s for s, _ in rows} == {"faiss in-process", "chroma (peer)"}
    with np.load(out / "found_ids.npz", allow_pickle=False) as saved:
        for (series, _), (i, row) in rows.items():
            assert row["recall"] == pytest.approx(_recall(saved[str(i)], truth), abs=1e-12), series
    assert rows[("chroma (peer)", EF_HIGH)][1]["recall"] >= 0.95
    tp = result["peer_throughput"]["chroma"]
    assert tp["params"] == {"ef_search": EF_HIGH} and not tp["below_recall_target"]
    assert tp["ok"] > 0 and tp["errors"] == {}
    assert 0 < tp["p50_ms"] <= tp["p99_ms"]
    assert "chroma-server" in tp["cpu"] and "client" in tp["cpu"]
    readme = (out / "README.md").read_text()
    assert "Closed-loop QPS of the server peers" in readme and "chroma (peer)" in readme

    # The built collection was kept under the data dir: a second run serves a copy of it
    # (no insert) and finds the same ids.
    (cache,) = (tmp_path / "data" / "peers").iterdir()
    assert (cache / "complete").is_file()
    assert main(_harness_args(tmp_path, "again", str(EF_HIGH), throughput=False)) == 0
    again = json.loads((tmp_path / "results" / "again" / "results.json").read_text())
    assert any(n.startswith("chroma: served from a copy") for n in again["notes"]), again["notes"]
    before = {(r["series"], r["params"]["ef_search"]): r["recall"] for r in result["rows"]}
    after = {(r["series"], r["params"]["ef_search"]): r["recall"] for r in again["rows"]}
    assert after == {key: before[key] for key in after} and len(after) == 2
    with (
        np.load(out / "found_ids.npz", allow_pickle=False) as first,
        np.load(tmp_path / "results" / "again" / "found_ids.npz", allow_pickle=False) as second,
    ):
        (i,) = [i for i, (key, _) in enumerate(before.items()) if key == ("chroma (peer)", EF_HIGH)]
        (j,) = [j for j, key in enumerate(after) if key == ("chroma (peer)", EF_HIGH)]
        assert np.array_equal(first[str(i)], second[str(j)])


def _harness_args(tmp_path: Path, name: str, efs: str, *, throughput: bool) -> list[str]:
    return [
        "bench",
        "recall-latency",
        "--vectors",
        str(tmp_path / "x.npy"),
        "--query-vectors",
        str(tmp_path / "q.npy"),
        "--ids",
        str(tmp_path / "ids.npy"),
        "--build",
        f"m={BUILD['m']},ef_construction={BUILD['ef_construction']}",
        "--ef",
        efs,
        "-k",
        str(K),
        "--systems",
        "faiss",
        "--peers",
        "chroma",
        *(["--throughput", "--throughput-seconds", "1"] if throughput else []),
        "--out",
        str(tmp_path / "results"),
        "--name",
        name,
        "--data-dir",
        str(tmp_path / "data"),
        "--save-ids",
        "--no-progress",
    ]
