"""`annfleet up` with `state.start_redis`: a real redis-server started before the router,
watched, listed by `annfleet status`, stopped last, and its append-only file in the data dir
keeping the live state across a restart of the whole cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import catalogue_bundle

from annfleet.bundle import Bundle
from annfleet.client import Client, RetrieveResult
from annfleet.cluster import LocalCluster, free_port, redis_ping
from annfleet.config import load_config
from annfleet.errors import ConfigError
from annfleet.synthetic import make_catalogue

ANNFLEET = [sys.executable, "-m", "annfleet.cli"]
K = 20


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    cat = make_catalogue(2000, 16, clusters=8, users=20, seed=5)
    return catalogue_bundle(tmp_path_factory.mktemp("b") / "b", cat)


def redis_config(tmp_path: Path, bundle: Bundle, redis_server: str = "redis-server") -> Path:
    shard_base = free_port(count=2)  # base_port + 1 too: 2 shards
    path = tmp_path / "redis.yaml"
    path.write_text(f"""
bundle: {bundle.path}
data_dir: {tmp_path / "data"}
shards: {{base_port: {shard_base}, metrics_base_port: -1, admin_base_port: -1, grace_s: 1.0}}
router: {{port: {free_port()}, metrics_port: -1, admin_port: -1, grace_s: 1.0,
          recall_sample_rate: 0.0}}
# trending weighs more than the ANN here, so its top items are in every list of k
sources: {{ann: {{budget_ms: 60000.0}}, trending: {{budget_ms: 60000.0, weight: 2.0}}}}
state: {{backend: redis, url: "redis://127.0.0.1:{free_port()}/0", start_redis: true,
         redis_server: {redis_server}, timeout_s: 2.0}}
""")
    return path


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed and tests/install-deps.sh could not install it "
            "(needs root and apt-get)"
        )
    return binary


class Up:
    """`annfleet up --config PATH` in a subprocess, read line by line."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [*ANNFLEET, "up", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []

    def wait_for(self, needle: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                if self.process.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not printed; got:\n{''.join(self.lines)}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=60)
        return rest


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()


def served(client: Client, user: int) -> RetrieveResult:
    """A Retrieve that read the live state (after a redis restart the router's first calls
    may still find the old connection gone: those answers say so in dropped_sources)."""
    for _ in range(50):
        result = client.retrieve(user, K, timeout=10.0)
        if "state" not in result.dropped_sources:
            return result
        time.sleep(0.1)
    raise AssertionError(f"the router never read its state store: {result.dropped_sources}")


def children(data: Path) -> dict[str, dict[str, object]]:
    state = json.loads((data / "cluster.json").read_text())
    return {c["name"]: c for c in state["children"]}


def test_up_starts_redis_first_keeps_state_across_a_cluster_restart_and_stops_it(
    small_bundle: Bundle, tmp_path: Path, ups: list[Up]
) -> None:
    redis_binary()
    config_path = redis_config(tmp_path, small_bundle)
    config = load_config(config_path)
    data = tmp_path / "data"
    users = small_bundle.users()
    assert users is not None
    alice, bob = int(users[0][0]), int(users[0][1])

    ups.append(Up(config_path))
    up = ups[-1]
    line = up.wait_for("router listening on")
    target = line.split()[3]
    assert up.lines[0].startswith("starting redis-server (live state), 2 shards")
    names = [ln.split()[0] for ln in up.lines if ln.startswith("  ")]
    assert names == ["redis", "shard-00", "shard-01", "router"]  # in start order
    redis = children(data)["redis"]
    assert redis["role"] == "redis" and redis["data"] == str(data / "redis")
    assert config.state.url.endswith(f"{redis['target']}/0")
    assert redis_ping(str(redis["target"]))

    status = subprocess.run(
        [*ANNFLEET, "status", "--config", str(config_path)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    redis_line = next(ln for ln in status.stdout.splitlines() if ln.strip().startswith("redis"))
    assert "SERVING" in redis_line and f"data in {data / 'redis'}" in redis_line

    with Client(target, timeout=10.0) as client:
        first = served(client, alice)
        item = int(first.ids[0])
        assert client.record_engagement([(alice, item, "like")]) == 1
        assert item not in served(client, alice).ids.tolist()

        # redis killed: the supervisor restarts it; the append-only file had the event.
        old_pid = int(redis["pid"])  # type: ignore[call-overload]
        os.kill(old_pid, signal.SIGKILL)
        note = up.wait_for("redis (pid", timeout=30)
        assert f"redis (pid {old_pid}) exited" in note and "restarted as pid" in note
        assert int(children(data)["redis"]["pid"]) != old_pid  # type: ignore[call-overload]
        assert item not in served(client, alice).ids.tolist()

    rest = up.stop()
    assert up.process.returncode == 0 and "stopped." in rest
    assert not redis_ping(str(redis["target"]))  # stopped with the cluster
    assert any((data / "redis").rglob("*.aof"))

    # The whole cluster again, on the same data dir: nothing was lost.
    ups.append(Up(config_path))
    target = ups[-1].wait_for("router listening on").split()[3]
    with Client(target, timeout=10.0) as client:
        again = served(client, alice)
        assert item not in again.ids.tolist()  # still seen
        others = served(client, bob)  # trending remembers alice's like
        by_id = dict(zip(others.ids.tolist(), others.sources_per_candidate, strict=True))
        assert "trending" in by_id.get(item, ()), others.source_counts


def test_start_redis_without_the_binary_is_a_clear_error(
    small_bundle: Bundle, tmp_path: Path
) -> None:
    config_path = redis_config(tmp_path, small_bundle, redis_server="no-such-redis-server")
    done = subprocess.run(
        [*ANNFLEET, "up", "--config", str(config_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "state.start_redis" in done.stderr and "'no-such-redis-server'" in done.stderr
    assert "not installed" in done.stderr
    with pytest.raises(ConfigError, match="config_path"):  # the router reads state.url there
        LocalCluster(small_bundle.path, load_config(config_path))


def test_redis_stops_when_up_is_killed_with_sigkill(
    small_bundle: Bundle, tmp_path: Path, ups: list[Up]
) -> None:
    """The shards and router watch their supervisor (--supervisor-pid); redis-server, not
    ours, is bound to it with PR_SET_PDEATHSIG. Before: it ran on, holding state.url's port."""
    redis_binary()
    ups.append(Up(redis_config(tmp_path, small_bundle)))
    up = ups[-1]
    up.wait_for("router listening on")
    started = children(tmp_path / "data")
    redis = started["redis"]
    assert redis_ping(str(redis["target"]))
    up.process.kill()
    up.process.wait(timeout=30)
    deadline = time.monotonic() + 20
    pids = [int(c["pid"]) for c in started.values()]  # type: ignore[call-overload]
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # not to outlive a failed test
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"left running: {left}"
    assert not redis_ping(str(redis["target"]))


def alive(pid: int) -> bool:
    """Running (not a zombie: the killed supervisor's children are reaped by init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
