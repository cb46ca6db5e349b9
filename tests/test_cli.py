"""The `annfleet` command line as a user runs it: subprocesses, real ports, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.cluster import free_port
from annfleet.partition import shard_of

ANNFLEET = [sys.executable, "-m", "annfleet.cli"]


def run(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ANNFLEET, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_build_bundle_from_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((2000, 16)).astype(np.float32))
    np.save(tmp_path / "ids.npy", np.arange(2000, dtype=np.int64) + 500)
    np.save(tmp_path / "u.npy", rng.standard_normal((10, 16)).astype(np.float32))
    np.save(tmp_path / "uid.npy", np.arange(10, dtype=np.int64))
    out = tmp_path / "bundle"
    done = run(
        "build-bundle",
        "--vectors",
        str(tmp_path / "x.npy"),
        "--ids",
        str(tmp_path / "ids.npy"),
        "--user-vectors",
        str(tmp_path / "u.npy"),
        "--user-ids",
        str(tmp_path / "uid.npy"),
        "--shards",
        "2",
        "--index",
        "ivfpq",
        "--nlist",
        "16",
        "--pq-m",
        "4",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    bundle = Bundle.open(out)
    assert bundle.num_shards == 2 and bundle.manifest["num_items"] == 2000
    assert bundle.shard(0)["index"]["params"]["nlist"] == 16
    assert f"bundle {bundle.id}" in done.stdout
    assert "building 2 ivfpq shard indexes" in done.stderr  # progress is shown

    again = run(
        "build-bundle", "--vectors", str(tmp_path / "x.npy"), "--shards", "2", "--out", str(out)
    )
    assert again.returncode == 2 and "exists" in again.stderr
    bad = run(
        "build-bundle",
        "--vectors",
        str(tmp_path / "missing.npy"),
        "--shards",
        "2",
        "--out",
        str(tmp_path / "b2"),
    )
    assert bad.returncode != 0 and "cannot read --vectors" in bad.stderr


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    config = tmp_path / "cluster.yaml"
    shard_base = free_port(count=2)  # base_port + 1 too: 2 shards
    config.write_text(f"""
data_dir: {tmp_path / "data"}
dataset: {{kind: synthetic, items: 4000, dim: 16, clusters: 16, users: 50}}
index: {{type: hnsw, m: 8, ef_construction: 40}}
shards: {{count: 2, base_port: {shard_base}, metrics_base_port: -1, grace_s: 1.0,
          admin_base_port: {free_port(count=2)}}}
router: {{port: {free_port()}, metrics_port: {free_port()}, grace_s: 1.0,
          admin_port: {free_port()}, recall_sample_rate: 1.0,
          recall_max_per_s: 0, recall_max_share: 0}}
