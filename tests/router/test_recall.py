"""Live recall monitoring, recall-gated promotion, carried updates and restarts mid-canary,
against real shard servers and a real router on port 0.

Bundle A (flat, ids 0..) is the stable bundle: its ANN is exact, so its live recall is 1.
Bundle B (ivfpq, ids + 10^8, shards searched with nprobe 1) has a measurably lower recall.
Bundle C has A's ids with other vectors (a retrained model) for carrying updates over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from support import LoopThread, patient

from annfleet.arrays import F32, I64, decode_ids, to_bytes
from annfleet.auth import metadata
from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import RouterConfig, SearchConfig, ShardsConfig, SourcesConfig
from annfleet.partition import shard_of
from annfleet.rollout_state import also_held, read_state, stable_bundle
from annfleet.router.main import RouterServer, start_router
from annfleet.router.recall import recall_at_k
from annfleet.router.variants import user_bucket
from annfleet.server.builder import build_bundle
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import make_catalogue
from annfleet.v1 import admin_pb2, admin_pb2_grpc, common_pb2, shard_pb2, shard_pb2_grpc

TOKEN = "recall-test-token"
AUTH = metadata(TOKEN)
OFFSET = 100_000_000
SHARDS = 2
USERS = 60


def _build(root: Path, name: str, seed: int, offset: int, index: str) -> Bundle:
    cat = make_catalogue(4_000, 16, clusters=32, users=USERS, seed=seed)
    return build_bundle(
        root / name,
        cat.ids + offset,
        cat.vectors,
        num_shards=SHARDS,
        index_type=index,
        index_params={},
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        tables={"popular_ids": cat.popular_ids + offset},
        progress=False,
    )


@dataclass(frozen=True)
class Bundles:
    a: Bundle  # flat
    b: Bundle  # ivfpq, disjoint ids
    c: Bundle  # flat, A's ids, other vectors


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    root = tmp_path_factory.mktemp("recall-bundles")
    return Bundles(
        _build(root, "a", 1, 0, "flat"),
        _build(root, "b", 2, OFFSET, "ivfpq"),
        _build(root, "c", 3, 0, "flat"),
    )


@dataclass
class Fleet:
    lt: LoopThread
    bundle: Bundle
    tmp: Path
    router_config: RouterConfig
    shards_config: ShardsConfig = field(init=False)
    shards: list[ShardServer] = field(default_factory=list)
    router: RouterServer | None = None

    def __post_init__(self) -> None:
        self.shards_config = ShardsConfig(updates_dir=str(self.tmp / "updates"))
        self.state = self.tmp / "rollout.json"
        for i in range(SHARDS):
            self.shards.append(self._start_shard(i, 0))
        self.start_router()

    def _start_shard(self, i: int, port: int, admin_port: int = 0) -> ShardServer:
        return self.lt.run(
            start_shard_server(
                stable_bundle(self.state) or self.bundle.path,
                i,
                self.shards_config,
                search=SearchConfig(nprobe=1, rerank=100),
                port=port,
                admin_port=admin_port,
                admin_token=TOKEN,
                also_hold=also_held(self.state),
            )
        )

    def restart_shard(self, i: int) -> None:
        """Stop shard i and start it again on the same ports (a restarted replica); with a
        router, return once it is connected to the new process again."""
        port, admin_port = self.shards[i].port, self.shards[i].admin_port
        assert admin_port is not None
        self.lt.run(self.shards[i].stop(0))
        if self.router is not None:
            self._wait_for_replica(i, lambda status: status != "SERVING")  # it saw it go
        self.shards[i] = self._start_shard(i, port, admin_port)
        if self.router is not None:
            self._wait_for_replica(i, lambda status: status == "SERVING")
            self.lt.run(self._admin_channels_ready())

    def _wait_for_replica(self, i: int, ok: Callable[[str], bool], within: float = 30) -> None:
        """Until the router's health watch of shard i's replica shows a status ``ok`` takes.
        The watch runs on the replica's search channel: once it sees the restarted process
        SERVING, that channel is connected again. Before, it may sit in gRPC's reconnect
        backoff (it tried the port while the process was down), where a search fails at
        once with UNAVAILABLE and the answer is degraded; and right after the stop, the
        watch may not have seen the old process go yet."""
        assert self.router is not None and self.router.service.state is not None
        [replica] = self.router.service.state.scatter.groups[i].replicas
        deadline = time.monotonic() + within
        while not ok(replica.status):
            assert time.monotonic() < deadline, f"shard {i}: still {replica.status} after {within}s"
            time.sleep(0.02)

    async def _admin_channels_ready(self) -> None:
        """Until the router's admin channels are connected again: one that tried the port
        while the replica was down sits in gRPC's reconnect backoff (1 s and growing), and a
        Commit sent then fails at once (UNAVAILABLE, connection refused)."""
        assert self.router is not None
        for replica in await self.router.rollouts.replicas():
            state = replica.channel.get_state(try_to_connect=True)
            while state != grpc.ChannelConnectivity.READY:
                await asyncio.wait_for(replica.channel.wait_for_state_change(state), 30)
                state = replica.channel.get_state(try_to_connect=True)

    def start_router(self) -> None:
        self.router = self.lt.run(
            start_router(
                self.bundle.path,
                [f"127.0.0.1:{s.port}" for s in self.shards],
                self.router_config,
                admin_port=0,
                admin_token=TOKEN,
                shard_admin_targets=[f"127.0.0.1:{s.admin_port}" for s in self.shards],
                rollout_state=self.state,
                # Every source, with budgets no loaded machine misses: on a starved box the
                # ANN source's default 250 ms ran out, and with no other source to answer
                # the Retrieve failed (DEADLINE_EXCEEDED).
                sources=patient(SourcesConfig()),
            )
        )

    def stop_router(self) -> None:
        assert self.router is not None
        self.lt.run(self.router.stop(0))
        self.router = None

    @property
    def target(self) -> str:
        assert self.router is not None
        return f"127.0.0.1:{self.router.port}"

    def admin_call(self, method: str, request: object) -> admin_pb2.RolloutStatus:
        assert self.router is not None
        with grpc.insecure_channel(f"127.0.0.1:{self.router.admin_port}") as channel:
            stub = admin_pb2_grpc.RouterAdminStub(channel)
            return getattr(stub, method)(request, metadata=AUTH, timeout=60)  # type: ignore[no-any-return]

    def rollout(self, bundle: Path, **fields: object) -> list[admin_pb2.RolloutProgress]:
        assert self.router is not None
        request = admin_pb2.RolloutRequest(bundle=str(bundle), holder="test", **fields)  # type: ignore[arg-type]
        with grpc.insecure_channel(f"127.0.0.1:{self.router.admin_port}") as channel:
            return list(
                admin_pb2_grpc.RouterAdminStub(channel).Rollout(request, metadata=AUTH, timeout=60)
            )

    def shard_admin(self, i: int, fn: Callable[[shard_pb2_grpc.ShardAdminStub], object]) -> object:
        with grpc.insecure_channel(f"127.0.0.1:{self.shards[i].admin_port}") as channel:
            return fn(shard_pb2_grpc.ShardAdminStub(channel))

    def describe(self) -> list[shard_pb2.ShardInfo]:
        return [
            self.shard_admin(  # type: ignore[misc]
                i, lambda s: s.Describe(shard_pb2.DescribeRequest(), metadata=AUTH, timeout=10)
            )
            for i in range(SHARDS)
        ]

    def close(self) -> None:
        if self.router is not None:
            self.stop_router()
        for shard in self.shards:
            self.lt.run(shard.stop(0))


def _fleet(
    loop_thread: LoopThread, bundles: Bundles, tmp_path: Path, **router: object
) -> Iterator[Fleet]:
    settings: dict[str, object] = {
        "default_timeout_s": 5.0,
        "shard_timeout_s": 5.0,
        "release_grace_s": 30.0,
        "recall_sample_rate": 1.0,
        "recall_max_per_s": 0.0,
        "recall_max_share": 0.0,
        "recall_min_samples": 5,
        **router,
    }
    config = RouterConfig(**settings)  # type: ignore[arg-type]
    fleet = Fleet(loop_thread, bundles.a, tmp_path, config)
    yield fleet
    fleet.close()


@pytest.fixture
def fleet(loop_thread: LoopThread, bundles: Bundles, tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(loop_thread, bundles, tmp_path)


def traffic(fleet: Fleet, users: range, k: int = 10) -> dict[int, tuple[str, str]]:
    """Retrieve once for every user: user -> (variant, bundle_id)."""
    with Client(fleet.target, timeout=10) as client:
        return {u: (r.variant, r.bundle_id) for u in users if (r := client.retrieve(u, k))}


def wait_for_samples(
    fleet: Fleet, bundle_id: str, at_least: int, users: range, timeout: float = 60
) -> admin_pb2.RecallGauge:
    """Send traffic until the router reports ``at_least`` merged samples of the bundle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fleet.admin_call("Status", admin_pb2.StatusRequest(skip_replicas=True))
        for g in status.recall:
            if g.bundle_id == bundle_id and g.merged and g.samples >= at_least:
                return g
        traffic(fleet, users)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} recall samples of {bundle_id} in {timeout}s")


