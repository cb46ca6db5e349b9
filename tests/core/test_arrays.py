from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from annfleet.arrays import F32, check_k, decode_ids, decode_matrix, to_bytes
from annfleet.errors import InvalidArgument


def test_round_trip() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(decode_matrix(to_bytes(x, F32), 4), x)


@pytest.mark.parametrize(
    ("data", "dim", "message"),
    [
        (b"", 4, "empty"),
        (b"\x00" * 15, 4, "not a whole number of rows"),
        (np.array([np.nan, 0, 0, 0], np.float32).tobytes(), 4, "row 0 contains NaN"),
        (np.array([0, 0, 0, 0, np.inf, 0, 0, 0], np.float32).tobytes(), 4, "row 1 contains"),
        (b"\x00" * 16, 0, "dim must be > 0"),
    ],
)
def test_bad_matrices(data: bytes, dim: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_matrix(data, dim)


def test_batch_limit_and_ids() -> None:
    with pytest.raises(InvalidArgument, match="exceeds max_batch 2"):
        decode_matrix(np.zeros((3, 2), np.float32).tobytes(), 2, max_rows=2)
    with pytest.raises(InvalidArgument, match="int64"):
        decode_ids(b"\x00" * 7)
    assert decode_ids(b"").size == 0


@given(st.integers(-5, 10))
def test_check_k(k: int) -> None:
    if 1 <= k <= 5:
        assert check_k(k, 5) == k
    else:
        with pytest.raises(InvalidArgument, match="k"):
            check_k(k, 5)


def test_load_npy_from_many_threads_at_once(tmp_path: Path) -> None:
    """Loads in parallel (CPython 3.11's AST constructor, which parses .npy headers, fails
    under concurrent use): every thread gets the array; mmap'd loads are read-only."""
    from concurrent.futures import ThreadPoolExecutor

    from annfleet.arrays import load_npy

    arrays = [np.arange(i, i + 50, dtype=np.float32).reshape(5, 10) for i in range(16)]
    for i, a in enumerate(arrays):
        np.save(tmp_path / f"{i}.npy", a)
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda i: load_npy(tmp_path / f"{i % 16}.npy"), range(400)))
    for i, a in enumerate(loaded):
        np.testing.assert_array_equal(a, arrays[i % 16])
        assert a.flags.writeable
    mapped = load_npy(tmp_path / "0.npy", mmap_mode="r")
    np.testing.assert_array_equal(mapped, arrays[0])
    assert not mapped.flags.writeable
