"""The systems a benchmark compares, behind one interface: one query in, top-k ids out.

- ``faiss``: faiss in the benchmark process on the whole catalogue, with the product's own
  :class:`annfleet.server.index.ShardIndex` (same index type, parameters and re-rank), one
  thread — the limit a cluster is judged against;
- ``scatter``: the client fanning out directly to the shard servers and merging client-side;
- ``router``: through the router's ``Retrieval.Search``;
- peers (optional, skipped with a note when not installed): ``hnswlib``, ``usearch``,
  ``qdrant-edge`` in process; ``milvus-lite`` and ``chroma`` as separate server processes
  (their ``pids`` name the server processes, so their CPU can be accounted).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


class System:
    """Base: ``search(q (d,) float32, k, params) -> ids (k,) int64`` and ``close()``.

    ``pids`` names the server processes of a system that runs as its own server (empty for
    in-process systems); ``search`` of such a system is safe to call from several threads.
    """

    name = "system"
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []

    @property
    def pids(self) -> dict[str, int]:
        return {}

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


def _insert_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", leave=False, disable=not enabled)


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
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        progress: bool = True,  # one add call: nothing to show
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
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        progress: bool = True,  # one add call: nothing to show
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
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        progress: bool = True,
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
        bar = _insert_bar(len(ids), "qdrant-edge upsert", progress)
        for start in range(0, len(ids), batch):
            points = [
                q.Point(int(i), v.tolist())
                for i, v in zip(
                    ids[start : start + batch], vectors[start : start + batch], strict=True
                )
            ]
            self.shard.update(q.UpdateOperation.upsert_points(points))
            bar.update(len(points))
        bar.close()
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


def _console_script(dist: str, script: str, *args: str) -> list[str]:
    """argv running a package's console script (with ``args``) with this interpreter.

    No PATH lookup: the server then comes from the same environment as the client library
    imported here (a venv that borrows another venv's site-packages has no scripts of its own).
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        eps = distribution(dist).entry_points
    except PackageNotFoundError as exc:
        raise ImportError(f"{dist} is not installed", name=dist) from exc
    ep = next((e for e in eps if e.group == "console_scripts" and e.name == script), None)
    if ep is None:
        raise ImportError(f"{dist} has no console script {script!r}", name=dist)
    module, _, attr = ep.value.partition(":")
    code = f"import sys; sys.argv[0] = {script!r}; from {module} import {attr}; sys.exit({attr}())"
    return [sys.executable, "-c", code, *args]


class _ServerProcess:
    """A peer's server as a child process, its output in ``<dir>/server.log``; restartable."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def start(self, ready: Callable[[], T], timeout: float) -> T:
        """Start the process and poll ``ready()`` until it returns (its value is returned)."""
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(self.argv, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ready()
            except Exception as exc:  # the server is still starting
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} server did not start: {exc}; log tail: {self.log_tail()!r}"
                    ) from exc
                time.sleep(0.2)

    def restart(self, ready: Callable[[], T], timeout: float) -> T:
        self.stop()
        self.restarts += 1
        return self.start(ready, timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 300) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


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
        progress: bool = True,
    ) -> None:
        super().__init__()
        from pymilvus import MilvusClient

        from annfleet.cluster import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="annfleet-milvus-"))
        port = free_port()
        argv = _console_script(
            "milvus-lite",
            "milvus-lite",
            "server",
            "--data-dir",
            str(self.dir / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        self.server = _ServerProcess("milvus-lite", argv, self.dir / "server.log")
        uri = f"http://127.0.0.1:{port}"

        def ready() -> Any:
            client = MilvusClient(uri=uri, timeout=5)
            client.list_collections()
            return client

        try:
            self.client = self.server.start(ready, startup_timeout)
            self._build(ids, vectors, metric, m, ef_construction, progress)
        except BaseException:  # stop the server and remove its files, then report
            self.close()
            raise
        self.notes += [
            "milvus-lite 3.2.2: separate server process (faiss inside), pymilvus client",
            "flushed before create_index (otherwise searches are silently exact)",
            'HNSW build params passed as params={"params": {...}} (otherwise silently ignored)',
            "no IVF_PQ support (FLAT/IVF_FLAT/IVF_SQ8/HNSW only): compared with its HNSW",
        ]

    def _build(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        progress: bool,
    ) -> None:
        from pymilvus import DataType

        mt = "IP" if metric == "ip" else "L2"
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        self.client.create_collection("bench", schema=schema)
        t0 = time.perf_counter()
        batch = 20_000
        bar = _insert_bar(len(ids), "milvus-lite insert", progress)
        for start in range(0, len(ids), batch):
            rows = [
                {"id": int(i), "v": v.tolist()}
                for i, v in zip(
                    ids[start : start + batch], vectors[start : start + batch], strict=True
                )
            ]
            self.client.insert("bench", rows)
            bar.update(len(rows))
        bar.close()
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
        try:
            self.client.create_index("bench", index_params)
        except Exception as exc:
            # A long build can outlive the gRPC connection (the server sends GOAWAY
            # "too_many_pings" on a busy box); pymilvus then retries and finds the index
            # the first call is building. Accept it only if it is the one asked for.
            if "already exists" not in str(exc):
                raise
            desc = self.client.describe_index("bench", "v")
            got = {key: str(v) for key, v in desc.get("params", {}).items()}
            if (desc.get("index_type"), desc.get("metric_type"), got) != (
                "HNSW",
                mt,
                {"M": str(m), "efConstruction": str(ef_construction)},
            ):
                raise RuntimeError(f"milvus-lite holds another index: {desc}") from exc
            self.notes.append(
                "milvus-lite: create_index was retried by pymilvus after a dropped connection; "
                "the existing index has the requested type, metric and params"
            )
        self.client.load_collection("bench")
        self.build_s = time.perf_counter() - t0
        self.metric_type = mt

    @property
    def pids(self) -> dict[str, int]:
        return {"milvus-lite-server": self.server.pid}

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
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


CACHE_COMPLETE = "complete"  # marker file of a complete peer cache directory


class ChromaPeer(System):
    """Chroma's server (``chroma run``: Rust frontend, hnswlib-based HNSW, SQLite), over HTTP.

    The collection is created with ``configuration={"hnsw": {...}}`` (space, max_neighbors =
    M, ef_construction, ef_search), and the server's stored configuration is read back and
    checked. Chroma's ef_search is per collection, not per query: ``modify`` stores a new
    value, but the server keeps the loaded index with the ef_search it was loaded with, so
    changing efSearch means modify, read back, and restart the server (the index reloads from
    ``--path`` with the stored value). Distances in the "ip" space are ``1 - dot``; recall only
    needs the ids.

    ``cache``: a directory keeping the server's ``--path`` once built (inserting 200k vectors
    takes minutes, longer than a timed run should): a complete copy there is copied into the
    run's own directory and served (its count and HNSW configuration checked), else the
    collection is built and, the server stopped, copied there for the next run.
    """

    name = "chroma"
    collection_name = "annfleet-bench"

    def __init__(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        metric: str,
        m: int,
        ef_construction: int,
        startup_timeout: float = 60.0,
        progress: bool = True,
        ef_search: int = 100,
        cache: Path | None = None,
    ) -> None:
        super().__init__()
        import chromadb
        from chromadb.config import Settings

        from annfleet.cluster import free_port

        self._chromadb = chromadb
        self._settings = Settings(
            anonymized_telemetry=False,
            # One kept-alive connection per closed-loop thread (httpx keeps 20 by default).
            chroma_http_max_keepalive_connections=256,
        )
        self.dir = Path(tempfile.mkdtemp(prefix="annfleet-chroma-"))
        self.port = free_port()
        argv = _console_script(
            "chromadb",
            "chroma",
            "run",
            "--path",
            str(self.dir / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        )
        self.server = _ServerProcess("chroma", argv, self.dir / "server.log")
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self.space = "ip" if metric == "ip" else "l2"
        wanted = {
            "space": self.space,
            "max_neighbors": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
        }
        cached = cache is not None and (cache / CACHE_COMPLETE).is_file()
        try:
            if cached:
                assert cache is not None
                shutil.copytree(cache / "data", self.dir / "data")
            self.client = self.server.start(self._connect, startup_timeout)
            self.batch_size = int(self.client.get_max_batch_size())
            if cached:
                self.collection = self.client.get_collection(
                    self.collection_name, embedding_function=None
                )
                self._ef = int(self.stored_config().get("ef_search", -1))
                self._check_config({**wanted, "ef_search": self._ef})
                self._check_count(len(ids))
                self.build_s = 0.0
            else:
                self.collection = self.client.create_collection(
                    self.collection_name,
                    configuration={"hnsw": dict(wanted)},  # type: ignore[typeddict-item]
                    embedding_function=None,
                )
                self._check_config(wanted)
                self._ef = ef_search
                t0 = time.perf_counter()
                self._insert(ids, vectors, progress)
                self.build_s = time.perf_counter() - t0
                if cache is not None:
                    self._save(cache)
        except BaseException:
            self.close()
            raise
        self.notes += [
            f"chroma {chromadb.__version__}: `chroma run` server process (Rust, hnswlib-based "
            "HNSW, SQLite), chromadb HttpClient over HTTP/JSON",
            f'chroma: configuration={{"hnsw": {{"space": "{self.space}", "max_neighbors": {m}, '
            f'"ef_construction": {ef_construction}, "ef_search": ...}}}} (read back from the '
            "server and checked)",
            "chroma: ef_search is per collection; the server keeps a loaded index's ef_search, "
            "so each efSearch point is modify(configuration) + read back + server restart "
            "(warm-up queries follow the restart)",
            (
                f"chroma: served from a copy of the collection built before the run ({cache})"
                if cached
                else "chroma: inserted in batches of the server's max batch size "
                f"({self.batch_size})"
            )
            + "; default `chroma run` configuration otherwise",
        ]

    def _save(self, cache: Path) -> None:
        """Stop the server, copy its data to ``cache`` (complete only once copied), restart."""
        self.server.stop()
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.dir / "data", partial / "data")
        (partial / CACHE_COMPLETE).write_text("complete\n")
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        self.client = self.server.restart(self._connect, self.startup_timeout)
        self.collection = self.client.get_collection(self.collection_name, embedding_function=None)

    def _connect(self) -> Any:
        client = self._chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=self._settings
        )
        client.heartbeat()
        return client

    def stored_config(self) -> dict[str, Any]:
        """The collection's HNSW configuration as the server stores it."""
        coll = self.client.get_collection(self.collection_name, embedding_function=None)
        return dict(coll.configuration_json.get("hnsw") or {})

    def _check_config(self, wanted: dict[str, Any]) -> None:
        got = self.stored_config()
        wrong = {key: (v, got.get(key)) for key, v in wanted.items() if got.get(key) != v}
        if wrong:
            raise RuntimeError(f"chroma stored another HNSW configuration (wanted, got): {wrong}")

    def _check_count(self, expected: int) -> None:
        count = self.collection.count()
        if count != expected:
            raise RuntimeError(f"chroma holds {count} vectors, expected {expected}")

    def _insert(self, ids: np.ndarray, vectors: np.ndarray, progress: bool) -> None:
        bar = _insert_bar(len(ids), "chroma insert", progress)
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            self.collection.add(
                ids=[str(int(i)) for i in chunk],
                embeddings=vectors[start : start + self.batch_size],
            )
            bar.update(len(chunk))
        bar.close()
        self._check_count(len(ids))

    @property
    def pids(self) -> dict[str, int]:
        return {"chroma-server": self.server.pid}

    @property
    def ef_search(self) -> int:
        return self._ef

    def set_ef_search(self, ef: int) -> None:
        """Store ``ef`` in the collection's configuration, check it, and reload the index."""
        with self._lock:
            if ef == self._ef:
                return
            self.collection.modify(configuration={"hnsw": {"ef_search": ef}})
            self._check_config({"ef_search": ef})
            self.client = self.server.restart(self._connect, self.startup_timeout)
            self.collection = self.client.get_collection(
                self.collection_name, embedding_function=None
            )
            self._check_config({"ef_search": ef})
            self._ef = ef

    def search(self, query: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        ef = max(params.get("ef_search", 128), k)
        if ef != self._ef:
            self.set_ef_search(ef)
        res = self.collection.query(query_embeddings=query[None, :], n_results=k, include=[])
        out = np.full(k, -1, dtype=np.int64)
        got = [int(i) for i in res["ids"][0]][:k]
        out[: len(got)] = got
        return out

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


PEER_FACTORIES: dict[str, Callable[..., System]] = {
    "hnswlib": HnswlibPeer,
    "usearch": UsearchPeer,
    "qdrant-edge": QdrantEdgePeer,
    "milvus": MilvusLitePeer,
    "chroma": ChromaPeer,
}
# Peers whose built index is kept under the bench data dir (``cache`` argument).
CACHED_PEERS = frozenset({"chroma"})
# Other names accepted by --peers (the series name of the peer).
PEER_ALIASES = {"milvus-lite": "milvus"}


def peer_key(name: str) -> str:
    """The PEER_FACTORIES key for a --peers name; ValueError naming the valid ones."""
    key = PEER_ALIASES.get(name, name)
    if key not in PEER_FACTORIES:
        valid = ", ".join([*PEER_FACTORIES, *PEER_ALIASES])
        raise ValueError(f"unknown peer {name!r}; valid: {valid}")
    return key


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
        peer = PEER_FACTORIES[peer_key(name)](
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
