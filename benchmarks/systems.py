"""The systems a benchmark compares, behind one interface: one query in, top-k ids out.

- ``faiss``: faiss in the benchmark process on the whole catalogue, with the product's own
  :class:`annfleet.server.index.ShardIndex` (same index type, parameters and re-rank), one
  thread — the limit a cluster is judged against;
- ``scatter``: the client fanning out directly to the shard servers and merging client-side;
- ``router``: through the router's ``Retrieval.Search``;
- peers (optional, skipped with a note when not installed): ``hnswlib``, ``usearch``,
  ``qdrant-edge`` in process, ``milvus-lite`` as a separate server process.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PEERS = ("hnswlib", "usearch", "milvus", "qdrant-edge")


class System:
    """Base: ``search(q (d,) float32, k, params) -> ids (k,) int64`` and ``close()``."""

    name = "system"
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcessFaiss(System):
    """faiss on the whole catalogue in this process, through ShardIndex (one thread)."""

    name = "faiss-inprocess"

    def __init__(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        index_type: str,
        build_params: dict[str, int],
        cache: Path | None = None,
    ) -> None:
        super().__init__()
        import faiss

        from annfleet.server.index import IndexSpec, ShardIndex, build_index, set_threads

        spec = IndexSpec(index_type, dict(build_params)).resolved(*vectors.shape)
        index = None
        if cache is not None and cache.is_file():
            index = faiss.read_index(str(cache))
        if index is None:
            set_threads(_cores())  # build with every core
            t0 = time.perf_counter()
            index = build_index(vectors, spec, metric)
            self.build_s = time.perf_counter() - t0
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                faiss.write_index(index, str(cache))
        set_threads(1)  # single-query latency: one thread, like one shard server's search
        self.index = ShardIndex(index, ids, vectors, metric, spec)
        self.spec = spec

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        ids, _ = self.index.search(query[None, :], k, **params)
        return ids[0]

    def search_batch(self, queries: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        ids, _ = self.index.search(queries, k, **params)
        return ids


def _cores() -> int:
    import os

    return os.cpu_count() or 1


class _ClientSystem(System):
    """The cluster through one of annfleet's own clients (the router or direct scatter)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        return np.asarray(self.client.search(query, k, **params).ids)[0]

    def close(self) -> None:
        self.client.close()


class RouterSystem(_ClientSystem):
    name = "router"

    def __init__(self, target: str, timeout: float = 5.0) -> None:
        from annfleet.client import Client

        super().__init__(Client(target, timeout=timeout))


class ScatterSystem(_ClientSystem):
    name = "scatter"

    def __init__(self, shard_targets: list[str], timeout: float = 5.0) -> None:
        from annfleet.client import ScatterClient

        super().__init__(ScatterClient(shard_targets, timeout=timeout))


# ---------------------------------------------------------------- peers


class HnswlibPeer(System):
    name = "hnswlib"

    def __init__(
        self, ids: np.ndarray, vectors: np.ndarray, metric: str, m: int, ef_construction: int
    ) -> None:
        super().__init__()
        import hnswlib

        self.index = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=vectors.shape[1])
        self.index.init_index(
            max_elements=len(ids), M=m, ef_construction=ef_construction, random_seed=0
        )
        t0 = time.perf_counter()
        self.index.add_items(vectors, ids, num_threads=_cores())
        self.build_s = time.perf_counter() - t0
        self.index.set_num_threads(1)
        self._ef = -1

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        ef = max(params.get("ef_search", 128), k)
        if ef != self._ef:
            self.index.set_ef(ef)
            self._ef = ef
        labels, _ = self.index.knn_query(query[None, :], k=k, num_threads=1)
        return labels[0].astype(np.int64)


class UsearchPeer(System):
    name = "usearch"

    def __init__(
        self, ids: np.ndarray, vectors: np.ndarray, metric: str, m: int, ef_construction: int
    ) -> None:
        super().__init__()
        from usearch.index import Index

        self.index = Index(
            ndim=vectors.shape[1],
            metric="ip" if metric == "ip" else "l2sq",
            dtype="f32",
            connectivity=m,
            expansion_add=ef_construction,
        )
        t0 = time.perf_counter()
        self.index.add(ids.astype(np.uint64), vectors, threads=_cores())
        self.build_s = time.perf_counter() - t0
        self.notes.append("usearch: f32 storage, connectivity=M, expansion_add=ef_construction")

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        self.index.expansion_search = max(params.get("ef_search", 128), k)  # type: ignore[misc]
        matches = self.index.search(query, k, threads=1)
        return np.asarray(matches.keys, dtype=np.int64)[:k]


