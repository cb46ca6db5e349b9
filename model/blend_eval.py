"""`annfleet eval --blend` / `--served`: the blended ``Retrieve`` list measured through the
real router, so the figure reported is the figure users get (no training/serving skew).

One code path, :func:`replay`, for both modes:

1. the engagements of the split's train part are recorded through the client's
   ``record_engagement`` (``RecordEngagement``: the router's live recent items, seen sets,
   trending, co-engagement and exploration state), in (timestamp, file row) order, as
   ``view`` events with their own 1998 timestamps;
2. every test user is asked ``Retrieve(user, k, context.timestamp = the user's query time)``
   once per k in (10, 50, 100) (a blend of k is not the top of a larger blend: quotas are
   shares of k), and Recall@k / NDCG@50 are computed from the ids the client got back, with
   :func:`annfleet.model.metrics.ranking_metrics` (the metric of ``annfleet eval``).

``--blend`` (in process) trains the two-tower on the split's train part, writes a bundle
whose tables know only that part (:func:`annfleet.model.export.export_model`), starts real
shard servers and a real router on free loopback ports and replays through them; the same
shards serve one router per source configuration: every source (the blend), the blend with
each source disabled (its *incremental* recall = blend − blend without it) and each source
alone. ``--served HOST:PORT`` replays the same requests through a running router (started
by the user with the bundle ``--blend --export-bundle DIR`` wrote); the router's sources are
its own configuration, so ablations are not available there (no per-request source override
exists on the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from annfleet.config import ClusterConfig, SourcesConfig, StateConfig
from annfleet.model.data import MovieLens, Split, load_movielens, make_split
from annfleet.model.features import Queries, build_queries
from annfleet.model.metrics import KS, ranking_metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH = 10_000  # events per RecordEngagement call (the router's limit)
BLEND = "blend"
PATIENT_BUDGET_MS = 60_000.0
EXPORT_INDEX = "hnsw"


@dataclass
class ReplayResult:
    """Metrics of one source configuration, from the Retrieve answers the client got."""

    metrics: dict[str, float]  # recall@k per k, ndcg@50 (from the k=50 list), num_queries
    share: dict[str, float]  # source -> mean share of the k=max list it returned (with sharing)
    dropped: dict[str, int]  # source -> requests it was dropped from
    short: int  # requests answered with fewer than k candidates
    requests: int
    seconds: float
    bundle_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: round(v, 4) for k, v in self.metrics.items()},
            "source_share": {k: round(v, 4) for k, v in sorted(self.share.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "short_lists": self.short,
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
        }


def train_engagements(data: MovieLens, train: np.ndarray) -> list[Any]:
    """The split's train interactions as ``view`` events, in (timestamp, file row) order."""
    from annfleet.client import Engagement

    idx = np.flatnonzero(train)
    idx = idx[np.lexsort((idx, data.inter_ts[idx]))]
    users = data.user_ids[data.inter_user[idx] - 1]
    items = data.item_ids[data.inter_item[idx] - 1]
    times = data.inter_ts[idx]
    return [
        Engagement(int(u), int(i), "view", int(t))
        for u, i, t in zip(users.tolist(), items.tolist(), times.tolist(), strict=True)
    ]


def record(client: Any, events: list[Any], progress: bool = False) -> int:
    """Send ``events`` in batches of BATCH through ``client.record_engagement``."""
    from tqdm import tqdm

    applied = 0
    for s in tqdm(
        range(0, len(events), BATCH), desc="RecordEngagement", disable=not progress, leave=False
    ):
        applied += client.record_engagement(events[s : s + BATCH])
    return applied


