"""The ``annfleet`` command line. The only place that configures logging."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.arrays import npy_error
from annfleet.config import (
    ClusterConfig,
    DatasetConfig,
    IndexConfig,
    load_config,
    parse_shard_map,
    replica_port,
)
from annfleet.errors import AnnfleetError, ClusterError, ConfigError
from annfleet.names import EVENT_TYPE_NAMES

log = logging.getLogger("annfleet")

# Build parameters only: search defaults are the serving config's `search:` section.
INDEX_FLAGS = tuple(f.name for f in dataclasses.fields(IndexConfig) if f.name != "type")


def _add_index_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index",
        choices=("hnsw", "ivfpq", "flat"),
        default=None,
        help="index type (default: hnsw)",
    )
    for name in INDEX_FLAGS:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            dest=name,
            help=f"index build parameter {name} (see the config reference)"
            + ("; 0 = auto, the largest divisor of dim <= 16" if name == "pq_m" else ""),
        )


def _index_config(base: IndexConfig, args: argparse.Namespace) -> IndexConfig:
    changes: dict[str, Any] = {
        n: getattr(args, n) for n in INDEX_FLAGS if getattr(args, n) is not None
    }
    if args.index:
        changes["type"] = args.index
    return dataclasses.replace(base, **changes)


def _load_npy(path: str, what: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"annfleet: cannot read {what} from {path}: {npy_error(exc)}") from exc


# ---------------------------------------------------------------------------- build-bundle
def cmd_build_bundle(args: argparse.Namespace) -> int:
    from annfleet.server.builder import (
        build_bundle,
        build_shard_part,
        finalize_bundle,
        parts_dir,
    )

    split = args.only_shard is not None or args.finalize
    if args.only_shard is not None and args.finalize:
        raise SystemExit("annfleet: --only-shard and --finalize are separate steps")
    # a split step reads only its rows of a (possibly huge) matrix: memory-map it
    vectors = _load_npy(args.vectors, "--vectors", mmap=split)
    ids = _load_npy(args.ids, "--ids") if args.ids else np.arange(len(vectors), dtype=np.int64)
    users: dict[str, Any] = {}
    if bool(args.user_vectors) != bool(args.user_ids):
        raise SystemExit("annfleet: --user-vectors and --user-ids go together")
    if args.user_vectors:
        users = {
            "user_vectors": _load_npy(args.user_vectors, "--user-vectors"),
            "user_ids": _load_npy(args.user_ids, "--user-ids"),
        }
    index = _index_config(IndexConfig(), args)
    common: dict[str, Any] = {
        "num_shards": args.shards,
        "index_type": index.type,
        "index_params": index.params(),
        "metric": args.metric,
    }
    started = time.monotonic()
    if args.only_shard is not None:
        part = build_shard_part(Path(args.out), ids, vectors, shard_id=args.only_shard, **common)
        print(
            f"shard {args.only_shard} of {args.shards}: {part['num_items']} items, "
            f"{index.type} index built into {parts_dir(Path(args.out))} in "
            f"{time.monotonic() - started:.1f}s; `build-bundle --finalize` with the same "
            "arguments writes the bundle once every shard is built"
        )
        return 0
    bundle_args: dict[str, Any] = {
        "model": {"name": args.model_name, "version": args.model_version},
        "overwrite": args.overwrite,
        **users,
    }
    if args.finalize:
        bundle = finalize_bundle(
            Path(args.out), ids, vectors, wait_s=args.wait_s, **common, **bundle_args
        )
    else:
        bundle = build_bundle(Path(args.out), ids, vectors, **common, **bundle_args)
    print(
        f"bundle {bundle.id}: {len(ids)} items x {bundle.dim} dims, {bundle.num_shards} "
        f"{index.type} shards, written to {bundle.path} in {time.monotonic() - started:.1f}s"
    )
    print(f"index: {_describe_params(bundle, index)}")
    return 0


def _describe_params(bundle: Any, index: IndexConfig) -> str:
    """Shard 0's resolved build parameters, saying which were chosen for the data."""
    params = bundle.shard(0)["index"]["params"]
    notes: dict[str, str] = {}
    if index.type == "ivfpq" and index.pq_m == 0:
        notes["pq_m"] = f"auto for dim {bundle.dim}"
    if index.type == "ivfpq" and params.get("nlist") != index.nlist:
        notes["nlist"] = "capped at shard items / 39"
    if index.type == "ivfpq" and params.get("nbits") != index.nbits:
        notes["nbits"] = "fewer bits for a small shard"
    return f"{index.type} " + " ".join(
        f"{k}={v}" + (f" ({notes[k]})" if k in notes else "") for k, v in params.items()
    )


