"""Two-phase bundle rollouts through RouterAdmin, against real servers on port 0.

Two bundles with DISJOINT item-id sets (B's ids are A's + 10^8): every response names the
bundle that answered, and every id it returns must belong to that bundle, so a response
mixing bundles (a new user tower with old items, or shards of two versions) is visible.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import LoopThread

from annfleet.auth import metadata
from annfleet.bundle import MANIFEST, Bundle, content_id, sha256_file
from annfleet.client import AnnfleetError as ClientError
from annfleet.client import Client
from annfleet.config import RouterConfig, ShardsConfig
from annfleet.errors import ResourceExhausted
from annfleet.rollout_state import read_state
from annfleet.router.main import RouterServer, start_router
from annfleet.server.builder import build_bundle
from annfleet.server.holdings import Holdings
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import make_catalogue
from annfleet.v1 import admin_pb2, admin_pb2_grpc, shard_pb2, shard_pb2_grpc

TOKEN = "rollout-test-token"
AUTH = metadata(TOKEN)
OFFSET = 100_000_000
SHARDS = 3


def _build(root: Path, name: str, seed: int, offset: int) -> Bundle:
    cat = make_catalogue(3_000, 16, clusters=16, users=50, seed=seed)
    return build_bundle(
        root / name,
        cat.ids + offset,
        cat.vectors,
        num_shards=SHARDS,
        index_type="flat",
        index_params={},
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        tables={"popular_ids": cat.popular_ids + offset},
        progress=False,
    )


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    root = tmp_path_factory.mktemp("rollout-bundles")
    return _build(root, "a", 1, 0), _build(root, "b", 2, OFFSET)


def ids_of(bundle: Bundle) -> set[int]:
    ids: set[int] = set()
    for i in range(bundle.num_shards):
        ids.update(int(x) for x in np.load(bundle.shard_dir(i) / "ids.npy", allow_pickle=False))
    return ids


@dataclass
class Fleet:
    """Shard servers (admin ports on) and a router with its admin port, all in-process."""

    lt: LoopThread
    shards: list[ShardServer]
    router: RouterServer
    state: Path
    channel: grpc.Channel = field(init=False)
    admin: admin_pb2_grpc.RouterAdminStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.router.admin_port}")
        self.admin = admin_pb2_grpc.RouterAdminStub(self.channel)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    def rollout(self, bundle: Path | str, **fields: object) -> list[admin_pb2.RolloutProgress]:
        request = admin_pb2.RolloutRequest(bundle=str(bundle), holder="test", **fields)  # type: ignore[arg-type]
        return list(self.admin.Rollout(request, metadata=AUTH, timeout=60))

    def describe(self) -> list[shard_pb2.ShardInfo]:
        infos = []
        for shard in self.shards:
            with grpc.insecure_channel(f"127.0.0.1:{shard.admin_port}") as channel:
                stub = shard_pb2_grpc.ShardAdminStub(channel)
                infos.append(stub.Describe(shard_pb2.DescribeRequest(), metadata=AUTH, timeout=10))
        return infos

    def close(self) -> None:
        self.channel.close()
        self.lt.run(self.router.stop(0))
        for shard in self.shards:
            self.lt.run(shard.stop(0))


@pytest.fixture
def fleet(
    loop_thread: LoopThread, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> Iterator[Fleet]:
    a, _ = bundles
    config = ShardsConfig(updates_dir=str(tmp_path / "updates"))
    shards = [
        loop_thread.run(start_shard_server(a.path, i, config, admin_port=0, admin_token=TOKEN))
        for i in range(a.num_shards)
    ]
    state = tmp_path / "rollout.json"
    router = loop_thread.run(
        start_router(
            a.path,
            [f"127.0.0.1:{s.port}" for s in shards],
            RouterConfig(default_timeout_s=5.0, shard_timeout_s=5.0, release_grace_s=30.0),
            admin_port=0,
            admin_token=TOKEN,
            shard_admin_targets=[f"127.0.0.1:{s.admin_port}" for s in shards],
            rollout_state=state,
            metrics_port=0,  # the status page (test_status_page_shows_both_bundles)
        )
    )
    f = Fleet(loop_thread, shards, router, state)
    yield f
    f.close()


class Load:
    """A background thread of Retrieve and Search calls through the real client."""

    def __init__(self, target: str, dim: int) -> None:
        self.client = Client(target, timeout=10.0, retries=0)
        self.queries = np.random.default_rng(0).standard_normal((8, dim)).astype(np.float32)
        self.answers: list[tuple[str, np.ndarray]] = []
        self.errors: list[str] = []
        self.degraded: list[str] = []  # answers missing a shard: the bundles that gave them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                if n % 2:
                    r = self.client.retrieve(1 + n % 50, 20)
                    self.answers.append((r.bundle_id, np.asarray(r.ids)))
                    if r.coverage.degraded:
                        self.degraded.append(r.bundle_id)
                else:
                    s = self.client.search(self.queries[n % 8], 20)
                    self.answers.append((s.bundle_id, np.asarray(s.ids).ravel()))
                    if s.coverage.degraded:
                        self.degraded.append(s.bundle_id)
            except ClientError as exc:
                self.errors.append(f"{exc.code.name}: {exc.details}")
            n += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def wait_for(self, bundle_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.answers)
        while time.monotonic() < deadline:
            if any(b == bundle_id for b, _ in self.answers[start:]):
                return
            time.sleep(0.01)
        raise AssertionError(f"no answer from {bundle_id} within {timeout}s")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def assert_no_mixing(answers: list[tuple[str, np.ndarray]], id_sets: dict[str, set[int]]) -> None:
    for bundle_id, ids in answers:
        assert bundle_id in id_sets, f"unknown bundle {bundle_id}"
        returned = {int(i) for i in ids if i >= 0}
        foreign = returned - id_sets[bundle_id]
        assert not foreign, (
            f"{bundle_id} answered with ids of another bundle: {sorted(foreign)[:5]}"
        )


def test_swap_under_load_then_rollback(fleet: Fleet, bundles: tuple[Bundle, Bundle]) -> None:
    a, b = bundles
    id_sets = {a.id: ids_of(a), b.id: ids_of(b)}
    assert not id_sets[a.id] & id_sets[b.id]
    with Load(fleet.target, a.dim) as load:
        load.wait_for(a.id)
        progress = fleet.rollout(b.path)
        load.wait_for(b.id)
        rolled = fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
        load.wait_for(a.id)
        deadline = time.monotonic() + 30  # a few more answers (slow on a loaded machine)
        while len(load.answers) <= 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert load.errors == []
    assert len(load.answers) > 20
    assert_no_mixing(load.answers, id_sets)
    seen = [bundle_id for bundle_id, _ in load.answers]
    # A, then B, then A again: no answer from A between the flip and the rollback.
    first_b, last_b = seen.index(b.id), len(seen) - 1 - seen[::-1].index(b.id)
    assert set(seen[first_b : last_b + 1]) == {b.id}

    phases = [p.phase for p in progress]
    prepares = [p for p in progress if p.phase == admin_pb2.PHASE_PREPARE]
    assert sorted(p.shard_id for p in prepares) == list(range(SHARDS))
    assert all(p.message == "prepared" and p.target for p in prepares)
    assert phases[-3:] == [
        admin_pb2.PHASE_CARRY_UPDATES,
        admin_pb2.PHASE_FLIP,
        admin_pb2.PHASE_DONE,
    ]
    assert progress[-1].status.stable_bundle_id == b.id
    assert progress[-1].status.previous_bundle_id == a.id

    # Rolled back: A stable, B still held until its short drain, then released.
    assert rolled.stable_bundle_id == a.id
    infos = fleet.describe()
    assert all(info.bundle_id == a.id for info in infos)
    state = read_state(fleet.state)
    assert state is not None and state.stable is not None and state.stable.bundle_id == a.id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(len(info.bundles) == 1 for info in fleet.describe()):
            break
        time.sleep(0.1)
    assert [[h.bundle_id for h in info.bundles] for info in fleet.describe()] == [[a.id]] * SHARDS


def test_a_second_router_follows_a_rollout_and_a_rollback_through_the_first(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    """Two routers over the same shards (as a Deployment of router pods): a rollout and a
    rollback run through one; the other follows each, and serves every request in full,
    through the old bundle's release on the shards (before: once the grace had passed,
    every answer of the second router missed every shard)."""
    a, b = bundles
    second = another_router(fleet, a, follow_interval_s=0.2)
    id_sets = {a.id: ids_of(a), b.id: ids_of(b)}
    follows_before = followed()
    try:
        with Load(f"127.0.0.1:{second.port}", a.dim) as load:
            load.wait_for(a.id)
            fleet.rollout(b.path, grace_s=1.0)
            load.wait_for(b.id)
            deadline = time.monotonic() + 30  # the first router releases a on the shards
            while time.monotonic() < deadline and any(len(i.bundles) > 1 for i in fleet.describe()):
                time.sleep(0.1)
            assert [[h.bundle_id for h in i.bundles] for i in fleet.describe()] == [[b.id]] * SHARDS
            mark = len(load.answers)
            load.wait_for(b.id)  # answers after the release
            # Rolled out again, then rolled back: the second router goes back at once (it kept
            # the bundle it left).
            fleet.rollout(a.path, grace_s=30.0)
            load.wait_for(a.id)
            fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
            load.wait_for(b.id)
        status = fleet.lt.run(second.rollouts.status(describe=False))
    finally:
        fleet.lt.run(second.stop(0))
    assert load.errors == [] and load.degraded == []
    assert len(load.answers) > mark
    assert_no_mixing(load.answers, id_sets)
    assert status.stable_bundle_id == b.id and status.previous_bundle_id == ""
    events = [(e["event"], e["bundle_id"]) for e in second.rollouts._history]
    assert events == [("followed", b.id), ("followed", a.id), ("followed", b.id)]
    assert followed() - follows_before == 3


def test_a_router_that_cannot_load_the_shards_bundle_keeps_its_own_and_says_so(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    """The shards serve a bundle (rolled out through another router) that this router cannot
    load (gone from its disk): it keeps serving its own, counts the failure once and notes
    it in its history."""
    a, b = bundles
    copy = Path(shutil.copytree(b.path, tmp_path / "b-copy"))
    second = another_router(fleet, a, follow_interval_s=3600)  # follows when asked below
    try:
        fleet.rollout(copy, grace_s=30.0)
        copy.rename(tmp_path / "moved")  # the shards hold it; this router's disk lost it
        failed = REGISTRY.get_sample_value("annfleet_router_follows_total", {"outcome": "failed"})
        assert fleet.lt.run(second.rollouts.follow()) == ""
        assert fleet.lt.run(second.rollouts.follow()) == ""  # counted once, not per try
        with Client(f"127.0.0.1:{second.port}", timeout=10) as client:
            assert client.retrieve(3, 10).bundle_id == a.id  # its own, held for the grace
    finally:
        fleet.lt.run(second.stop(0))
    after = REGISTRY.get_sample_value("annfleet_router_follows_total", {"outcome": "failed"})
    assert (after or 0.0) - (failed or 0.0) == 1
    assert [e["event"] for e in second.rollouts._history] == ["follow-failed"]


def another_router(fleet: Fleet, bundle: Bundle, follow_interval_s: float) -> RouterServer:
    """A second router over the fleet's shards (their admin ports and token: it follows),
    no admin port of its own, on ``bundle``."""
    return fleet.lt.run(
        start_router(
            bundle.path,
            [f"127.0.0.1:{s.port}" for s in fleet.shards],
            RouterConfig(
                default_timeout_s=5.0, shard_timeout_s=5.0, follow_interval_s=follow_interval_s
            ),
            admin_token=TOKEN,
            shard_admin_targets=[f"127.0.0.1:{s.admin_port}" for s in fleet.shards],
        )
    )


def followed() -> float:
    """annfleet_router_follows_total{outcome="followed"} of this process's routers."""
    value = REGISTRY.get_sample_value("annfleet_router_follows_total", {"outcome": "followed"})
    return value or 0.0


