"""Diversity metrics of served lists: the pure functions against brute-force references,
the monitor's bounded window, and the gauges of a real router serving Retrieve."""

from __future__ import annotations

import gc
import itertools
import math
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from support import LoopThread, catalogue_bundle, patient, start_cluster

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import RouterConfig, SourcesConfig
from annfleet.router import diversity
from annfleet.router.caches import RouterCaches
from annfleet.router.candidates import CandidateGenerator, SourceSet
from annfleet.router.diversity import (
    DiversityMonitor,
    catalogue_coverage,
    exposure_gini,
    intra_list_distances,
    window_figures,
)
from annfleet.router.sources import ItemTable
from annfleet.router.sources.content import normalise_rows
from annfleet.router.state import MemoryState
from annfleet.synthetic import make_catalogue


def brute_ild(vectors: np.ndarray) -> float:
    """Mean over pairs i<j of 1 - cos, the definition, pair by pair."""
    pairs = list(itertools.combinations(range(len(vectors)), 2))
    if not pairs:
        return math.nan
    total = 0.0
    for i, j in pairs:
        a, b = vectors[i].astype(np.float64), vectors[j].astype(np.float64)
        total += 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return total / len(pairs)


def brute_gini(exposure: np.ndarray) -> float:
    """Mean absolute difference / (2 * mean), over every item of the catalogue."""
    x = exposure.astype(np.float64)
    if x.sum() == 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def test_gini_reference_points() -> None:
    n = 50
    assert exposure_gini(np.full(n, 7), n) == pytest.approx(0.0, abs=1e-12)  # uniform
    assert exposure_gini(np.array([9]), n) == pytest.approx((n - 1) / n)  # all on one
    assert exposure_gini(np.array([], np.int64), n) == 0.0  # nothing served
    half = np.zeros(n)
    half[: n // 2] = 3
    assert exposure_gini(half[half > 0], n) == pytest.approx(brute_gini(half)) == 0.5
    with pytest.raises(ValueError, match="served items in a catalogue"):
        exposure_gini(np.ones(3), 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_gini_matches_brute_force(exposure: list[int]) -> None:
    x = np.array(exposure)
    assert exposure_gini(x[x > 0], len(x)) == pytest.approx(brute_gini(x), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(-1, 11), max_size=8), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_intra_list_distance_matches_brute_force(lists: list[list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 2, size=(12, 5)).astype(np.float32)  # multi-hot, some all-zero
    unit = normalise_rows(features)
    rows = np.array([r for lst in lists for r in lst], np.int64)
    got = intra_list_distances(rows, np.array([len(lst) for lst in lists]), unit)
    for value, lst in zip(got, lists, strict=True):
        usable = [features[r] for r in lst if r >= 0 and features[r].any()]
        want = brute_ild(np.array(usable)) if len(usable) >= 2 else math.nan
        if math.isnan(want):
            assert math.isnan(value)
        else:
            assert value == pytest.approx(want, abs=1e-6)


def test_intra_list_distance_in_chunks_equals_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    unit = normalise_rows(rng.integers(0, 2, size=(30, 4)).astype(np.float32))
    lengths = rng.integers(0, 9, size=40)
    rows = rng.integers(-1, 30, size=int(lengths.sum()))
    whole = intra_list_distances(rows, lengths, unit)
    monkeypatch.setattr(diversity, "CHUNK_ROWS", 5)  # lists longer than a chunk included
    np.testing.assert_allclose(intra_list_distances(rows, lengths, unit), whole, atol=1e-9)
    assert np.isfinite(whole).sum() > 20


def test_intra_list_distance_reference_points() -> None:
    eye = np.eye(4, dtype=np.float32)
    same = np.array([[1, 0], [1, 0]], np.float32)
    lengths = np.array([4, 2, 1, 0])
    rows = np.array([0, 1, 2, 3, 0, 0, 2])
    got = intra_list_distances(rows, lengths, eye)
    assert got[0] == pytest.approx(1.0)  # orthogonal items: distance 1
    assert got[1] == pytest.approx(0.0)  # the same item twice
    assert math.isnan(got[2]) and math.isnan(got[3])  # fewer than two items
    assert intra_list_distances(np.array([0, 1]), np.array([2]), same)[0] == pytest.approx(0.0)


def test_coverage_and_window_figures() -> None:
    items = ItemTable(np.array([10, 20, 30, 40], np.int64))
    assert catalogue_coverage(items.rows(np.array([10, 10, 99])), 4) == 0.25
    features = normalise_rows(np.eye(4, dtype=np.float32))
    fig = window_figures([np.array([10, 20]), np.array([10, 99])], items, features)
    assert fig.lists == 2 and fig.coverage == 0.5
    assert fig.intra_list_distance == pytest.approx(1.0)  # [10, 99]: one featured item only
    assert fig.gini == pytest.approx(brute_gini(np.array([2, 1, 0, 0])))
    no_features = window_figures([np.array([10, 20])], items, None)
    assert math.isnan(no_features.intra_list_distance) and no_features.coverage == 0.5
    empty = window_figures([], items, features)
    assert empty.lists == 0 and empty.coverage == 0.0


def test_the_monitor_window_is_bounded_and_released_bundles_are_forgotten() -> None:
    config = SourcesConfig(diversity_sample_rate=1.0, diversity_window=3)
    monitor = DiversityMonitor(config, seed=0)
    items = ItemTable(np.arange(10, dtype=np.int64))
    monitor.register("b1", items, None)
    monitor.offer("unknown-bundle", np.array([1]))  # not registered: ignored
    for i in range(5):
        monitor.offer("b1", np.array([i, i + 1], np.int64))
    fig = monitor.measure()["b1"]
    assert fig.lists == 3 and fig.coverage == pytest.approx(4 / 10)  # lists 2..4 kept
    monitor.register("b1", items, None)  # a second generator of the same bundle
    monitor.release("b1")
    assert "b1" in monitor.measure()
    monitor.release("b1")
    assert monitor.measure() == {}
    sampled = DiversityMonitor(SourcesConfig(diversity_sample_rate=0.25), seed=1)
    sampled.register("b", items, None)
    for _ in range(400):
        sampled.offer("b", np.array([1], np.int64))
    assert 50 <= sampled.measure()["b"].lists <= 150  # about a quarter of 400


class ReleasingItems(ItemTable):
    """An item table whose lookup releases its bundle from the monitor: the generator's
    finalizer running while ``measure`` computes the figures in its worker thread."""

    def __init__(self, ids: np.ndarray, monitor: DiversityMonitor, bundle_id: str) -> None:
        super().__init__(ids)
        self.monitor, self.bundle_id = monitor, bundle_id

    def rows(self, ids: np.ndarray | list[int] | tuple[int, ...]) -> np.ndarray:
        self.monitor.release(self.bundle_id)
        return super().rows(ids)


def test_a_bundle_released_while_its_figures_are_computed_keeps_no_gauge() -> None:
    monitor = DiversityMonitor(SourcesConfig(diversity_sample_rate=1.0), seed=0)
    bundle_id = "bundle-released-mid-measure"
    monitor.register(
        bundle_id, ReleasingItems(np.arange(5, dtype=np.int64), monitor, bundle_id), None
    )
    monitor.offer(bundle_id, np.array([1, 2], np.int64))
    assert monitor.measure() == {}
    exported = [
        sample
        for gauge in (
            diversity.DIVERSITY_LISTS,
            diversity.DIVERSITY_COVERAGE,
            diversity.DIVERSITY_GINI,
        )
        for family in gauge.collect()
        for sample in family.samples
        if sample.labels.get("bundle") == bundle_id
    ]
    assert exported == []


def test_a_bundle_generator_registers_while_it_lives() -> None:
    """A bundle's CandidateGenerator registers its bundle; once it is gone (a rollout
    replaced the bundle), the bundle's window and gauges go too."""
    monitor = DiversityMonitor(SourcesConfig(diversity_sample_rate=1.0), seed=0)
    items = ItemTable(np.arange(5, dtype=np.int64))
    generator = CandidateGenerator(
        "bundle-x",
        SourceSet([], items, None),
        MemoryState(),
        RouterCaches(RouterConfig(), SourcesConfig()),
        diversity=monitor,
    )
    monitor.offer("bundle-x", np.array([1, 2], np.int64))
    assert monitor.measure()["bundle-x"].lists == 1
    del generator
    gc.collect()
    assert monitor.measure() == {}


@pytest.fixture(scope="module")
def content_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A small catalogue with a content feature table (genre-like multi-hot rows)."""
    cat = make_catalogue(3000, 16, clusters=8, users=30, seed=11)
    content = np.random.default_rng(3).integers(0, 2, size=(len(cat.ids), 6)).astype(np.float32)
    return catalogue_bundle(
        tmp_path_factory.mktemp("div") / "b",
        cat,
        tables={"item_ids": cat.ids, "item_content": content, "popular_ids": cat.popular_ids},
        extra={"item_features": {"content_table": "item_content"}},
    )


GAUGES = (
    "annfleet_router_intra_list_distance",
    "annfleet_router_catalogue_coverage",
    "annfleet_router_exposure_gini",
    "annfleet_router_diversity_window_lists",
)


def scrape(port: int, bundle_id: str) -> dict[str, float]:
    """The router's diversity gauges of one bundle, from its /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in GAUGES and sample.labels.get("bundle") == bundle_id
    }


def test_a_router_serving_retrieve_exports_the_diversity_gauges(
    loop_thread: LoopThread, content_bundle: Bundle, tmp_path: Path
) -> None:
    sources = patient(
        SourcesConfig(diversity_sample_rate=1.0, diversity_window=100, diversity_interval_s=0.1)
    )
    cluster = start_cluster(loop_thread, content_bundle, sources=sources, metrics_port=0)
    try:
        port = cluster.router.grpc.metrics_port
        users = content_bundle.users()
        assert users is not None
        served: list[np.ndarray] = []
        with Client(cluster.router_target, timeout=10) as client:
            for user in users[0][:12]:
                served.append(client.retrieve(int(user), 20).ids)
            served.append(client.retrieve(int(users[0][0]), 20).ids)  # a cached answer counts
        # Every served list was kept (rate 1): the gauges are the figures of these 13 lists.
        items = ItemTable(content_bundle.table("item_ids"))
        features = normalise_rows(content_bundle.table("item_content"))
        want = window_figures(served, items, features)
        deadline = time.monotonic() + 60
        while (got := scrape(port, content_bundle.id)).get(
            "annfleet_router_diversity_window_lists"
        ) != len(served):
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        assert 0.0 < want.intra_list_distance < 1.0
        assert want.coverage == pytest.approx(len(np.unique(np.concatenate(served))) / 3000)
        assert 0.0 < want.gini < 1.0
        assert got["annfleet_router_intra_list_distance"] == pytest.approx(want.intra_list_distance)
        assert got["annfleet_router_catalogue_coverage"] == pytest.approx(want.coverage)
        assert got["annfleet_router_exposure_gini"] == pytest.approx(want.gini)
    finally:
        cluster.close()