# ---------------------------------------------------------------------------- default bundle
def default_bundle(config: ClusterConfig, progress: bool = True) -> Path:
    """The bundle `up` serves when none is given: built once from `dataset`, then reused.

    Cached by what goes into the bundle (dataset, index build parameters, shard count); the
    serving config (`search:`, ports, limits) is not part of the key, so editing it never
    retrains or rebuilds.
    """
    ds, index = config.dataset, config.index
    if ds.kind == "movielens":
        from annfleet.model.export import ensure_movielens_bundle

        return ensure_movielens_bundle(
            config.data_path(),
            num_shards=config.shards.count,
            index_type=index.type,
            index_params=index.params(),
            seed=ds.seed,
            progress=progress,
            source=ds.path or None,
        )
    from annfleet.bundle import Bundle
    from annfleet.server.builder import build_bundle
    from annfleet.synthetic import make_catalogue

    path = synthetic_bundle_path(config)
    name = path.name
    if path.exists():
        try:
            return Bundle.open(path).path
        except AnnfleetError as exc:
            log.warning("cached bundle %s is unusable (%s); rebuilding", path, exc)
    log.info(
        "building the default synthetic bundle (%d items x %d dims, %d %s shards) in %s",
        ds.items,
        ds.dim,
        config.shards.count,
        index.type,
        path,
    )
    cat = make_catalogue(ds.items, ds.dim, clusters=ds.clusters, users=ds.users, seed=ds.seed)
    build_bundle(
        path,
        cat.ids,
        cat.vectors,
        num_shards=config.shards.count,
        index_type=index.type,
        index_params=index.params(),
        metric="ip",
        model={"name": "synthetic", "version": name},
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        tables={"popular_ids": cat.popular_ids},
        overwrite=True,
        progress=progress,
    )
    return path


def default_bundle_path(config: ClusterConfig) -> Path:
    """Where ``default_bundle`` caches the bundle for ``config`` (built or not)."""
    if config.dataset.kind == "movielens":
        from annfleet.model.export import movielens_bundle_path

        return movielens_bundle_path(
            config.data_path(),
            num_shards=config.shards.count,
            index_type=config.index.type,
            index_params=config.index.params(),
            seed=config.dataset.seed,
            source=config.dataset.path or None,
        )
    return synthetic_bundle_path(config)


def synthetic_bundle_path(config: ClusterConfig) -> Path:
    """Where the default synthetic bundle for ``config`` is cached."""
    ds, index = config.dataset, config.index
    key = json.dumps(
        [dataclasses.asdict(ds), index.type, index.params(), config.shards.count], sort_keys=True
    )
    name = f"synthetic-{ds.items}x{ds.dim}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return config.data_path() / "bundles" / name


def unused_with_bundle(config: ClusterConfig) -> list[str]:
    """Keys the config sets away from their defaults that a given bundle makes moot."""
    moot = []
    for section, default in (("dataset", DatasetConfig()), ("index", IndexConfig())):
        value = getattr(config, section)
        moot += [
            f"{section}.{f.name}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(default, f.name)
        ]
    return moot


def _config(args: argparse.Namespace) -> ClusterConfig:
    config = load_config(args.config)
    if getattr(args, "bundle", None):
        config = dataclasses.replace(config, bundle=str(Path(args.bundle).resolve()))
    return config