# The ANN source is never dropped for its budget here (coverage is asserted below), however
# loaded the machine is.
sources: {{ann: {{budget_ms: 60000.0}}}}
""")
    return config


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got:\n{''.join(lines)}")


def test_up_query_status_and_clean_stop(small_config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [*ANNFLEET, "up", "--config", str(small_config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = wait_for_line(up, "Ctrl-C stops the cluster", timeout=240)
        text = "".join(lines)
        router_line = next(ln for ln in lines if ln.startswith("router listening on"))
        target = router_line.split()[3]
        assert "shard-00" in text and "shard-01" in text and "sample:" in text

        query = run("query", "--user", "1", "--k", "7", "--json", "--target", target)
        assert query.returncode == 0, query.stderr
        answer = json.loads(query.stdout)
        # without --target: the router of the cluster running from the config's data dir
        from_config = run(
            "query", "--user", "1", "--k", "7", "--json", "--config", str(small_config)
        )
        assert from_config.returncode == 0, from_config.stderr
        assert json.loads(from_config.stdout)["bundle_id"] == answer["bundle_id"]
        assert set(answer) >= {"bundle_id", "coverage", "degraded", "candidates"}
        assert answer["coverage"] == 1.0 and answer["degraded"] is False
        assert len(answer["candidates"]) == 7
        first = answer["candidates"][0]
        assert set(first) >= {"item_id", "score", "source", "sources"}
        assert first["source"] in first["sources"] and "ann" in answer["source_counts"]
        assert isinstance(answer["dropped_sources"], dict)
        # `annfleet engage`: the engaged item never comes back for that user.
        engaged = run("engage", "--user", "1", "--item", str(first["item_id"]),
                      "--type", "view", "--target", target)  # fmt: skip
        assert engaged.returncode == 0, engaged.stderr
        assert "recorded 1 event" in engaged.stdout
        after = json.loads(
            run("query", "--user", "1", "--k", "7", "--json", "--target", target).stdout
        )
        assert first["item_id"] not in [c["item_id"] for c in after["candidates"]]
        top2 = [c["item_id"] for c in after["candidates"][:2]]
        excluded = run("query", "--user", "1", "--k", "7", "--json", "--target", target,
                       "--exclude", ",".join(map(str, top2)), "--country", "US")  # fmt: skip
        assert excluded.returncode == 0, excluded.stderr
        rest = [c["item_id"] for c in json.loads(excluded.stdout)["candidates"]]
        assert len(rest) == 7 and not set(top2) & set(rest)
        bad = run("engage", "--user", "1", "--item", "-7", "--target", target)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
        assert "events[0]: unknown item id -7" in bad.stderr
        text_query = run("query", "--user", "1", "--k", "3", "--target", target)
        assert "sources: " in text_query.stdout and "ann" in text_query.stdout

        status = run("status", "--config", str(small_config))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == 3
        bundle_id = answer["bundle_id"]
        assert f"shard 0/2 of {bundle_id}" in status.stdout
        assert f"shard 1/2 of {bundle_id}" in status.stdout
        # The router's live recall (every request sampled here), once a sample is measured.
        deadline = time.monotonic() + 60
        while f"live    {bundle_id} recall@100" not in status.stdout:
            assert time.monotonic() < deadline, status.stdout
            run("query", "--user", "2", "--k", "7", "--target", target)
            status = run("status", "--config", str(small_config))
        assert "per shard 0:" in status.stdout

        # The router's status page, on its metrics port, describes the same cluster.
        page_line = next(ln for ln in lines if ln.startswith("status page "))
        page_url = page_line.split()[2]
        with urllib.request.urlopen(page_url + ".json", timeout=10) as reply:
            page = json.loads(reply.read())
        assert page["bundles"][0]["bundle_id"] == bundle_id
        assert [s["state"] for s in page["shards"]] == ["up", "up"]
        assert page["requests"]["Retrieve"]["count"] >= 2  # the sample and the query above
        # serve-router froze its start-up objects out of the collector's reach (gcpolicy)
        assert frozen_objects(page_url.rsplit("/", 1)[0]) > 10_000

        unknown = run("query", "--user", "999999", "--target", target)
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr

        # A live upsert through the admin ports (token generated by `up`), on shard 1.
        new_id = next(i for i in range(10**7, 10**8) if shard_of(np.array([i]), 2)[0] == 1)
        vector = np.full((1, 16), 5.0, np.float32)
        np.save(tmp_path / "new.npy", vector)
        np.save(tmp_path / "new_ids.npy", np.array([new_id], np.int64))
        assert "admin token (annfleet items/rollout):" in text
        upserted = run(
            "items", "upsert", "--config", str(small_config), "--vectors",
            str(tmp_path / "new.npy"), "--ids", str(tmp_path / "new_ids.npy"),
        )  # fmt: skip
        assert upserted.returncode == 0, upserted.stderr
        assert "1 inserted" in upserted.stdout
        assert "1 ids unblocked (0 blocked in all)" in upserted.stdout  # the router, too
        with Client(target) as client:
            assert client.search(vector, 1).ids[0, 0] == new_id
        status = run("status", "--config", str(small_config))
        assert "+1 upserted" in status.stdout

        # A child that dies is reported and restarted.
        state = json.loads((tmp_path / "data" / "cluster.json").read_text())
        shard_pid = next(c["pid"] for c in state["children"] if c["name"] == "shard-01")
        os.kill(shard_pid, signal.SIGKILL)
        restarted = "".join(wait_for_line(up, "shard-01", timeout=30))
        # `annfleet status` shows the restarted child's new pid, not the dead one's.
        new_state = json.loads((tmp_path / "data" / "cluster.json").read_text())
        new_pid = next(c["pid"] for c in new_state["children"] if c["name"] == "shard-01")
        assert new_pid != shard_pid and f"restarted as pid {new_pid}" in restarted
        os.kill(new_pid, 0)  # alive
        status = run("status", "--config", str(small_config))
        assert f"pid {new_pid} " in status.stdout and f"pid {shard_pid} " not in status.stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            again = run("query", "--user", "2", "--json", "--target", target)
            if again.returncode == 0 and json.loads(again.stdout)["coverage"] == 1.0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("restarted shard never came back")
        with Client(target) as client:  # the restarted shard replayed its update log
            assert client.search(vector, 1).ids[0, 0] == new_id
        deleted = run("items", "delete", "--config", str(small_config), "--ids", str(new_id))
        assert deleted.returncode == 0, deleted.stderr
        # ... and blocked on the router, so no Retrieve source serves it either
        assert "1 ids blocked from Retrieve (1 blocked in all)" in deleted.stdout
        # kept in the data dir, so a restarted router blocks it still (test_retrieve_sources)
        kept = np.load(tmp_path / "data" / "blocked-items.npy", allow_pickle=False)
        assert kept.tolist() == [new_id]
        status = run("status", "--config", str(small_config))
        assert "blocked from Retrieve: 1 item (annfleet items delete)" in status.stdout
        listed = run("items", "blocked", "--config", str(small_config), "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["item_ids"] == [new_id]
        # The router's set alone: block another item, list both, let it back.
        other = first["item_id"]
        blocked = run("items", "block", "--config", str(small_config), "--ids", str(other))
        assert blocked.returncode == 0, blocked.stderr
        assert "1 ids blocked from Retrieve (2 blocked in all)" in blocked.stdout
        assert "Search still finds them" in blocked.stdout
        listed = run("items", "blocked", "--config", str(small_config), "--limit", "1")
        assert f"2 items blocked from Retrieve\n  {min(new_id, other)}\n  ... and 1 more" in (
            listed.stdout
        )
        unblocked = run("items", "unblock", "--config", str(small_config), "--ids", str(other))
        assert "1 ids unblocked (1 blocked in all)" in unblocked.stdout
        for user in ("1", "2", "3"):
            listed = json.loads(run("query", "--user", user, "--k", "50", "--json",
                                    "--target", target).stdout)  # fmt: skip
            assert new_id not in [c["item_id"] for c in listed["candidates"]]
        with Client(target) as client:
            assert new_id not in client.search(vector, 10).ids[0]
    finally:
        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=60)
    assert up.returncode == 0, rest
    assert "stopped." in rest
    assert not (tmp_path / "data" / "cluster.json").exists()


def test_serve_shard_drains_on_sigterm_and_exits_0(tmp_path: Path) -> None:
    from annfleet.cluster import health_status
    from annfleet.synthetic import make_catalogue

    cat = make_catalogue(2000, 8, clusters=4, users=5)
    from annfleet.server.builder import build_bundle

    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )
    port, metrics_port = free_port(), free_port()
    shard = subprocess.Popen(
        [
            *ANNFLEET,
            "serve-shard",
            "--bundle",
            str(bundle.path),
            "--shard",
            "1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while health_status(f"127.0.0.1:{port}") != "SERVING":
            assert time.monotonic() < deadline and shard.poll() is None
            time.sleep(0.1)
        # faiss, grpc and numpy were imported before the bundle loaded: frozen (gcpolicy)
        assert frozen_objects(f"http://127.0.0.1:{metrics_port}") > 10_000
    finally:
        shard.send_signal(signal.SIGTERM)
        out, _ = shard.communicate(timeout=30)
    assert shard.returncode == 0, out
    assert f"shard 1 listening on 127.0.0.1:{port}" in out


def frozen_objects(base_url: str) -> float:
    """``annfleet_gc_frozen_objects`` from a process's /metrics."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("annfleet_gc_frozen_objects ")]
    return float(line.split()[1])