class QdrantEdgePeer(System):
    """qdrant-edge-py: Qdrant's Rust engine embedded in process (no server)."""

    name = "qdrant-edge"

    def __init__(
        self, ids: np.ndarray, vectors: np.ndarray, metric: str, m: int, ef_construction: int
    ) -> None:
        super().__init__()
        import qdrant_edge as q

        self.q = q
        self.dir = Path(tempfile.mkdtemp(prefix="annfleet-qdrant-"))
        distance = q.Distance.Dot if metric == "ip" else q.Distance.Euclid
        config = q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=vectors.shape[1], distance=distance),
            # full_scan_threshold (KiB) low and one segment: always search one HNSW graph.
            hnsw_config=q.HnswIndexConfig(m=m, ef_construct=ef_construction, full_scan_threshold=1),
            optimizers=q.EdgeOptimizersConfig(default_segment_number=1, indexing_threshold=1),
        )
        self.shard = q.EdgeShard.create(str(self.dir), config)
        t0 = time.perf_counter()
        batch = 10_000
        for start in range(0, len(ids), batch):
            points = [
                q.Point(int(i), v.tolist())
                for i, v in zip(
                    ids[start : start + batch], vectors[start : start + batch], strict=True
                )
            ]
            self.shard.update(q.UpdateOperation.upsert_points(points))
        self.shard.optimize()
        self.build_s = time.perf_counter() - t0
        self.notes.append("qdrant-edge: HNSW built by optimize() after upsert; hnsw_ef per query")

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        q = self.q
        req = q.SearchRequest(
            query=q.Query.Nearest(query.tolist()),
            limit=k,
            params=q.SearchParams(hnsw_ef=max(params.get("ef_search", 128), k)),
        )
        hits = self.shard.search(req)
        out = np.full(k, -1, dtype=np.int64)
        got = [int(h.id) for h in hits][:k]
        out[: len(got)] = got
        return out

    def close(self) -> None:
        try:
            self.shard.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MilvusLitePeer(System):
    """milvus-lite as a separate server process, through pymilvus (HNSW index)."""

    name = "milvus-lite"

    def __init__(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        from pymilvus import DataType, MilvusClient

        self.dir = Path(tempfile.mkdtemp(prefix="annfleet-milvus-"))
        port = _free_port()
        exe = shutil.which("milvus-lite") or str(
            Path(__import__("sys").executable).parent / "milvus-lite"
        )
        self.log_file = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                "server",
                "--data-dir",
                str(self.dir / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                self.client = MilvusClient(uri=uri, timeout=5)
                self.client.list_collections()
                break
            except Exception as exc:  # the server is still starting
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"milvus-lite server did not start: {exc}") from exc
                time.sleep(0.5)
        mt = "IP" if metric == "ip" else "L2"
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        self.client.create_collection("bench", schema=schema)
        t0 = time.perf_counter()
        batch = 20_000
        for start in range(0, len(ids), batch):
            rows = [
                {"id": int(i), "v": v.tolist()}
                for i, v in zip(
                    ids[start : start + batch], vectors[start : start + batch], strict=True
                )
            ]
            self.client.insert("bench", rows)
        # Must flush before the index is built, else searches are silently exact.
        self.client.flush("bench")
        index_params = self.client.prepare_index_params()
        # Build params are silently ignored unless nested as params={"params": {...}}.
        index_params.add_index(
            field_name="v",
            index_type="HNSW",
            metric_type=mt,
            params={"params": {"M": m, "efConstruction": ef_construction}},
        )
        self.client.create_index("bench", index_params)
        self.client.load_collection("bench")
        self.build_s = time.perf_counter() - t0
        self.metric_type = mt
        self.notes += [
            "milvus-lite 3.2.2: separate server process (faiss inside), pymilvus client",
            "flushed before create_index (otherwise searches are silently exact)",
            'HNSW build params passed as params={"params": {...}} (otherwise silently ignored)',
            "no IVF_PQ support (FLAT/IVF_FLAT/IVF_SQ8/HNSW only): compared with its HNSW",
        ]

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        ef = max(params.get("ef_search", 128), k)
        res = self.client.search(
            "bench",
            data=[query.tolist()],
            limit=k,
            anns_field="v",
            search_params={"metric_type": self.metric_type, "params": {"ef": ef}},
        )
        out = np.full(k, -1, dtype=np.int64)
        got = [int(h["id"]) for h in res[0]][:k]
        out[: len(got)] = got
        return out

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


PEER_FACTORIES: dict[str, Callable[..., System]] = {
    "hnswlib": HnswlibPeer,
    "usearch": UsearchPeer,
    "qdrant-edge": QdrantEdgePeer,
    "milvus": MilvusLitePeer,
}


def make_peer(
    name: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    metric: str,
    hnsw_params: dict[str, int],
    **kwargs: Any,
) -> tuple[System | None, str]:
    """A peer or (None, why it was skipped)."""
    try:
        peer = PEER_FACTORIES[name](
            ids,
            vectors,
            metric,
            hnsw_params.get("m", 32),
            hnsw_params.get("ef_construction", 200),
            **kwargs,
        )
    except ImportError as exc:
        return None, f"{name}: not installed ({exc.name}); pip install 'annfleet[bench-peers]'"
    except Exception as exc:  # a peer must never break the benchmark
        log.exception("peer %s failed", name)
        return None, f"{name}: failed to start: {type(exc).__name__}: {exc}"
    return peer, ""