def gauge(bundle_id: str, shard: str, k: int = 100) -> float | None:
    return REGISTRY.get_sample_value(
        "annfleet_router_recall", {"bundle": bundle_id, "shard": shard, "k": str(k)}
    )


def test_samples_are_capped_per_second() -> None:
    """``recall_max_per_s``: however many requests pass the coin flip, at most that many a
    second are queued for the exact search (0 = no cap)."""
    from annfleet.router.recall import QUEUE_SIZE, RecallMonitor

    async def offered(max_per_s: float) -> int:
        config = RouterConfig(recall_sample_rate=1.0, recall_max_per_s=max_per_s)
        monitor = RecallMonitor(config, _no_replicas, "token", seed=0)
        monitor._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
        state: Any = SimpleNamespace(bundle=SimpleNamespace(id="b"))
        for _ in range(QUEUE_SIZE):  # well under the spacing below, even on a starved box
            monitor.offer(state, np.zeros((1, 4), np.float32), common_pb2.SearchParams())
        return monitor._queue.qsize()

    assert asyncio.run(offered(0.05)) == 1  # one sample per 20 s
    assert asyncio.run(offered(0.0)) == QUEUE_SIZE


def test_measuring_takes_at_most_its_share_of_the_time() -> None:
    """``recall_max_share``: no sample is queued while one is measured, nor for t / share
    after a measurement that took t (at 10M items one takes ~135 ms of every shard's CPU);
    0 = no cap: samples queue behind the one being measured."""
    from annfleet.router.recall import RecallMonitor

    class SlowMonitor(RecallMonitor):
        async def measure(self, sample: Any) -> None:
            await asyncio.sleep(0.05)
            self.measured += 1

    async def queued(max_share: float) -> tuple[int, int, int]:
        """(queued while measuring, measured, queued right after the measurement)"""
        config = RouterConfig(
            recall_sample_rate=1.0, recall_max_per_s=0.0, recall_max_share=max_share
        )
        monitor = SlowMonitor(config, _no_replicas, "token", seed=0)
        monitor.start()
        state: Any = SimpleNamespace(bundle=SimpleNamespace(id="b"))
        query = np.zeros((1, 4), np.float32)
        monitor.offer(state, query, common_pb2.SearchParams())
        await asyncio.sleep(0.01)  # the background task took it and is measuring
        for _ in range(5):
            monitor.offer(state, query, common_pb2.SearchParams())
        during = monitor._queue.qsize()
        while monitor.measured < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        if max_share > 0:
            monitor.offer(state, query, common_pb2.SearchParams())  # within t / share
            after = monitor._queue.qsize()
        else:
            after = -1
        await monitor.close()
        return during, monitor.measured, after

    assert asyncio.run(queued(0.01)) == (0, 1, 0)
    during, _, _ = asyncio.run(queued(0.0))
    assert during == 5