def test_rollout_commits_and_releases_after_grace(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    a, b = bundles
    done = fleet.rollout(b.path, grace_s=0.5)[-1]
    assert done.phase == admin_pb2.PHASE_DONE
    infos = fleet.describe()
    assert all(info.bundle_id == b.id for info in infos)  # committed everywhere
    assert all({h.bundle_id for h in info.bundles} == {a.id, b.id} for info in infos)
    state = read_state(fleet.state)
    assert state is not None and state.stable is not None and state.previous is not None
    assert (state.stable.bundle_id, state.previous.bundle_id, state.holder) == (b.id, a.id, "")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(i.bundles) > 1 for i in fleet.describe()):
        time.sleep(0.1)
    assert [[h.bundle_id for h in info.bundles] for info in fleet.describe()] == [[b.id]] * SHARDS
    with pytest.raises(grpc.RpcError) as err:
        fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with Client(fleet.target, timeout=10) as client:
        assert client.retrieve(3, 10).bundle_id == b.id


def test_admin_calls_reach_a_replica_restarted_while_its_channel_backs_off(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    """A shard that restarts leaves the router's admin channel to it in reconnect backoff,
    where calls fail at once with UNAVAILABLE although the process is back: the router
    retries such a call once on a fresh channel, so Status and a rollback right after the
    restart reach the replica."""
    a, b = bundles
    assert fleet.rollout(b.path)[-1].phase == admin_pb2.PHASE_DONE
    down = fleet.shards[1]
    fleet.lt.run(down.stop(0))
    status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert [bool(r.error) for r in status.replicas] == [i == 1 for i in range(SHARDS)]
    fleet.shards[1] = fleet.lt.run(
        start_shard_server(
            b.path,
            1,
            ShardsConfig(updates_dir=str(tmp_path / "updates-restarted")),
            port=down.port,
            admin_port=down.admin_port,
            admin_token=TOKEN,
            also_hold=[a.path],
        )
    )
    status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert [r.error for r in status.replicas] == [""] * SHARDS
    assert set(status.replicas[1].held_bundle_ids) == {a.id, b.id}
    fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
    assert [info.bundle_id for info in fleet.describe()] == [a.id] * SHARDS


def _corrupt_copy(bundle: Bundle, dest: Path) -> Path:
    shutil.copytree(bundle.path, dest)
    vectors = dest / bundle.shard(1)["dir"] / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-8:] = b"\xff" * 8
    vectors.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("kind", ["corrupt", "missing"])