# ---------------------------------------------------------------------------- up
def _already_running(running: dict[str, Any], config: ClusterConfig, path: Path) -> str:
    """Why `up` refuses to start beside the cluster ``cluster.json`` describes as alive."""
    from annfleet.cluster import alive_pids

    children = [c for c in running.get("children", []) if isinstance(c, dict)]
    router = (children or [{}])[-1]
    where = f"the data dir {config.data_path()} (router {router.get('target')}"
    supervisor = running.get("supervisor_pid")
    if isinstance(supervisor, int) and not alive_pids([supervisor]):
        left = alive_pids([c.get("pid") for c in children])
        return (
            f"the cluster of {where}; {path}) lost its supervisor (pid {supervisor}), but "
            f"its processes {', '.join(map(str, left))} still run (they stop on their own "
            f"within a second and a drain of grace_s; if they do not: kill "
            f"{' '.join(map(str, left))}), then start again"
        )
    return (
        f"a cluster is already running from {where}, pid {router.get('pid')}; {path}): "
        "stop it first (Ctrl-C where it runs), or give this one another data dir "
        "($ANNFLEET_DATA or data_dir:) and other ports"
    )


def cmd_up(args: argparse.Namespace) -> int:
    from annfleet.cluster import (
        LocalCluster,
        interrupt,
        remove_state,
        running_cluster,
        state_path,
    )

    # Until the cluster is up (training, building, starting), SIGTERM interrupts as Ctrl-C
    # does: what was started is stopped, and main exits 130 without a traceback. SIGINT too
    # when `up` was started in the background of a script, whose shell ignores SIGINT for it
    # (and Python then leaves it ignored): `kill -INT` must still stop the cluster.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    config = _config(args)
    if args.port is not None:
        config = dataclasses.replace(
            config, router=dataclasses.replace(config.router, port=args.port)
        ).validate(f"--port {args.port}")
    running = running_cluster(config)
    if running is not None:
        raise ClusterError(_already_running(running, config, state_path(config)))
    started = time.monotonic()
    moot = unused_with_bundle(config) if config.bundle else []
    if moot:
        log.warning(
            "serving the bundle %s with its own index: the config's %s do not apply "
            "(dataset: and index: only shape the default bundle built when none is given)",
            config.bundle,
            ", ".join(moot),
        )
    bundle_path = Path(config.bundle) if config.bundle else default_bundle(config)
    cluster = LocalCluster(
        bundle_path,
        config,
        fixed_ports=True,
        config_path=Path(args.config).resolve() if args.config else None,
        state_file=state_path(config),
    )
    busy = cluster.busy_ports()
    if busy:
        raise ClusterError(
            f"port(s) in use: {', '.join(busy)}; another cluster or process listens there: "
            "stop it, or set other ports (router.port/--port, router.metrics_port, "
            "router.admin_port, shards.base_port, shards.metrics_base_port, "
            "shards.admin_base_port; -1 turns a metrics or admin port off)"
        )
    stop = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["now"] = True

    replicas = config.shards.replicas
    print(
        ("starting redis-server (live state), " if cluster.redis else "starting ")
        + f"{len(cluster.replicas)} shards"
        + (f" x {replicas} replicas" if replicas > 1 else "")
        + f" ({len(cluster.shards)} shard servers) and a router for bundle "
        f"{cluster.bundle.id} ({bundle_path})",
        flush=True,
    )
    cluster.start()  # Ctrl-C or SIGTERM here: it stops what it started (main: exit 130)
    # From here a signal asks the loop below to stop the cluster in order.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        _serve_until_stopped(cluster, started, stop)
    finally:
        print("stopping the cluster…", flush=True)
        cluster.stop()
        remove_state(config)
    print("stopped.")
    return 0


def _serve_until_stopped(cluster: Any, started: float, stop: dict[str, bool]) -> None:
    """Print the endpoints and a sample answer, then watch the children until ``stop``."""
    for child in cluster.children:
        metrics = (
            f"  metrics http://{child.target.rsplit(':', 1)[0]}:{child.metrics_port}/metrics"
            if child.metrics_port
            else ""
        )
        admin = f"  admin {child.admin_target}" if child.admin_target else ""
        print(
            f"  {child.name:<12} {child.target:<21} pid {child.pid:<7}{metrics}{admin}"
            f"  log {child.log_path}"
        )
    if cluster.admin_token_source:
        print(f"admin token (annfleet items/rollout): {cluster.admin_token_source}")
    print(
        f"router listening on {cluster.router_target}  (ready in "
        f"{time.monotonic() - started:.1f}s)",
        flush=True,
    )
    if cluster.router.metrics_port:
        host = cluster.router_target.rsplit(":", 1)[0]
        print(f"status page http://{host}:{cluster.router.metrics_port}/status", flush=True)
    _print_sample(cluster.router_target, cluster.bundle, cluster.credentials)
    print("Ctrl-C stops the cluster.", flush=True)
    while not stop["now"]:
        for note in cluster.restart_dead():
            print(note, flush=True)
        time.sleep(0.5)


