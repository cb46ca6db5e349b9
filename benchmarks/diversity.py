"""What the diversity gauges (router/diversity.py) cost: the request-path ``offer`` per call,
and one off-path ``measure`` of a full window, against a per-list pairwise-matrix reference
for the intra-list distance (the A/B of one run).

    python -m annfleet.benchmarks.diversity --out benchmarks/results/diversity

Writes ``results.json`` and prints a table; no server is started (the functions are pure).
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from pathlib import Path

import numpy as np

from annfleet.config import SourcesConfig
from annfleet.router.diversity import DiversityMonitor, intra_list_distances, window_figures
from annfleet.router.sources import ItemTable
from annfleet.router.sources.content import normalise_rows


def pairwise_reference(lists: list[np.ndarray], items: ItemTable, features: np.ndarray) -> float:
    """The textbook way: per list, the k x k cosine matrix, mean of its upper triangle."""
    values = []
    for ids in lists:
        x = features[items.rows(ids)]
        x = x[np.linalg.norm(x, axis=1) > 0]
        n = len(x)
        if n < 2:
            continue
        cos = x @ x.T
        values.append(1.0 - (cos.sum() - np.trace(cos)) / (n * (n - 1)))
    return float(np.mean(values))


def best_of(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds of the fastest of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def case(catalogue: int, dim: int, window: int, k: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ids = np.arange(catalogue, dtype=np.int64) * 7 + 1
    items = ItemTable(ids)
    features = normalise_rows((rng.random((catalogue, dim)) < 0.15).astype(np.float32))
    # Zipf-like exposure: popular items served far more often (what Gini measures).
    weights = 1.0 / np.arange(1, catalogue + 1)
    weights /= weights.sum()
    lists = [rng.choice(ids, size=k, replace=False, p=weights) for _ in range(window)]
    figures = window_figures(lists, items, features)
    reference = pairwise_reference(lists, items, features)
    assert abs(figures.intra_list_distance - reference) < 1e-6, (figures, reference)
    # A/B on the same 100 lists: the vectorised intra-list distance vs the k x k matrices.
    sample = lists[:100]
    rows = items.rows(np.concatenate(sample))
    lengths = np.full(len(sample), k, np.int64)
    repeat = 3
    return {
        "catalogue": catalogue,
        "dim": dim,
        "window": window,
        "k": k,
        "measure_ms": 1e3 * best_of(lambda: window_figures(lists, items, features), repeat),
        "ild_100_lists_vectorised_ms": 1e3
        * best_of(lambda: intra_list_distances(rows, lengths, features), repeat),
        "ild_100_lists_pairwise_ms": 1e3
        * best_of(lambda: pairwise_reference(sample, items, features), repeat),
        "coverage": figures.coverage,
        "gini": figures.gini,
        "intra_list_distance": figures.intra_list_distance,
    }


def offer_ns(rate: float, calls: int = 200_000) -> float:
    monitor = DiversityMonitor(SourcesConfig(diversity_sample_rate=rate), seed=0)
    monitor.register("b", ItemTable(np.arange(100, dtype=np.int64)), None)
    served = np.arange(100, dtype=np.int64)
    seconds = min(timeit.repeat(lambda: monitor.offer("b", served), number=calls, repeat=3))
    return 1e9 * seconds / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    offer = {str(rate): offer_ns(rate) for rate in (0.1, 1.0)}
    measured = [
        case(1682, 25, 1000, 100),  # MovieLens-100k-sized catalogue, default window
        case(1682, 25, 1000, 1000),
        case(200_000, 64, 1000, 100),
        case(200_000, 64, 1000, 1000),
    ]
    results = {"offer_ns": offer, "measure": measured}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("offer ns/call:", {r: round(v) for r, v in offer.items()})
    print(
        "| catalogue | dim | window | k | measure ms (whole window) "
        "| ILD of 100 lists: vectorised ms | pairwise ms | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in measured:
        vec, pair = row["ild_100_lists_vectorised_ms"], row["ild_100_lists_pairwise_ms"]
        print(
            f"| {row['catalogue']} | {row['dim']} | {row['window']} | {row['k']} "
            f"| {row['measure_ms']:.1f} | {vec:.2f} | {pair:.2f} | {pair / vec:.1f}x |"
        )


if __name__ == "__main__":
    main()