def test_up_with_a_wrong_movielens_path_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "ml.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ndataset: {{path: {tmp_path}}}\n")
    done = run("up", "--config", str(config), timeout=60)
    assert done.returncode == 2
    assert "missing MovieLens file(s)" in done.stderr and str(tmp_path) in done.stderr


def test_editing_search_defaults_never_rebuilds_the_default_bundle(tmp_path: Path) -> None:
    from dataclasses import replace

    from annfleet.cli import default_bundle
    from annfleet.config import ClusterConfig, DatasetConfig, IndexConfig, SearchConfig

    base = ClusterConfig(
        data_dir=str(tmp_path),
        dataset=DatasetConfig(kind="synthetic", items=3000, dim=8, clusters=4, users=10),
        index=IndexConfig(type="ivfpq", nlist=16),
        shards=replace(ClusterConfig().shards, count=2),
    )
    first = default_bundle(base, progress=False)
    built = (first / "manifest.json").stat().st_mtime_ns
    edited = replace(base, search=SearchConfig(ef_search=512, nprobe=4, rerank=64))
    assert default_bundle(edited, progress=False) == first
    assert (first / "manifest.json").stat().st_mtime_ns == built  # reused, not rebuilt
    other = default_bundle(replace(base, index=replace(base.index, nlist=8)), progress=False)
    assert other != first and Bundle.open(other).shard(0)["index"]["params"]["nlist"] == 8


