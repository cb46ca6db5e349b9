"""ShardAdmin on its own authenticated port, through real servers on port 0: tokens, held
bundles (prepare/commit/release, pinned searches), live upserts and deletes across a
restart, exact search, and the `annfleet items` client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import LoopThread, exact_topk

from annfleet.admin_cli import Fleet, delete, upsert
from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.auth import metadata
from annfleet.bundle import Bundle
from annfleet.config import ShardsConfig
from annfleet.partition import shard_of
from annfleet.server.builder import build_bundle
from annfleet.server.holdings import available_memory, shard_bytes
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import Catalogue
from annfleet.v1 import shard_pb2, shard_pb2_grpc

TOKEN = "test-admin-token"
AUTH = metadata(TOKEN)


class Shard:
    """A shard server with its admin port, and stubs for both ports."""

    def __init__(self, lt: LoopThread, server: ShardServer) -> None:
        self.lt = lt
        self.server = server
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self.admin_channel = grpc.insecure_channel(f"127.0.0.1:{server.admin_port}")
        self.search = shard_pb2_grpc.IndexShardStub(self.channel)
        self.admin = shard_pb2_grpc.ShardAdminStub(self.admin_channel)

    @property
    def admin_target(self) -> str:
        return f"127.0.0.1:{self.server.admin_port}"

    def query(self, queries: np.ndarray, k: int = 10, bundle_id: str = "", exact: bool = False):  # type: ignore[no-untyped-def]
        request = shard_pb2.ShardSearchRequest(
            queries=to_bytes(queries, F32), dim=queries.shape[1], k=k, bundle_id=bundle_id
        )
        if exact:
            reply = self.admin.ExactSearch(request, metadata=AUTH, timeout=10)
        else:
            reply = self.search.Search(request, timeout=10)
        return reply.bundle_id, decode_rows(reply.ids, I64, len(queries), k, name="ids")

    def describe(self) -> shard_pb2.ShardInfo:
        return self.admin.Describe(shard_pb2.DescribeRequest(), metadata=AUTH, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.admin_channel.close()
        self.lt.run(self.server.stop(0))


def start(lt: LoopThread, bundle: Bundle, updates: Path, shard: int = 0, **config: int) -> Shard:
    server = lt.run(
        start_shard_server(
            bundle.path,
            shard,
            ShardsConfig(updates_dir=str(updates), **config),  # type: ignore[arg-type]
            admin_port=0,
            admin_token=TOKEN,
        )
    )
    return Shard(lt, server)


@pytest.fixture
def shard(loop_thread: LoopThread, flat_bundle: Bundle, tmp_path: Path) -> Iterator[Shard]:
    s = start(loop_thread, flat_bundle, tmp_path / "updates")
    yield s
    s.close()


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# ---------------------------------------------------------------------------- auth
def test_admin_calls_need_the_token(shard: Shard) -> None:
    describe = shard.admin.Describe
    request = shard_pb2.DescribeRequest()
    code, details = code_of(describe, request, timeout=5)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    code, _ = code_of(describe, request, metadata=metadata("wrong"), timeout=5)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = code_of(describe, request, metadata=(("authorization", TOKEN),), timeout=5)
    assert code == grpc.StatusCode.UNAUTHENTICATED  # not a bearer token
    # Refused before the payload is parsed: garbage bytes get the same answer.
    raw = shard.admin_channel.unary_unary("/annfleet.v1.ShardAdmin/Upsert")
    code, _ = code_of(raw, b"\xff\x00garbage", metadata=metadata("wrong"), timeout=5)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert shard.describe().bundle_id  # the right token works
    # Health stays open (probes carry no secret); the admin service is not on the serving port.
    health = health_pb2_grpc.HealthStub(shard.admin_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    serving_admin = shard_pb2_grpc.ShardAdminStub(shard.channel)
    code, _ = code_of(serving_admin.Describe, request, metadata=AUTH, timeout=5)
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_no_admin_port_without_a_token(loop_thread: LoopThread) -> None:
    from annfleet.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a token"):
        loop_thread.run(ShardServer.bind(admin_port=0))


# ---------------------------------------------------------------------------- bundles
def _rebuilt(catalogue: Catalogue, path: Path, **kw: object) -> Bundle:
    defaults: dict[str, object] = {"num_shards": 3, "index_type": "flat", "progress": False}
    ids = kw.pop("ids", catalogue.ids)
    vectors = kw.pop("vectors", catalogue.vectors)
    return build_bundle(path, ids, vectors, **{**defaults, **kw})  # type: ignore[arg-type]


def test_prepare_refuses_bad_bundles_and_changes_nothing(
    shard: Shard, flat_bundle: Bundle, hnsw_bundle: Bundle, catalogue: Catalogue, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(hnsw_bundle.path, corrupt)
    with (corrupt / "shard-00" / "index.faiss").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    two_shards = _rebuilt(catalogue, tmp_path / "two", num_shards=2)
    dim16 = _rebuilt(catalogue, tmp_path / "dim16", vectors=catalogue.vectors[:, :16])
    cases = [
        ("", None, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("s3://bucket/b", None, grpc.StatusCode.INVALID_ARGUMENT, "only file:// URIs"),
        (str(tmp_path / "nowhere"), None, grpc.StatusCode.NOT_FOUND, "no bundle at"),
        (str(tmp_path), None, grpc.StatusCode.FAILED_PRECONDITION, "not a bundle"),
        (
            str(corrupt),
            None,
            grpc.StatusCode.FAILED_PRECONDITION,
            "checksum mismatch for shard-00/index.faiss",
        ),
        (
            str(two_shards.path),
            None,
            grpc.StatusCode.FAILED_PRECONDITION,
            "has 2 shards, this cluster has 3",
        ),
        (
            f"file://{dim16.path}",
            32,
            grpc.StatusCode.FAILED_PRECONDITION,
            "has dim 16, expected 32",
        ),
    ]
    before = shard.describe()
    for source, dim, expected, message in cases:
        request = shard_pb2.PrepareRequest(bundle=source, expect_dim=dim or 0)
        code, details = code_of(shard.admin.Prepare, request, metadata=AUTH, timeout=30)
        assert (code, message in details) == (expected, True), (source, details)
    assert shard.describe() == before
    bundle_id, _ = shard.query(catalogue.vectors[:1])
    assert bundle_id == flat_bundle.id


def test_prepare_refuses_what_memory_cannot_hold(
    loop_thread: LoopThread, hnsw_bundle: Bundle, tmp_path: Path
) -> None:
    config = ShardsConfig(updates_dir=str(tmp_path), memory_limit_mb=1)
    server = loop_thread.run(ShardServer.bind(config, admin_port=0, admin_token=TOKEN, shard_id=0))
    s = Shard(loop_thread, server)
    try:
        request = shard_pb2.PrepareRequest(bundle=str(hnsw_bundle.path))
        code, details = code_of(s.admin.Prepare, request, metadata=AUTH, timeout=30)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        needed = shard_bytes(hnsw_bundle, 0) / (1 << 20)  # its shard's files
        assert f"bundle {hnsw_bundle.id} shard 0 needs ~{needed:.1f} MB" in details
        assert "only 0.0 MB available (shards.memory_limit_mb)" in details
        assert not s.describe().bundles
    finally:
        s.close()


def test_available_memory_takes_the_least_of_machine_cgroup_and_limit(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroup.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    (proc / "self" / "statm").write_text("1000 256 0 0 0 0 0\n")
    assert available_memory(proc=proc, cgroup=cgroup) == (
        4_096_000_000,
        "MemAvailable in /proc/meminfo",
    )
    (cgroup / "memory.max").write_text("3000000000\n")
    (cgroup / "memory.current").write_text("1000000000\n")
    assert available_memory(proc=proc, cgroup=cgroup)[0] == 2_000_000_000
    (cgroup / "memory.max").write_text("max\n")  # no cgroup limit
    assert available_memory(proc=proc, cgroup=cgroup)[0] == 4_096_000_000
    page = __import__("os").sysconf("SC_PAGE_SIZE")
    assert available_memory(10 * page + 256 * page, proc=proc, cgroup=cgroup) == (
        10 * page,
        "shards.memory_limit_mb",
    )


def test_held_bundles_serve_pinned_requests_then_commit_and_release(
    shard: Shard, flat_bundle: Bundle, hnsw_bundle: Bundle, catalogue: Catalogue
) -> None:
    queries = catalogue.vectors[:3]
    held = shard.admin.Prepare(
        shard_pb2.PrepareRequest(bundle=str(hnsw_bundle.path)), metadata=AUTH, timeout=60
    )
    assert held.bundle_id == hnsw_bundle.id and not held.active and held.num_shards == 3
    again = shard.admin.Prepare(
        shard_pb2.PrepareRequest(bundle=f"file://{hnsw_bundle.path}"), metadata=AUTH, timeout=60
    )
    assert again.loaded_at == held.loaded_at  # idempotent: not loaded twice

    assert shard.query(queries)[0] == flat_bundle.id  # unpinned: the active bundle
    assert shard.query(queries, bundle_id=hnsw_bundle.id)[0] == hnsw_bundle.id
    assert shard.query(queries, bundle_id=flat_bundle.id)[0] == flat_bundle.id
    code, details = code_of(shard.query, queries, bundle_id="bnothere")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "bnothere is not held" in details
    info = shard.search.Info(shard_pb2.InfoRequest(), timeout=5)
    assert [(b.bundle_id, b.active) for b in info.bundles] == [
        (flat_bundle.id, True),
        (hnsw_bundle.id, False),
    ]

    for method, request, code_expected, message in (
        (
            shard.admin.Commit,
            shard_pb2.CommitRequest(bundle_id="bnothere"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "not held",
        ),
        (shard.admin.Commit, shard_pb2.CommitRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            shard.admin.Release,
            shard_pb2.ReleaseRequest(bundle_id="bnothere"),
            grpc.StatusCode.NOT_FOUND,
            "not held",
        ),
        (
            shard.admin.Release,
            shard_pb2.ReleaseRequest(bundle_id=flat_bundle.id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "is the active bundle",
        ),
    ):
        code, details = code_of(method, request, metadata=AUTH, timeout=5)
        assert (code, message in details) == (code_expected, True)

    info = shard.admin.Commit(
        shard_pb2.CommitRequest(bundle_id=hnsw_bundle.id), metadata=AUTH, timeout=5
    )
    assert info.bundle_id == hnsw_bundle.id and info.index_type == "hnsw"
    assert shard.query(queries)[0] == hnsw_bundle.id
    assert shard.query(queries, bundle_id=flat_bundle.id)[0] == flat_bundle.id  # still held
    info = shard.admin.Release(
        shard_pb2.ReleaseRequest(bundle_id=flat_bundle.id), metadata=AUTH, timeout=5
    )
    assert [b.bundle_id for b in info.bundles] == [hnsw_bundle.id]
    code, _ = code_of(shard.query, queries, bundle_id=flat_bundle.id)
    assert code == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------------------- updates
def own_ids(n: int, shard_id: int = 0, start: int = 50_000_000) -> np.ndarray:
    candidates = np.arange(start, start + 10 * n, dtype=np.int64)
    return candidates[shard_of(candidates, 3) == shard_id][:n]


def upsert_request(ids: np.ndarray, vectors: np.ndarray, **kw: object) -> shard_pb2.UpsertRequest:
    return shard_pb2.UpsertRequest(
        ids=to_bytes(ids, I64), vectors=to_bytes(vectors, F32), dim=vectors.shape[1], **kw
    )  # type: ignore[arg-type]


def test_upsert_and_delete_are_live_and_survive_a_restart(
    loop_thread: LoopThread, flat_bundle: Bundle, tmp_path: Path
) -> None:
    updates = tmp_path / "updates"
    s = start(loop_thread, flat_bundle, updates)
    bundle_ids = np.load(flat_bundle.shard_dir(0) / "ids.npy")
    bundle_vectors = np.load(flat_bundle.shard_dir(0) / "vectors.npy")
    new = own_ids(2)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2, 32)).astype(np.float32) * 10
    victims, victim_vectors = bundle_ids[:20], bundle_vectors[:20]
    try:
        reply = s.admin.Upsert(upsert_request(new, vectors), metadata=AUTH, timeout=10)
        assert (reply.inserted, reply.replaced, reply.bundle.upserted_items) == (2, 0, 2)
        assert reply.bundle_id == flat_bundle.id
        assert list(s.query(vectors, k=1)[1][:, 0]) == list(new)  # searchable at once

        reply = s.admin.Delete(
            shard_pb2.DeleteRequest(ids=to_bytes(victims, I64)), metadata=AUTH, timeout=10
        )
        assert reply.deleted == 20 and reply.bundle.deleted_items == 20
        assert not np.isin(s.query(victim_vectors, k=50)[1], victims).any()
        code, details = code_of(
            s.admin.Delete,
            shard_pb2.DeleteRequest(ids=to_bytes(victims[:2], I64)),
            metadata=AUTH,
            timeout=10,
        )
        assert code == grpc.StatusCode.NOT_FOUND and str(victims[0]) in details
        info = s.describe()
        assert info.num_items == len(bundle_ids) - 20 + 2
        assert info.bundles[0].update_records == 2
    finally:
        s.close()

    restarted = start(loop_thread, flat_bundle, updates)
    try:
        assert list(restarted.query(vectors, k=1)[1][:, 0]) == list(new)
        assert not np.isin(restarted.query(victim_vectors, k=50)[1], victims).any()
        held = restarted.describe().bundles[0]
        assert (held.upserted_items, held.deleted_items) == (2, 20)
    finally:
        restarted.close()


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (
            lambda: upsert_request(own_ids(1), np.ones((1, 16), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dim 16 does not match the bundle's dim 32",
        ),
        (
            lambda: upsert_request(own_ids(1), np.full((1, 32), np.inf, np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
        ),
        (
            lambda: upsert_request(own_ids(1, shard_id=2), np.ones((1, 32), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "(shard 2)",
        ),
        (
            lambda: upsert_request(own_ids(2), np.ones((1, 32), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "2 ids but 1 vectors",
        ),
        (
            lambda: shard_pb2.UpsertRequest(ids=b"\x00" * 7, vectors=b"\x00" * 128, dim=32),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a whole number of int64",
        ),
        (
            lambda: upsert_request(own_ids(1), np.ones((1, 32), np.float32), bundle_id="bnothere"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "not held",
        ),
    ],
)
def test_bad_upserts_get_invalid_argument_and_change_nothing(
    shard: Shard,
    make,
    code: grpc.StatusCode,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    got, details = code_of(shard.admin.Upsert, make(), metadata=AUTH, timeout=10)
    assert got == code and message in details, details
    assert shard.describe().bundles[0].upserted_items == 0


def test_exact_search_is_brute_force_over_the_live_items(
    shard: Shard, flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    bundle_ids = np.load(flat_bundle.shard_dir(0) / "ids.npy")
    bundle_vectors = np.load(flat_bundle.shard_dir(0) / "vectors.npy")
    new = own_ids(5)
    vectors = np.random.default_rng(4).standard_normal((5, 32)).astype(np.float32)
    shard.admin.Upsert(upsert_request(new, vectors), metadata=AUTH, timeout=10)
    shard.admin.Delete(
        shard_pb2.DeleteRequest(ids=to_bytes(bundle_ids[:100], I64)), metadata=AUTH, timeout=10
    )
    queries = catalogue.vectors[:8]
    bundle_id, got = shard.query(queries, k=20, exact=True)
    live_ids = np.concatenate([bundle_ids[100:], new])
    live_vectors = np.concatenate([bundle_vectors[100:], vectors])
    expected, _ = exact_topk(live_vectors, live_ids, queries, 20)
    assert bundle_id == flat_bundle.id and np.array_equal(got, expected)


# ---------------------------------------------------------------------------- items client
def items(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "annfleet.cli", "items", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_items_client_routes_ids_to_every_shard(
    loop_thread: LoopThread, flat_bundle: Bundle, tmp_path: Path
) -> None:
    shards = [start(loop_thread, flat_bundle, tmp_path / "u", shard=i) for i in range(3)]
    try:
        ids = np.arange(70_000_000, 70_000_030, dtype=np.int64)
        vectors = np.random.default_rng(5).standard_normal((30, 32)).astype(np.float32) * 10
        fleet = Fleet.connect([s.admin_target for s in reversed(shards)], TOKEN)
        try:
            assert fleet.num_shards == 3 and fleet.bundle_id == flat_bundle.id
            tally = upsert(fleet, ids, vectors)
        finally:
            fleet.close()
        assert not tally.failures
        owner = shard_of(ids, 3)
        for i, s in enumerate(shards):
            mine = owner == i
            assert s.describe().bundles[0].upserted_items == mine.sum()
            assert list(s.query(vectors[mine], k=1)[1][:, 0]) == list(ids[mine])

        # The command line, as a user runs it: --targets and --token-file.
        np.save(tmp_path / "ids.npy", ids[:10])
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        targets = ",".join(s.admin_target for s in shards)
        common = ["--targets", targets, "--token-file", str(token_file)]
        # Shards only here: with --targets the router must be named too, or skipped; asked
        # before anything changes.
        no_router = items("delete", "--ids", str(tmp_path / "ids.npy"), *common)
        assert no_router.returncode == 2 and "--no-router" in no_router.stderr
        assert all(s.describe().bundles[0].deleted_items == 0 for s in shards)
        common.append("--no-router")
        done = items("delete", "--ids", str(tmp_path / "ids.npy"), *common, "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert sum(r["deleted"] for r in summary["replicas"]) == 10
        for s in shards:
            assert not np.isin(s.query(vectors[:10], k=5)[1], ids[:10]).any()
        again = items("delete", "--ids", f"{ids[0]},{ids[1]}", *common)
        assert again.returncode == 1 and "NOT_FOUND" in again.stderr
        assert "--missing-ok skips ids" in again.stderr  # the way out, not "run it again"
        np.save(tmp_path / "wide.npy", np.ones((1, 33), np.float32))
        wide = items("upsert", "--ids", "5", "--vectors", str(tmp_path / "wide.npy"), *common)
        assert wide.returncode == 1 and "INVALID_ARGUMENT" in wide.stderr
        assert "refused as it is" in wide.stderr and "run the command again" not in wide.stderr
        wrong = token_file.with_name("wrong")
        wrong.write_text("nope\n")
        refused = items(
            "delete", "--ids", "1", *common[:2], "--no-router", "--token-file", str(wrong)
        )
        assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr
        # One shard's delete: the other shards got nothing to do.
        fleet = Fleet.connect([s.admin_target for s in shards], TOKEN)
        try:
            tally = delete(fleet, ids[10:11])
        finally:
            fleet.close()
        assert [c["deleted"] for c in tally.counts.values()] == [1]
    finally:
        for s in shards:
            s.close()
