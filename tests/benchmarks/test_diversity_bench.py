"""The diversity cost benchmark on a tiny case: its vectorised figures equal the pairwise
reference (case() checks it) and every reported field is there."""

from __future__ import annotations

import math

from annfleet.benchmarks.diversity import case, offer_ns


def test_a_tiny_case_measures_and_agrees_with_the_reference() -> None:
    row = case(300, 8, 30, 12)
    assert {"measure_ms", "ild_100_lists_vectorised_ms", "ild_100_lists_pairwise_ms"} <= set(row)
    assert 0.0 < row["coverage"] <= 1.0 and 0.0 < row["gini"] < 1.0
    assert 0.0 < row["intra_list_distance"] < 1.0 and not math.isnan(row["intra_list_distance"])
    assert offer_ns(0.5, calls=1000) > 0
