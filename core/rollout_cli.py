"""``annfleet rollout``: an ordinary client of the router's admin port (RouterAdmin).

``--bundle DIR`` runs the two-phase swap and prints its progress per shard and replica as
it streams; ``--rollback`` flips back to the previous bundle while it is held;
``--status`` prints what the router and every shard replica serve and hold. Exit 0 on
success, 1 when the router refuses or aborts (the old bundle keeps serving), 2 on a usage
or config error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from annfleet.admin_cli import add_router_admin_args
from annfleet.auth import client_token, metadata
from annfleet.client.channels import open_channel
from annfleet.cluster import router_address
from annfleet.config import load_config
from annfleet.errors import InvalidArgument
from annfleet.serving import channel_credentials
from annfleet.v1 import admin_pb2, admin_pb2_grpc

TIMEOUT_S = 900.0
UPDATES = {
    "": admin_pb2.UPDATES_UNSPECIFIED,
    "carry": admin_pb2.UPDATES_CARRY,
    "drop": admin_pb2.UPDATES_DROP,
}


def recall_floor(text: str) -> float:
    """argparse type of --min-recall: a recall in (0, 1]. 0 is PromoteRequest's "unset"
    (router.recall_floor applies), so a floor of 0 cannot be asked for: --force is that."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a recall in (0, 1]; to promote regardless of recall, --force"
        )
    return value


def _holder() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (annfleet rollout)"


def print_status(status: admin_pb2.RolloutStatus, out: Any = None) -> None:
    out = out or sys.stdout
    print(f"stable  {status.stable_bundle_id}", file=out)
    if status.previous_bundle_id:
        left = max(0.0, status.previous_release_at - time.time())
        print(
            f"previous {status.previous_bundle_id} (rollback possible, released in {left:.0f}s)",
            file=out,
        )
    if status.rollout_holder:
        print(f"rollout running, held by {status.rollout_holder}", file=out)
    for v in status.variants:
        print(f"variant {v.name:<7} {v.bundle_id} {v.percent:g}% of users", file=out)
    for line in recall_lines(status.recall):
        print(line, file=out)
    if status.blocked_items:
        print(blocked_line(status), file=out)
    for r in status.replicas:
        where = f"shard {r.shard_id} replica {r.replica} {r.target}"
        if r.error:
            print(f"  {where}: {r.error}", file=out)
        else:
            held = ", ".join(b for b in r.held_bundle_ids if b != r.active_bundle_id)
            print(f"  {where}: active {r.active_bundle_id}; held {held or '-'}", file=out)


def blocked_line(status: admin_pb2.RolloutStatus) -> str:
    n = status.blocked_items
    return f"blocked from Retrieve: {n} item{'s' if n != 1 else ''} (annfleet items delete)"


def recall_lines(gauges: Any) -> list[str]:
    """One line per bundle: merged recall@k, then per shard, with sample counts."""
    by_bundle: dict[str, list[Any]] = {}
    for g in gauges:
        by_bundle.setdefault(g.bundle_id, []).append(g)
    lines = []
    for bundle_id, rows in by_bundle.items():
        merged = [g for g in rows if g.merged]
        shards = sorted((g for g in rows if not g.merged), key=lambda g: g.shard_id)
        head = (
            f"recall@{merged[0].k} {merged[0].recall:.4f} ({merged[0].samples} samples)"
            if merged
            else "recall: no complete sample yet"
        )
        per_shard = " ".join(f"{g.shard_id}:{g.recall:.3f}" for g in shards)
        lines.append(f"live    {bundle_id} {head}" + (f"; per shard {per_shard}" if shards else ""))
    return lines