def replay(
    client: Any,
    data: MovieLens,
    queries: Queries,
    rows: np.ndarray,
    *,
    ks: tuple[int, ...] = KS,
    progress: bool = False,
    desc: str = "Retrieve",
) -> ReplayResult:
    """Retrieve every query of ``rows`` at each k through ``client`` -> its metrics.

    The lists are ranked as returned (item ids -> the data's dense item indices, 0 pads a
    short list); ids the data does not know count as misses."""
    from tqdm import tqdm

    tops = {k: np.zeros((len(queries), k), np.int64) for k in ks}
    share: dict[str, float] = {}
    dropped: dict[str, int] = {}
    short = requests = 0
    bundles: set[str] = set()
    kmax = max(ks)
    t0 = time.monotonic()
    for q in tqdm(rows.tolist(), desc=desc, disable=not progress, leave=False):
        user = int(data.user_ids[queries.users[q] - 1])
        for k in ks:
            res = client.retrieve(user, k, timestamp=int(queries.query_ts[q]))
            requests += 1
            bundles.add(res.bundle_id)
            idx = data.item_index(res.ids)[:k]  # 0 (a miss) for an id the data lacks
            tops[k][q, : len(idx)] = idx
            short += int(len(res.ids) < k)
            for name in res.dropped_sources:
                dropped[name] = dropped.get(name, 0) + 1
            if k == kmax:
                for name, n in res.source_counts.items():
                    share[name] = share.get(name, 0.0) + n / k
    metrics: dict[str, float] = {}
    for k in ks:
        m = ranking_metrics(tops[k], queries, ks=(k,), rows=rows)
        metrics[f"recall@{k}"] = m[f"recall@{k}"]
        if k == 50 or (50 not in ks and k == kmax):
            metrics["ndcg@50"] = m["ndcg@50"]
        metrics["num_queries"] = m["num_queries"]
    n = max(len(rows), 1)
    return ReplayResult(
        metrics,
        {name: v / n for name, v in share.items()},
        dropped,
        short,
        requests,
        time.monotonic() - t0,
        sorted(bundles),
    )


def patient(sources: SourcesConfig, budget_ms: float = PATIENT_BUDGET_MS) -> SourcesConfig:
    """``sources`` with every latency budget at ``budget_ms``: offline, a source dropped
    because the machine is busy would measure the machine, not the sources."""
    changes: dict[str, Any] = {
        name: dataclasses.replace(s, budget_ms=budget_ms) for name, s in sources.settings().items()
    }
    return dataclasses.replace(sources, **changes)


def enabled_sources(sources: SourcesConfig) -> list[str]:
    return [name for name, s in sources.settings().items() if s.enabled]


def without(sources: SourcesConfig, name: str) -> SourcesConfig:
    """``sources`` with source ``name`` disabled."""
    changes: dict[str, Any] = {name: dataclasses.replace(sources.settings()[name], enabled=False)}
    return dataclasses.replace(sources, **changes)


def only(sources: SourcesConfig, name: str) -> SourcesConfig:
    """``sources`` with every source but ``name`` disabled (no backfill from the others)."""
    for other in enabled_sources(sources):
        if other != name:
            sources = without(sources, other)
    return sources


