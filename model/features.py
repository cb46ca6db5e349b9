"""User-side inputs shared by training, evaluation, export and the router.

The user tower takes three int64 tensors (see ``USER_TOWER_INPUTS``):

* ``user`` (B, 5): dense user index, age bucket, gender, occupation, zip region (0 = unknown);
* ``recent`` (B, L): the user's most recent item indices, right-aligned (most recent last),
  0-padded on the left; unknown items are 0;
* ``time`` (B, 4): hour of day 1..24, day of week 1..7 (0 = unknown), gap bucket 0..8 (time
  since the newest recent item; 0 = no recent item), trend bucket 0..TREND_WEEKS: 1 + whole
  weeks between the request and the end of the training data (1 = the last week or later,
  0 = unknown). The trend bucket lets the tower learn what is popular lately.

For a training example the recent items are the user's interactions strictly earlier than it
in (timestamp, file row) order, so nothing from the example itself or later leaks in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annfleet.model.data import MovieLens, Split, gap_bucket

RECENT_LEN = 30
TREND_WEEKS = 8
WEEK = 7 * 86400
USER_TOWER_INPUTS = {
    "user": {
        "shape": ["B", 5],
        "dtype": "int64",
        "columns": ["user_index", "age_bucket", "gender", "occupation", "zip_region"],
    },
    "recent": {
        "shape": ["B", "L"],
        "dtype": "int64",
        "doc": "item indices, right-aligned, most recent last, 0 = padding/unknown",
    },
    "time": {
        "shape": ["B", 4],
        "dtype": "int64",
        "columns": ["hour_of_day_1_24", "day_of_week_1_7", "gap_bucket", "trend_bucket"],
    },
}


def trend_bucket(ts: np.ndarray, reference_ts: int | None) -> np.ndarray:
    """ts (n,) int64 -> (n,) int64 1 + clip(weeks before reference_ts, 0, TREND_WEEKS - 1)."""
    ts = np.asarray(ts, dtype=np.int64)
    if reference_ts is None:
        return np.zeros(len(ts), dtype=np.int64)
    weeks = np.clip((int(reference_ts) - ts) // WEEK, 0, TREND_WEEKS - 1)
    return np.where(ts > 0, 1 + weeks, 0).astype(np.int64)


def time_features(
    ts: np.ndarray, last_ts: np.ndarray, reference_ts: int | None = None
) -> np.ndarray:
    """ts (n,) int64 unix seconds (0 = unknown), last_ts (n,) int64 (-1 = none),
    reference_ts = end of the training data -> (n, 4) int64 tower time input."""
    ts = np.asarray(ts, dtype=np.int64)
    last_ts = np.asarray(last_ts, dtype=np.int64)
    known = ts > 0
    hour = np.where(known, 1 + (ts // 3600) % 24, 0)
    dow = np.where(known, 1 + (ts // 86400 + 3) % 7, 0)  # 1970-01-01 was a Thursday; 1 = Monday
    gap = np.where((last_ts >= 0) & known, np.maximum(ts - last_ts, 0), -1)
    trend = trend_bucket(ts, reference_ts)
    return np.stack([hour, dow, gap_bucket(gap), trend], axis=1).astype(np.int64)


def user_rows(data: MovieLens, users: np.ndarray) -> np.ndarray:
    """users (n,) dense indices -> (n, 5) int64 user-tower rows."""
    users = np.asarray(users, dtype=np.int64)
    return np.concatenate([users[:, None], data.user_feats[users]], axis=1)


def recent_before(
    data: MovieLens, mask: np.ndarray, length: int = RECENT_LEN
) -> tuple[np.ndarray, np.ndarray]:
    """For every interaction selected by ``mask`` (n,) bool: the user's ``length`` previous
    selected interactions (strictly earlier in (time, row) order).

    Returns recent (m, length) int64 item indices right-aligned and last_ts (m,) int64
    (-1 when there is no previous interaction), m = mask.sum(), in data order.
    """
    idx = np.flatnonzero(mask)
    users = data.inter_user[idx]
    items = data.inter_item[idx]
    ts = data.inter_ts[idx]
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    start = np.repeat(first, np.diff(np.r_[first, len(idx)]))
    pos = np.arange(len(idx))
    recent = np.zeros((len(idx), length), dtype=np.int64)
    for j in range(1, length + 1):
        prev = pos - j
        ok = prev >= start
        recent[:, length - j] = np.where(ok, items[np.maximum(prev, 0)], 0)
    last_ts = np.where(pos - 1 >= start, ts[np.maximum(pos - 1, 0)], -1)
    return recent, last_ts


@dataclass(frozen=True)
class Queries:
    """Evaluation queries: one per user with at least one test interaction.

    users (Q,) int64 dense indices; user (Q, 5), recent (Q, L), time (Q, 4) int64 tower inputs
    at the query time (the user's first test interaction); seen_ptr (Q + 1,) / seen (S,) CSR of
    the user's train items (excluded from rankings); target_ptr (Q + 1,) / targets (T,) CSR of
    the user's test items.
    """

    users: np.ndarray
    user: np.ndarray
    recent: np.ndarray
    time: np.ndarray
    query_ts: np.ndarray
    seen_ptr: np.ndarray
    seen: np.ndarray
    target_ptr: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def seen_of(self, q: int) -> np.ndarray:
        return self.seen[self.seen_ptr[q] : self.seen_ptr[q + 1]]

    def targets_of(self, q: int) -> np.ndarray:
        return self.targets[self.target_ptr[q] : self.target_ptr[q + 1]]


def _csr(groups: np.ndarray, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values grouped by sorted ``groups`` for each of the sorted ``keys`` -> (ptr, values)."""
    lo = np.searchsorted(groups, keys, side="left")
    hi = np.searchsorted(groups, keys, side="right")
    ptr = np.r_[0, np.cumsum(hi - lo)].astype(np.int64)
    out = (
        np.concatenate([values[a:b] for a, b in zip(lo, hi, strict=True)])
        if len(keys)
        else values[:0]
    )
    return ptr, out.astype(np.int64)


def build_queries(data: MovieLens, split: Split, length: int = RECENT_LEN) -> Queries:
    """The evaluation queries of a split (train = history/context, test = targets); the
    trend reference is the last train timestamp."""
    test_users = np.unique(data.inter_user[split.test])
    tr = np.flatnonzero(split.train)
    te = np.flatnonzero(split.test)
    seen_ptr, seen = _csr(data.inter_user[tr], data.inter_item[tr], test_users)
    target_ptr, targets = _csr(data.inter_user[te], data.inter_item[te], test_users)
    first_test = te[np.searchsorted(data.inter_user[te], test_users)]
    query_ts = data.inter_ts[first_test]
    recent = np.zeros((len(test_users), length), dtype=np.int64)
    last_ts = np.full(len(test_users), -1, dtype=np.int64)
    for q in range(len(test_users)):
        hist = seen[seen_ptr[q] : seen_ptr[q + 1]][-length:]
        if len(hist):
            recent[q, length - len(hist) :] = hist
            last_ts[q] = data.inter_ts[
                tr[np.searchsorted(data.inter_user[tr], test_users[q], side="right") - 1]
            ]
    return Queries(
        users=test_users,
        user=user_rows(data, test_users),
        recent=recent,
        time=time_features(query_ts, last_ts, int(data.inter_ts[split.train].max())),
        query_ts=query_ts,
        seen_ptr=seen_ptr,
        seen=seen,
        target_ptr=target_ptr,
        targets=targets,
    )
