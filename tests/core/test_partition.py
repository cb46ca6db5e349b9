from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from annfleet.partition import shard_of, splitmix64


def test_known_values_are_stable() -> None:
    # splitmix64 finaliser of 0 and 1 (reference values of the published algorithm).
    assert splitmix64(np.array([0], dtype=np.int64))[0] == np.uint64(0xE220A8397B1DCDAF)
    assert splitmix64(np.array([1], dtype=np.int64))[0] == np.uint64(0x910A2DEC89025CC1)


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50), st.integers(1, 64))
def test_same_id_same_shard_whatever_the_order(ids: list[int], n: int) -> None:
    arr = np.array(ids, dtype=np.int64)
    shards = shard_of(arr, n)
    assert ((shards >= 0) & (shards < n)).all()
    perm = np.random.default_rng(0).permutation(len(arr))
    assert (shard_of(arr[perm], n) == shards[perm]).all()


@pytest.mark.parametrize("n", [2, 4, 7, 16])
def test_balanced_on_sequential_ids(n: int) -> None:
    counts = np.bincount(shard_of(np.arange(200_000, dtype=np.int64), n), minlength=n)
    expected = 200_000 / n
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_rejects_zero_shards() -> None:
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(np.arange(3), 0)