def _print_sample(target: str, bundle: Any, credentials: Any = None) -> None:
    from annfleet.client import AnnfleetError as ClientError
    from annfleet.client import Client

    users = bundle.users()
    user = int(users[0][0]) if users is not None else 1
    try:
        with Client(target, timeout=5.0, credentials=credentials) as client:
            result = client.retrieve(user, 10, include_titles=True)
    except ClientError as exc:
        print(f"sample Retrieve(user {user}) failed: {exc}")
        return
    print(f"sample: annfleet query --user {user} --k 10 --target {target}")
    _print_candidates(result)


def _print_candidates(result: Any) -> None:
    cov = result.coverage
    print(
        f"bundle {result.bundle_id}  coverage {cov.shards_answered}/{cov.shards_asked}"
        f"{'  DEGRADED' if cov.degraded else ''}"
    )
    if result.source_counts:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(result.source_counts.items()))
        print(f"sources: {counts}")
    for name, why in sorted(result.dropped_sources.items()):
        print(f"dropped: {name} ({why})")
    titles = result.titles or ("",) * len(result.ids)
    joined = ["+".join(names) for names in result.sources_per_candidate]
    width = max((len(j) for j in joined), default=0)  # the titles line up
    for rank, (item, score, names, title) in enumerate(
        zip(result.ids, result.scores, joined, titles, strict=True), 1
    ):
        print(f"  {rank:>4}  {item:>10}  {score:8.4f}  {names:<{width}}  {title}".rstrip())


# ---------------------------------------------------------------------------- query / status
def _add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", help="CA certificates (PEM) to verify the servers: TLS")
    p.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--key", help="client private key (PEM), for mutual TLS")


def _credentials(args: argparse.Namespace, config: ClusterConfig | None) -> Any:
    """Channel credentials: --ca/--cert/--key when given, else the config's tls section,
    else None (plaintext)."""
    if args.ca or args.cert or args.key:
        from annfleet.client import tls_credentials

        return tls_credentials(ca=args.ca, cert=args.cert, key=args.key)
    if config is not None and config.tls.enabled:
        from annfleet.serving import channel_credentials

        return channel_credentials(config.tls)
    return None


def positive_seconds(text: str) -> float:
    """argparse type of a --timeout: a number of seconds > 0 (a usage error otherwise; a
    timeout <= 0 fails every call with a bare DEADLINE_EXCEEDED, or a probe with DOWN)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds > 0")
    return value


def _id_list(text: str) -> list[int]:
    """``"50,181"`` -> ``[50, 181]`` (argparse type: a bad entry is a usage error)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integer item ids, e.g. 50,181"
        ) from None


def _router(args: argparse.Namespace) -> tuple[str, Any]:
    """Where query/engage ask and over what: --target, else the router of the local cluster
    `up` runs from the config's data dir (cluster.json), else the config's router.host:port;
    the channel credentials of --ca/--cert/--key, else of the --config's tls section."""
    from annfleet.cluster import router_address

    config = load_config(args.config)
    credentials = _credentials(args, config if args.config else None)
    return (str(args.target) if args.target else router_address(config)), credentials


