"""User mistakes on the command line: a precise message, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cli import run


def _fails_clearly(done: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_query_with_a_bad_recent_list_is_a_usage_error() -> None:
    done = run("query", "--user", "1", "--recent", "50,x", "--target", "127.0.0.1:1")
    _fails_clearly(done, "argument --recent: '50,x': expected comma-separated integer item ids")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--m", "1"], "hnsw index parameter m must be an integer >= 2, got 1"),
        (["--ef-construction", "0"], "ef_construction must be an integer >= 1, got 0"),
        (["--index", "ivfpq", "--nlist", "0"], "ivfpq index parameter nlist must be"),
        (["--index", "ivfpq", "--nbits", "0"], "ivfpq index parameter nbits must be"),
        (["--index", "ivfpq", "--pq-m", "-2"], "pq_m must be an integer >= 0 (0 = auto)"),
    ],
)
def test_build_bundle_refuses_index_parameters_faiss_cannot_take(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((200, 8), dtype=np.float32))
    out = tmp_path / "b"
    done = run(
        "build-bundle", "--vectors", str(tmp_path / "x.npy"), "--shards", "2", "--out", str(out),
        *flags,
    )  # fmt: skip
    _fails_clearly(done, message)  # before: hnsw m=1 killed the process (faiss SIGSEGV)
    assert not out.exists()
