"""Two-phase bundle rollout, driven by the router over the shards' admin ports.

A bundle the cluster cannot serve is refused first (``incompatibility``: shard count, users
embeddable) -> the router loads the bundle's tower and tables (a tower whose output is not
its items' dimension, or a user table of another dimension, is refused here, before any
replica is asked) -> prepare on every replica of every shard -> atomic flip of the router's
state (``RetrievalService.state`` is replaced as a whole; a request keeps the state object
it started with, and every shard RPC pins that state's bundle id, so requests in flight
finish on the old bundle) -> commit on the shards -> the old bundle is released after
``router.release_grace_s``; until then ``rollback`` flips back at once. A refusal changes
nothing; any prepare failure aborts: what this rollout prepared is released and the old
bundle keeps serving, with the rollback target it had (an earlier rollout's bundle stays held
through the prepare, and goes after the commit; only a replica with no room for the new bundle
beside it has it released first). One rollout at a time; each step is persisted
(``rollout_state``).

Several routers over the same shards: one of them runs the rollout (the one the admin call
reached); every other one **follows** (``router.follow_interval_s``): it asks every replica
which bundle is active, and once they all name one it neither serves nor is changing, it
loads that bundle from the path the replicas loaded it from and flips to it, asking nothing
of the replicas and releasing nothing (the rollout's router does both). So a rollout, a
rollback or a promote reaches every router well within the release grace, and no router is
left pinning a bundle the shards let go. A follower keeps the bundle it left for the release
grace, so following a rollback back to it is instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from annfleet.arrays import decode_ids
from annfleet.auth import metadata
from annfleet.bundle import Bundle, bundle_path
from annfleet.client.channels import open_aio_channel
from annfleet.config import RouterConfig
from annfleet.errors import (
    Aborted,
    AnnfleetError,
    BundleError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from annfleet.metrics import FOLLOWS
from annfleet.rollout_state import BundleRef, RolloutState, read_state, write_state
from annfleet.router.candidates import embedding_key, embedding_key_context
from annfleet.router.recall import RecallMonitor
from annfleet.router.service import RetrievalService, RouterState
from annfleet.router.users import embed_many, load_embedder
from annfleet.router.variants import CANARY, STABLE, Canary
from annfleet.v1 import admin_pb2, shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 10.0
SHOW_MISSING = 10  # missing ids named in a progress message (all are in missing_ids)
PREPARE_TIMEOUT_S = 600.0
WARM_PUTS = 500  # cache puts of a rollout's warm-up between two yields to the event loop


@dataclass
class AdminReplica:
    """One shard replica's admin endpoint; shard id and replica index learned by Describe."""

    target: str
    channel: grpc.aio.Channel = field(repr=False)
    stub: shard_pb2_grpc.ShardAdminStub = field(repr=False)
    shard_id: int = -1
    replica: int = 0


def _rpc_error(replica: AdminReplica, what: str, exc: grpc.aio.AioRpcError) -> AnnfleetError:
    message = (
        f"shard {replica.shard_id} replica {replica.replica} ({replica.target}): {what}: "
        f"{exc.code().name}: {exc.details()}"
    )
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message)
    return FailedPrecondition(message)


def open_router_bundle(path: Path) -> Bundle:
    """Open a bundle and verify every file the router uses (all but the shards')."""
    if not path.exists():
        raise BundleError(f"no bundle at {path}")
    bundle = Bundle.open(path, verify=False)
    shard_dirs = tuple(s["dir"] + "/" for s in bundle.manifest["shards"])
    bundle.verify(only=[rel for rel in bundle.manifest["files"] if not rel.startswith(shard_dirs)])
    return bundle


def with_bundle(state: RouterState, bundle: Bundle, config: RouterConfig) -> RouterState:
    """A new router state serving ``bundle`` over the same shard connections, its user
    tower warmed up (a TorchScript module's first calls profile and optimise its graph and
    are many times slower: they run here, before the flip, not in the first requests)."""
    scatter = state.scatter.for_bundle(bundle)
    embedder = load_embedder(bundle, config.tower_threads)
    warm_up = getattr(embedder, "warm_up", None)
    if warm_up is not None:
        warm_up()
    return RouterState.load(bundle, scatter, embedder, config, state.env)


