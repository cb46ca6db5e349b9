from __future__ import annotations

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
