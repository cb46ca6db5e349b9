"""MovieLens-specific bundle tables (numpy only; the router reads them via annfleet.bundle)."""

from __future__ import annotations

import numpy as np

from annfleet.bundle import TABLE_SEEN_IDS, TABLE_SEEN_OFFSETS


def seen_table(
    user_ids: np.ndarray, inter_users: np.ndarray, inter_items: np.ndarray
) -> dict[str, np.ndarray]:
    """Interactions (user id, item id) -> the two CSR tables, rows in ``user_ids`` order."""
    row_of = {int(u): i for i, u in enumerate(user_ids)}
    rows = np.fromiter((row_of[int(u)] for u in inter_users), np.int64, len(inter_users))
    order = np.lexsort((inter_items, rows))
    pairs = np.unique(np.stack([rows[order], inter_items[order]], axis=1), axis=0)
    offsets = np.zeros(len(user_ids) + 1, np.int64)
    np.add.at(offsets, pairs[:, 0] + 1, 1)
    return {TABLE_SEEN_OFFSETS: np.cumsum(offsets), TABLE_SEEN_IDS: pairs[:, 1].astype(np.int64)}