def test_ivfpq_build_on_50_dims_picks_and_prints_pq_m(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((3000, 50)).astype(np.float32))
    out = tmp_path / "glove-like"
    done = run("build-bundle", "--vectors", str(tmp_path / "x.npy"), "--shards", "2")
    assert done.returncode == 2 and "--out" in done.stderr  # argparse: required
    done = run(
        "build-bundle",
        *("--vectors", str(tmp_path / "x.npy"), "--shards", "2", "--index", "ivfpq"),
        *("--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    assert "pq_m=10 (auto for dim 50)" in done.stdout
    assert Bundle.open(out).shard(1)["index"]["params"]["pq_m"] == 10
    search_flag = run(
        "build-bundle",
        *("--vectors", str(tmp_path / "x.npy"), "--shards", "2", "--ef-search", "64"),
        *("--out", str(tmp_path / "b2")),
    )
    assert search_flag.returncode == 2 and "--ef-search" in search_flag.stderr


def test_up_with_a_bundle_says_the_index_section_does_not_apply(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nindex: {{type: ivfpq, nlist: 64}}\n")
    done = run("up", "--config", str(config), "--bundle", str(tmp_path / "absent"), timeout=60)
    assert done.returncode == 2 and "not a bundle" in done.stderr
    assert "the config's index.type, index.nlist do not apply" in done.stderr


def _wait_serving(target: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    from annfleet.cluster import health_status

    deadline = time.monotonic() + timeout
    while health_status(target) != "SERVING":
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{target} never SERVING"
        time.sleep(0.1)


def test_serve_flags_override_the_config_only_when_given(tmp_path: Path) -> None:
    from annfleet.server.builder import build_bundle
    from annfleet.synthetic import make_catalogue

    cat = make_catalogue(2000, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )
    shard1_port, router_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"shards: {{base_port: {shard1_port - 1}, metrics_base_port: -1, grace_s: 0.5}}\n"
        f"router: {{port: {router_port}, metrics_port: -1, grace_s: 0.5}}\n"
    )
    common = ["--bundle", str(bundle.path), "--config", str(config)]
    procs = []
    try:
        for extra in (["--shard", "1"], ["--shard", "0", "--port", str(flag_port)]):
            procs.append(_popen("serve-shard", *common, *extra))
        _wait_serving(f"127.0.0.1:{shard1_port}", procs[0])  # base_port + 1 from the config
        _wait_serving(f"127.0.0.1:{flag_port}", procs[1])  # the flag wins
        shards = f"127.0.0.1:{flag_port},127.0.0.1:{shard1_port}"
        procs.append(_popen("serve-router", *common, "--shards", shards))
        _wait_serving(f"127.0.0.1:{router_port}", procs[2])  # router.port from the config
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=30)
    assert [p.returncode for p in procs] == [0, 0, 0]


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ANNFLEET, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