async def _no_replicas() -> list[Any]:
    return []


def test_recall_at_k_counts_true_ids_only() -> None:
    assert recall_at_k(np.array([1, 2, 3, -1]), np.array([3, 2, 9, -1])) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([-1]), np.array([-1])) == 1.0


def test_live_recall_is_measured_per_shard_and_bundle(fleet: Fleet, bundles: Bundles) -> None:
    a = bundles.a
    merged = wait_for_samples(fleet, a.id, 5, range(1, USERS + 1))
    assert merged.k == 100
    assert merged.recall == 1.0  # flat: the ANN is exact
    status = fleet.admin_call("Status", admin_pb2.StatusRequest())
    shards = sorted(g.shard_id for g in status.recall if g.bundle_id == a.id and not g.merged)
    assert shards == list(range(SHARDS))
    assert all(g.recall == 1.0 and g.samples >= 1 for g in status.recall)
    assert gauge(a.id, "all") == 1.0
    assert gauge(a.id, "0") == 1.0
    # Search requests are sampled too, and the request path never waits for a sample.
    with Client(fleet.target, timeout=10) as client:
        q = np.random.default_rng(0).standard_normal(a.dim).astype(np.float32)
        assert len(client.search(q, 10).ids[0]) == 10


def test_promotion_is_gated_on_the_canarys_measured_recall(fleet: Fleet, bundles: Bundles) -> None:
    a, b = bundles.a, bundles.b
    users = range(1, USERS + 1)
    fleet.admin_call("Status", admin_pb2.StatusRequest())
    fleet.rollout(b.path, canary_percent=50)
    canary_users = [u for u in users if user_bucket(u)[0] < 50]
    assert canary_users

    # Not measured yet: refused, saying so (the sampler has not seen the canary's traffic).
    with pytest.raises(grpc.RpcError) as err:
        fleet.admin_call("Promote", admin_pb2.PromoteRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not measured yet" in (err.value.details() or "")

    g = wait_for_samples(fleet, b.id, 5, range(min(canary_users), max(canary_users) + 1))
    assert 0.0 < g.recall < 0.95  # ivfpq at nprobe 1
    with pytest.raises(grpc.RpcError) as err:
        fleet.admin_call("Promote", admin_pb2.PromoteRequest())
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below the floor 0.9500" in details and "recall@100 0." in details
    # Nothing changed: the canary is still live.
    status = fleet.admin_call("Status", admin_pb2.StatusRequest(skip_replicas=True))
    assert [v.bundle_id for v in status.variants] == [a.id, b.id]

    # A floor under the measured recall passes; so does force.
    promoted = fleet.admin_call("Promote", admin_pb2.PromoteRequest(min_recall=g.recall / 2))
    assert promoted.stable_bundle_id == b.id
    with pytest.raises(grpc.RpcError) as err:
        fleet.admin_call("Promote", admin_pb2.PromoteRequest(min_recall=1.5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_forced_promotion_without_samples(
    loop_thread: LoopThread, bundles: Bundles, tmp_path: Path
) -> None:
    for fleet in _fleet(loop_thread, bundles, tmp_path, recall_sample_rate=0.0):
        fleet.rollout(bundles.b.path, canary_percent=10)
        with pytest.raises(grpc.RpcError) as err:
            fleet.admin_call("Promote", admin_pb2.PromoteRequest())
        assert "0 of router.recall_min_samples 5" in (err.value.details() or "")
        promoted = fleet.admin_call("Promote", admin_pb2.PromoteRequest(force=True))
        assert promoted.stable_bundle_id == bundles.b.id


def _ids_on(shard: int, ids: np.ndarray, n: int, count: int) -> np.ndarray:
    return ids[shard_of(ids, n) == shard][:count]


def test_rollout_carries_deletes_and_reports_upserts_the_new_bundle_lacks(
    fleet: Fleet, bundles: Bundles
) -> None:
    a, c = bundles.a, bundles.c
    a_ids = np.load(a.shard_dir(0) / "ids.npy", allow_pickle=False)
    deleted = _ids_on(0, a_ids, SHARDS, 2)
    replaced = _ids_on(0, a_ids[10:], SHARDS, 1)  # in A and in C (same ids)
    candidates = np.arange(50_000_000, 50_000_100, dtype=np.int64)
    new = _ids_on(0, candidates, SHARDS, 3)  # in neither bundle
    upserts = np.concatenate([replaced, new])
    vectors = np.random.default_rng(5).standard_normal((len(upserts), a.dim)).astype(np.float32)
    fleet.shard_admin(
        0,
        lambda s: s.Upsert(
            shard_pb2.UpsertRequest(
                ids=to_bytes(upserts, I64), vectors=to_bytes(vectors, F32), dim=a.dim
            ),
            metadata=AUTH,
            timeout=10,
        ),
    )
    fleet.shard_admin(
        0,
        lambda s: s.Delete(
            shard_pb2.DeleteRequest(ids=to_bytes(deleted, I64)), metadata=AUTH, timeout=10
        ),
    )
    with pytest.raises(grpc.RpcError) as err:  # updates present: carry or drop, explicitly
        fleet.rollout(c.path)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--updates carry|drop" in (err.value.details() or "")

    progress = fleet.rollout(c.path, updates=admin_pb2.UPDATES_CARRY)
    carried = [p for p in progress if p.phase == admin_pb2.PHASE_CARRY_UPDATES]
    assert sorted(p.shard_id for p in carried) == list(range(SHARDS))
    shard0 = next(p for p in carried if p.shard_id == 0)
    assert sorted(shard0.missing_ids) == sorted(int(i) for i in new)
    assert "2 deletes carried" in shard0.message and "1 upserted ids are in" in shard0.message
    info = fleet.describe()[0]
    held_c = next(h for h in info.bundles if h.bundle_id == c.id)
    assert info.bundle_id == c.id and held_c.deleted_items == 2

    # The deleted ids never come back from C, even searched with their own vectors.
    c_ids = np.load(c.shard_dir(0) / "ids.npy", allow_pickle=False)
    c_vectors = np.load(c.shard_dir(0) / "vectors.npy", allow_pickle=False)
    with Client(fleet.target, timeout=10) as client:
        for item in deleted:
            r = client.search(c_vectors[int(np.flatnonzero(c_ids == item)[0])], 50)
            assert r.bundle_id == c.id
            assert int(item) not in {int(i) for i in r.ids[0]}
    # Idempotent on the shard: carrying again deletes nothing new.
    again = fleet.shard_admin(
        0,
        lambda s: s.CarryUpdates(
            shard_pb2.CarryUpdatesRequest(from_bundle_id=a.id, to_bundle_id=c.id),
            metadata=AUTH,
            timeout=10,
        ),
    )
    assert again.deleted == 0 and again.deletes_skipped == 2  # type: ignore[attr-defined]
    assert sorted(decode_ids(again.missing_ids)) == sorted(new)  # type: ignore[attr-defined]


def test_canary_survives_router_and_shard_restarts(fleet: Fleet, bundles: Bundles) -> None:
    a, b = bundles.a, bundles.b
    users = range(1, USERS + 1)
    fleet.rollout(b.path, canary_percent=40)
    before = traffic(fleet, users)
    assert {bid for _, bid in before.values()} == {a.id, b.id}
    state = read_state(fleet.state)
    assert state is not None and state.canary is not None and state.canary.bundle_id == b.id
    assert state.canary_percent == 40

    fleet.stop_router()
    fleet.start_router()  # reads the persisted canary
    assert traffic(fleet, users) == before

    fleet.restart_shard(0)  # a replica restarted mid-canary holds the canary again
    info = fleet.describe()[0]
    assert info.bundle_id == a.id
    assert sorted(h.bundle_id for h in info.bundles) == sorted([a.id, b.id])
    with Client(fleet.target, timeout=10) as client:
        for user, (variant, bundle_id) in before.items():
            r = client.retrieve(user, 10)
            assert (r.variant, r.bundle_id) == (variant, bundle_id)
            assert not r.coverage.degraded

    promoted = fleet.admin_call("Promote", admin_pb2.PromoteRequest(force=True))
    assert promoted.stable_bundle_id == b.id
    state = read_state(fleet.state)
    assert state is not None and state.canary is None
    assert state.previous is not None and state.previous.bundle_id == a.id
    fleet.restart_shard(1)  # comes back on B, holding A (rollback target) beside it
    info = fleet.describe()[1]
    assert info.bundle_id == b.id and {h.bundle_id for h in info.bundles} == {a.id, b.id}
    fleet.stop_router()
    fleet.start_router()  # rollback target restored: rollback is still instant
    rolled = fleet.admin_call("Rollback", admin_pb2.RollbackRequest())
    assert rolled.stable_bundle_id == a.id
    assert {bid for _, bid in traffic(fleet, users).values()} == {a.id}