class _Loop:
    """An asyncio event loop in a daemon thread: the in-process servers run on it while the
    blocking client calls them from this thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class InProcessCluster:
    """Real shard servers over a bundle (one per shard) on free loopback ports; routers over
    them are started one at a time, each with its own sources and a fresh in-memory state."""

    def __init__(self, bundle_path: Path, config: ClusterConfig | None = None) -> None:
        from annfleet.bundle import Bundle
        from annfleet.server.main import start_shard_server

        self.config = config or ClusterConfig()
        self.bundle_path = Path(bundle_path)
        num_shards = Bundle.open(self.bundle_path, verify=False).num_shards
        self._loop = _Loop()
        self.shards: list[Any] = []
        try:
            for i in range(num_shards):
                self.shards.append(
                    self._loop.run(start_shard_server(self.bundle_path, i, self.config.shards))
                )
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def router(self, sources: SourcesConfig) -> Iterator[str]:
        """A router with ``sources`` (memory state) while the block runs: its target."""
        from annfleet.router.main import start_router

        targets = [f"127.0.0.1:{s.port}" for s in self.shards]
        router = self._loop.run(
            start_router(
                self.bundle_path,
                targets,
                self.config.router,
                sources=sources,
                state=StateConfig(
                    recent_len=self.config.state.recent_len,
                    co_neighbours=self.config.state.co_neighbours,
                ),
            )
        )
        try:
            yield f"127.0.0.1:{router.port}"
        finally:
            self._loop.run(router.stop(0))

    def close(self) -> None:
        for shard in self.shards:
            self._loop.run(shard.stop(0))
        self.shards = []
        self._loop.close()

    def __enter__(self) -> InProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(
    target: str,
    data: MovieLens,
    split: Split,
    queries: Queries,
    rows: np.ndarray,
    *,
    record_first: bool = True,
    ks: tuple[int, ...] = KS,
    progress: bool = False,
    desc: str = "Retrieve",
    timeout: float = 30.0,
) -> tuple[ReplayResult, int]:
    """The one code path of both modes: record the train engagements through ``target``'s
    RecordEngagement (unless ``record_first`` is False), then replay the test queries."""
    from annfleet.client import Client

    with Client(target, timeout=timeout, retries=2) as client:
        applied = (
            record(client, train_engagements(data, split.train), progress) if record_first else 0
        )
        return replay(client, data, queries, rows, ks=ks, progress=progress, desc=desc), applied


def query_rows(queries: Queries, users: int | None) -> np.ndarray:
    """The queries replayed: all, or the first ``users`` (test users in id order)."""
    n = len(queries) if users is None else max(0, min(users, len(queries)))
    return np.arange(n)


def offline_references(
    data: MovieLens,
    split: Split,
    queries: Queries,
    rows: np.ndarray,
    model: Any,
    *,
    seed: int,
    baselines_too: bool,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """The offline (no router) figures of the same queries: the same two-tower model by exact
    search, and with ``baselines_too`` popularity and MF-BPR (``annfleet eval``'s code)."""
    from annfleet.model import baselines
    from annfleet.model.metrics import mask_seen, topk
    from annfleet.model.two_tower import served_item_vectors, user_vectors

    def metrics(scores: np.ndarray) -> dict[str, float]:
        m = ranking_metrics(topk(mask_seen(scores, queries), max(KS)), queries, rows=rows)
        return {k: round(v, 4) for k, v in m.items()}

    ivecs = served_item_vectors(model, data, split.train)
    uvecs = user_vectors(model, queries.user, queries.recent, queries.time)
    out = {"two_tower": metrics(uvecs @ ivecs.T)}
    if baselines_too:
        out["popularity"] = metrics(baselines.popularity(data, split.train, queries))
        out["mf_bpr"] = metrics(
            baselines.mf_bpr(data, split.train, queries, seed=seed, progress=progress)
        )
    return out


def run_blend_eval(
    data_dir: Path | None = None,
    *,
    split_name: str = "per_user",
    validation: bool = False,
    config: Any = None,
    users: int | None = None,
    export_bundle: Path | None = None,
    bundle_dir: Path | None = None,
    num_shards: int = 2,
    cluster_config: ClusterConfig | None = None,
    ablations: bool = True,
    singles: bool = True,
    baselines_too: bool = True,
    progress: bool = True,
    threads: int = 2,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``annfleet eval --blend``: train on the split's train part, export, serve in process,
    replay through the router for the blend, each ablation and each source alone.

    ``bundle_dir``: serve that bundle (one ``export_bundle`` wrote for this split) instead of
    training: no offline references then, and a sources config is measured in minutes."""
    import tempfile

    import torch

    from annfleet.model.export import export_model
    from annfleet.model.two_tower import TwoTowerConfig, train_two_tower

    torch.set_num_threads(threads)
    config = config or TwoTowerConfig()
    cluster_config = cluster_config or ClusterConfig()
    data = load_movielens(data_dir)
    split = make_split(data, split_name, validation=validation)
    queries = build_queries(data, split, config.recent_len)
    rows = query_rows(queries, users)
    offline: dict[str, dict[str, float]] = {}
    train_s = 0.0
    with contextlib.ExitStack() as stack:
        if bundle_dir is not None:
            bundle = eval_bundle(bundle_dir, data, split, validation)
        else:
            t0 = time.monotonic()
            model = train_two_tower(data, split.train, config, progress=progress)
            train_s = time.monotonic() - t0
            offline = offline_references(
                data,
                split,
                queries,
                rows,
                model,
                seed=config.seed,
                baselines_too=baselines_too,
                progress=progress,
            )
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            bundle = export_model(
                export_bundle or tmp / "bundle",
                data,
                model,
                config,
                train=split.train,
                num_shards=num_shards,
                index_type=EXPORT_INDEX,
                extra={"eval_split": split_manifest(data, split, validation)},
                overwrite=overwrite,
                progress=progress,
            )
        sources = patient(cluster_config.sources)
        # Likewise a shard call: the router's 0.5 s per attempt fails the ANN source on a
        # machine busy enough to starve the shard servers for that long.
        cluster_config = dataclasses.replace(
            cluster_config,
            router=dataclasses.replace(
                cluster_config.router, shard_timeout_s=PATIENT_BUDGET_MS / 1e3
            ),
        )
        configs: list[tuple[str, str, SourcesConfig]] = [(BLEND, "", sources)]
        names = enabled_sources(sources)
        if ablations:
            configs += [(f"without {n}", n, without(sources, n)) for n in names]
        if singles:
            configs += [(f"only {n}", n, only(sources, n)) for n in names]
        results: dict[str, Any] = {}
        recorded = 0
        cluster = stack.enter_context(InProcessCluster(bundle.path, cluster_config))
        for label, _name, cfg in configs:
            with cluster.router(cfg) as target:
                res, applied = measure(
                    target, data, split, queries, rows, progress=progress, desc=label
                )
            log.info("%s: %s (%d events recorded)", label, res.metrics, applied)
            recorded = max(recorded, applied)
            results[label] = res.as_dict()
    blend = results[BLEND]
    incremental = {
        n: {
            f"recall@{k}": round(blend[f"recall@{k}"] - results[f"without {n}"][f"recall@{k}"], 4)
            for k in KS
        }
        for n in names
        if f"without {n}" in results
    }
    return {
        "mode": "in_process",
        "split": split_name,
        "validation": validation,
        "seed": bundle.manifest["model"].get("config", {}).get("seed", config.seed),
        "num_queries": int(blend["num_queries"]),
        "users": len(rows),
        "engagements_recorded": recorded,
        "bundle_id": bundle.id,
        "bundle": str(bundle_dir or export_bundle or ""),
        "sources": {n: dataclasses.asdict(sources.settings()[n]) for n in names},
        "blend": {
            "mode": sources.blend,
            "rrf_c": sources.rrf_c,
            "depth": sources.depth,
            "fusion": sources.fusion,
        },
        "train_seconds": round(train_s, 1),
        "offline": offline,
        "router": results,
        "incremental": incremental,
    }


def eval_bundle(bundle_dir: Path, data: MovieLens, split: Split, validation: bool) -> Any:
    """The bundle at ``bundle_dir``, checked to be trained on ``split``'s train part of
    ``data`` (``manifest["eval_split"]``, written by ``--export-bundle``); InvalidArgument
    otherwise (a bundle that knows the test items would flatter every figure)."""
    from annfleet.bundle import Bundle
    from annfleet.errors import InvalidArgument

    bundle = Bundle.open(bundle_dir)
    meta = bundle.manifest.get("eval_split")
    if meta != split_manifest(data, split, validation):
        raise InvalidArgument(
            f"bundle {bundle_dir} was not trained on the {split.name} split's train part "
            f"of this data (its eval_split: {meta}); it would see the test items"
        )
    return bundle


def split_manifest(data: MovieLens, split: Split, validation: bool) -> dict[str, Any]:
    """What the eval bundle records about the data it was trained on."""
    return {
        "split": split.name,
        "validation": validation,
        "train_interactions": int(split.train.sum()),
        "data_fingerprint": data.fingerprint(),
    }


def run_served_eval(
    target: str,
    data_dir: Path | None = None,
    *,
    split_name: str = "per_user",
    validation: bool = False,
    users: int | None = None,
    bundle_dir: Path | None = None,
    record_first: bool = True,
    progress: bool = True,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """``annfleet eval --served HOST:PORT``: the same replay through a running router.

    With ``bundle_dir`` (the bundle the cluster serves, as ``--export-bundle`` wrote it), the
    split it was trained for is checked against ``split_name`` and every answer's bundle id
    against it."""
    from annfleet.errors import InvalidArgument

    data = load_movielens(data_dir)
    split = make_split(data, split_name, validation=validation)
    expected = eval_bundle(bundle_dir, data, split, validation).id if bundle_dir else None
    queries = build_queries(data, split)
    rows = query_rows(queries, users)
    res, applied = measure(
        target,
        data,
        split,
        queries,
        rows,
        record_first=record_first,
        progress=progress,
        desc="Retrieve (served)",
        timeout=timeout,
    )
    if expected is not None and res.bundle_ids != [expected]:
        raise InvalidArgument(
            f"the router at {target} answered from bundle(s) {res.bundle_ids}, not {expected}"
        )
    return {
        "mode": "served",
        "target": target,
        "split": split_name,
        "validation": validation,
        "num_queries": int(res.metrics["num_queries"]),
        "users": len(rows),
        "engagements_recorded": applied,
        "bundle_id": ",".join(res.bundle_ids),
        "router": {BLEND: res.as_dict()},
    }


def table_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per measured configuration (the CSV and the printed table)."""
    rows = []
    for name, m in res.get("offline", {}).items():
        rows.append({"split": res["split"], "measured": "offline", "config": name, **m})
    for name, m in res["router"].items():
        row = {"split": res["split"], "measured": res["mode"], "config": name}
        row |= {k: v for k, v in m.items() if not isinstance(v, dict)}
        rows.append(row)
    return rows


CSV_COLUMNS = (
    "split",
    "measured",
    "config",
    "recall@10",
    "recall@50",
    "recall@100",
    "ndcg@50",
    "num_queries",
    "requests",
    "short_lists",
)


def write_out(directory: Path, results: list[dict[str, Any]]) -> None:
    """``blend.json`` (everything) and ``blend.csv`` (one row per configuration)."""
    import csv
    import json

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "blend.json").write_text(json.dumps(results, indent=2) + "\n")
    with (directory / "blend.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for res in results:
            writer.writerows(table_rows(res))


def print_blend(res: dict[str, Any]) -> None:
    print(
        f"\nsplit {res['split']}{' VALIDATION' if res['validation'] else ''}: "
        f"{res['num_queries']} users, {res['mode']}, bundle {res['bundle_id']}, "
        f"{res['engagements_recorded']} engagements recorded first"
        + (f", blend {res['blend']}" if "blend" in res else "")
    )
    print(f"{'':<12}{'config':<26}{'R@10':>8}{'R@50':>8}{'R@100':>8}{'NDCG@50':>9}")
    for row in table_rows(res):
        print(
            f"{row['measured']:<12}{row['config']:<26}{row['recall@10']:>8.3f}"
            f"{row['recall@50']:>8.3f}{row['recall@100']:>8.3f}{row['ndcg@50']:>9.3f}"
        )
    incremental = res.get("incremental")
    if incremental:
        print("incremental recall (blend minus blend without the source):")
        shares = res["router"][BLEND]["source_share"]
        for name, m in incremental.items():
            print(
                f"  {name:<16}"
                + "".join(f"{m[f'recall@{k}']:>+9.3f}" for k in KS)
                + f"   share of k={max(KS)}: {shares.get(name, 0):.2f}"
            )
    dropped = res["router"][BLEND]["dropped"]
    if dropped:
        print(f"sources dropped from blend requests: {dropped}")