async def warm_embeddings(
    old: RouterState, new: RouterState, limit: int, executor: Executor, canary_percent: float = 0
) -> int:
    """Embed with ``new``'s tower the user-embedding cache entries of ``old`` of the users most
    recently served (at most ``limit`` entries; for a canary, only its users), and cache them
    under ``new``'s bundle: their first requests after the flip hit the cache instead of
    each paying a tower call. The cache is read and written on the event loop (it is not
    thread-safe); the tower runs in ``executor``, in batches. Returns the entries added."""
    cache = new.env.caches.embeddings
    if limit <= 0 or not cache.enabled:
        return 0
    recent = cache.recent(limit)  # on the loop; the rest of the work in the executor

    def embed() -> list[tuple[int, Any, np.ndarray]]:
        canary = Canary(new, canary_percent) if canary_percent > 0 else None
        users, contexts = [], []
        for user_id, key in recent:
            bundle_id, context = embedding_key_context(key)  # type: ignore[arg-type]
            if bundle_id == old.bundle.id and (canary is None or canary.serves(user_id)):
                users.append(user_id)
                contexts.append(context)
        users, contexts = users[:limit], contexts[:limit]
        vectors = embed_many(new.embedder, users, contexts) if users else []
        return [
            (user_id, embedding_key(new.bundle.id, context), vector)
            for user_id, context, vector in zip(users, contexts, vectors, strict=True)
            if vector is not None
        ]

    entries = await asyncio.get_running_loop().run_in_executor(executor, embed)
    for n, (user_id, key, vector) in enumerate(entries):
        if n and n % WARM_PUTS == 0:
            await asyncio.sleep(0)  # requests run between slices of the puts
        cache.put(user_id, key, vector)
    return len(entries)


def incompatibility(stable: Bundle, new: Bundle, *, search_only: bool = False) -> str:
    """Why the cluster serving ``stable`` cannot serve ``new`` (from the manifests alone),
    or "". ``search_only``: a bundle that cannot embed users is fine (``force``). What the
    new bundle's own parts must agree on (its user tower's or table's dimension and its
    items') is checked when the router loads it."""
    if new.num_shards != stable.num_shards:
        return f"it has {new.num_shards} shards, this cluster has {stable.num_shards}"
    if stable.embeds_users and not new.embeds_users and not search_only:
        return (
            f"it has no user tower or user table, {stable.id} has: after the flip every "
            "Retrieve would fail (NOT_FOUND: unknown user); to serve Search only with it, "
            "roll it out with force (annfleet rollout --force)"
        )
    return ""


def _refused(new_id: str, stable_id: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"bundle {new_id} refused before any replica prepared it, {stable_id} keeps serving: {why}"
    )


def describe_users(bundle: Bundle) -> str:
    """How a bundle embeds users, for the ROUTER_LOAD progress message."""
    if not bundle.embeds_users:
        return f"{bundle.dim}-d items, no user tower or table: Search only"
    how = "user tower" if "user_tower" in bundle.manifest else "user table"
    return f"{how} and items {bundle.dim}-d"


def _ref(state: RouterState) -> BundleRef:
    return BundleRef(state.bundle.id, str(state.bundle.path))


