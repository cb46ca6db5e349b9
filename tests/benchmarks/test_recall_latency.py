"""The recall-latency harness end to end on a tiny dataset (real cluster, a few seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from annfleet.benchmarks.cli import main
from annfleet.benchmarks.groundtruth import recall_at_k
from annfleet.benchmarks.recall_latency import summarise

K = 10


def _exact_ids(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute force with numpy (no faiss): ids = row positions, inner product."""
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((60, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(tmp / "x.npy", vectors)
    np.save(tmp / "q.npy", queries)
    code = main(
        [
            "bench",
            "recall-latency",
            "--vectors",
            str(tmp / "x.npy"),
            "--query-vectors",
            str(tmp / "q.npy"),
            "--index",
            "hnsw",
            "--build",
            "m=8,ef_construction=40",
            "--ef",
            "10,40",
            "-k",
            str(K),
            "--shards",
            "2",
            "--peers",
            "none",
            "--out",
            str(tmp / "results"),
            "--name",
            "tiny",
            "--data-dir",
            str(tmp / "data"),
            "--save-ids",
            "--no-progress",
        ]
    )
    assert code == 0
    return tmp / "results" / "tiny", vectors, queries


def test_output_files_and_structure(run_dir: tuple[Path, np.ndarray, np.ndarray]) -> None:
    out, _, _ = run_dir
    for name in ("results.json", "results.csv", "recall_latency.png", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "recall_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "results.json").read_text())
    for key in (
        "command",
        "git_revision",
        "date",
        "machine",
        "dataset",
        "config",
        "rows",
        "summary",
    ):
        assert key in result, key
    assert result["machine"]["cores"] >= 1 and result["machine"]["memory_gib"] > 0
    series = {r["series"] for r in result["rows"]}
    assert series == {"faiss in-process", "scatter (2 shards)", "router (2 shards)"}
    assert len(result["rows"]) == 3 * 2  # three systems x two efSearch values
    for row in result["rows"]:
        assert 0.0 <= row["recall"] <= 1.0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["nq"] == 60 and row["k"] == K
    with (out / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(result["rows"])
    assert {"series", "params", "recall", "p50_ms", "p99_ms"} <= set(csv_rows[0])
    assert "P1_router_vs_scatter_p50" in result["summary"]
    assert "recall_latency.png" in (out / "README.md").read_text()


def test_recall_matches_exact_recomputation(
    run_dir: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    out, vectors, queries = run_dir
    result = json.loads((out / "results.json").read_text())
    truth = _exact_ids(vectors, queries, K)
    with np.load(out / "found_ids.npz", allow_pickle=False) as saved:
        for i, row in enumerate(result["rows"]):
            found = saved[str(i)]
            assert found.shape == (60, K)
            manual = np.mean(
                [len(set(f[f >= 0]) & set(t)) / K for f, t in zip(found, truth, strict=True)]
            )
            assert row["recall"] == pytest.approx(manual, abs=1e-12), row["series"]
    # Exact-enough search: in-process HNSW with ef=40 on 3000 items finds nearly everything.
    assert max(r["recall"] for r in result["rows"] if r["system"] == "faiss") > 0.8


def test_recall_at_k_and_summary_on_known_values() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 2, 9, -1], [8, 7, 6, 5]])
    assert recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 4 / 4) / 2)
    rows = [
        {
            "series": "faiss in-process",
            "system": "faiss",
            "shards": 1,
            "params": {"e": 1},
            "recall": 0.95,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
        },
        {
            "series": "router (2 shards)",
            "system": "router",
            "shards": 2,
            "params": {"e": 1},
            "recall": 0.96,
            "p50_ms": 1.2,
            "p99_ms": 3.0,
        },
        {
            "series": "scatter (2 shards)",
            "system": "scatter",
            "shards": 2,
            "params": {"e": 1},
            "recall": 0.96,
            "p50_ms": 1.0,
            "p99_ms": 2.5,
        },
    ]
    s = summarise(rows, 4)
    assert s["P1_router_vs_scatter_p50"]["max"] == pytest.approx(1.2)
    p3 = s["P3_cluster_vs_inprocess_p50"]["router (2 shards)"]
    assert p3["ratios"]["0.95"] == pytest.approx(1.2)
    assert p3["ratios"]["0.97"] is None and not p3["met"]


def test_load_generator_against_the_tiny_cluster(
    run_dir: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    from annfleet.benchmarks.load import LoadSpec, run_load
    from annfleet.benchmarks.recall_latency import local_cluster

    out, _, queries = run_dir
    bundle = next(
        p
        for p in (out.parent.parent / "data" / "bundles").iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    with local_cluster(bundle) as cluster:
        spec = LoadSpec(
            target=cluster.router_target,
            rpc="search",
            mode="open",
            qps=200,
            concurrency=8,
            duration=0.5,
            warmup=0.2,
            processes=1,
            k=K,
            nice=3,  # --generator-nice: the load process lowers its priority, and runs
        )
        result = run_load(spec, queries, None, dict(cluster.pids))
    # Performance is not asserted: on a busy box the open loop may fall behind its schedule,
    # and the router's adaptive admission may shed what it cannot serve in time.
    assert result["ok"] > 0
    assert set(result["errors"]) <= {"CLIENT_BACKLOG", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"]
    assert set(cluster.pids) <= set(result["cpu"]) and "client-0" in result["cpu"]
    with pytest.raises(ValueError, match="loopback"):
        run_load(LoadSpec(target="10.0.0.1:1"), queries)


def test_unknown_peer_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "recall-latency", "--peers", "milvus-lite,nope", "--no-progress"]) == 2
    assert "unknown peer 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recall-latency", "--items", "0"], "argument --items: 0: must be >= 1"),
        (["recall-latency", "--ef", "100,0"], "argument --ef: 0: must be >= 1"),
        (["load", "--qps", "-5"], "argument --qps: -5.0: must be > 0"),
        (["load", "--duration", "nan"], "argument --duration: nan: must be > 0"),
        (["faults", "--replicas", "1"], "argument --replicas: 1: must be >= 2"),
        (["load", "--generator-nice", "20"], "argument --generator-nice: invalid choice: 20"),
        (["scale", "--load-recall", "1.5"], "a recall must be in (0, 1]"),
        (["fuzz", "--per-service", "0"], "argument --per-service: 0: must be >= 1"),
        # list and NAME=VALUE flags: was "invalid _kv value", or an empty list that ran
        (["recall-latency", "--ef", "100,x"], "argument --ef: '100,x': expected comma-separated"),
        (["recall-latency", "--shards", ""], "argument --shards: '': expected comma-separated"),
        (["scale", "--rates", "5,fast"], "argument --rates: '5,fast': expected comma-separated"),
        (["scale", "--build", "nlist=x"], "argument --build: 'nlist=x': expected NAME=INTEGER"),
    ],
)
def test_numeric_flags_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Before: `--items 0` died in an IndexError traceback after building nothing."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