def cmd_query(args: argparse.Namespace) -> int:
    from annfleet.client import AnnfleetError as ClientError
    from annfleet.client import Client

    recent = args.recent or []
    try:
        target, credentials = _router(args)
        with Client(target, timeout=args.timeout, credentials=credentials) as client:
            result = client.retrieve(
                args.user,
                args.k,
                recent_items=recent,
                exclude=args.exclude or [],
                include_titles=True,
                country=args.country,
            )
    except ClientError as exc:
        print(f"annfleet query: {exc.code.name}: {exc.details}", file=sys.stderr)
        return 1
    if args.json:
        candidates = []
        for i, (item, score, source) in enumerate(
            zip(result.ids, result.scores, result.source_names, strict=True)
        ):
            entry: dict[str, Any] = {
                "item_id": int(item),
                "score": float(score),
                "source": source,
                "sources": result.sources_per_candidate[i],
            }
            if result.titles and result.titles[i]:
                entry["title"] = result.titles[i]
            candidates.append(entry)
        print(
            json.dumps(
                {
                    "bundle_id": result.bundle_id,
                    "variant": result.variant,
                    "coverage": result.coverage.fraction,
                    "degraded": result.coverage.degraded,
                    "answered_shards": list(result.coverage.answered_shard_ids),
                    "source_counts": result.source_counts,
                    "dropped_sources": result.dropped_sources,
                    "candidates": candidates,
                },
                indent=2,
            )
        )
    else:
        _print_candidates(result)
    return 0