def test_failed_prepare_aborts_and_nothing_changes(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path, kind: str
) -> None:
    """A bundle no replica can prepare aborts the rollout. (One the cluster cannot serve is
    refused before any replica is asked: test_a_bundle_the_cluster_cannot_serve_is_refused_...)"""
    a, b = bundles
    if kind == "corrupt":
        path = _corrupt_copy(b, tmp_path / "corrupt")
    else:
        path = tmp_path / "no-such-bundle"
    with pytest.raises(grpc.RpcError) as err:
        fleet.rollout(path)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    expected = {
        "corrupt": ["aborted", f"{a.id} keeps serving", "shard 1", "checksum mismatch"],
        "missing": [str(path)],
    }[kind]
    assert all(part in details for part in expected), details
    # Nothing changed: A serves, no replica holds anything else, the router answers from A.
    assert [[h.bundle_id for h in i.bundles] for i in fleet.describe()] == [[a.id]] * SHARDS
    with Client(fleet.target, timeout=10) as client:
        assert client.retrieve(3, 10).bundle_id == a.id
    status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert (status.stable_bundle_id, status.previous_bundle_id, status.rollout_holder) == (
        a.id,
        "",
        "",
    )


def test_concurrent_rollout_is_refused(fleet: Fleet, bundles: tuple[Bundle, Bundle]) -> None:
    _, b = bundles
    # Hold shard 2's loader (one thread) so the first rollout's Prepare waits there.
    gate = threading.Event()
    fleet.shards[2].loader.submit(gate.wait, 30)
    first: list[object] = []
    runner = threading.Thread(target=lambda: first.append(fleet.rollout(b.path)), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
            if status.rollout_holder:
                break
            time.sleep(0.02)
        assert status.rollout_holder == "test"
        with pytest.raises(grpc.RpcError) as err:
            fleet.rollout(b.path)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "held by test" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.ABORTED
    finally:
        gate.set()
        runner.join(60)
    assert first and first[0][-1].status.stable_bundle_id == b.id  # type: ignore[index]


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (metadata("wrong-token"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_admin_calls_need_the_token(
    fleet: Fleet,
    bundles: tuple[Bundle, Bundle],
    auth: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
) -> None:
    a, b = bundles
    calls = [
        lambda: fleet.admin.Status(admin_pb2.StatusRequest(), metadata=auth, timeout=10),
        lambda: fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=auth, timeout=10),
        lambda: list(
            fleet.admin.Rollout(
                admin_pb2.RolloutRequest(bundle=str(b.path)), metadata=auth, timeout=10
            )
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code
    assert [i.bundle_id for i in fleet.describe()] == [a.id] * SHARDS


def test_bad_requests_get_precise_statuses(fleet: Fleet, bundles: tuple[Bundle, Bundle]) -> None:
    a, _ = bundles
    for request, code in [
        (admin_pb2.RolloutRequest(bundle=""), grpc.StatusCode.INVALID_ARGUMENT),
        (
            admin_pb2.RolloutRequest(bundle=str(a.path), grace_s=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (admin_pb2.RolloutRequest(bundle=str(a.path)), grpc.StatusCode.FAILED_PRECONDITION),
        (admin_pb2.RolloutRequest(bundle="s3://x/y"), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            list(fleet.admin.Rollout(request, metadata=AUTH, timeout=10))
        assert err.value.code() == code, err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_rollout_on_a_local_cluster_and_a_restarted_replica_follows_the_state(
    bundles: tuple[Bundle, Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`annfleet rollout` against real processes; a shard process that dies after the
    rollout comes back on the rolled-out bundle (rollout.json), not its --bundle."""
    from annfleet.cli import main
    from annfleet.cluster import LocalCluster
    from annfleet.config import AdminConfig, ClusterConfig

    a, b = bundles
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    config = ClusterConfig(data_dir=str(tmp_path / "data"), admin=AdminConfig(str(token), ""))
    state = tmp_path / "data" / "rollout.json"
    with LocalCluster(a.path, config, rollout_state=state) as cluster:
        admin = cluster.router_admin_target
        assert admin
        base = ["rollout", "--router", admin, "--token-file", str(token)]
        assert main([*base, "--bundle", str(b.path)]) == 0
        out = capsys.readouterr().out
        prepares = [line for line in out.splitlines() if "] prepare " in line]
        assert len(prepares) == SHARDS and all(line.endswith("prepared") for line in prepares)
        assert f"stable  {b.id}" in out and "rollout running" not in out
        with Client(cluster.router_target, timeout=10) as client:
            assert client.retrieve(2, 10).bundle_id == b.id

        shard = cluster.shards[1]
        assert shard.process is not None
        shard.process.kill()
        shard.process.wait()
        cluster.restart_dead()
        shard.wait_ready(120)
        with grpc.insecure_channel(shard.target) as channel:
            info = shard_pb2_grpc.IndexShardStub(channel).Info(shard_pb2.InfoRequest(), timeout=10)
        assert info.bundle_id == b.id  # from rollout.json, not --bundle a
        # The router takes the replica back once its health stream says SERVING again
        # (the channel's reconnect backoff is capped at 1 s).
        deadline = time.monotonic() + 30
        with Client(cluster.router_target, timeout=10) as client:
            while (result := client.retrieve(2, 10)).coverage.shards_answered < SHARDS:
                assert time.monotonic() < deadline, result.coverage
                time.sleep(0.1)
        assert result.bundle_id == b.id

        assert main([*base, "--rollback"]) == 0
        with Client(cluster.router_target, timeout=10) as client:
            assert client.retrieve(2, 10).bundle_id == a.id
        assert main([*base, "--bundle", str(tmp_path / "nowhere")]) == 1
        assert "FAILED_PRECONDITION" in capsys.readouterr().err
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token\n")
        assert main(["rollout", "--router", admin, "--token-file", str(wrong), "--status"]) == 1
        assert "PERMISSION_DENIED" in capsys.readouterr().err


# ---------------------------------------------------------------------------- canaries
def test_user_buckets_are_stable_and_a_moved_percentage_moves_only_that_share() -> None:
    from annfleet.router.variants import user_bucket

    users = np.arange(1, 200_001, dtype=np.int64)
    buckets = user_bucket(users)
    assert np.array_equal(buckets, user_bucket(users))  # deterministic
    at10, at20 = buckets < 10, buckets < 20
    assert abs(at10.mean() - 0.10) < 0.005 and abs(at20.mean() - 0.20) < 0.005
    assert not (at10 & ~at20).any()  # nobody leaves the canary when it grows
    moved = at20 & ~at10
    assert abs(moved.mean() - 0.10) < 0.005  # only the 10% between 10 and 20 moved


def _variants(fleet: Fleet, users: range) -> dict[int, tuple[str, str, set[int]]]:
    with Client(fleet.target, timeout=10) as client:
        out = {}
        for user in users:
            r = client.retrieve(user, 10)
            out[user] = (r.variant, r.bundle_id, {int(i) for i in r.ids})
        return out


def test_canary_is_stable_by_user_then_promoted(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    from annfleet.router.variants import user_bucket

    a, b = bundles
    id_sets = {a.id: ids_of(a), b.id: ids_of(b)}
    users = range(1, 51)
    fleet.rollout(b.path, canary_percent=30)
    at30 = _variants(fleet, users)
    fleet.rollout(b.path, canary_percent=60)  # move the share: no prepare, same bundle
    at60 = _variants(fleet, users)
    for seen in (at30, at60):
        for variant, bundle_id, ids in seen.values():
            assert (variant == "canary") == (bundle_id == b.id)
            assert ids <= id_sets[bundle_id]
    for percent, seen in ((30, at30), (60, at60)):
        expected = {u for u in users if user_bucket(u)[0] < percent}
        assert {u for u, (v, _, _) in seen.items() if v == "canary"} == expected
    canary30 = {u for u, (v, _, _) in at30.items() if v == "canary"}
    canary60 = {u for u, (v, _, _) in at60.items() if v == "canary"}
    assert canary30 <= canary60 and 0 < len(canary30) < len(canary60) < len(users)
    # shards serve the stable bundle to unpinned searches; the canary is only held
    assert all(info.bundle_id == a.id for info in fleet.describe())
    status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert [(v.name, v.bundle_id, v.percent) for v in status.variants] == [
        ("stable", a.id, 40.0),
        ("canary", b.id, 60.0),
    ]
    with pytest.raises(grpc.RpcError) as err:  # another bundle while a canary is live
        fleet.rollout(a.path)
    assert err.value.code() == grpc.StatusCode.ABORTED and "promote or abort" in err.value.details()

    # force: this fleet samples no live recall (test_recall.py covers the gate)
    promoted = fleet.admin.Promote(admin_pb2.PromoteRequest(force=True), metadata=AUTH, timeout=10)
    assert (promoted.stable_bundle_id, promoted.previous_bundle_id) == (b.id, a.id)
    after = _variants(fleet, users)
    assert {(v, bundle_id) for v, bundle_id, _ in after.values()} == {("stable", b.id)}
    assert all(info.bundle_id == b.id for info in fleet.describe())


def test_canary_abort_returns_everyone_to_stable(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    a, b = bundles
    with pytest.raises(grpc.RpcError) as err:  # a share alone needs a live canary
        fleet.rollout("", canary_percent=50)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no canary is live" in err.value.details()
    fleet.rollout(b.path, canary_percent=50)
    assert {bid for _, bid, _ in _variants(fleet, range(1, 51)).values()} == {a.id, b.id}
    fleet.admin.Abort(admin_pb2.AbortRequest(), metadata=AUTH, timeout=10)
    assert {(v, bid) for v, bid, _ in _variants(fleet, range(1, 51)).values()} == {("stable", a.id)}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(i.bundles) > 1 for i in fleet.describe()):
        time.sleep(0.1)
    assert [[h.bundle_id for h in info.bundles] for info in fleet.describe()] == [[a.id]] * SHARDS
    for call in (
        lambda: fleet.admin.Abort(admin_pb2.AbortRequest(), metadata=AUTH, timeout=10),
        lambda: fleet.admin.Promote(admin_pb2.PromoteRequest(), metadata=AUTH, timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_status_page_shows_canary_then_previous_bundle(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    """The router's /status.json follows a canary and its promotion: the bundles it serves
    with their share of users, then the old one held for a rollback; every shard replica
    reports the bundle it serves and the ones it holds."""
    import json
    import urllib.request

    a, b = bundles
    url = f"http://127.0.0.1:{fleet.router.grpc.metrics_port}/status.json"

    def status() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return dict(json.loads(reply.read()))

    fleet.rollout(b.path, canary_percent=25)
    canary = status()
    assert [(x["bundle_id"], x["role"], x["percent"]) for x in canary["bundles"]] == [
        (a.id, "active", 75.0),
        (b.id, "canary", 25.0),
    ]
    assert [(v["name"], v["bundle_id"]) for v in canary["rollout"]["variants"]] == [
        ("stable", a.id),
        ("canary", b.id),
    ]
    replicas = [r for shard in canary["shards"] for r in shard["replicas"]]
    assert all(r["bundle_id"] == a.id and r["held"] == [b.id] for r in replicas)

    fleet.admin.Promote(admin_pb2.PromoteRequest(force=True), metadata=AUTH, timeout=10)
    promoted = status()
    assert [(x["bundle_id"], x["role"]) for x in promoted["bundles"]] == [
        (b.id, "active"),
        (a.id, "previous"),
    ]
    assert promoted["bundles"][1]["release_at"] > time.time()
    assert promoted["rollout"]["holder"] == ""  # nothing running
    replicas = [r for shard in promoted["shards"] for r in shard["replicas"]]
    assert len(replicas) == SHARDS
    assert all(r["bundle_id"] == b.id and r["held"] == [a.id] for r in replicas)
    assert [r["num_items"] for r in replicas] == [b.shard(i)["num_items"] for i in range(SHARDS)]


@dataclass(frozen=True)
class Uneven:
    """A bundle whose shards hold 90% / 5% / 5% of its items (A's hold a third each)."""

    bundle: Bundle
    ids: np.ndarray
    vectors: np.ndarray


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Uneven:
    from annfleet.partition import shard_of

    cat = make_catalogue(9_000, 16, clusters=16, users=50, seed=4)
    ids = cat.ids + 2 * OFFSET
    owner = shard_of(ids, SHARDS)
    keep = np.concatenate(
        [np.flatnonzero(owner == 0)[:2700], *(np.flatnonzero(owner == s)[:150] for s in (1, 2))]
    )
    ids, vectors = ids[keep], cat.vectors[keep]
    bundle = build_bundle(
        tmp_path_factory.mktemp("uneven") / "c",
        ids,
        vectors,
        num_shards=SHARDS,
        index_type="flat",
        index_params={},
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        tables={"popular_ids": ids[:100]},
        progress=False,
    )
    return Uneven(bundle, ids, vectors)


@pytest.fixture
def replicated_fleet(
    loop_thread: LoopThread, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> Iterator[tuple[Fleet, list[list[ShardServer]]]]:
    """Fleet with 2 replicas per shard (each with its own admin port)."""
    a, _ = bundles
    config = ShardsConfig(updates_dir=str(tmp_path / "updates"))
    groups = [
        [
            loop_thread.run(
                start_shard_server(a.path, i, config, admin_port=0, admin_token=TOKEN, replica=r)
            )
            for r in range(2)
        ]
        for i in range(a.num_shards)
    ]
    every = [s for group in groups for s in group]
    router = loop_thread.run(
        start_router(
            a.path,
            [[f"127.0.0.1:{s.port}" for s in group] for group in groups],
            # oversample 2.6: shard 0 of the uneven bundle (90%) holds up to 48 of a query's
            # top 50, asked for ceil(50 * 0.9 * 2.6) -> 50 hits; asked by A's shares (a
            # third) it would get 44. Shards 1 and 2 (5%, up to 6 of the top 50) get 7.
            RouterConfig(
                default_timeout_s=5.0, shard_timeout_s=5.0, release_grace_s=30.0, oversample=2.6
            ),
            admin_port=0,
            admin_token=TOKEN,
            shard_admin_targets=[f"127.0.0.1:{s.admin_port}" for s in every],
            rollout_state=tmp_path / "rollout.json",
        )
    )
    f = Fleet(loop_thread, every, router, tmp_path / "rollout.json")
    yield f, groups
    f.close()


def test_rollout_with_replicas_prepares_every_replica_and_keeps_the_replica_groups(
    replicated_fleet: tuple[Fleet, list[list[ShardServer]]],
    uneven: Uneven,
    bundles: tuple[Bundle, Bundle],
) -> None:
    """2 replicas per shard: every replica prepares and commits the new bundle; the flipped
    router keeps its replica groups (health, balancing, retry on the other replica) and asks
    each shard for hits by the NEW bundle's shard sizes (exact top-k on an uneven bundle)."""
    from support import exact_topk

    from annfleet.router.scatter import shard_shares

    fleet, groups = replicated_fleet
    a, b = bundles[0], uneven.bundle

    def state():  # type: ignore[no-untyped-def]
        s = fleet.router.service.state
        assert s is not None
        return s

    def statuses() -> list[list[str]]:
        return [[r.status for r in g.replicas] for _, g in sorted(state().scatter.groups.items())]

    deadline = time.monotonic() + 30
    while statuses() != [["SERVING", "SERVING"]] * SHARDS:
        assert time.monotonic() < deadline, statuses()
        time.sleep(0.05)
    old_groups = dict(state().scatter.groups)

    progress = fleet.rollout(b.path)
    assert progress[-1].phase == admin_pb2.PHASE_DONE
    prepared = {(p.shard_id, p.target) for p in progress if p.phase == admin_pb2.PHASE_PREPARE}
    assert prepared == {
        (i, f"127.0.0.1:{s.admin_port}") for i, group in enumerate(groups) for s in group
    }
    infos = fleet.describe()
    assert len(infos) == 2 * SHARDS and all(i.bundle_id == b.id for i in infos)

    new = state()
    assert new.bundle.id == b.id
    assert all(new.scatter.groups[i] is old_groups[i] for i in range(SHARDS))
    assert statuses() == [["SERVING", "SERVING"]] * SHARDS
    assert new.scatter.shares == shard_shares(b) and new.scatter.shares[0] == 0.9

    queries = uneven.vectors[:40] + np.float32(0.01)
    _, expect = exact_topk(uneven.vectors, uneven.ids, queries, 50)
    with Client(fleet.target, timeout=10, retries=0) as client:
        for q, want in zip(queries, expect, strict=True):
            got = client.search(q, 50)
            assert got.bundle_id == b.id and not got.coverage.degraded
            # The exact top-50 scores (ids may swap at float32 ties); a shard asked for too
            # few hits leaves holes here.
            np.testing.assert_allclose(got.scores[0], want, rtol=1e-5, atol=1e-5)
        # Replica 0 of every shard gone: the groups carried over retry and route to
        # replica 1, and their health watch takes replica 0 out of rotation.
        before = [g.replicas[1].answered for _, g in sorted(new.scatter.groups.items())]
        for group in groups:
            fleet.lt.run(group[0].stop(0))
        fleet.shards = [group[1] for group in groups]  # close() stops only the live ones
        for user in range(1, 21):
            got_r = client.retrieve(user, 10)
            assert got_r.bundle_id == b.id
            assert got_r.coverage.shards_answered == SHARDS and not got_r.coverage.degraded
    after = [g.replicas[1].answered for _, g in sorted(new.scatter.groups.items())]
    assert all(x > y for x, y in zip(after, before, strict=True)), (before, after)
    deadline = time.monotonic() + 30
    while any(s[0] == "SERVING" for s in statuses()):
        assert time.monotonic() < deadline, statuses()
        time.sleep(0.05)
    assert a.id != b.id


# ---------------------------------------------------------------------------- compatibility
# A rollout of a bundle the cluster cannot serve is refused before any replica prepares it,
# and the serving bundle (and the rollback target) stay as they were; a bundle that changes
# the dimension or the metric along with its own user table is rolled out.
DIM = 16  # the fleet's bundles' dimension


def _catalogue_bundle(dest: Path, dim: int, *, metric: str = "ip", shards: int = SHARDS) -> Bundle:
    """A bundle of ``dim``-d items with a user table of the same dimension."""
    cat = make_catalogue(600, dim, clusters=4, users=50, seed=dim)
    return build_bundle(
        dest,
        cat.ids + 7 * 10**8,
        cat.vectors,
        num_shards=shards,
        index_type="flat",
        index_params={},
        metric=metric,
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        progress=False,
    )


def _with_user_vectors(bundle: Bundle, dest: Path, vectors: np.ndarray) -> Path:
    """A copy of ``bundle`` whose user table holds ``vectors`` (a stale table of another
    model beside new items: what the builder refuses, assembled by hand), its manifest's
    checksums and id updated so that it passes every sha256 check."""
    shutil.copytree(bundle.path, dest)
    rel = bundle.manifest["users"]["vectors"]
    np.save(dest / rel, vectors.astype(np.float32))
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["files"][rel] = sha256_file(dest / rel)
    manifest["bundle_id"] = content_id(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dest


def _rollout_until_refused(fleet: Fleet, path: Path) -> tuple[grpc.RpcError, list[int]]:
    """The rollout's error and the phases it reported before it."""
    request = admin_pb2.RolloutRequest(bundle=str(path), holder="test")
    phases: list[int] = []
    with pytest.raises(grpc.RpcError) as err:
        for progress in fleet.admin.Rollout(request, metadata=AUTH, timeout=60):
            phases.append(progress.phase)
    return err.value, phases


def assert_serving(fleet: Fleet, stable: str, previous: str = "") -> None:
    """``stable`` serves everywhere, replicas hold nothing new, no rollout is running."""
    held = {stable, previous} - {""}
    assert [{h.bundle_id for h in i.bundles} for i in fleet.describe()] == [held] * SHARDS
    assert all(i.bundle_id == stable for i in fleet.describe())
    status = fleet.admin.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert (status.stable_bundle_id, status.previous_bundle_id, status.rollout_holder) == (
        stable,
        previous,
        "",
    )
    with Client(fleet.target, timeout=10) as client:
        assert client.retrieve(3, 10).bundle_id == stable
        query = np.ones(DIM, np.float32)
        assert client.search(query, 5).bundle_id == stable


def assert_rolls_back_to(fleet: Fleet, bundle_id: str) -> None:
    """The rollback target ``bundle_id`` is still held: a rollback serves it at once."""
    fleet.admin.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=10)
    with Client(fleet.target, timeout=10) as client:
        assert client.retrieve(3, 10).bundle_id == bundle_id


def _items_only(path: Path, seed: int) -> Bundle:
    """A bundle of items alone: no user tower, no user table."""
    cat = make_catalogue(600, DIM, clusters=4, users=5, seed=seed)
    return build_bundle(
        path,
        cat.ids,
        cat.vectors,
        num_shards=SHARDS,
        index_type="flat",
        index_params={},
        progress=False,
    )


@pytest.mark.parametrize("kind", ["stale-user-table", "no-users", "two-shards"])
def test_a_bundle_the_cluster_cannot_serve_is_refused_before_any_replica_prepares(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path, kind: str
) -> None:
    """B is rolled out first, so A is held as the rollback target: a refusal keeps both."""
    a, b = bundles
    assert fleet.rollout(b.path)[-1].phase == admin_pb2.PHASE_DONE
    if kind == "stale-user-table":  # new 32-d items, the user table of the 16-d model
        new = _catalogue_bundle(tmp_path / "new", 2 * DIM)
        stale = np.random.default_rng(0).standard_normal((50, DIM))
        path = _with_user_vectors(new, tmp_path / "stale", stale)
        expected = [f"its user table's vectors are {DIM}-d, its items are {2 * DIM}-d"]
    elif kind == "no-users":
        path = _items_only(tmp_path / "items-only", seed=4).path
        expected = ["has no user tower or user table", "every Retrieve would fail"]
    else:
        path = _catalogue_bundle(tmp_path / "two", DIM, shards=2).path
        expected = [f"it has 2 shards, this cluster has {SHARDS}"]
    refused = Bundle.open(path, verify=False).id
    error, phases = _rollout_until_refused(fleet, path)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details() or ""
    head = f"bundle {refused} refused before any replica prepared it, {b.id} keeps serving"
    assert all(part in details for part in [head, *expected]), details
    assert admin_pb2.PHASE_PREPARE not in phases
    assert_serving(fleet, b.id, previous=a.id)
    assert_rolls_back_to(fleet, a.id)  # nothing already loaded was lost


def test_the_cli_names_the_refused_bundle_and_what_differs(
    fleet: Fleet,
    bundles: tuple[Bundle, Bundle],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from annfleet.cli import main

    a, _ = bundles
    new = _catalogue_bundle(tmp_path / "new", 2 * DIM)
    stale = np.random.default_rng(1).standard_normal((50, DIM))
    path = _with_user_vectors(new, tmp_path / "stale", stale)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    admin = f"127.0.0.1:{fleet.router.admin_port}"
    code = main(["rollout", "--router", admin, "--token-file", str(token), "--bundle", str(path)])
    assert code == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.startswith("annfleet rollout: FAILED_PRECONDITION: bundle ")
    assert f"{a.id} keeps serving" in captured.err
    assert f"user table's vectors are {DIM}-d, its items are {2 * DIM}-d" in captured.err
    assert "] prepare " not in captured.out
    assert_serving(fleet, a.id)


def test_force_rolls_out_a_bundle_without_users_for_search_only(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from annfleet.cli import main

    items_only = _items_only(tmp_path / "items-only", seed=5)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    admin = f"127.0.0.1:{fleet.router.admin_port}"
    base = ["rollout", "--router", admin, "--token-file", str(token), "--bundle"]
    assert main([*base, str(items_only.path)]) == 1
    assert "roll it out with force (annfleet rollout --force)" in capsys.readouterr().err
    assert main([*base, str(items_only.path), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"router loaded {items_only.id} ({DIM}-d items, no user tower or table" in out
    assert f"stable  {items_only.id}" in out
    with Client(fleet.target, timeout=10) as client:
        query = np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
        assert client.search(query, 5).bundle_id == items_only.id
        with pytest.raises(ClientError) as err:
            client.retrieve(3, 10)
        assert err.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("dim", "metric"), [(2 * DIM, "ip"), (DIM, "l2")])
def test_a_new_dimension_or_metric_with_its_own_user_table_rolls_out(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path, dim: int, metric: str
) -> None:
    """Compatibility is between the new bundle's own parts, not between old and new: its
    user table embeds users of its items' dimension, the router merges by its metric."""
    a, _ = bundles
    new = _catalogue_bundle(tmp_path / "new", dim, metric=metric)
    progress = fleet.rollout(new.path)
    assert progress[0].phase == admin_pb2.PHASE_ROUTER_LOAD
    assert f"user table and items {dim}-d" in progress[0].message
    assert progress[-1].status.stable_bundle_id == new.id
    items = {
        int(i): np.load(new.shard_dir(s) / "vectors.npy")[n]
        for s in range(SHARDS)
        for n, i in enumerate(np.load(new.shard_dir(s) / "ids.npy"))
    }
    ids = np.array(sorted(items))
    vectors = np.stack([items[int(i)] for i in ids])
    query = np.random.default_rng(2).standard_normal(dim).astype(np.float32)
    exact = vectors @ query if metric == "ip" else -((vectors - query) ** 2).sum(1)
    with Client(fleet.target, timeout=10) as client:
        retrieved = client.retrieve(3, 10)
        assert retrieved.bundle_id == new.id and set(retrieved.ids) <= set(items)
        # Merged across the shards by the new bundle's metric: the exact top 10.
        found = client.search(query, 10)
        assert found.bundle_id == new.id
        assert list(np.asarray(found.ids).ravel()) == list(ids[np.argsort(-exact)[:10]])
        if dim != DIM:  # clients' queries must follow the new dimension
            with pytest.raises(ClientError) as err:
                client.search(np.ones(DIM, np.float32), 5)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert progress[-1].status.previous_bundle_id == a.id


def test_a_failed_prepare_keeps_the_rollback_target(
    fleet: Fleet, bundles: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    """B replaced A (A held for rollback); a third bundle that fails to prepare on one
    replica aborts, and A is still held: rollback still works."""
    a, b = bundles
    assert fleet.rollout(b.path)[-1].phase == admin_pb2.PHASE_DONE
    corrupt = _corrupt_copy(_catalogue_bundle(tmp_path / "c", DIM), tmp_path / "corrupt")
    error, phases = _rollout_until_refused(fleet, corrupt)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "checksum mismatch" in (error.details() or "")
    assert admin_pb2.PHASE_PREPARE in phases
    assert_serving(fleet, b.id, previous=a.id)
    assert_rolls_back_to(fleet, a.id)


def test_a_replica_without_room_beside_the_rollback_target_gets_it_released(
    fleet: Fleet,
    bundles: tuple[Bundle, Bundle],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Replicas with room for two bundles only: rolling out C (with the CLI) while B serves
    and A is held releases A (reported), prepares C again there, and ends with C serving,
    B held."""
    from annfleet.cli import main

    a, b = bundles
    assert fleet.rollout(b.path)[-1].phase == admin_pb2.PHASE_DONE
    check = Holdings.check

    def room_for_two(self: Holdings, bundle: Bundle, *args: int) -> int:
        if len(self.all()) >= 2 and not self.is_held(bundle.id):
            raise ResourceExhausted(f"shard {self.shard_id}: room for two bundles only")
        return check(self, bundle, *args)

    monkeypatch.setattr(Holdings, "check", room_for_two)
    c = _catalogue_bundle(tmp_path / "c", DIM)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    admin = f"127.0.0.1:{fleet.router.admin_port}"
    rollout = ["rollout", "--router", admin, "--token-file", str(token), "--bundle", str(c.path)]
    assert main(rollout) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "] prepare " in line]
    replica_lines = [line for line in lines if " shard " in line and " replica " in line]
    assert sum("no room beside the rollback target" in line for line in replica_lines) == SHARDS
    assert sum(line.endswith(" prepared") for line in replica_lines) == SHARDS
    (released,) = [line for line in lines if line not in replica_lines]
    assert f"released the rollback target {a.id} to make room for {c.id}" in released
    assert_serving(fleet, c.id, previous=b.id)


def test_rolling_out_the_rollback_target_again_keeps_it_loaded(
    fleet: Fleet, bundles: tuple[Bundle, Bundle]
) -> None:
    """A -> B -> A: the replicas already hold A (the rollback target), so its prepare is
    instant, and the commit leaves A serving with B as the new rollback target."""
    a, b = bundles

    def loaded_at() -> list[float]:
        return [h.loaded_at for i in fleet.describe() for h in i.bundles if h.bundle_id == a.id]

    before = loaded_at()
    assert fleet.rollout(b.path)[-1].phase == admin_pb2.PHASE_DONE
    assert fleet.rollout(a.path)[-1].phase == admin_pb2.PHASE_DONE
    assert_serving(fleet, a.id, previous=b.id)
    assert loaded_at() == before != []  # never released, never loaded again
