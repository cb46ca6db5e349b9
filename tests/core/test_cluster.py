"""LocalCluster with replicas: real `annfleet serve-*` subprocesses on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from support import catalogue_bundle

from annfleet import cluster as cluster_module
from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.cluster import LocalCluster
from annfleet.config import ClusterConfig, RouterConfig, ShardsConfig, parse_shard_map
from annfleet.synthetic import make_catalogue


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    cat = make_catalogue(4000, 16, clusters=8, users=20, seed=3)
    return catalogue_bundle(tmp_path_factory.mktemp("b") / "b", cat)


def complete(client: Client, user: int) -> bool:
    result = client.retrieve(user, 10, timeout=5.0)
    return result.coverage.shards_answered == 2 and not result.coverage.degraded


def test_replicas_sigstop_kill_and_the_state_file(small_bundle: Bundle, tmp_path: Path) -> None:
    config = ClusterConfig(
        data_dir=str(tmp_path / "data"),
        shards=ShardsConfig(replicas=2, grace_s=1.0),
        router=RouterConfig(grace_s=1.0),
    )
    state_file = tmp_path / "cluster.json"
    cluster = LocalCluster(
        small_bundle.path, config, log_dir=tmp_path / "logs", state_file=state_file
    )
    shard_map = parse_shard_map(cluster.router.args[cluster.router.args.index("--shards") + 1])
    assert [len(replicas) for replicas in shard_map] == [2, 2]
    with cluster:
        state = json.loads(state_file.read_text())
        shards = [c for c in state["children"] if c["role"] == "shard"]
        assert sorted((c["shard"], c["replica"]) for c in shards) == [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
        ]
        assert [c["name"] for c in shards] == [
            "shard-00-r0",
            "shard-00-r1",
            "shard-01-r0",
            "shard-01-r1",
        ]
        assert len({c["target"] for c in shards}) == 4
        users = small_bundle.users()
        assert users is not None
        user = int(users[0][0])

        with Client(cluster.router_target, retries=0) as client:
            assert complete(client, user)
            # A hung replica (SIGSTOP): answers still come, from every shard.
            stopped = cluster.replicas[1][0]
            os.kill(stopped.pid, signal.SIGSTOP)
            try:
                assert all(complete(client, user) for _ in range(20))
            finally:
                os.kill(stopped.pid, signal.SIGCONT)

            # kill -9: no degraded answer; the supervisor restarts it and rewrites the state.
            victim = cluster.replicas[0][1]
            old_pid = victim.pid
            os.kill(old_pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while victim.exited() is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert all(complete(client, user) for _ in range(10))
            notes = cluster.restart_dead()
            assert notes and f"pid {old_pid}" in notes[0]
            state = json.loads(state_file.read_text())
            pid = next(c["pid"] for c in state["children"] if c["name"] == "shard-00-r1")
            assert pid == victim.pid != old_pid
            victim.wait_ready(120)
            assert all(complete(client, user) for _ in range(10))


def test_a_crash_looping_shard_backs_off_while_the_rest_keep_serving(
    small_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard that cannot start again (its bundle files gone) is restarted five times at
    once, then after a doubling wait; the router and the other shard keep answering (it
    used to stop the whole cluster), and once the files are back the shard serves again."""
    monkeypatch.setattr(cluster_module, "CRASH_BACKOFF_S", 1.0)
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle.path, bundle)
    config = ClusterConfig(
        data_dir=str(tmp_path / "data"),
        shards=ShardsConfig(grace_s=1.0),
        router=RouterConfig(grace_s=1.0),
    )
    cluster = LocalCluster(bundle, config, log_dir=tmp_path / "logs")
    users = small_bundle.users()
    assert users is not None
    user = int(users[0][0])

    def notes_until(text: str) -> list[str]:
        notes: list[str] = []
        deadline = time.monotonic() + 120
        while not any(text in note for note in notes):
            assert time.monotonic() < deadline, notes
            notes += cluster.restart_dead()
            time.sleep(0.05)
        return notes

    with cluster, Client(cluster.router_target, retries=0) as client:
        broken = cluster.replicas[1][0]
        others = [c for c in cluster.children if c is not broken]
        bundle.rename(tmp_path / "gone")  # its restarts cannot load the bundle
        os.kill(broken.pid, signal.SIGKILL)
        waiting = next(n for n in notes_until("restarting it in 1s") if "restarting it" in n)
        assert "6 deaths within a minute" in waiting and "no bundle at" in waiting
        assert "restarting it in 2s" in "".join(notes_until("restarting it in 2s"))
        waiting_child = next(c for c in cluster.describe()["children"] if c["pid"] == broken.pid)  # type: ignore[attr-defined]
        assert waiting_child["restart_at"] <= time.time() + 2.0  # what `annfleet status` shows
        assert all(c.exited() is None for c in others)
        answer = client.retrieve(user, 10, timeout=5.0)
        assert answer.coverage.shards_answered == 1 and answer.coverage.degraded

        (tmp_path / "gone").rename(bundle)  # mended: the next restart serves again
        notes_until("restarted as pid")
        broken.wait_ready(60)
        deadline = time.monotonic() + 30
        while not complete(client, user):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_an_interrupt_while_a_child_starts_waits_for_it_to_be_kept() -> None:
    """SIGINT / SIGTERM while `up` starts a child: the KeyboardInterrupt comes after the
    child's process is kept (so the cluster's stop reaches it), not inside Popen (before:
    now and then a shard left running after an interrupted `up`)."""
    previous = signal.signal(signal.SIGUSR1, cluster_module.interrupt)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt), cluster_module.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)  # the handler runs here, and holds the interrupt
            steps.append("kept")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert steps == ["kept"]
    with pytest.raises(KeyboardInterrupt):  # outside a section: at once
        signal.signal(signal.SIGUSR1, cluster_module.interrupt)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
        finally:
            signal.signal(signal.SIGUSR1, previous)
