"""A rollout between two user-tower bundles warms the new bundle's user-embedding cache:
before the flip the router embeds, with the new tower, the users it served most recently,
so their first request on the new bundle hits the cache (real shard servers and router on
port 0; the cache is observed through ``annfleet_router_cache_lookups``)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from support import ANN_ONLY, LoopThread

from annfleet.auth import metadata
from annfleet.bundle import MANIFEST, Bundle, content_id, sha256_file
from annfleet.client import Client
from annfleet.config import RouterConfig, ShardsConfig
from annfleet.errors import BundleError
from annfleet.router.candidates import embedding_key
from annfleet.router.main import RouterServer, start_router
from annfleet.router.tower import TowerEmbedder
from annfleet.router.users import RequestContext
from annfleet.router.variants import user_bucket
from annfleet.server.builder import build_bundle
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.v1 import admin_pb2, admin_pb2_grpc

TOKEN = "warm-test-token"
AUTH = metadata(TOKEN)
WHEN = 893_286_000  # an hour's first second inside the data's range
SERVED = {1: (50, 172, 181), 2: (), 3: (1, 2), 10**9: (96, 98)}  # user -> recent items


def retrained(bundle: Bundle, dest: Path) -> Bundle:
    """A copy of ``bundle`` whose user tower has other weights (a retrained tower over the
    same item vectors): another bundle id, other user embeddings."""
    shutil.copytree(bundle.path, dest)
    tower = dest / "user_tower.pt"
    module = torch.jit.load(str(tower))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    torch.jit.save(module, str(tower))
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["files"]["user_tower.pt"] = sha256_file(tower)
    manifest["bundle_id"] = content_id(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Bundle.open(dest)


def lookups(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "annfleet_router_cache_lookups_total", {"cache": "embedding", "result": result}
    )
    return value or 0.0


@dataclass
class Fleet:
    lt: LoopThread
    shards: list[ShardServer]
    router: RouterServer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    def rollout(self, bundle: Path, percent: float = 0) -> list[admin_pb2.RolloutProgress]:
        with grpc.insecure_channel(f"127.0.0.1:{self.router.admin_port}") as channel:
            stub = admin_pb2_grpc.RouterAdminStub(channel)
            request = admin_pb2.RolloutRequest(
                bundle=str(bundle), holder="test", canary_percent=percent
            )
            return list(stub.Rollout(request, metadata=AUTH, timeout=60))

    def rollback(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.router.admin_port}") as channel:
            stub = admin_pb2_grpc.RouterAdminStub(channel)
            stub.Rollback(admin_pb2.RollbackRequest(), metadata=AUTH, timeout=30)

    def cached(self, user_id: int, bundle_id: str, context: RequestContext) -> np.ndarray | None:
        """The router's cached embedding (looked at directly: not counted as a lookup)."""
        state = self.router.service.state
        assert state is not None
        cache = state.env.caches.embeddings
        entry = cache._cache.get((user_id, embedding_key(bundle_id, context)))
        return None if entry is None else np.asarray(entry)