class RolloutController:
    def __init__(
        self,
        service: RetrievalService,
        config: RouterConfig,
        executor: Executor,
        *,
        admin_targets: Sequence[str] = (),
        token: str = "",
        state_path: Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.executor = executor
        self.token = token
        self.state_path = state_path
        self.credentials = credentials  # TLS to the shards' admin ports, as to their serving
        self._targets = list(admin_targets)
        self._replicas: list[AdminReplica] | None = None
        self.holder = ""
        self.started_at = 0.0
        self.previous: RouterState | None = None
        self.previous_release_at = 0.0
        self._release: asyncio.Task[None] | None = None
        self._history: list[dict[str, object]] = []
        self._aborted: asyncio.Task[None] | None = None
        self._target_id = ""  # the bundle a running rollout prepares
        self._changing = 0  # rollback / promote / abort sections running: no following then
        self._left: RouterState | None = None  # the bundle last followed from, for the grace
        self._follow_failed = ""  # the bundle a follow last failed to load (said once)
        self._following: asyncio.Task[None] | None = None
        self.recall = RecallMonitor(config, self.replicas, token)
        if state_path is not None:
            persisted = read_state(state_path)
            if persisted is not None:
                self._history = persisted.history[-20:]

    # ------------------------------------------------------------------ start-up
    def start_recall(self) -> None:
        """Sample live requests for recall (needs the shards' admin ports: ExactSearch)."""
        if self._targets and self.config.recall_sample_rate > 0:
            self.service.sampler = self.recall
            self.recall.start()

    async def restore(self) -> None:
        """After a router restart: the canary and the rollback target the persisted state
        names come back (the stable bundle was loaded from it already). A bundle that cannot
        be loaded any more is dropped from the state, with a warning."""
        if self.state_path is None or self.service.state is None:
            return
        persisted = read_state(self.state_path)
        if persisted is None:
            return
        current = self.service.state
        loop = asyncio.get_running_loop()

        async def load(ref: BundleRef) -> RouterState | None:
            try:
                bundle = await loop.run_in_executor(
                    self.executor, open_router_bundle, Path(ref.path)
                )
                if bundle.id != ref.bundle_id:
                    raise BundleError(f"{ref.path} now holds bundle {bundle.id}")
                return await loop.run_in_executor(
                    self.executor, with_bundle, current, bundle, self.config
                )
            except Exception as exc:
                log.warning("rollout state names bundle %s: not restored: %s", ref.bundle_id, exc)
                return None

        canary = persisted.canary
        if canary is not None and canary.bundle_id != current.bundle.id:
            state = await load(canary)
            if state is not None:
                self.service.canary = Canary(state, persisted.canary_percent)
                log.info("canary %s restored (%g%%)", canary.bundle_id, persisted.canary_percent)
        previous = persisted.previous
        left = persisted.previous_release_at - time.time()
        if previous is not None and previous.bundle_id != current.bundle.id and left > 0:
            state = await load(previous)
            if state is not None:
                self.previous = state
                self._schedule_release(left)
                log.info("rollback target %s restored (%.0fs left)", previous.bundle_id, left)
        if persisted.holder:
            self._note(
                "interrupted", bundle_id=persisted.target.bundle_id if persisted.target else ""
            )
            log.warning("a rollout by %s was interrupted by a router restart", persisted.holder)
        self.persist()

    # ------------------------------------------------------------------ shard replicas
    async def replicas(self) -> list[AdminReplica]:
        """Every shard replica's admin endpoint, sorted by (shard, replica)."""
        if self._replicas is None:
            replicas = []
            for target in self._targets:
                channel = open_aio_channel(target, self.credentials)
                replicas.append(
                    AdminReplica(target, channel, shard_pb2_grpc.ShardAdminStub(channel))
                )
            infos = await asyncio.gather(
                *(self._describe(r) for r in replicas), return_exceptions=True
            )
            seen: dict[int, int] = {}
            for replica, info in zip(replicas, infos, strict=True):
                if isinstance(info, BaseException):
                    for r in replicas:
                        await r.channel.close(None)
                    raise Unavailable(f"shard admin {replica.target} cannot be asked: {info}")
                replica.shard_id = info.shard_id
                replica.replica = seen.get(info.shard_id, 0)
                seen[info.shard_id] = replica.replica + 1
            self._replicas = sorted(replicas, key=lambda r: (r.shard_id, r.replica))
        return self._replicas

    async def _call(
        self,
        replica: AdminReplica,
        method: Callable[[shard_pb2_grpc.ShardAdminStub], Awaitable[Any]],
    ) -> Any:
        """``method(replica.stub)``; on UNAVAILABLE, once more on a fresh channel.

        A replica that restarted leaves its old channel in reconnect backoff, where every
        call fails at once with UNAVAILABLE although the process is back; a new channel
        with its own subchannels (a shared one would inherit the backoff) connects now. A
        replica that is still down refuses the new connection at once, so the retry costs
        no wait.
        """
        try:
            return await method(replica.stub)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await replica.channel.close(None)
        replica.channel = open_aio_channel(replica.target, self.credentials, own_subchannels=True)
        replica.stub = shard_pb2_grpc.ShardAdminStub(replica.channel)
        return await method(replica.stub)

    async def _describe(self, replica: AdminReplica) -> shard_pb2.ShardInfo:
        try:
            info: shard_pb2.ShardInfo = await self._call(
                replica,
                lambda stub: stub.Describe(
                    shard_pb2.DescribeRequest(),
                    metadata=metadata(self.token),
                    timeout=ADMIN_TIMEOUT_S,
                ),
            )
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(replica, "Describe", exc) from exc
        return info

    async def _on_all(
        self, what: str, bundle_id: str, replicas: Sequence[AdminReplica]
    ) -> list[str]:
        """Commit or Release ``bundle_id`` on every replica; the failures, as lines."""
        request: shard_pb2.CommitRequest | shard_pb2.ReleaseRequest = (
            shard_pb2.CommitRequest(bundle_id=bundle_id)
            if what == "Commit"
            else shard_pb2.ReleaseRequest(bundle_id=bundle_id)
        )

        def call(stub: shard_pb2_grpc.ShardAdminStub) -> Awaitable[Any]:
            rpc = stub.Commit if what == "Commit" else stub.Release
            return rpc(request, metadata=metadata(self.token), timeout=ADMIN_TIMEOUT_S)

        calls = [self._call(r, call) for r in replicas]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failures = []
        for r, outcome in zip(replicas, outcomes, strict=True):
            if isinstance(outcome, grpc.aio.AioRpcError):
                if what == "Release" and outcome.code() == grpc.StatusCode.NOT_FOUND:
                    continue  # already gone (e.g. the replica restarted)
                failures.append(str(_rpc_error(r, f"{what} {bundle_id}", outcome)))
            elif isinstance(outcome, BaseException):
                failures.append(f"{r.target}: {what} {bundle_id}: {outcome!r}")
        for line in failures:
            log.warning("%s", line)
        return failures

    # ------------------------------------------------------------------ persisted state
    def persist(self, *, target: BundleRef | None = None, phase: str = "") -> None:
        if self.state_path is None:
            return
        current = self.service.state
        write_state(
            self.state_path,
            RolloutState(
                stable=_ref(current) if current is not None else None,
                previous=_ref(self.previous) if self.previous is not None else None,
                previous_release_at=self.previous_release_at,
                holder=self.holder,
                started_at=self.started_at,
                target=target,
                phase=phase,
                canary=_ref(canary.state) if (canary := self.service.canary) else None,
                canary_percent=canary.percent if canary else 0.0,
                history=self._history[-20:],
            ),
        )

    def _note(self, event: str, **details: object) -> None:
        self._history.append({"at": time.time(), "event": event, **details})

    # ------------------------------------------------------------------ release after grace
    def _schedule_release(self, grace_s: float) -> None:
        self._cancel_release()
        self.previous_release_at = time.time() + grace_s
        self._release = asyncio.get_running_loop().create_task(self._release_after(grace_s))

    def _cancel_release(self) -> None:
        if self._release is not None and not self._release.done():
            self._release.cancel()
        self._release = None

    async def _release_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.release_previous()

    async def release_previous(self) -> None:
        """Release the replaced bundle on every replica now (rollback is no longer possible)."""
        previous = self.previous
        if previous is None:
            return
        self.previous, self.previous_release_at = None, 0.0
        await self._release_unused(previous.bundle.id)
        self.persist()

    def _in_use(self) -> set[str]:
        """Bundles the replicas must keep: stable, canary, rollback target, rollout target."""
        canary, current = self.service.canary, self.service.state
        return {
            current.bundle.id if current else "",
            canary.state.bundle.id if canary else "",
            self.previous.bundle.id if self.previous else "",
            self._target_id,
        } - {""}

    async def _release_unused(self, bundle_id: str) -> None:
        """Release ``bundle_id`` on every replica, unless it is still in use."""
        if bundle_id in self._in_use():
            return
        await self._on_all("Release", bundle_id, await self.replicas())
        self.recall.forget(bundle_id)
        self._note("released", bundle_id=bundle_id)
        log.info("released bundle %s on every shard replica", bundle_id)

    # ------------------------------------------------------------------ rollout
    def _claim(self, holder: str) -> None:
        if self.holder:
            raise Aborted(
                f"a rollout is already running: held by {self.holder} since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.started_at))}"
            )
        self.holder = holder or "unknown"
        self.started_at = time.time()

    async def rollout(
        self, request: admin_pb2.RolloutRequest
    ) -> AsyncIterator[admin_pb2.RolloutProgress]:
        """Run one rollout, yielding progress; raises (status) when it is refused or aborted."""
        percent = request.canary_percent
        if not 0 <= percent < 100:
            raise InvalidArgument(f"canary_percent {percent}: must be in [0, 100)")
        if request.grace_s < 0:
            raise InvalidArgument(f"grace_s {request.grace_s}: must be >= 0")
        canary = self.service.canary
        if canary is not None and not self.holder:
            same = not request.bundle or (
                bundle_path(request.bundle).resolve() == canary.state.bundle.path.resolve()
            )
            if percent > 0 and same:  # move the live canary's share: no prepare needed
                self.service.canary = Canary(canary.state, percent)
                self._note("canary", bundle_id=canary.state.bundle.id, percent=percent)
                self.persist()
                message = f"canary {canary.state.bundle.id}: {canary.percent:g}% -> {percent:g}%"
                yield admin_pb2.RolloutProgress(
                    phase=admin_pb2.PHASE_DONE, message=message, status=await self.status(False)
                )
                return
            raise Aborted(
                f"canary {canary.state.bundle.id} is live ({canary.percent:g}% of users): "
                "promote or abort it first"
            )
        if canary is None and percent > 0 and not request.bundle:
            raise FailedPrecondition(
                f"no canary is live: a share alone ({percent:g}%) moves a live canary; "
                "give a bundle to start one"
            )
        path = bundle_path(request.bundle)
        self._claim(request.holder)
        try:
            async for progress in self._rollout(request, path):
                yield progress
        finally:
            self.holder, self.started_at, self._target_id = "", 0.0, ""
            self.persist()

    async def _rollout(
        self, request: admin_pb2.RolloutRequest, path: Path
    ) -> AsyncIterator[admin_pb2.RolloutProgress]:
        started = time.monotonic()

        def progress(phase: int, message: str, **fields: object) -> admin_pb2.RolloutProgress:
            return admin_pb2.RolloutProgress(
                phase=phase,  # type: ignore[arg-type]
                message=message,
                elapsed_s=time.monotonic() - started,
                **fields,  # type: ignore[arg-type]
            )

        old = self.service.state
        if old is None:
            raise Unavailable("router is starting: no bundle loaded yet")
        loop = asyncio.get_running_loop()
        try:
            manifest = await loop.run_in_executor(
                self.executor, lambda: Bundle.open(path, verify=False)
            )
        except FileNotFoundError as exc:
            raise BundleError(f"no bundle at {path}") from exc
        new_id = manifest.id
        if new_id == old.bundle.id:
            raise FailedPrecondition(f"bundle {new_id} is already the stable bundle")
        problem = incompatibility(old.bundle, manifest, search_only=request.force)
        if problem:
            raise _refused(new_id, old.bundle.id, problem)
        replicas = await self.replicas()
        shard_ids = {r.shard_id for r in replicas}
        if shard_ids != set(range(old.bundle.num_shards)):
            raise FailedPrecondition(
                f"the shard admin ports cover shards {sorted(shard_ids)}, the bundle has "
                f"{old.bundle.num_shards}"
            )
        infos = await asyncio.gather(*(self._describe(r) for r in replicas))
        self._check_updates(request.updates, old.bundle.id, infos)
        held_before = {
            r.target
            for r, info in zip(replicas, infos, strict=True)
            if any(b.bundle_id == new_id for b in info.bundles)
        }

        # 1. ROUTER_LOAD, before any replica is asked: the bundle's router files, verified,
        # its user tower loaded and warmed up (its output must be the items' dimension).
        loaded = time.monotonic()
        new = await self._load(old, path, new_id)
        yield progress(
            admin_pb2.PHASE_ROUTER_LOAD,
            f"router loaded {new_id} ({describe_users(new.bundle)}) in "
            f"{time.monotonic() - loaded:.2f}s",
        )
        self._target_id = new_id
        self._note(
            "rollout",
            bundle_id=new_id,
            holder=self.holder,
            replacing=old.bundle.id,
            force=request.force,
        )
        target = BundleRef(new_id, str(path))
        self.persist(target=target, phase="prepare")

        # 2. PREPARE everywhere, one progress message per replica as each finishes. The
        # rollback target (an older bundle still held) stays held unless a replica has no
        # room for the new bundle beside it: then it is released and those replicas retried.
        prepared: list[AdminReplica] = []
        failure: AnnfleetError | None = None
        pending = list(replicas)
        while pending:
            no_room: list[AdminReplica] = []
            calls = [self._prepare(r, path, new_id, old.bundle.num_shards) for r in pending]
            for done in asyncio.as_completed(calls):
                replica, error = await done
                if error is None:
                    prepared.append(replica)
                    outcome = "prepared"
                elif isinstance(error, ResourceExhausted) and self._room_to_make(new_id):
                    no_room.append(replica)
                    outcome = f"no room beside the rollback target: {error}"
                else:
                    failure = failure or error
                    outcome = f"failed: {error}"
                yield progress(
                    admin_pb2.PHASE_PREPARE,
                    outcome,
                    shard_id=replica.shard_id,
                    replica=replica.replica,
                    target=replica.target,
                )
            pending = []
            if no_room and failure is None:
                assert self.previous is not None
                dropped = self.previous.bundle.id
                self._cancel_release()
                await self.release_previous()
                yield progress(
                    admin_pb2.PHASE_PREPARE,
                    f"released the rollback target {dropped} to make room for {new_id} on "
                    f"{len(no_room)} replica(s); preparing them again (no rollback to "
                    f"{dropped} after this rollout)",
                )
                pending = no_room
        if failure is not None:
            await self._abort(new_id, prepared, held_before, str(failure))
            raise type(failure)(
                f"rollout of {new_id} aborted, {old.bundle.id} keeps serving: {failure}"
            )

        # 3. CARRY_UPDATES of the stable bundle, or not.
        if request.updates == admin_pb2.UPDATES_CARRY:
            try:
                carried = await self._carry(old.bundle.id, new_id, replicas)
            except AnnfleetError as exc:
                await self._abort(new_id, prepared, held_before, str(exc))
                raise FailedPrecondition(
                    f"rollout of {new_id} aborted, {old.bundle.id} keeps serving: {exc}"
                ) from exc
            for r, c in carried:
                missing = (
                    decode_ids(c.missing_ids, name="missing_ids")
                    if c.missing_ids
                    else np.empty(0, np.int64)
                )
                shown = ", ".join(str(int(i)) for i in missing[:SHOW_MISSING])
                yield progress(
                    admin_pb2.PHASE_CARRY_UPDATES,
                    f"{c.deleted} deletes carried ({c.deletes_skipped} ids not in {new_id}); "
                    f"{c.upserted_present} upserted ids are in {new_id}, {len(missing)} are not"
                    + (f" (re-embed and upsert them: {shown}" if len(missing) else "")
                    + (", ...)" if len(missing) > SHOW_MISSING else ")" if len(missing) else ""),
                    shard_id=r.shard_id,
                    replica=r.replica,
                    target=r.target,
                    missing_ids=[int(i) for i in missing],
                )
        else:
            yield progress(
                admin_pb2.PHASE_CARRY_UPDATES,
                "live updates of the old bundle dropped"
                if request.updates == admin_pb2.UPDATES_DROP
                else "no live updates to carry",
            )

        # Just before the flip (or the canary): the users served most recently, embedded.
        warm = await self._warm(old, new, request.canary_percent)
        if request.canary_percent > 0:  # a canary: stable untouched, no commit on shards
            self.service.canary = Canary(new, request.canary_percent)
            self._note("canary", bundle_id=new_id, percent=request.canary_percent)
            self.holder, self.started_at = "", 0.0
            self.persist()
            yield progress(
                admin_pb2.PHASE_FLIP,
                f"{request.canary_percent:g}% of users on {new_id} (canary), the rest on "
                f"{old.bundle.id}{warm}",
            )
            yield progress(
                admin_pb2.PHASE_DONE, f"canary {new_id} live", status=await self.status(False)
            )
            return

        # 4. FLIP: new requests get the new state; requests in flight keep the old one.
        if self.service.state is not old:
            await self._abort(new_id, prepared, held_before, "the router state changed")
            raise Aborted("the router's bundle changed during the rollout; aborted")
        older = self.previous  # the rollback target until now: released after the commit
        self._cancel_release()
        self.service.state = new
        self.previous = old
        grace = request.grace_s or self.config.release_grace_s
        self.previous_release_at = time.time() + grace
        self._note("flip", bundle_id=new_id, previous=old.bundle.id)
        self.persist(target=target, phase="commit")
        yield progress(admin_pb2.PHASE_FLIP, f"router serves {new_id} (was {old.bundle.id}){warm}")

        # 5. COMMIT on the shards (what a request that pins no bundle gets).
        failures = await self._on_all("Commit", new_id, replicas)
        self._target_id = ""
        if older is not None:
            await self._release_unused(older.bundle.id)
        self._schedule_release(grace)
        message = f"{new_id} serving; {old.bundle.id} released in {grace:g}s unless rolled back"
        if failures:
            message += "; commit failed on: " + "; ".join(failures)
        self.holder, self.started_at = "", 0.0  # done: the status below shows no rollout
        self.persist()
        yield progress(admin_pb2.PHASE_DONE, message, status=await self.status(describe=False))

    async def _prepare(
        self, replica: AdminReplica, path: Path, new_id: str, num_shards: int
    ) -> tuple[AdminReplica, AnnfleetError | None]:
        """Prepare ``path`` on one replica: (replica, None) or (replica, why it failed)."""
        try:
            await self._call(
                replica,
                lambda stub: stub.Prepare(
                    shard_pb2.PrepareRequest(bundle=str(path), expect_num_shards=num_shards),
                    metadata=metadata(self.token),
                    timeout=PREPARE_TIMEOUT_S,
                ),
            )
        except grpc.aio.AioRpcError as exc:
            return replica, _rpc_error(replica, f"Prepare {new_id}", exc)
        except AnnfleetError as exc:
            return replica, exc
        except Exception as exc:
            return replica, FailedPrecondition(f"{replica.target}: Prepare {new_id}: {exc!r}")
        return replica, None

    def _room_to_make(self, new_id: str) -> bool:
        """Whether releasing the rollback target would free a replica's memory for ``new_id``."""
        return self.previous is not None and self.previous.bundle.id != new_id

    async def _load_state(self, old: RouterState, path: Path, bundle_id: str) -> RouterState:
        """The router's state for bundle ``bundle_id`` at ``path`` (nothing is asked of a
        replica and nothing is released)."""
        loop = asyncio.get_running_loop()
        bundle = await loop.run_in_executor(self.executor, open_router_bundle, path)
        if bundle.id != bundle_id:
            raise BundleError(f"{path} holds bundle {bundle.id} now, not {bundle_id}")
        return await loop.run_in_executor(self.executor, with_bundle, old, bundle, self.config)

    async def _load(self, old: RouterState, path: Path, new_id: str) -> RouterState:
        """:meth:`_load_state` for a rollout: refused with FailedPrecondition when it cannot
        be loaded."""
        try:
            return await self._load_state(old, path, new_id)
        except Exception as exc:
            self._note("refused", bundle_id=new_id, reason=str(exc))
            log.warning("rollout of %s refused: %s", new_id, exc)
            raise _refused(new_id, old.bundle.id, f"the router cannot load it: {exc}") from exc

    async def _warm(self, old: RouterState, new: RouterState, canary_percent: float) -> str:
        """Cache ``new``'s embeddings of the users served most recently, just before the
        flip; what was done, as the end of the flip's progress message."""
        started = time.monotonic()
        try:
            warmed = await warm_embeddings(
                old, new, self.config.rollout_warm_users, self.executor, canary_percent
            )
        except Exception as exc:  # a cold cache is slower, not wrong: the rollout goes on
            log.warning("rollout of %s: user embeddings not warmed: %s", new.bundle.id, exc)
            return f"; user embeddings not warmed: {exc}"
        return (
            f"; {warmed} user embeddings of recently served users cached "
            f"({(time.monotonic() - started) * 1e3:.0f} ms)"
        )

    def _check_updates(
        self, policy: int, stable_id: str, infos: Sequence[shard_pb2.ShardInfo]
    ) -> None:
        updated = sum(
            b.upserted_items + b.deleted_items
            for info in infos
            for b in info.bundles
            if b.bundle_id == stable_id
        )
        if not updated or policy in (admin_pb2.UPDATES_DROP, admin_pb2.UPDATES_CARRY):
            return
        raise FailedPrecondition(
            f"bundle {stable_id} has {updated} live item updates (summed over replicas): say "
            "whether to carry them over or drop them (--updates carry|drop)"
        )

    async def _carry(
        self, old_id: str, new_id: str, replicas: Sequence[AdminReplica]
    ) -> list[tuple[AdminReplica, shard_pb2.CarryUpdatesResponse]]:
        """CarryUpdates old -> new on every replica; raises FailedPrecondition on a failure."""
        request = shard_pb2.CarryUpdatesRequest(from_bundle_id=old_id, to_bundle_id=new_id)
        outcomes = await asyncio.gather(
            *(
                self._call(
                    r,
                    lambda stub: stub.CarryUpdates(
                        request, metadata=metadata(self.token), timeout=PREPARE_TIMEOUT_S
                    ),
                )
                for r in replicas
            ),
            return_exceptions=True,
        )
        done = []
        for r, outcome in zip(replicas, outcomes, strict=True):
            if isinstance(outcome, grpc.aio.AioRpcError):
                raise _rpc_error(r, f"CarryUpdates {old_id} -> {new_id}", outcome)
            if isinstance(outcome, BaseException):
                raise FailedPrecondition(f"{r.target}: CarryUpdates: {outcome!r}")
            done.append((r, outcome))
        return done

    async def _abort(
        self, bundle_id: str, prepared: Sequence[AdminReplica], held_before: set[str], why: str
    ) -> None:
        self._note("aborted", bundle_id=bundle_id, reason=why)
        log.warning("rollout of %s aborted: %s", bundle_id, why)
        fresh = [r for r in prepared if r.target not in held_before]
        if fresh:
            await self._on_all("Release", bundle_id, fresh)

    # ------------------------------------------------------------------ rollback
    async def rollback(self) -> admin_pb2.RolloutStatus:
        """Flip back to the previous bundle while it is still held."""
        if self.holder:
            raise Aborted(f"a rollout is running (held by {self.holder}); roll back after it")
        if self.service.canary is not None:
            raise FailedPrecondition("a canary is live: abort it (--abort) before a rollback")
        previous, current = self.previous, self.service.state
        if previous is None or current is None:
            raise FailedPrecondition("nothing to roll back to (no previous bundle is held)")
        self._cancel_release()
        self.service.state = previous  # instant: new requests are on the old bundle now
        self.previous = current
        self._note("rollback", bundle_id=previous.bundle.id, from_bundle=current.bundle.id)
        log.info("rolled back from %s to %s", current.bundle.id, previous.bundle.id)
        self.persist()
        with self._change():
            await self._on_all("Commit", previous.bundle.id, await self.replicas())
        # The rolled-back bundle drains (requests in flight on it) and is then released.
        self._schedule_release(self.config.default_timeout_s + self.config.shard_timeout_s)
        self.persist()
        return await self.status(describe=False)

    # ------------------------------------------------------------------ canary
    async def promote(self, request: admin_pb2.PromoteRequest) -> admin_pb2.RolloutStatus:
        """The canary becomes the stable bundle for everyone; the old stable one is released
        after the grace period (rollback instant until then). Refused while the canary's
        measured recall@k is below the floor, or not measured enough, unless ``force``."""
        if self.holder:
            raise Aborted(f"a rollout is running (held by {self.holder})")
        floor = request.min_recall or self.config.recall_floor
        if not 0 <= floor <= 1:
            raise InvalidArgument(
                f"min_recall {request.min_recall}: must be in (0, 1], or 0 for router.recall_floor"
            )
        canary, old = self.service.canary, self.service.state
        if canary is None or old is None:
            raise FailedPrecondition("no canary is live: nothing to promote")
        canary_id = canary.state.bundle.id
        recall, samples = self.recall.recall(canary_id)
        k, needed = self.config.recall_k, self.config.recall_min_samples
        if not request.force and samples < needed:
            raise FailedPrecondition(
                f"canary {canary_id}: live recall@{k} not measured yet ({samples} of "
                f"router.recall_min_samples {needed} samples; router.recall_sample_rate "
                f"{self.config.recall_sample_rate:g}): wait for traffic, or promote with --force"
            )
        if not request.force and recall < floor:
            raise FailedPrecondition(
                f"canary {canary_id}: measured recall@{k} {recall:.4f} ({samples} samples) is "
                f"below the floor {floor:.4f}: not promoted (--force to promote anyway)"
            )
        self._note(
            "promote-check",
            bundle_id=canary_id,
            recall=recall,
            samples=samples,
            force=request.force,
        )
        with self._change():
            if self.previous is not None:
                self._cancel_release()
                await self.release_previous()
            self.service.state, self.service.canary = canary.state, None
            self.previous = old
            grace = self.config.release_grace_s
            self.previous_release_at = time.time() + grace
            self._note("promote", bundle_id=canary.state.bundle.id, previous=old.bundle.id)
            self.persist()
            await self._on_all("Commit", canary.state.bundle.id, await self.replicas())
        self._schedule_release(grace)
        self.persist()
        return await self.status(describe=False)

    async def abort(self) -> admin_pb2.RolloutStatus:
        """End the canary: every user back on the stable bundle; the canary's is released
        once requests in flight on it are done."""
        if self.holder:
            raise Aborted(f"a rollout is running (held by {self.holder})")
        canary = self.service.canary
        if canary is None:
            raise FailedPrecondition("no canary is live: nothing to abort")
        self.service.canary = None
        bundle_id = canary.state.bundle.id
        self._note("abort", bundle_id=bundle_id)
        self.persist()
        drain = self.config.default_timeout_s + self.config.shard_timeout_s

        async def release() -> None:
            await asyncio.sleep(drain)
            await self._release_unused(bundle_id)

        self._aborted = asyncio.get_running_loop().create_task(release())
        return await self.status(describe=False)

    # ------------------------------------------------------------------ following
    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """A section that changes what the router serves and then commits it on the
        replicas: a follow would read the replicas' old active bundle as a new one."""
        self._changing += 1
        try:
            yield
        finally:
            self._changing -= 1

    def _settled(self) -> bool:
        """Nothing of this router's own is moving: no rollout, canary or commit running."""
        return not (self.holder or self._changing or self.service.canary is not None)

    def start_following(self) -> None:
        """Follow other routers' rollouts (module doc), with the shards' admin ports."""
        interval = self.config.follow_interval_s
        if self._targets and self.token and interval > 0:
            self._following = asyncio.get_running_loop().create_task(self._follow_loop(interval))

    async def _follow_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.follow()
            except AnnfleetError as exc:  # replicas unreachable: asked again next time
                log.debug("not following the shards: %s", exc)

    def _forget_left(self, state: RouterState) -> None:
        """Drop the bundle followed from once its grace is over (its tower and tables)."""
        if self._left is state:
            self._left = None

    async def follow(self) -> str:
        """Flip to the bundle every shard replica has active, if this router serves another
        one and nothing of its own is moving; what was done ("" when nothing)."""
        current = self.service.state
        if current is None or not self._settled():
            return ""
        replicas = await self.replicas()
        infos = await asyncio.gather(*(self._describe(r) for r in replicas), return_exceptions=True)
        answered = [i for i in infos if isinstance(i, shard_pb2.ShardInfo) and i.bundle_id]
        actives = {(i.bundle_id, b.path) for i in answered for b in i.bundles if b.active}
        shards = {i.shard_id for i in answered}
        if len(actives) != 1 or len(shards) != current.bundle.num_shards:
            return ""  # replicas disagree (a rollout or restart under way) or are missing
        ((bundle_id, path),) = actives
        if bundle_id == current.bundle.id:
            return ""
        left = self._left
        if left is not None and left.bundle.id == bundle_id:
            new = left  # back to the bundle this router followed from: no load
        else:
            try:
                new = await self._load_state(current, Path(path), bundle_id)
            except Exception as exc:  # said once per bundle; tried again every interval
                if bundle_id != self._follow_failed:
                    self._note("follow-failed", bundle_id=bundle_id, reason=str(exc))
                    log.warning("cannot follow the shards to bundle %s: %s", bundle_id, exc)
                    FOLLOWS.labels("failed").inc()
                self._follow_failed = bundle_id
                return ""
        if self.service.state is not current or not self._settled():
            return ""  # this router's own rollout, rollback or promote began meanwhile
        self.service.state = new
        self._left = current
        loop = asyncio.get_running_loop()
        loop.call_later(self.config.release_grace_s, self._forget_left, current)
        self._follow_failed = ""
        FOLLOWS.labels("followed").inc()
        self._note("followed", bundle_id=bundle_id, previous=current.bundle.id)
        self.persist()
        message = f"followed the shards from {current.bundle.id} to {bundle_id} ({path})"
        log.info("%s", message)
        return message

    # ------------------------------------------------------------------ status
    async def status(self, describe: bool = True) -> admin_pb2.RolloutStatus:
        current = self.service.state
        reply = admin_pb2.RolloutStatus(
            stable_bundle_id=current.bundle.id if current else "",
            previous_bundle_id=self.previous.bundle.id if self.previous else "",
            previous_release_at=self.previous_release_at if self.previous else 0.0,
            rollout_holder=self.holder,
            rollout_started_at=self.started_at,
        )
        canary = self.service.canary
        if current is not None:
            reply.variants.append(
                admin_pb2.Variant(
                    name=STABLE,
                    bundle_id=current.bundle.id,
                    percent=100.0 - (canary.percent if canary else 0.0),
                )
            )
        if canary is not None:
            reply.variants.append(
                admin_pb2.Variant(
                    name=CANARY, bundle_id=canary.state.bundle.id, percent=canary.percent
                )
            )
        reply.recall.extend(self.recall.gauges())
        if describe and self._targets:
            try:
                replicas = await self.replicas()
            except AnnfleetError as exc:
                for target in self._targets:
                    reply.replicas.append(admin_pb2.ReplicaBundles(target=target, error=str(exc)))
                return reply
            infos = await asyncio.gather(
                *(self._describe(r) for r in replicas), return_exceptions=True
            )
            for r, info in zip(replicas, infos, strict=True):
                entry = admin_pb2.ReplicaBundles(
                    shard_id=r.shard_id, replica=r.replica, target=r.target
                )
                if isinstance(info, BaseException):
                    entry.error = str(info)
                else:
                    entry.active_bundle_id = info.bundle_id
                    entry.held_bundle_ids.extend(b.bundle_id for b in info.bundles)
                reply.replicas.append(entry)
        return reply

    async def close(self) -> None:
        self._cancel_release()
        if self._following is not None:
            self._following.cancel()
        await self.recall.close()
        self.executor.shutdown(wait=False)
        for r in self._replicas or []:
            with contextlib.suppress(Exception):
                await r.channel.close(None)
