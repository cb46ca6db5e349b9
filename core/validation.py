"""Rules both sides of the wire apply: search-parameter limits and the metric's direction.

Imports nothing but the generated code and ``annfleet.errors``: the client, the router and
the shard servers all use it.
"""

from __future__ import annotations

import math

from annfleet.errors import InvalidArgument
from annfleet.v1 import common_pb2

METRICS = ("ip", "l2")
MAX_EF_SEARCH = 1 << 15
MAX_RERANK = 1 << 16
# The smallest value of each index build parameter (faiss's HNSW with m=1 crashes the
# process; nlist or nbits 0 would be silently raised); pq_m 0 = auto (chosen for the dim).
MIN_INDEX_PARAMS = {"m": 2, "ef_construction": 1, "nlist": 1, "pq_m": 0, "nbits": 1}


def higher_is_better(metric: str) -> bool:
    """``ip`` scores are inner products (higher is better); ``l2`` squared distances (lower)."""
    if metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r} unknown; choose one of {METRICS}")
    return metric == "ip"


def worst_score(metric: str) -> float:
    """The score that pads a row with fewer than k hits."""
    return -math.inf if higher_is_better(metric) else math.inf


def check_params(params: common_pb2.SearchParams) -> None:
    """Reject search parameters no index accepts (0 means "server default")."""
    if params.ef_search > MAX_EF_SEARCH:
        raise InvalidArgument(f"ef_search={params.ef_search} exceeds {MAX_EF_SEARCH}")
    if params.rerank > MAX_RERANK:
        raise InvalidArgument(f"rerank={params.rerank} exceeds {MAX_RERANK}")
