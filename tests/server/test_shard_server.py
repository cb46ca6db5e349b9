"""A real shard server on port 0: search, bad input statuses, health, reflection, bundles."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import LoopThread

from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.bundle import Bundle
from annfleet.config import SearchConfig, ShardsConfig
from annfleet.errors import BundleError, FailedPrecondition
from annfleet.server.main import ShardServer, start_shard_server
from annfleet.synthetic import Catalogue
from annfleet.v1 import common_pb2, shard_pb2, shard_pb2_grpc


@pytest.fixture(scope="module")
def shard(loop_thread: LoopThread, flat_bundle: Bundle) -> Iterator[ShardServer]:
    server = loop_thread.run(
        start_shard_server(flat_bundle.path, 0, ShardsConfig(max_k=500, max_batch=8))
    )
    yield server
    loop_thread.run(server.stop(0))


@pytest.fixture(scope="module")
def stub(shard: ShardServer) -> Iterator[shard_pb2_grpc.IndexShardStub]:
    with grpc.insecure_channel(f"127.0.0.1:{shard.port}") as channel:
        yield shard_pb2_grpc.IndexShardStub(channel)


def request(queries: np.ndarray, k: int = 10, **kw: object) -> shard_pb2.ShardSearchRequest:
    return shard_pb2.ShardSearchRequest(
        queries=to_bytes(queries, F32), dim=queries.shape[1], k=k, **kw
    )  # type: ignore[arg-type]


def test_search_matches_exact_on_own_items(
    stub: shard_pb2_grpc.IndexShardStub, flat_bundle: Bundle
) -> None:
    ids = np.load(flat_bundle.shard_dir(0) / "ids.npy")
    vectors = np.load(flat_bundle.shard_dir(0) / "vectors.npy")
    reply = stub.Search(request(vectors[:4], k=5), timeout=5)
    got = decode_rows(reply.ids, I64, 4, 5, name="ids")
    exact = np.argsort(-(vectors[:4] @ vectors.T), axis=1)[:, :5]
    assert np.array_equal(got, ids[exact])
    assert reply.shard_id == 0 and reply.bundle_id == flat_bundle.id and reply.metric == "ip"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: request(np.zeros((1, 31), np.float32)), "dim 31 does not match the index dim 32"),
        (lambda: request(np.full((1, 32), np.nan, np.float32)), "NaN or Inf"),
        (lambda: request(np.ones((1, 32), np.float32), k=0), "k must be > 0"),
        (lambda: request(np.ones((1, 32), np.float32), k=501), "exceeds max_k 500"),
        (lambda: request(np.ones((9, 32), np.float32)), "exceeds max_batch 8"),
        (lambda: shard_pb2.ShardSearchRequest(queries=b"", dim=32, k=3), "empty"),
        (
            lambda: shard_pb2.ShardSearchRequest(queries=b"\x00" * 100, dim=32, k=3),
            "not a whole number",
        ),
        (
            lambda: request(
                np.ones((1, 32), np.float32), params=common_pb2.SearchParams(ef_search=1 << 20)
            ),
            "ef_search",
        ),
    ],
)
def test_bad_input_is_invalid_argument_and_server_keeps_serving(
    stub: shard_pb2_grpc.IndexShardStub,
    make,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(make(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert stub.Search(request(np.ones((1, 32), np.float32)), timeout=5).k == 10


def test_wrong_bundle_id_is_failed_precondition(stub: shard_pb2_grpc.IndexShardStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(request(np.ones((1, 32), np.float32), bundle_id="bother"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "bother" in info.value.details()


def test_info_on_the_serving_port(shard: ShardServer, flat_bundle: Bundle) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{shard.port}") as channel:
        info = shard_pb2_grpc.IndexShardStub(channel).Info(shard_pb2.InfoRequest())
    assert info.bundle_id == flat_bundle.id and info.num_shards == 3 and info.dim == 32
    assert info.num_items == flat_bundle.shard(0)["num_items"] and info.index_type == "flat"
    assert [(b.bundle_id, b.active) for b in info.bundles] == [(flat_bundle.id, True)]


def _health(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_health_transitions_and_reflection(loop_thread: LoopThread, flat_bundle: Bundle) -> None:
    server = loop_thread.run(ShardServer.bind())
    try:
        assert _health(server.port) == "NOT_SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                shard_pb2_grpc.IndexShardStub(channel).Search(
                    request(np.ones((1, 32), np.float32)), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            services = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in services for s in r.list_services_response.service}
        assert {"annfleet.v1.IndexShard", "grpc.health.v1.Health"} <= names
        assert "annfleet.v1.ShardAdmin" not in names  # only on the admin port
        loop_thread.run(server.load(flat_bundle.path, 1))
        assert _health(server.port) == "SERVING"
        loop_thread.run(server.grpc.set_serving(False))  # what stop() does before draining
        assert _health(server.port) == "NOT_SERVING"
    finally:
        loop_thread.run(server.stop(0))


def test_corrupt_bundle_is_refused_and_loaded_shard_keeps_serving(
    loop_thread: LoopThread,
    flat_bundle: Bundle,
    hnsw_bundle: Bundle,
    tmp_path: Path,
    catalogue: Catalogue,
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(flat_bundle.path, corrupt)
    with (corrupt / "shard-00" / "vectors.npy").open("r+b") as f:
        f.seek(200)
        f.write(b"\x01\x02\x03")
    with pytest.raises(BundleError, match=r"checksum mismatch for shard-00/vectors\.npy"):
        loop_thread.run(start_shard_server(corrupt, 0))
    server = loop_thread.run(start_shard_server(hnsw_bundle.path, 0))
    try:
        with pytest.raises(BundleError, match="checksum mismatch"):
            loop_thread.run(server.load(corrupt, 0))
        with pytest.raises(FailedPrecondition, match="serves shard 0, not shard 1"):
            loop_thread.run(server.load(flat_bundle.path, 1))
        assert _health(server.port) == "SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = shard_pb2_grpc.IndexShardStub(channel).Search(
                request(catalogue.vectors[:1]), timeout=5
            )
        assert reply.bundle_id == hnsw_bundle.id
    finally:
        loop_thread.run(server.stop(0))


def test_ivfpq_rerank_returns_exact_scores(loop_thread: LoopThread, ivfpq_bundle: Bundle) -> None:
    server = loop_thread.run(start_shard_server(ivfpq_bundle.path, 2))
    try:
        vectors = np.load(ivfpq_bundle.shard_dir(2) / "vectors.npy")
        ids = np.load(ivfpq_bundle.shard_dir(2) / "ids.npy")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = shard_pb2_grpc.IndexShardStub(channel).Search(
                request(vectors[:3], k=5, params=common_pb2.SearchParams(nprobe=64, rerank=300)),
                timeout=5,
            )
        got_ids = decode_rows(reply.ids, I64, 3, 5, name="ids")
        got_scores = decode_rows(reply.scores, F32, 3, 5, name="scores")
        rows = np.searchsorted(ids, got_ids[0])
        assert np.allclose(got_scores[0], vectors[rows] @ vectors[0], atol=1e-5)
        assert got_ids[0, 0] == ids[0]  # a vector's own nearest neighbour is itself
    finally:
        loop_thread.run(server.stop(0))


def test_bundle_with_wrong_dim_is_refused(flat_bundle: Bundle, tmp_path: Path) -> None:
    """A builder bug: an index of another dim, with checksums and id made consistent."""
    import json

    import faiss

    from annfleet.bundle import content_id, sha256_file
    from annfleet.server.main import load_shard

    bad = tmp_path / "wrong-dim"
    shutil.copytree(flat_bundle.path, bad)
    faiss.write_index(faiss.IndexFlatIP(8), str(bad / "shard-00" / "index.faiss"))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["shard-00/index.faiss"] = sha256_file(bad / "shard-00" / "index.faiss")
    manifest["bundle_id"] = content_id(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="index has 0 vectors"):
        load_shard(bad, 0)
    index = faiss.IndexFlatIP(8)
    index.add(np.zeros((flat_bundle.shard(0)["num_items"], 8), np.float32))
    faiss.write_index(index, str(bad / "shard-00" / "index.faiss"))
    manifest["files"]["shard-00/index.faiss"] = sha256_file(bad / "shard-00" / "index.faiss")
    manifest["bundle_id"] = content_id(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"index dim 8 != vectors\.npy dim 32"):
        load_shard(bad, 0)


def test_metrics_endpoint_counts_requests_by_code(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> None:
    import urllib.request

    server = loop_thread.run(start_shard_server(flat_bundle.path, 0, metrics_port=0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = shard_pb2_grpc.IndexShardStub(channel)
            stub.Search(request(np.ones((1, 32), np.float32)), timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.Search(request(np.ones((1, 32), np.float32), k=0), timeout=5)
        port = server.grpc.metrics_port
        assert port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        body = text.decode()
        assert 'annfleet_requests_total{code="OK",method="Search",service="IndexShard"}' in body
        assert 'code="INVALID_ARGUMENT",method="Search"' in body
        assert "annfleet_request_seconds_bucket" in body
    finally:
        loop_thread.run(server.stop(0))


def test_faiss_threads_apply_in_the_search_threads(loop_thread: LoopThread) -> None:
    """OpenMP's thread count is per thread: the executor that runs faiss must set it."""
    import faiss

    async def threads_in_executor(server: ShardServer) -> int:
        loop = asyncio.get_running_loop()
        return int(await loop.run_in_executor(server.executor, faiss.omp_get_max_threads))

    server = loop_thread.run(ShardServer.bind(ShardsConfig(search_threads=1)))
    try:
        assert loop_thread.run(threads_in_executor(server)) == 1
    finally:
        loop_thread.run(server.stop(0))


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def _niceness_in(executor: Executor) -> int:
    return await asyncio.get_running_loop().run_in_executor(executor, _niceness)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_load_thread_runs_at_lower_priority_with_load_nice(loop_thread: LoopThread) -> None:
    in_executor = _niceness_in
    server = loop_thread.run(ShardServer.bind(ShardsConfig(load_nice=7)))
    try:
        serving = loop_thread.run(in_executor(server.executor))
        assert loop_thread.run(in_executor(server.loader)) == min(serving + 7, 19)
        assert loop_thread.run(in_executor(server.updater)) == serving
    finally:
        loop_thread.run(server.stop(0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_exact_searches_run_in_their_own_thread_at_lower_priority(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> None:
    """ExactSearch (live recall samples: a scan of every stored vector) has a thread and a
    queue of its own at shards.exact_nice: it answers while every search thread is busy."""
    server = loop_thread.run(start_shard_server(flat_bundle.path, 0, ShardsConfig(exact_nice=5)))
    release = threading.Event()
    try:
        serving = loop_thread.run(_niceness_in(server.executor))
        assert loop_thread.run(_niceness_in(server.exact)) == min(serving + 5, 19)
        for _ in range(os.cpu_count() or 2):  # the search executor's every thread
            server.executor.submit(release.wait, 60)
        ids = np.load(flat_bundle.shard_dir(0) / "ids.npy")
        vectors = np.load(flat_bundle.shard_dir(0) / "vectors.npy")
        reply = loop_thread.run(
            asyncio.wait_for(server.service.answer(request(vectors[:3], k=5), exact=True), 10)
        )
        exact = np.argsort(-(vectors[:3] @ vectors.T), axis=1)[:, :5]
        assert np.array_equal(decode_rows(reply.ids, I64, 3, 5, name="ids"), ids[exact])
    finally:
        release.set()
        loop_thread.run(server.stop(0))


def test_chunked_paced_exact_search_returns_the_one_call_hits(
    loop_thread: LoopThread, flat_bundle: Bundle
) -> None:
    """shards.exact_chunk_items / exact_duty: an exact search scanned in chunks (fewer rows
    than k, not a divisor of the shard's size) with pauses answers what one faiss call over
    every row does: the same ids, the same scores to float32 rounding (BLAS picks kernels by
    matrix shape, so a chunk's sums may round differently), excluded ids honoured."""
    ids = np.load(flat_bundle.shard_dir(0) / "ids.npy")
    vectors = np.load(flat_bundle.shard_dir(0) / "vectors.npy")
    assert len(ids) % 97 and len(ids) > 150
    queries = np.random.default_rng(7).standard_normal((3, 32)).astype(np.float32)
    exclude = ids[np.argsort(-(queries[0] @ vectors.T))[:5]]  # the first query's best five
    ask = request(queries, k=150, exclude_ids=to_bytes(exclude, I64))
    replies = []
    for chunk, duty in ((0, 1.0), (97, 0.5)):
        config = ShardsConfig(exact_chunk_items=chunk, exact_duty=duty)
        server = loop_thread.run(start_shard_server(flat_bundle.path, 0, config))
        try:
            replies.append(loop_thread.run(server.service.answer(ask, exact=True)))
        finally:
            loop_thread.run(server.stop(0))
    whole, chunked = replies
    assert chunked.ids == whole.ids
    np.testing.assert_allclose(
        decode_rows(chunked.scores, F32, 3, 150, name="scores"),
        decode_rows(whole.scores, F32, 3, 150, name="scores"),
        rtol=1e-6,
        atol=1e-6,
    )
    got = decode_rows(chunked.ids, I64, 3, 150, name="ids")
    kept = ~np.isin(ids, exclude)
    truth = np.argsort(-(queries @ vectors[kept].T), axis=1, kind="stable")[:, :150]
    assert np.array_equal(got, ids[kept][truth])


def _search_ids(port: int, queries: np.ndarray, params: common_pb2.SearchParams) -> np.ndarray:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = shard_pb2_grpc.IndexShardStub(channel).Search(
            request(queries, k=10, params=params), timeout=10
        )
    return decode_rows(reply.ids, I64, len(queries), 10, name="ids")


def test_search_defaults_come_from_the_serving_config_not_the_bundle(
    loop_thread: LoopThread, ivfpq_bundle: Bundle, catalogue: Catalogue, tmp_path: Path
) -> None:
    """A request's 0 means the shard's `search:` config, even over an older bundle whose
    manifest stored its own search defaults."""
    import json

    from annfleet.bundle import content_id

    old = tmp_path / "old-manifest"
    shutil.copytree(ivfpq_bundle.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for shard_entry in manifest["shards"]:
        shard_entry["index"]["params"].update(nprobe=64, rerank=1000)
    manifest["bundle_id"] = content_id(manifest)
    (old / "manifest.json").write_text(json.dumps(manifest))

    queries = catalogue.user_vectors[:50]
    explicit = {}
    for nprobe in (1, 64):
        server = loop_thread.run(start_shard_server(ivfpq_bundle.path, 0))
        try:
            explicit[nprobe] = _search_ids(
                server.port, queries, common_pb2.SearchParams(nprobe=nprobe, rerank=10)
            )
        finally:
            loop_thread.run(server.stop(0))
    assert not np.array_equal(explicit[1], explicit[64])  # nprobe matters on these queries

    for nprobe in (1, 64):
        server = loop_thread.run(
            start_shard_server(old, 0, search=SearchConfig(nprobe=nprobe, rerank=10))
        )
        try:
            got = _search_ids(server.port, queries, common_pb2.SearchParams())
        finally:
            loop_thread.run(server.stop(0))
        assert np.array_equal(got, explicit[nprobe])
