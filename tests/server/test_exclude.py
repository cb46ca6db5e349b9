"""Exclusions pushed down to the shards: ids in a request's ``exclude_ids`` never come back,
filtered inside faiss (flat, HNSW, IVF-PQ) and among live upserts, without inflating k."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from support import LoopThread, exact_topk

from annfleet.arrays import F32, I64, decode_rows, to_bytes
from annfleet.bundle import Bundle
from annfleet.partition import shard_of
from annfleet.server.delta import Delta
from annfleet.server.holdings import load_shard
from annfleet.server.index import ShardIndex
from annfleet.server.main import start_shard_server
from annfleet.synthetic import Catalogue
from annfleet.v1 import shard_pb2, shard_pb2_grpc

SHARD = 0


def own(bundle: Bundle, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the items shard SHARD holds."""
    mask = shard_of(catalogue.ids, bundle.num_shards) == SHARD
    return catalogue.ids[mask], catalogue.vectors[mask]


@pytest.fixture(params=["flat", "hnsw", "ivfpq"])
def bundle(request: pytest.FixtureRequest) -> Bundle:
    return request.getfixturevalue(f"{request.param}_bundle")


@pytest.fixture
def stub(loop_thread: LoopThread, bundle: Bundle) -> Iterator[shard_pb2_grpc.IndexShardStub]:
    server = loop_thread.run(start_shard_server(bundle.path, SHARD))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield shard_pb2_grpc.IndexShardStub(channel)
    loop_thread.run(server.stop(0))


def search(
    stub: shard_pb2_grpc.IndexShardStub, queries: np.ndarray, k: int, exclude: np.ndarray
) -> np.ndarray:
    response = stub.Search(
        shard_pb2.ShardSearchRequest(
            queries=to_bytes(queries, F32),
            dim=queries.shape[1],
            k=k,
            exclude_ids=to_bytes(exclude, I64),
        ),
        timeout=10,
    )
    return decode_rows(response.ids, I64, len(queries), k, name="ids")


def test_excluded_ids_never_come_back_and_k_stays_full(
    stub: shard_pb2_grpc.IndexShardStub, bundle: Bundle, catalogue: Catalogue
) -> None:
    ids, vectors = own(bundle, catalogue)
    queries = catalogue.user_vectors[:8]
    k = 20
    plain = search(stub, queries, k, np.empty(0, np.int64))
    # Each query's best 10 (and ids of other shards, and unknown ids) excluded for every query.
    foreign = catalogue.ids[shard_of(catalogue.ids, bundle.num_shards) != SHARD][:50]
    exclude = np.unique(np.concatenate([plain[:, :10].ravel(), foreign, [-5, 10**15]]))
    got = search(stub, queries, k, exclude)
    assert (got >= 0).all(), "k stays full"
    assert not np.isin(got, exclude).any()
    keep = ~np.isin(ids, exclude)
    expected, _ = exact_topk(vectors[keep], ids[keep], queries, k)
    if bundle.shard(SHARD)["index"]["type"] == "flat":  # exact: the best k not excluded
        assert np.array_equal(got, expected)
    else:  # approximate, but the filter costs no recall: k is not eaten by exclusions
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(got, expected, strict=True)])
        assert recall >= 0.7, recall


def test_malformed_exclude_ids_are_invalid_argument(
    stub: shard_pb2_grpc.IndexShardStub, bundle: Bundle
) -> None:
    query = np.zeros((1, bundle.dim), np.float32)
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(
            shard_pb2.ShardSearchRequest(
                queries=to_bytes(query, F32), dim=bundle.dim, k=5, exclude_ids=b"\x01" * 12
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exclude_ids: 12 bytes" in info.value.details()


def test_exclusions_apply_to_upserted_items_and_exact_search(
    flat_bundle: Bundle, catalogue: Catalogue
) -> None:
    _, base = load_shard(flat_bundle.path, SHARD)
    index = ShardIndex(base.index, base.ids, base.vectors, base.metric, base.spec)
    delta = Delta(index, shard_id=SHARD, num_shards=flat_bundle.num_shards)
    candidates = np.arange(10_000_000, 10_000_200, dtype=np.int64)
    new = candidates[shard_of(candidates, flat_bundle.num_shards) == SHARD][:3]
    query = catalogue.user_vectors[:1]
    delta.upsert(new, np.repeat(query * 10, 3, axis=0))  # the best hits of the query
    deleted = index.ids[:1]
    delta.delete(deleted)
    k = 10
    plain, _ = delta.search(query, k)
    assert plain[0, :3].tolist() == sorted(new.tolist())  # ties broken by id
    exclude = np.concatenate([new[:2], plain[0, 3:5]])
    for found, _ in (delta.search(query, k, exclude=exclude), delta.exact(query, k, exclude)):
        assert not np.isin(found, exclude).any() and not np.isin(found, deleted).any()
        assert (found >= 0).all()
        assert found[0, 0] == new[2]
    ids = np.concatenate([index.ids, new])
    vectors = np.concatenate([np.asarray(index.vectors), np.repeat(query * 10, 3, axis=0)])
    keep = ~np.isin(ids, np.concatenate([exclude, deleted]))
    expected, _ = exact_topk(vectors[keep], ids[keep], query, k)
    assert delta.search(query, k, exclude=exclude)[0].tolist() == expected.tolist()