def cmd_engage(args: argparse.Namespace) -> int:
    from annfleet.client import AnnfleetError as ClientError
    from annfleet.client import Client, Engagement

    event = Engagement(args.user, args.item, args.type, args.timestamp, args.country)
    try:
        target, credentials = _router(args)
        with Client(target, timeout=args.timeout, credentials=credentials) as client:
            applied = client.record_engagement([event])
    except ClientError as exc:
        print(f"annfleet engage: {exc.code.name}: {exc.details}", file=sys.stderr)
        return 1
    print(f"recorded {applied} event: user {args.user} {args.type} item {args.item}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from annfleet.cluster import child_health, read_cluster_state, state_path

    config = _config(args)
    path = state_path(config)
    state = read_cluster_state(config)
    if state is None:
        print(f"no local cluster recorded in {path} (is `annfleet up` running?)")
        return 1
    credentials = _credentials(args, config)
    print(
        f"bundle {state['bundle_id']}  ({state.get('bundle', '?')}), "
        f"{state.get('replicas', 1)} replica(s) per shard"
    )
    worst = 0
    for child in state["children"]:
        status = child_health(child, credentials)
        worst = max(worst, 0 if status == "SERVING" else 1)
        if status != "SERVING" and "restart_at" in child:
            left = max(0.0, child["restart_at"] - time.time())
            held = f"crash loop: next start in {left:.0f}s (why: {child['log']})"
        elif child.get("role") == "redis":
            held = f"state store {config.state.url}, data in {child.get('data', '?')}"
        elif child["name"].startswith("shard"):
            held = _shard_bundle(child["target"], credentials)
        else:
            held = _router_bundle(config) + _router_recall(config, credentials)
        print(
            f"  {child['name']:<12} {child['target']:<21} pid {child['pid']:<7} {status:<12} {held}"
        )
    return worst


def _router_bundle(config: ClusterConfig) -> str:
    """What the router serves and still holds, from the rollout state in the data dir."""
    from annfleet.rollout_state import read_state, state_file

    state = read_state(state_file(config.data_path()))
    if state is None or state.stable is None:
        return ""
    line = f"serves {state.stable.bundle_id}"
    if state.previous is not None:
        left = max(0.0, state.previous_release_at - time.time())
        line += f"\n{'':<12}held   {state.previous.bundle_id}  (rollback target, {left:.0f}s left)"
    if state.holder:
        line += f"\n{'':<12}rollout of {state.target.bundle_id if state.target else '?'} "
        line += f"running ({state.phase}), held by {state.holder}"
    return line


def _router_recall(config: ClusterConfig, credentials: Any = None) -> str:
    """The router's variants and live recall (RouterAdmin.Status), when a token is at hand."""
    import grpc

    from annfleet.auth import client_token, metadata
    from annfleet.client.channels import open_channel
    from annfleet.cluster import router_address
    from annfleet.rollout_cli import blocked_line, recall_lines
    from annfleet.v1 import admin_pb2, admin_pb2_grpc

    if config.router.admin_port < 0:
        return ""
    try:
        token = client_token(config)
    except ConfigError:
        return ""
    target = router_address(config, admin=True)
    with open_channel(target, credentials) as channel:
        try:
            status = admin_pb2_grpc.RouterAdminStub(channel).Status(
                admin_pb2.StatusRequest(skip_replicas=True), metadata=metadata(token), timeout=2.0
            )
        except grpc.RpcError as exc:
            return f"\n{'':<12}(router admin: {exc.code().name})"
    lines = [
        f"{v.name:<7}{v.bundle_id}  {v.percent:g}% of users"
        for v in status.variants
        if len(status.variants) > 1
    ]
    lines += recall_lines(status.recall) or ["live recall: no sample yet"]
    lines += [blocked_line(status)] if status.blocked_items else []
    return "".join(f"\n{'':<12}{line}" for line in lines)


def _shard_bundle(target: str, credentials: Any = None) -> str:
    """What a shard process serves and holds, e.g. "shard 2/4 of b1234 (50000 items, hnsw)"."""
    import grpc

    from annfleet.client.channels import open_channel
    from annfleet.v1 import shard_pb2, shard_pb2_grpc

    with open_channel(target, credentials) as channel:
        try:
            info = shard_pb2_grpc.IndexShardStub(channel).Info(shard_pb2.InfoRequest(), timeout=1.0)
        except grpc.RpcError as exc:
            return f"({exc.code().name})"
    line = (
        f"shard {info.shard_id}/{info.num_shards} of {info.bundle_id} "
        f"({info.num_items} items, {info.index_type})"
    )
    for held in info.bundles:
        updates = (
            f", +{held.upserted_items} upserted -{held.deleted_items} deleted"
            if held.upserted_items or held.deleted_items
            else ""
        )
        line += (
            f"\n{'':<12}{'active' if held.active else 'held':<7}{held.bundle_id}  "
            f"{held.num_items} items{updates}"
        )
    return line


# ---------------------------------------------------------------------------- serve-*
def cmd_serve_shard(args: argparse.Namespace) -> int:
    from annfleet.server.main import start_shard_server
    from annfleet.serving import run, serve_until_signal, stop_with_supervisor

    stop_with_supervisor(args.supervisor_pid)  # from here: a load is cut short too

    cluster = load_config(args.config)
    config = cluster.shards
    host = _given(args.host, config.host)
    slot = (args.shard, args.replica, config.replicas)
    admin_port = _given(args.admin_port, replica_port(config.admin_base_port, *slot))
    token, admin_port = _admin_token(cluster, args, admin_port, f"shard {args.shard}")
    bundle = _stable_bundle(args) or Path(args.bundle)
    from annfleet.rollout_state import also_held

    start = start_shard_server(
        bundle,
        args.shard,
        config,
        search=cluster.search,
        host=host,
        port=_given(args.port, replica_port(config.base_port, *slot)),
        metrics_port=_given(args.metrics_port, replica_port(config.metrics_base_port, *slot)),
        admin_port=admin_port,
        tls=cluster.tls,
        admin_token=token,
        replica=args.replica,
        also_hold=also_held(Path(args.rollout_state) if args.rollout_state else None),
        freeze_gc=True,
    )
    name = f"shard {args.shard}" + (f" replica {args.replica}" if config.replicas > 1 else "")
    run(lambda: serve_until_signal(start, name=name, host=host, grace=config.grace_s))
    return 0


def _admin_token(
    cluster: ClusterConfig, args: argparse.Namespace, admin_port: int, name: str
) -> tuple[str | None, int]:
    """(the admin token, the admin port): -1 (off, with a warning) when no token is
    configured and the port came from the config; an error when --admin-port was given."""
    if admin_port < 0:
        return None, admin_port
    from annfleet.auth import read_token

    admin = cluster.admin
    if args.admin_token_file:
        admin = dataclasses.replace(admin, token_file=args.admin_token_file, token_env="")
    token = read_token(admin)
    if token is None and args.admin_port is not None:
        raise ConfigError(
            f"--admin-port {args.admin_port} needs an admin token: set admin.token_file, "
            f"${admin.token_env} or --admin-token-file"
        )
    if token is None:
        log.warning("no admin token configured: %s serves no admin port", name)
        return None, -1
    return token, admin_port


def _stable_bundle(args: argparse.Namespace) -> Path | None:
    """The stable bundle of the rollout state file (--rollout-state), if it names one."""
    from annfleet.rollout_state import stable_bundle

    path = stable_bundle(Path(args.rollout_state) if args.rollout_state else None)
    if path is not None and path != Path(args.bundle):
        log.info("serving %s, the stable bundle of %s (not --bundle)", path, args.rollout_state)
    return path


def _given(flag: Any, configured: Any) -> Any:
    """A serve-* flag wins over the config only when it was given."""
    return configured if flag is None else flag


def cmd_serve_router(args: argparse.Namespace) -> int:
    from annfleet.router.main import start_router
    from annfleet.serving import run, serve_until_signal, stop_with_supervisor

    stop_with_supervisor(args.supervisor_pid)  # from here: a load is cut short too

    cluster = load_config(args.config)
    config = cluster.router
    host = _given(args.host, config.host)
    token, admin_port = _admin_token(
        cluster, args, _given(args.admin_port, config.admin_port), "the router"
    )
    start = start_router(
        Path(args.bundle),
        parse_shard_map(args.shards),
        config,
        host=host,
        port=_given(args.port, config.port),
        metrics_port=_given(args.metrics_port, config.metrics_port),
        tls=cluster.tls,
        admin_port=admin_port,
        admin_token=token,
        shard_admin_targets=[t for t in (args.shard_admins or "").split(",") if t],
        rollout_state=Path(args.rollout_state) if args.rollout_state else None,
        blocked_file=Path(args.blocked_file) if args.blocked_file else None,
        sources=cluster.sources,
        state=cluster.state,
        freeze_gc=True,
    )
    run(lambda: serve_until_signal(start, name="router", host=host, grace=config.grace_s))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annfleet",
        description="annfleet: a sharded ANN retrieval cluster for recommenders. "
        "`annfleet up` runs a local cluster; `annfleet query --user 1` asks it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-bundle", help="build a retrieval bundle from an embedding matrix")
    p.add_argument("--vectors", required=True, help="item vectors .npy, float32 (n, d)")
    p.add_argument("--ids", help="item ids .npy, int64 (n,) (default 0..n-1)")
    p.add_argument("--user-vectors", help="precomputed user vectors .npy, float32 (u, d)")
    p.add_argument("--user-ids", help="user ids .npy, int64 (u,)")
    p.add_argument("--shards", type=int, required=True, help="number of shards")
    p.add_argument("--metric", choices=("ip", "l2"), default="ip")
    p.add_argument("--model-name", default="embeddings")
    p.add_argument("--model-version", default="0")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--only-shard",
        type=int,
        metavar="I",
        help="split build: build only shard I (e.g. one Kubernetes Job pod per shard)",
    )
    p.add_argument(
        "--finalize",
        action="store_true",
        help="split build: write the bundle once every shard is built (same arguments)",
    )
    p.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="with --finalize: wait this long for shards still being built",
    )
    _add_index_flags(p)
    p.set_defaults(func=cmd_build_bundle)

    p = sub.add_parser("up", help="run a local cluster (shards + router) in the foreground")
    p.add_argument("--config", help="cluster YAML (default: built-in defaults)")
    p.add_argument("--bundle", help="serve this bundle instead of the default one")
    p.add_argument("--port", type=int, help="router port (default: the config's router.port)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("query", help="ask the router for a user's candidates")
    p.add_argument("--user", type=int, required=True, help="user id")
    p.add_argument("--k", type=int, default=10, help="candidates to return (default 10)")
    p.add_argument(
        "--recent", type=_id_list, help="comma-separated recent item ids (context), e.g. 50,181"
    )
    p.add_argument(
        "--exclude", type=_id_list, help="comma-separated item ids never to return, e.g. 50,181"
    )
    p.add_argument("--country", default="", help="context country (regional trending), e.g. US")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--target",
        help="router HOST:PORT (default: the router of the local cluster `up` runs from the "
        "config's data dir, else the config's router.host:port, 127.0.0.1:50051)",
    )
    p.add_argument("--timeout", type=positive_seconds, default=2.0, help="seconds")
    p.add_argument(
        "--config",
        help="cluster YAML: the router's address, and its tls section unless --ca/--cert/--key",
    )
    _add_tls_flags(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("engage", help="record an engagement event (Retrieval.RecordEngagement)")
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--item", type=int, required=True)
    p.add_argument(
        "--type",
        default="click",
        choices=sorted(EVENT_TYPE_NAMES.values()),
        help="event type (default click; impression counts for exploration only)",
    )
    p.add_argument("--timestamp", type=int, default=0, help="unix seconds (default: now)")
    p.add_argument("--country", default="", help="also counts in this country's trending")
    p.add_argument(
        "--target",
        help="router HOST:PORT (default: the router of the local cluster `up` runs from the "
        "config's data dir, else the config's router.host:port, 127.0.0.1:50051)",
    )
    p.add_argument("--timeout", type=positive_seconds, default=2.0, help="seconds")
    p.add_argument(
        "--config",
        help="cluster YAML: the router's address, and its tls section unless --ca/--cert/--key",
    )
    _add_tls_flags(p)
    p.set_defaults(func=cmd_engage)

    p = sub.add_parser("status", help="health and bundle of each local cluster process")
    p.add_argument("--config")
    _add_tls_flags(p)
    p.set_defaults(func=cmd_status)

    for name, func, help_text in (
        ("serve-shard", cmd_serve_shard, "run one shard server"),
        ("serve-router", cmd_serve_router, "run a router"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--bundle", required=True)
        p.add_argument("--config")
        section = "shards" if name == "serve-shard" else "router"
        p.add_argument("--host", help=f"listen address (default: the config's {section}.host)")
        p.add_argument("--port", type=int, help="0 = free port (default: from the config)")
        p.add_argument(
            "--metrics-port", type=int, help="-1 = off, 0 = free port (default: from the config)"
        )
        admin_service = "ShardAdmin" if name == "serve-shard" else "RouterAdmin"
        p.add_argument(
            "--admin-port",
            type=int,
            help=f"{admin_service} port; -1 = off, 0 = free (default: from the config)",
        )
        p.add_argument("--admin-token-file", help="admin token file (overrides the config)")
        p.add_argument(
            "--rollout-state",
            help="rollout state file (JSON); the stable bundle it names wins over --bundle",
        )
        p.add_argument(
            "--supervisor-pid",
            type=int,
            help="stop (as on SIGTERM) when process PID is no longer this one's parent: "
            "`annfleet up` passes its own, so a supervisor killed with SIGKILL leaves no "
            "server behind",
        )
        if name == "serve-shard":
            p.add_argument("--shard", type=int, required=True)
            p.add_argument(
                "--replica",
                type=int,
                default=0,
                help="which replica of the shard this is: its default ports and update log "
                "(default 0)",
            )
        else:
            p.add_argument(
                "--shards",
                required=True,
                help="shard HOST:PORTs in shard order, comma-separated; the replicas of one "
                "shard |-separated, e.g. h:1|h:2,h:3|h:4",
            )
            p.add_argument(
                "--shard-admins",
                help="comma-separated ShardAdmin HOST:PORTs of every shard replica (rollouts)",
            )
            p.add_argument(
                "--blocked-file",
                help="with state.backend memory: the .npy where the blocked items (RouterAdmin."
                "Block, `items delete`) are kept over a restart (`annfleet up`: "
                "<data dir>/blocked-items.npy); a file that is not one refuses the start",
            )
        p.set_defaults(func=func)

    for module in (
        "annfleet.admin_cli",
        "annfleet.rollout_cli",
        "annfleet.model.cli",
        "annfleet.benchmarks.cli",
        "annfleet.capacity",
        "annfleet.probe",
    ):
        try:
            registrar = __import__(module, fromlist=["register"])
        except ImportError as exc:  # optional parts (torch, matplotlib) may be missing
            log.debug("%s unavailable: %s", module, exc)
            continue
        if hasattr(registrar, "register"):
            registrar.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it picked
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request (bench peers)
    from annfleet.client import AnnfleetError as ClientError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as an "Exception ignored" at exit
        return code
    except BrokenPipeError:
        # The reader went away (`annfleet status | head -1`): as the Python docs' "Note on
        # SIGPIPE" does, point stdout at devnull so the exit's flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (AnnfleetError, FileNotFoundError) as exc:
        print(f"annfleet {args.command}: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:  # a call to a server failed (as `query` reports it)
        print(f"annfleet {args.command}: {exc.code.name}: {exc.details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"annfleet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