def cmd_rollout(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    token = client_token(config, args.token_file)
    target = args.router or router_address(config, admin=True)
    actions = (args.bundle or args.canary, args.rollback, args.status, args.promote, args.abort)
    if sum(bool(x) for x in actions) != 1:
        raise InvalidArgument(
            "give exactly one of --bundle DIR [--canary P], --canary P (move a live canary's "
            "share), --rollback, --promote, --abort, --status"
        )
    with open_channel(target, channel_credentials(config.tls)) as channel:
        stub = admin_pb2_grpc.RouterAdminStub(channel)
        auth = metadata(token)
        try:
            if args.status:
                status = stub.Status(admin_pb2.StatusRequest(), metadata=auth, timeout=30.0)
            elif args.promote:
                request = admin_pb2.PromoteRequest(
                    force=args.force, min_recall=args.min_recall or 0.0
                )
                status = stub.Promote(request, metadata=auth, timeout=30.0)
            elif args.abort:
                status = stub.Abort(admin_pb2.AbortRequest(), metadata=auth, timeout=30.0)
            elif args.rollback:
                started = time.monotonic()
                status = stub.Rollback(admin_pb2.RollbackRequest(), metadata=auth, timeout=30.0)
                if not args.json:
                    print(f"rolled back in {time.monotonic() - started:.3f}s")
            else:
                status = _rollout(stub, auth, args)
        except grpc.RpcError as exc:
            print(f"annfleet rollout: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(status, preserving_proto_field_name=True), indent=2))
    else:
        print_status(status)
    return 0


def _rollout(
    stub: admin_pb2_grpc.RouterAdminStub, auth: Any, args: argparse.Namespace
) -> admin_pb2.RolloutStatus:
    bundle = args.bundle or ""
    if bundle and "://" not in bundle:
        bundle = str(Path(bundle).expanduser().absolute())
    request = admin_pb2.RolloutRequest(
        bundle=bundle,
        grace_s=args.grace or 0.0,
        canary_percent=args.canary or 0.0,
        holder=_holder(),
        updates=UPDATES[args.updates or ""],
        force=args.force,
    )
    status = admin_pb2.RolloutStatus()
    missing: set[int] = set()
    for progress in stub.Rollout(request, metadata=auth, timeout=TIMEOUT_S):
        phase = admin_pb2.RolloutPhase.Name(progress.phase).removeprefix("PHASE_").lower()
        where = (  # a replica's own line (prepare, carry): which one
            f" shard {progress.shard_id} replica {progress.replica} {progress.target}"
            if progress.target
            else ""
        )
        missing.update(progress.missing_ids)
        line = f"[{progress.elapsed_s:7.2f}s] {phase:<13}{where} {progress.message}"
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)
        if progress.phase == admin_pb2.PHASE_DONE:
            status = progress.status
    if args.missing_ids_out:
        np.save(args.missing_ids_out, np.array(sorted(missing), dtype=np.int64))
        print(
            f"{len(missing)} upserted ids the new bundle lacks -> {args.missing_ids_out}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return status


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rollout", help="swap the cluster to another bundle (two-phase), or roll back"
    )
    p.add_argument("--bundle", help="bundle directory, as the shards and router see it")
    p.add_argument(
        "--rollback", action="store_true", help="flip back to the previous bundle while held"
    )
    p.add_argument("--status", action="store_true", help="what the router and shards serve")
    add_router_admin_args(p, config_help="cluster YAML (router admin port, admin token)")
    p.add_argument(
        "--grace", type=float, help="seconds the old bundle stays held (router.release_grace_s)"
    )
    p.add_argument(
        "--canary",
        type=float,
        help="serve this percent of users (by user id) from the bundle; alone: move the live "
        "canary's share",
    )
    p.add_argument("--promote", action="store_true", help="make the live canary stable")
    p.add_argument("--abort", action="store_true", help="end the canary: all users on stable")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --promote: promote even below router.recall_floor or without recall samples; "
        "with --bundle: roll out a bundle without user tower or user table over one with "
        "(Search only: every Retrieve is then NOT_FOUND)",
    )
    p.add_argument(
        "--min-recall",
        type=recall_floor,
        help="with --promote: the recall@k floor for this promotion, in (0, 1] (default "
        "router.recall_floor; --force promotes regardless of recall)",
    )
    p.add_argument(
        "--updates",
        choices=["carry", "drop"],
        help="live item updates of the old bundle: carry (deletes re-applied, upserted ids the "
        "new bundle lacks reported) or drop them; needed when there are any",
    )
    p.add_argument(
        "--missing-ids-out",
        help="with --updates carry: write the upserted ids the new bundle lacks to this .npy",
    )
    p.add_argument("--json", action="store_true", help="print the final status as JSON")
    p.set_defaults(func=cmd_rollout)
