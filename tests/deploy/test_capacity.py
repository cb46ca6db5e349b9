"""The capacity model (`annfleet capacity`, deploy/CAPACITY.md): its inputs are the committed
measurements, its plans hold what they promise, and its Helm values install as planned."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO, Render, by_kind, shard_sets

from annfleet import capacity
from annfleet.capacity import GIB, plan

RESULTS = REPO / "benchmarks" / "results"
ANNFLEET = [sys.executable, "-m", "annfleet.cli"]


def cpu_ms_per_request(name: str, process: str) -> float:
    """CPU milliseconds one process spent per handled request in a committed load run."""
    data = json.loads((RESULTS / name / "results.json").read_text())
    handled = data["ok"] + sum(n for code, n in data["errors"].items() if code != "CLIENT_BACKLOG")
    if process == "shard":
        shards = [v for k, v in data["cpu"].items() if k.startswith("shard-")]
        seconds = sum(s["cpu_seconds"] for s in shards) / len(shards)
    else:
        seconds = data["cpu"][process]["cpu_seconds"]
    return 1000 * seconds / handled


def test_inputs_are_the_committed_measurements() -> None:
    measured = json.loads((RESULTS / "capacity" / "results.json").read_text())
    for index, files in capacity.BYTES_PER_ITEM.items():
        for name, (a, b) in files.items():
            fit = measured["fits"][index][name]
            assert a == pytest.approx(fit["a"], abs=0.01), (index, name)
            assert b == pytest.approx(fit["b"], abs=0.001), (index, name)
    for proc, mib in capacity.IDLE_RSS_MIB.items():
        assert mib == pytest.approx(measured["idle_rss_mib"][proc], abs=0.1)
    run = "load-200k-hnsw-retrieve-open-cpu"
    hnsw = capacity.SHARD_COST["hnsw"]
    assert run in hnsw.source
    assert hnsw.shard_ms == pytest.approx(cpu_ms_per_request(run, "shard"), abs=0.01)
    assert pytest.approx(cpu_ms_per_request(run, "router"), abs=0.01) == capacity.ROUTER_MS
    for cost in capacity.SHARD_COST.values():
        for path in cost.source.split():
            if path.startswith("benchmarks/results/"):
                assert (REPO / path).is_dir(), path


def test_measured_bytes_are_what_the_index_layouts_imply() -> None:
    # float32 vectors are 4 bytes per dim; ids 8; HNSW adds its graph (2*M int32 links on
    # level 0 plus the upper levels); IVF-PQ keeps a pq_m-byte code and an 8-byte id
    assert capacity.bytes_per_item("flat", 64, ("index.faiss",)) == 256
    assert (
        2 * 32 * 4 < capacity.bytes_per_item("hnsw", 64, ("index.faiss",)) - 256 < 2 * 32 * 4 * 1.2
    )
    assert capacity.bytes_per_item("ivfpq", 64, ("index.faiss",)) == 16 + 8


def test_plan_keeps_its_promises() -> None:
    p = plan(10_000_000, 64, 500_000, 50, avg_qps=115_000)
    assert p.shards * p.items_per_shard >= 10_000_000
    assert p.items_per_shard <= 2_500_000
    # replicas x what one replica serves at the target utilization covers the peak
    per_replica = p.shard_pod_cores * 0.5 * 1000 / p.shard_cpu_ms
    assert p.replicas * per_replica >= 500_000 > (p.replicas - 1) * per_replica
    assert p.replicas >= 2
    # a shard pod holds two bundles (hot swap) of its items, plus the idle process
    assert p.shard_pod_memory_bytes >= 2 * p.items_per_shard * p.resident_bytes_per_item
    assert p.shard_pod_memory_bytes <= 32 * GIB
    assert p.routers_avg < p.routers_peak
    assert p.predicted_p99_ms <= 50


def test_plan_grows_with_load_items_and_a_tighter_memory_cap() -> None:
    base = plan(2_000_000, 64, 10_000, 50)
    assert plan(2_000_000, 64, 40_000, 50).replicas > base.replicas
    assert plan(20_000_000, 64, 10_000, 50).shards > base.shards
    small = plan(2_000_000, 64, 10_000, 50, max_shard_memory_gib=1.0)
    assert small.shards > base.shards
    assert "memory" in small.limited_by
    assert small.shard_pod_memory_bytes <= 1.0 * GIB
    assert plan(2_000_000, 256, 10_000, 50).shard_cpu_ms > base.shard_cpu_ms


def test_unreachable_p99_and_unmeasured_index_are_said() -> None:
    p = plan(1_000_000, 64, 1000, 1.0)
    assert any("below what the measured floor" in n for n in p.notes)
    with pytest.raises(ValueError, match="no measured QPS for index 'flat'"):
        plan(1_000_000, 64, 1000, 50, index="flat")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ANNFLEET, *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_the_plan() -> None:
    args = ["capacity", "--items", "10000000", "--dim", "64", "--qps", "500000"]
    args += ["--avg-qps", "115000", "--p99-ms", "50"]
    text = run(*args)
    assert text.returncode == 0, text.stderr
    p = plan(10_000_000, 64, 500_000, 50, avg_qps=115_000)
    assert f"shards            {p.shards}" in text.stdout
    assert f"replicas/shard    {p.replicas}" in text.stdout
    as_json = json.loads(run(*args, "--format", "json").stdout)
    assert as_json["shards"] == p.shards and as_json["shard_pods"] == p.shard_pods
    assert as_json["totals"]["shard_cores"] == p.shard_pods * p.shard_pod_cores
    bad = run(
        "capacity", "--items", "10", "--dim", "8", "--qps", "1", "--p99-ms", "5", "--index", "flat"
    )
    assert bad.returncode != 0 and "no measured QPS" in bad.stderr


def test_helm_values_install_the_plan(render: Render, tmp_path: Path) -> None:
    args = ["capacity", "--items", "6000000", "--dim", "96", "--qps", "30000", "--p99-ms", "50"]
    done = run(*args, "--format", "helm")
    assert done.returncode == 0, done.stderr
    values = tmp_path / "sizing.yaml"
    values.write_text(done.stdout)
    p = plan(6_000_000, 96, 30_000, 50)
    objects = render(values)
    sets = shard_sets(objects)
    assert len(sets) == p.shards
    for sts in sets:
        assert sts["spec"]["replicas"] == p.replicas
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["requests"]["cpu"] == str(p.shard_pod_cores)
        mem = c["resources"]["limits"]["memory"]
        assert mem.endswith("Mi") and int(mem[:-2]) == math.ceil(p.shard_pod_memory_bytes / 2**20)
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["minReplicas"] == p.routers_avg
    assert yaml.safe_load(done.stdout)["config"]["shards"]["count"] == p.shards
