"""The MovieLens bundle tables (numpy only)."""

from __future__ import annotations

import numpy as np

from annfleet.model.tables import seen_table


def test_seen_table_is_csr_in_user_order() -> None:
    tables = seen_table(
        np.array([7, 3, 9], np.int64),
        np.array([3, 7, 3, 3, 7], np.int64),
        np.array([50, 10, 40, 50, 11], np.int64),  # user 3 saw 50 twice
    )
    offsets, ids = tables["user_seen_offsets"], tables["user_seen_ids"]
    assert offsets.tolist() == [0, 2, 4, 4]
    assert ids[offsets[0] : offsets[1]].tolist() == [10, 11]  # user 7
    assert ids[offsets[1] : offsets[2]].tolist() == [40, 50]  # user 3
    assert ids[offsets[2] : offsets[3]].tolist() == []  # user 9
