"""A shard's replicas: health watch, load balancing, retry and hedging inside one deadline.

Each replica has its own gRPC channel. gRPC's own machinery does what it can: keepalive
pings find a hung or vanished process (a SIGSTOPped replica stops answering pings), the
channel reconnects with capped backoff, and ``grpc.health.v1.Health/Watch`` (a stream, one per
replica, re-opened with ``wait_for_ready`` so it waits for the channel's reconnect) pushes
SERVING / NOT_SERVING. What gRPC's C core does not do (hedging is not implemented there, and
its retry policy retries on the same channel, not on another shard replica) is done here, per
shard call:

- **balance**: power of two choices over the replicas that are SERVING and not ejected,
  each scored by (outstanding calls + 1) x the larger of its peak-EWMA latency (Finagle's
  "P2C + peak EWMA") and the age of its oldest unanswered call, so a slow replica gets less
  traffic and a hung one none a few milliseconds after it stops answering;
- **retry**: UNAVAILABLE, RESOURCE_EXHAUSTED, FAILED_PRECONDITION (another bundle held),
  CANCELLED by the replica (a server that stops cancels every call in flight; the router's
  own cancellations, a lost hedge or a passed deadline, end an attempt's task instead)
  or an attempt cut at ``shard_timeout_s`` is retried at once on another replica, inside
  the request's deadline, at most ``shard_attempts`` attempts in all; a replica that failed
  so is ejected for a moment (outlier ejection);
- **hedge**: when the first attempt has not answered after the shard's running latency
  quantile (``hedge_quantile`` of recent attempts, clamped to ``hedge_min_delay_s`` ..
  ``hedge_max_delay_s``), a second replica is asked too and the first answer wins; the
  other attempt is cancelled. Hedges spend tokens of a bucket that earns ``hedge_budget``
  per call (at most ``HEDGE_BURST`` saved), so at most that share of calls is hedged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from annfleet.arrays import GRPC_OPTIONS
from annfleet.config import RouterConfig
from annfleet.metrics import HEDGES, REPLICA_ATTEMPTS, REPLICA_SERVING
from annfleet.recent import RecentQuantile
from annfleet.router.streams import SearchStreams
from annfleet.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger(__name__)

INDEX_SHARD = shard_pb2.DESCRIPTOR.services_by_name["IndexShard"].full_name

CHANNEL_OPTIONS = [
    *GRPC_OPTIONS,
    # A replica that stops answering pings (hung, SIGSTOPped, host gone) is declared dead in
    # ~2 s; its Watch stream then fails and it leaves rotation even with no call in flight.
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted replica is reconnected within ~1 s (default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A replica addressed by DNS name (a Kubernetes pod name) that comes back on a new
    # address is re-resolved within ~1 s (gRPC's default allows one resolution per 30 s).
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
]

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,  # by the replica: its server stopped with the call in flight
    }
)
HEDGE_BURST = 10.0  # hedge tokens a shard can save up
HEDGE_EVERY = 32  # new attempt latencies between two recomputations of the hedge delay
EWMA_DECAY_S = 2.0  # peak-EWMA time constant
EJECT_S = 1.0  # a replica that failed a call sits out this long (unless none is left)
WATCH_PAUSE_S = 0.1  # between a broken health stream and the next (the channel backs off)
COST_FLOOR_S = 1e-4


class ShardFailure(Exception):
    """No replica of a shard answered. ``expired``: because the request's deadline passed."""

    def __init__(self, code: str, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.expired = expired


class PeakEwma:
    """Latency estimate that jumps up to a slow sample at once and decays back over time."""

    def __init__(self, decay_s: float = EWMA_DECAY_S) -> None:
        self.decay_s = decay_s
        self.value: float | None = None
        self.stamp = 0.0

    def observe(self, seconds: float, now: float) -> None:
        if self.value is None or seconds > self.value:
            self.value = seconds
        else:
            w = math.exp(-(now - self.stamp) / self.decay_s)
            self.value = self.value * w + seconds * (1.0 - w)
        self.stamp = now

    def get(self, now: float) -> float | None:
        """The estimate decayed towards 0 since the last sample (an idle replica is retried)."""
        if self.value is None:
            return None
        return self.value * math.exp(-(now - self.stamp) / self.decay_s)


class Replica:
    """One process serving a shard: its channel, health, outstanding calls and latency."""

    def __init__(
        self,
        shard_id: int,
        index: int,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        transport: str = "unary",
    ) -> None:
        self.shard_id = shard_id
        self.index = index
        self.target = target
        self.channel = (
            grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        )
        self.stub = shard_pb2_grpc.IndexShardStub(self.channel)
        # router.shard_transport: one unary call per search, or one stream for them all
        self.streams = SearchStreams(self.channel, target) if transport == "stream" else None
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.status = "UNKNOWN"  # SERVING, NOT_SERVING, DOWN (no stream) or UNKNOWN (not yet)
        self.in_flight: list[float] = []  # start times of its calls in flight, oldest first
        self.answered = 0  # searches this replica answered for the router
        self.latency = PeakEwma()
        self.ejected_until = 0.0
        self.labels = (str(shard_id), str(index))
        self._attempts: dict[str, Any] = {}  # outcome -> its labelled counter, looked up once
        self._watch: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Replica(shard {self.shard_id} #{self.index} {self.target} {self.status})"

    def count(self, outcome: str) -> None:
        """One attempt more with this outcome (annfleet_router_replica_attempts_total)."""
        counter = self._attempts.get(outcome)
        if counter is None:
            counter = self._attempts[outcome] = REPLICA_ATTEMPTS.labels(*self.labels, outcome)
        counter.inc()

    def start_watch(self) -> None:
        self._watch = asyncio.create_task(self._watch_health())

    @property
    def outstanding(self) -> int:
        return len(self.in_flight)

    def usable(self, now: float) -> bool:
        return self.status == "SERVING" and now >= self.ejected_until

    def eject(self, now: float, why: str) -> None:
        if now >= self.ejected_until:
            log.info(
                "shard %d replica %s sits out %.1fs: %s", self.shard_id, self.target, EJECT_S, why
            )
        self.ejected_until = now + EJECT_S

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        log.info("shard %d replica %s: %s -> %s", self.shard_id, self.target, self.status, status)
        if status == "SERVING":
            self.latency = PeakEwma()  # back in rotation with a clean slate
            self.ejected_until = 0.0
        self.status = status
        REPLICA_SERVING.labels(*self.labels).set(1.0 if status == "SERVING" else 0.0)

    async def _watch_health(self) -> None:
        """Follow the replica's health stream for as long as the router runs."""
        request = health_pb2.HealthCheckRequest(service=INDEX_SHARD)
        while True:
            try:
                async for reply in self.health.Watch(request, wait_for_ready=True):
                    self._set_status(
                        health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    )
                self._set_status("DOWN")  # the server ended the stream (shutting down)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._set_status("DOWN")
                log.debug("health watch of %s broke: %s", self.target, exc.code().name)
            await asyncio.sleep(WATCH_PAUSE_S)

    def search(
        self, request: shard_pb2.ShardSearchRequest, timeout: float
    ) -> Awaitable[shard_pb2.ShardSearchResponse]:
        """One search on this replica (raises grpc.aio.AioRpcError), by the configured
        transport."""
        if self.streams is not None:
            return self.streams.search(request, timeout)
        return self.stub.Search(request, timeout=timeout)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self.streams is not None:
            await self.streams.close()
        await self.channel.close(None)


class ReplicaGroup:
    """The replicas of one shard, called as one: ``search`` balances, retries and hedges."""

    def __init__(
        self,
        shard_id: int,
        targets: Sequence[str],
        config: RouterConfig,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not targets:
            raise ValueError(f"shard {shard_id} has no replica address")
        self.shard_id = shard_id
        self.replicas = [
            Replica(shard_id, i, t, credentials, config.shard_transport)
            for i, t in enumerate(targets)
        ]
        self.config = config
        self.tokens = HEDGE_BURST
        # The running hedge_quantile of recent attempt latencies (hedge_max_delay_s until
        # annfleet.recent.MIN_SAMPLES are in).
        self._latencies = RecentQuantile(
            config.hedge_quantile,
            config.hedge_min_delay_s,
            config.hedge_max_delay_s,
            every=HEDGE_EVERY,
        )

    @property
    def targets(self) -> list[str]:
        return [r.target for r in self.replicas]

    def start(self) -> None:
        for replica in self.replicas:
            replica.start_watch()

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas))

    # ------------------------------------------------------------------ choice
    def pick(self, exclude: Sequence[Replica] = (), *, fallback: bool = True) -> Replica | None:
        """Power of two choices among usable replicas not in ``exclude``.

        With ``fallback``, when none is usable, a replica whose health is unknown, else any
        (a call to a dead one fails at once, and the caller learns the shard is down).
        """
        now = time.monotonic()
        candidates = [r for r in self.replicas if r not in exclude]
        pool = [r for r in candidates if r.usable(now)]
        if not pool and fallback:
            pool = [r for r in candidates if r.status in ("SERVING", "UNKNOWN")] or candidates
        if not pool:
            return None
        if len(pool) > 2:
            pool = random.sample(pool, 2)
        known = [c for r in self.replicas if (c := r.latency.get(now)) is not None]
        typical = float(np.mean(known)) if known else COST_FLOOR_S

        def load(r: Replica) -> tuple[float, float]:
            latency = r.latency.get(now)
            cost = max(typical if latency is None else latency, COST_FLOOR_S)
            if r.in_flight:  # a call that has waited this long says more than past latency
                cost = max(cost, now - r.in_flight[0])
            return (r.outstanding + 1) * cost, random.random()

        return min(pool, key=load)

    def hedge_delay(self) -> float:
        """Seconds after which an unanswered first attempt is hedged."""
        return self._latencies.value()

    def _record(self, seconds: float) -> None:
        self._latencies.add(seconds)

    # ------------------------------------------------------------------ calls
    async def _attempt(
        self,
        replica: Replica,
        request: shard_pb2.ShardSearchRequest,
        deadline: float,
        attempt_cap: float,
    ) -> shard_pb2.ShardSearchResponse:
        started = time.monotonic()
        timeout = min(deadline - started, attempt_cap)
        if timeout <= 0:
            raise ShardFailure("DEADLINE_EXCEEDED", "deadline passed before the call", True)
        replica.in_flight.append(started)
        try:
            response = await replica.search(request, timeout)
        except grpc.aio.AioRpcError as exc:
            now = time.monotonic()
            code = exc.code()
            replica.count(code.name)
            expired = code == grpc.StatusCode.DEADLINE_EXCEEDED and now >= deadline
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and not expired:
                replica.latency.observe(now - started, now)
                replica.eject(now, f"no answer within shard_timeout_s {attempt_cap}s")
            elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                replica.eject(now, f"{code.name}: {exc.details()}")
            raise ShardFailure(
                code.name, f"{code.name} from {replica.target}: {exc.details()}", expired
            ) from exc
        finally:
            replica.in_flight.remove(started)
        now = time.monotonic()
        replica.latency.observe(now - started, now)
        replica.answered += 1
        self._record(now - started)
        replica.count("OK")
        return response

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, ShardFailure) or exc.expired:
            return False
        return exc.code in {c.name for c in RETRYABLE} or exc.code == "DEADLINE_EXCEEDED"

    async def search(
        self, request: shard_pb2.ShardSearchRequest, deadline: float, attempt_cap: float
    ) -> shard_pb2.ShardSearchResponse:
        """One shard call by ``deadline`` (``time.monotonic()``), each attempt at most
        ``attempt_cap`` seconds; raises ShardFailure when no replica answered."""
        if len(self.replicas) == 1:  # nothing to balance, hedge or retry on
            return await self._only(self.replicas[0], request, deadline, attempt_cap)
        config = self.config
        self.tokens = min(HEDGE_BURST, self.tokens + config.hedge_budget)
        attempts: dict[asyncio.Task[shard_pb2.ShardSearchResponse], tuple[Replica, float]] = {}
        tried: list[Replica] = []
        failure: ShardFailure | None = None

        def launch(replica: Replica) -> None:
            task = asyncio.ensure_future(self._attempt(replica, request, deadline, attempt_cap))
            attempts[task] = (replica, time.monotonic())
            tried.append(replica)

        first = self.pick()
        assert first is not None  # a group has at least one replica and pick falls back
        launch(first)
        hedge_at = (
            time.monotonic() + self.hedge_delay()
            if config.hedge_quantile > 0 and len(self.replicas) > 1
            else math.inf
        )
        try:
            while attempts:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline, hedge_at) - now
                done, _ = await asyncio.wait(
                    attempts, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if time.monotonic() >= hedge_at:
                        hedge_at = math.inf  # one hedge per call, if a token allows it
                        self._hedge(tried, launch)
                    continue
                for task in done:
                    attempts.pop(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    if not isinstance(exc, ShardFailure):
                        raise exc
                    failure = exc
                    if self._retryable(exc) and len(tried) < config.shard_attempts:
                        retry = self.pick(tried, fallback=False)
                        if retry is not None and time.monotonic() < deadline:
                            launch(retry)
            if time.monotonic() >= deadline or failure is None:
                raise ShardFailure(
                    "DEADLINE_EXCEEDED",
                    f"no replica of shard {self.shard_id} answered before the deadline",
                    expired=True,
                )
            raise failure
        finally:
            now = time.monotonic()
            for task, (replica, started) in attempts.items():
                if task.done():  # finished beside the winner
                    if not task.cancelled():
                        task.exception()
                    continue
                task.cancel()  # lost a hedge, or the deadline passed
                replica.latency.observe(now - started, now)  # it took at least this long
                replica.count("CANCELLED")

    async def _only(
        self,
        replica: Replica,
        request: shard_pb2.ShardSearchRequest,
        deadline: float,
        attempt_cap: float,
    ) -> shard_pb2.ShardSearchResponse:
        """The one attempt of a shard with one replica, awaited in the caller's task (no
        attempt task, no wait loop: the call's own timeout is the deadline or the cap)."""
        started = time.monotonic()
        try:
            return await self._attempt(replica, request, deadline, attempt_cap)
        except ShardFailure as exc:
            if exc.code == "DEADLINE_EXCEEDED" and deadline - started <= attempt_cap:
                raise ShardFailure(  # the request's deadline, not the cap, cut it
                    "DEADLINE_EXCEEDED",
                    f"no replica of shard {self.shard_id} answered before the deadline",
                    expired=True,
                ) from exc
            raise
        except asyncio.CancelledError:
            now = time.monotonic()
            replica.latency.observe(now - started, now)  # it took at least this long
            replica.count("CANCELLED")
            raise

    def _hedge(self, tried: list[Replica], launch: Callable[[Replica], None]) -> None:
        if self.tokens < 1.0:
            HEDGES.labels(str(self.shard_id), "no_budget").inc()
            return
        replica = self.pick(tried, fallback=False)
        if replica is None:
            HEDGES.labels(str(self.shard_id), "no_replica").inc()
            return
        self.tokens -= 1.0
        HEDGES.labels(str(self.shard_id), "sent").inc()
        launch(replica)
