"""``annfleet items upsert|delete``: live catalogue changes through the shards' admin ports.

Each id goes to its shard (``splitmix64(id) mod num_shards`` of the active bundle) and to
every replica of that shard, pinned to the bundle the shards serve when the command starts,
so a concurrent bundle switch cannot split one update over two bundles. Updates are
idempotent: when a replica fails, the command says so and exits 1; running it again
converges (unless every failure is a refusal, which the same command meets again: it says so).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from annfleet.arrays import F32, I64, decode_ids, npy_error, to_bytes
from annfleet.auth import client_token, metadata
from annfleet.client.channels import open_channel
from annfleet.cluster import router_address
from annfleet.config import ClusterConfig, load_config
from annfleet.errors import ConfigError, FailedPrecondition, InvalidArgument
from annfleet.partition import shard_of
from annfleet.serving import channel_credentials
from annfleet.v1 import admin_pb2, admin_pb2_grpc, shard_pb2, shard_pb2_grpc

BATCH_ROWS = 8192
TIMEOUT_S = 60.0


@dataclass
class ShardReplica:
    target: str
    channel: grpc.Channel = field(repr=False)
    stub: shard_pb2_grpc.ShardAdminStub = field(repr=False)
    info: shard_pb2.ShardInfo = field(repr=False)


@dataclass
class Fleet:
    """Every shard replica's admin endpoint, grouped by shard id (learned from Describe)."""

    token: str
    shards: dict[int, list[ShardReplica]]
    num_shards: int
    bundle_id: str

    @classmethod
    def connect(
        cls,
        targets: Sequence[str],
        token: str,
        bundle_id: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> Fleet:
        shards: dict[int, list[ShardReplica]] = defaultdict(list)
        for target in targets:
            channel = open_channel(target, credentials)  # TLS when the config has it
            stub = shard_pb2_grpc.ShardAdminStub(channel)
            try:
                info = stub.Describe(
                    shard_pb2.DescribeRequest(), metadata=metadata(token), timeout=10.0
                )
            except grpc.RpcError as exc:
                channel.close()
                raise FailedPrecondition(
                    f"shard admin {target}: {exc.code().name}: {exc.details()}"
                ) from exc
            shards[info.shard_id].append(ShardReplica(target, channel, stub, info))
        serving = {r.info.bundle_id for replicas in shards.values() for r in replicas}
        if not bundle_id:
            if len(serving) != 1:
                raise FailedPrecondition(
                    f"the shards serve different bundles ({', '.join(sorted(serving))}); "
                    "pass --bundle-id"
                )
            bundle_id = serving.pop()
        held = [r.info for replicas in shards.values() for r in replicas if r.info.bundle_id]
        num_shards = next(
            (b.num_shards for info in held for b in info.bundles if b.bundle_id == bundle_id), 0
        )
        if not num_shards:
            raise FailedPrecondition(f"no shard holds bundle {bundle_id}")
        missing = sorted(set(range(num_shards)) - set(shards))
        if missing:
            raise FailedPrecondition(
                f"bundle {bundle_id} has {num_shards} shards; no admin target for shard(s) "
                f"{missing}"
            )
        return cls(token, dict(shards), num_shards, bundle_id)

    def close(self) -> None:
        for replicas in self.shards.values():
            for replica in replicas:
                replica.channel.close()

    def route(self, ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(shard id, row indices into ids) for every shard with ids, in chunks."""
        owner = shard_of(ids, self.num_shards)
        for shard in range(self.num_shards):
            rows = np.flatnonzero(owner == shard)
            for start in range(0, len(rows), BATCH_ROWS):
                yield shard, rows[start : start + BATCH_ROWS]


# codes a shard answers for a request it will refuse again, unchanged, on a second run
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


@dataclass
class Tally:
    counts: dict[tuple[int, str], dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    failures: list[str] = field(default_factory=list)
    codes: set[grpc.StatusCode] = field(default_factory=set)
    searchable: dict[tuple[int, str], int] = field(default_factory=dict)
    # the router's blocked set after this command (``block_on_router``), None: not asked
    router: dict[str, Any] | None = None

    def add(self, shard: int, target: str, reply: shard_pb2.UpdateResponse) -> None:
        counts = self.counts[(shard, target)]
        for key in ("inserted", "replaced", "deleted", "missing"):
            counts[key] += getattr(reply, key)
        self.searchable[(shard, target)] = reply.bundle.num_items

    def print(self, fleet: Fleet, keys: Sequence[str], as_json: bool) -> None:
        if as_json:
            rows = [
                {"shard": s, "target": t, **dict(c), "searchable": self.searchable.get((s, t))}
                for (s, t), c in sorted(self.counts.items())
            ]
            summary = {
                "bundle_id": fleet.bundle_id,
                "replicas": rows,
                "router": self.router,
                "failures": self.failures,
            }
            print(json.dumps(summary, indent=2))
            return
        print(f"bundle {fleet.bundle_id}, {fleet.num_shards} shards")
        if self.router is not None:
            print(f"  {self.router_line()}")
        for (shard, target), counts in sorted(self.counts.items()):
            done = ", ".join(f"{counts[k]} {k}" for k in keys)
            print(
                f"  shard {shard}  {target:<21} {done}  "
                f"({self.searchable.get((shard, target), 0)} searchable)"
            )
        for failure in self.failures:
            print(f"  FAILED {failure}", file=sys.stderr)

    def router_line(self) -> str:
        assert self.router is not None
        how = "unblocked" if self.router["unblock"] else "blocked from Retrieve"
        return (
            f"router {self.router['target']}: {self.router['ids']} ids {how} "
            f"({self.router['blocked']} blocked in all)"
        )


def _update(fleet: Fleet, ids: np.ndarray, request_for: Any, method: str) -> Tally:
    """Send ``request_for(rows)`` for every shard's rows to each replica of that shard."""
    tally = Tally()
    for shard, rows in fleet.route(ids):
        request = request_for(rows)
        for replica in fleet.shards[shard]:
            try:
                reply = getattr(replica.stub, method)(
                    request, metadata=metadata(fleet.token), timeout=TIMEOUT_S
                )
            except grpc.RpcError as exc:
                tally.failures.append(
                    f"shard {shard} {replica.target}: {exc.code().name}: {exc.details()}"
                )
                tally.codes.add(exc.code())
                continue
            tally.add(shard, replica.target, reply)
    return tally


def upsert(fleet: Fleet, ids: np.ndarray, vectors: np.ndarray) -> Tally:
    """ids (n,) int64, vectors (n, d) float32 -> every replica of each id's shard."""
    dim = vectors.shape[1]
    return _update(
        fleet,
        ids,
        lambda rows: shard_pb2.UpsertRequest(
            bundle_id=fleet.bundle_id,
            ids=to_bytes(ids[rows], I64),
            vectors=to_bytes(vectors[rows], F32),
            dim=dim,
        ),
        "Upsert",
    )


def delete(fleet: Fleet, ids: np.ndarray, missing_ok: bool = False) -> Tally:
    return _update(
        fleet,
        ids,
        lambda rows: shard_pb2.DeleteRequest(
            bundle_id=fleet.bundle_id, ids=to_bytes(ids[rows], I64), missing_ok=missing_ok
        ),
        "Delete",
    )


BLOCK_BATCH = 10_000  # ids per RouterAdmin.Block call


def block_on_router(
    tally: Tally,
    target: str,
    token: str,
    credentials: grpc.ChannelCredentials | None,
    ids: np.ndarray,
    unblock: bool,
    hint: str = "--router HOST:PORT names the router's admin address; --no-router skips it",
) -> None:
    """RouterAdmin.Block for ``ids`` (unblock: let them back); the outcome goes to ``tally``
    (``tally.router``, or a failure naming the router and ``hint``)."""
    try:
        with open_channel(target, credentials) as channel:
            stub = admin_pb2_grpc.RouterAdminStub(channel)
            blocked = 0
            for start in range(0, len(ids), BLOCK_BATCH):
                request = admin_pb2.BlockRequest(
                    item_ids=ids[start : start + BLOCK_BATCH].tolist(), unblock=unblock
                )
                reply = stub.Block(request, metadata=metadata(token), timeout=TIMEOUT_S)
                blocked = int(reply.blocked)
    except grpc.RpcError as exc:
        tally.failures.append(f"router {target}: {exc.code().name}: {exc.details()} ({hint})")
        tally.codes.add(exc.code())
        return
    tally.router = {"target": target, "ids": len(ids), "unblock": unblock, "blocked": blocked}


# ---------------------------------------------------------------------------- targets
def admin_targets(config: ClusterConfig) -> list[str]:
    """Every shard replica's admin address: from the running local cluster's state file."""
    from annfleet.cluster import read_cluster_state, state_path

    path = state_path(config)
    state = read_cluster_state(config)
    if state is None:
        raise ConfigError(
            f"no local cluster recorded in {path}; pass --targets HOST:PORT,... (the shards' "
            "admin addresses)"
        )
    targets = [
        c["admin_target"]
        for c in state["children"]
        if c.get("admin_target") and c["name"].startswith("shard")
    ]
    if not targets:
        raise ConfigError(f"the cluster in {path} serves no shard admin ports")
    return targets


def _load_array(path: str, flag: str, dtype: Any, ndim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {flag} {path}: {npy_error(exc)}") from exc
    if array.ndim != ndim:
        raise InvalidArgument(f"{flag} {path}: expected a {ndim}-d array, got {array.shape}")
    if dtype is I64:
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidArgument(f"{flag} {path}: expected integer ids, got {array.dtype}")
        return array.astype(np.int64)
    return np.ascontiguousarray(array, dtype=np.float32)


def _ids(value: str) -> np.ndarray:
    """--ids: a .npy file of int64 ids, or a comma-separated list."""
    if value.endswith(".npy") or Path(value).is_file():
        return _load_array(value, "--ids", I64, 1)
    try:
        return np.array([int(x) for x in value.split(",") if x.strip()], dtype=np.int64)
    except ValueError as exc:
        raise InvalidArgument(f"--ids {value!r}: not a .npy file or a list of integers") from exc


def cmd_items(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    token = client_token(config, args.token_file)
    targets = [t for t in args.targets.split(",") if t] if args.targets else admin_targets(config)
    ids = _ids(args.ids)
    if len(ids) == 0:
        raise InvalidArgument("--ids: no ids given")
    if args.targets and not (args.router or args.no_router):  # checked before any change
        raise InvalidArgument(
            "--targets names the shards: name their router too (--router HOST:PORT, its admin "
            "address, where deleted ids are blocked from Retrieve), or --no-router"
        )
    credentials = channel_credentials(config.tls)
    fleet = Fleet.connect(targets, token, args.bundle_id or "", credentials)
    try:
        if args.action == "upsert":
            vectors = _load_array(args.vectors, "--vectors", F32, 2)
            if len(vectors) != len(ids):
                raise InvalidArgument(f"--vectors has {len(vectors)} rows, --ids {len(ids)} ids")
            tally = upsert(fleet, ids, vectors)
            keys: Sequence[str] = ("inserted", "replaced")
        else:
            tally = delete(fleet, ids, args.missing_ok)
            keys = ("deleted", "missing")
    finally:
        fleet.close()
    # The router's other Retrieve sources know nothing of the shards' deletes: a deleted id is
    # blocked there (even if a shard call failed: it must not be served meanwhile); an
    # upserted one is let back once every replica has it.
    if not args.no_router and (args.action == "delete" or not tally.failures):
        router = args.router or router_address(config, admin=True)
        block_on_router(tally, router, token, credentials, ids, args.action == "upsert")
    tally.print(fleet, keys, args.json)
    if tally.failures:
        print(
            f"annfleet items {args.action}: {len(tally.failures)} call(s) failed; "
            + _next_step(tally.codes),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_blocked(args: argparse.Namespace) -> int:
    """items block / unblock / blocked: the router's blocked set alone; the shards unchanged."""
    config = load_config(args.config)
    token = client_token(config, args.token_file)
    credentials = channel_credentials(config.tls)
    router = args.router or router_address(config, admin=True)
    if args.action == "blocked":
        return _list_blocked(router, token, credentials, args.limit, args.json)
    ids = _ids(args.ids)
    if len(ids) == 0:
        raise InvalidArgument("--ids: no ids given")
    tally = Tally()
    hint = "--router HOST:PORT names the router's admin address"
    block_on_router(tally, router, token, credentials, ids, args.action == "unblock", hint)
    if tally.failures:
        print(f"annfleet items {args.action}: {tally.failures[0]}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(tally.router, indent=2))
    else:
        print(tally.router_line())
        if args.action == "block":
            print("Search still finds them: `annfleet items delete` removes items from the shards")
    return 0


def _list_blocked(
    router: str,
    token: str,
    credentials: grpc.ChannelCredentials | None,
    limit: int,
    as_json: bool,
) -> int:
    try:
        with open_channel(router, credentials) as channel:
            reply = admin_pb2_grpc.RouterAdminStub(channel).Blocked(
                admin_pb2.BlockedRequest(limit=limit), metadata=metadata(token), timeout=TIMEOUT_S
            )
    except grpc.RpcError as exc:
        print(
            f"annfleet items blocked: router {router}: {exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    ids = decode_ids(reply.item_ids, name="item_ids").tolist()
    if as_json:
        print(json.dumps({"router": router, "count": reply.count, "item_ids": ids}, indent=2))
        return 0
    print(f"router {router}: {reply.count} items blocked from Retrieve")
    for item in ids:
        print(f"  {item}")
    if len(ids) < reply.count:
        print(f"  ... and {reply.count - len(ids)} more (--limit 0 lists every one)")
    return 0


def id_limit(text: str) -> int:
    """argparse type of --limit: a count of ids >= 0 (0 = every one), within uint32."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of ids >= 0 (0 = all)")
    return value


def _next_step(codes: set[grpc.StatusCode]) -> str:
    """What to do about the failed replica calls: a refused request changed nothing on its
    replica and fails again as it is; anything else may pass on a second run."""
    if codes == {grpc.StatusCode.NOT_FOUND}:
        return "--missing-ok skips ids a shard does not have (nothing changed on those replicas)"
    if codes <= REFUSED:
        return "the request was refused as it is (nothing changed on those replicas): fix it"
    return "updates are idempotent: run the command again"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "items",
        help="upsert or delete catalogue items live, or block them from Retrieve (admin ports)",
    )
    actions = p.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("upsert", "insert or replace items: searchable at once, kept across restarts"),
        ("delete", "delete items: never returned again (Search, Retrieve)"),
    ):
        q = actions.add_parser(action, help=help_text)
        q.add_argument(
            "--ids", required=True, help="item ids: int64 .npy file or comma-separated list"
        )
        if action == "upsert":
            q.add_argument("--vectors", required=True, help="float32 (n, dim) .npy, row per id")
        else:
            q.add_argument(
                "--missing-ok", action="store_true", help="skip ids a shard does not have"
            )
        add_router_admin_args(
            q,
            router_help="router admin HOST:PORT, where deleted ids are blocked from Retrieve "
            "and upserted ones let back",
        )
        q.add_argument(
            "--targets", help="shard admin HOST:PORTs, comma-separated (default: the local cluster)"
        )
        q.add_argument(
            "--no-router", action="store_true", help="change the shards only, not the router"
        )
        q.add_argument("--bundle-id", help="the bundle to change (default: the active one)")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=cmd_items)
    for action, help_text in (
        ("block", "block items from Retrieve on the router (Search and the shards unchanged)"),
        ("unblock", "let blocked items back into Retrieve"),
        ("blocked", "list the items blocked from Retrieve"),
    ):
        q = actions.add_parser(action, help=help_text)
        if action == "blocked":
            q.add_argument(
                "--limit", type=id_limit, default=1000, help="ids listed, smallest first; 0 = all"
            )
        else:
            q.add_argument(
                "--ids", required=True, help="item ids: int64 .npy file or comma-separated list"
            )
        add_router_admin_args(q)
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=cmd_blocked)


def add_router_admin_args(
    parser: argparse.ArgumentParser,
    *,
    config_help: str = "cluster YAML (data dir, admin token)",
    router_help: str = "router admin HOST:PORT",
) -> None:
    """--config, --router and --token-file: how a command finds the router's admin port."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument(
        "--router",
        help=f"{router_help} (default: that of the local cluster `annfleet up` runs from the "
        "config's data dir, else router.host:router.admin_port)",
    )
    parser.add_argument("--token-file", help="admin token file (default: from the config)")
