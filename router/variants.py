"""Which bundle serves a user: the stable one, or a canary for a share of users.

A user's bucket is a fixed point in [0, 100) from a salted splitmix64 of the user id
(independent of item partitioning); the canary serves the users whose bucket is below its
percentage. Moving the percentage from p to q moves only the users with buckets between p
and q: everyone else stays in their variant. Requests without a user id (Search) get the
stable bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from annfleet.partition import splitmix64

if TYPE_CHECKING:
    from annfleet.router.service import RouterState

STABLE = "stable"
CANARY = "canary"
SALT = 0x5EED_CA9A_7E57  # decorrelates buckets from splitmix64(id) mod N shard placement
BUCKETS = 1_000_000


def user_bucket(user_ids: np.ndarray | int) -> np.ndarray:
    """user ids -> (n,) float64 points in [0, 100), stable for a user id forever."""
    ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64)) ^ np.int64(SALT)
    return (splitmix64(ids) % np.uint64(BUCKETS)).astype(np.float64) * (100.0 / BUCKETS)


@dataclass(frozen=True)
class Canary:
    """A bundle serving ``percent`` of users beside the stable one. Replaced, never mutated."""

    state: RouterState
    percent: float

    def serves(self, user_id: int) -> bool:
        return bool(user_bucket(user_id)[0] < self.percent)