@pytest.fixture(scope="module")
def towers(small_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    return small_bundle, retrained(small_bundle, tmp_path_factory.mktemp("v2") / "bundle")


@pytest.fixture
def fleet(
    loop_thread: LoopThread, towers: tuple[Bundle, Bundle], tmp_path: Path
) -> Iterator[Fleet]:
    a, _ = towers
    config = ShardsConfig(updates_dir=str(tmp_path / "updates"))
    shards = [
        loop_thread.run(start_shard_server(a.path, i, config, admin_port=0, admin_token=TOKEN))
        for i in range(a.num_shards)
    ]
    router = loop_thread.run(
        start_router(
            a.path,
            [f"127.0.0.1:{s.port}" for s in shards],
            RouterConfig(default_timeout_s=10.0, shard_timeout_s=10.0, release_grace_s=60.0),
            admin_port=0,
            admin_token=TOKEN,
            shard_admin_targets=[f"127.0.0.1:{s.admin_port}" for s in shards],
            rollout_state=tmp_path / "rollout.json",
            sources=ANN_ONLY,
        )
    )
    yield Fleet(loop_thread, shards, router)
    loop_thread.run(router.stop(0))
    for shard in shards:
        loop_thread.run(shard.stop(0))


def test_rollout_warms_the_new_bundles_embedding_cache(
    fleet: Fleet, towers: tuple[Bundle, Bundle]
) -> None:
    a, b = towers
    new_tower = TowerEmbedder(b)
    with Client(fleet.target, timeout=30) as client:
        for user, recent in SERVED.items():
            assert client.retrieve(user, 10, recent_items=recent, timestamp=WHEN).bundle_id == a.id

        progress = fleet.rollout(b.path)
        flip = [p.message for p in progress if p.phase == admin_pb2.PHASE_FLIP]
        assert f"{len(SERVED)} user embeddings of recently served users cached" in flip[0]

        # The cache holds, under the new bundle, the new tower's embedding of every served
        # (user, context): what a request would have computed, not the old tower's.
        for user, recent in SERVED.items():
            context = RequestContext(recent, WHEN)
            warmed = fleet.cached(user, b.id, context)
            old = fleet.cached(user, a.id, context)
            assert warmed is not None and old is not None
            assert np.allclose(warmed, new_tower.embed(user, context), atol=1e-5)
            assert not np.allclose(warmed, old, atol=1e-2)

        # The first request of a served user on the new bundle hits the embedding cache...
        hits, misses = lookups("hit"), lookups("miss")
        first = client.retrieve(1, 10, recent_items=SERVED[1], timestamp=WHEN)
        assert first.bundle_id == b.id
        assert (lookups("hit") - hits, lookups("miss") - misses) == (1, 0)
        # A user the router had not served before misses (a tower call, then cached).
        hits, misses = lookups("hit"), lookups("miss")
        assert client.retrieve(5, 10, timestamp=WHEN).bundle_id == b.id
        assert (lookups("hit") - hits, lookups("miss") - misses) == (0, 1)

        # Rollback: the old bundle's entries are still cached, so it is warm too (k = 11:
        # not the candidate list cached before the rollout, so the ANN source runs).
        fleet.rollback()
        hits, misses = lookups("hit"), lookups("miss")
        back = client.retrieve(2, 11, recent_items=SERVED[2], timestamp=WHEN)
        assert back.bundle_id == a.id
        assert (lookups("hit") - hits, lookups("miss") - misses) == (1, 0)


def test_a_canary_warms_only_its_own_users(fleet: Fleet, towers: tuple[Bundle, Bundle]) -> None:
    a, b = towers
    users = range(1, 41)
    with Client(fleet.target, timeout=30) as client:
        for user in users:
            client.retrieve(user, 5, timestamp=WHEN)
    progress = fleet.rollout(b.path, percent=50)
    canary = {u for u in users if user_bucket(u)[0] < 50}
    assert 0 < len(canary) < len(users)
    flip = [p.message for p in progress if p.phase == admin_pb2.PHASE_FLIP]
    assert f"{len(canary)} user embeddings of recently served users cached" in flip[0]
    context = RequestContext((), WHEN)
    warmed = {u for u in users if fleet.cached(u, b.id, context) is not None}
    assert warmed == canary
    assert all(fleet.cached(u, a.id, context) is not None for u in users)


def test_a_tower_whose_output_is_not_the_item_dim_is_refused_at_load(
    small_bundle: Bundle, tmp_path: Path
) -> None:
    """Before: warm-up died in a numpy broadcast ("could not broadcast input array ..."), and
    a tower bundle loaded without the batch path would have sent queries of the wrong
    dimension to every shard."""
    dest = tmp_path / "bundle"
    shutil.copytree(small_bundle.path, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["model"]["dim"] = small_bundle.dim + 1
    manifest["bundle_id"] = content_id(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match=rf"the user tower outputs vectors of shape "
                       rf"\({small_bundle.dim},\), the bundle's items are "
                       rf"{small_bundle.dim + 1}-d"):  # fmt: skip
        TowerEmbedder(Bundle.open(dest)).warm_up()


class Doubled(torch.nn.Module):
    """A user tower of twice the dimension: [v, v] / sqrt(2) of the inner tower's v (unit
    norm kept, inner products with doubled items unchanged)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, user: torch.Tensor, recent: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        v = self.inner(user, recent, time)
        return torch.cat([v, v], dim=-1) / math.sqrt(2.0)


def doubled_items(bundle: Bundle, dest: Path, *, double_tower: bool) -> Bundle:
    """``bundle`` rebuilt with its item and user vectors doubled to 2 * dim ([v, v] /
    sqrt(2)), its tables, and its user tower as it is (``double_tower`` False: a new item
    model beside the old tower) or doubled too (a new model of another dimension)."""
    ids = np.concatenate(
        [np.load(bundle.shard_dir(s) / "ids.npy") for s in range(bundle.num_shards)]
    )
    vectors = np.concatenate(
        [np.load(bundle.shard_dir(s) / "vectors.npy") for s in range(bundle.num_shards)]
    )
    user_ids, user_vectors = bundle.users() or (None, None)
    assert user_vectors is not None
    tower = bundle.path / "user_tower.pt"
    if double_tower:
        tower = dest.parent / "doubled_tower.pt"
        torch.jit.script(Doubled(torch.jit.load(str(bundle.path / "user_tower.pt")))).save(
            str(tower)
        )
    tables = {name: bundle.table(name) for name in bundle.manifest.get("tables", {})}
    return build_bundle(
        dest,
        ids,
        np.concatenate([vectors, vectors], axis=1) / np.sqrt(2.0),
        num_shards=bundle.num_shards,
        index_type="flat",
        index_params={},
        user_ids=user_ids,
        user_vectors=np.concatenate([user_vectors, user_vectors], axis=1) / np.sqrt(2.0),
        tables=tables,
        files={"user_tower.pt": tower},
        extra={"user_tower": bundle.manifest["user_tower"]},
        progress=False,
    )


def test_new_items_beside_a_tower_of_the_old_dimension_are_refused_before_any_replica(
    fleet: Fleet, towers: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    """Before: every replica prepared the bundle, then the router's load failed (or, without
    the warm-up check, every Retrieve sent 16-d queries to a 32-d index)."""
    a, _ = towers
    new = doubled_items(a, tmp_path / "new", double_tower=False)
    with grpc.insecure_channel(f"127.0.0.1:{fleet.router.admin_port}") as channel:
        stub = admin_pb2_grpc.RouterAdminStub(channel)
        request = admin_pb2.RolloutRequest(bundle=str(new.path), holder="test")
        phases = []
        with pytest.raises(grpc.RpcError) as err:
            for progress in stub.Rollout(request, metadata=AUTH, timeout=60):
                phases.append(progress.phase)
        status = stub.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    for part in (
        f"bundle {new.id} refused before any replica prepared it, {a.id} keeps serving",
        f"the user tower outputs vectors of shape ({a.dim},), the bundle's items are {2 * a.dim}-d",
    ):
        assert part in details, details
    assert phases == []
    assert (status.stable_bundle_id, status.rollout_holder) == (a.id, "")
    assert [set(r.held_bundle_ids) for r in status.replicas] == [{a.id}] * a.num_shards
    with Client(fleet.target, timeout=30) as client:
        assert client.retrieve(1, 10, timestamp=WHEN).bundle_id == a.id


def test_a_new_dimension_with_its_own_tower_rolls_out(
    fleet: Fleet, towers: tuple[Bundle, Bundle], tmp_path: Path
) -> None:
    a, _ = towers
    new = doubled_items(a, tmp_path / "new", double_tower=True)
    progress = fleet.rollout(new.path)
    assert progress[0].phase == admin_pb2.PHASE_ROUTER_LOAD
    assert f"user tower and items {2 * a.dim}-d" in progress[0].message
    assert progress[-1].status.stable_bundle_id == new.id
    with Client(fleet.target, timeout=30) as client:
        before = client.retrieve(1, 10, timestamp=WHEN)
        fleet.rollback()
        old = client.retrieve(1, 10, timestamp=WHEN)
    # The same model in twice the dimension: the same inner products, the same candidates.
    assert (before.bundle_id, old.bundle_id) == (new.id, a.id)
    assert list(before.ids) == list(old.ids)
