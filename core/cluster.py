"""A local cluster: one process per shard plus a router, started, watched and stopped together.

``annfleet up`` runs one in the foreground; tests and benchmarks use :class:`LocalCluster`
as a context manager. Children are ``python -m annfleet.cli serve-shard|serve-router``
processes whose output goes to log files; readiness is the gRPC health check. With
``state.start_redis`` a ``redis-server`` child (readiness: PING) comes first and goes last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from annfleet.auth import default_token_path, ensure_token_file, read_token
from annfleet.bundle import Bundle
from annfleet.client.channels import check_target
from annfleet.config import (
    ClusterConfig,
    format_shard_map,
    host_port,
    redis_loopback,
    replica_port,
)
from annfleet.errors import ClusterError, ConfigError
from annfleet.rollout_state import BundleRef, RolloutState, write_state
from annfleet.rollout_state import state_file as rollout_state_file
from annfleet.serving import channel_credentials

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
MAX_RESTARTS_PER_MINUTE = 5  # immediate restarts; beyond them a child waits (backoff)
CRASH_BACKOFF_S = 10.0  # the first wait of a crash-looping child, doubled per death ...
CRASH_BACKOFF_MAX_S = 300.0  # ... up to this (as Kubernetes' CrashLoopBackOff)
CRASH_RESET_S = 60.0  # a child that ran this long before it died starts afresh
REDIS_GRACE_S = 10.0  # a stopping redis-server fsyncs its append-only file
BLOCKED_FILE = "blocked-items.npy"  # in the data dir: the router's blocked items (memory state)
# Runs a program bound to its parent's life (Linux): argv = parent pid, program, its
# arguments; 1 = PR_SET_PDEATHSIG, which survives the exec.
EXEC_BOUND = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
if os.getppid() != int(sys.argv[1]):
    sys.exit("the supervisor is gone before its redis-server started")
os.execv(sys.argv[2], sys.argv[2:])
"""


_deferring = 0  # depth of interrupts_deferred() sections running
_deferred = False  # an interrupt arrived inside one


def interrupt(signum: int, frame: object) -> None:
    """A handler for SIGINT / SIGTERM while a cluster starts: KeyboardInterrupt, held until
    the end of an :func:`interrupts_deferred` section if one is running."""
    global _deferred
    if _deferring:
        _deferred = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A section :func:`interrupt` does not cut: an interrupt that arrives in it is raised at
    its end. Starting a child is one: a KeyboardInterrupt inside ``Popen`` (after the fork)
    or before its result is kept would leave a process running that nothing stops."""
    global _deferring, _deferred
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        pending = _deferred and not _deferring
        if pending:
            _deferred = False
    if pending:
        raise KeyboardInterrupt


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PICKED_SPAN = 16384  # ports below the ephemeral range that free_port picks from
_picked: set[int] = set()  # handed out by this process: never twice
_random = random.Random()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections' local ports."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A port that a child server can listen on a moment later; with ``count``, the first
    of that many consecutive ones (a config's ``base_port`` for several shards).

    Picked at random *below* the ephemeral range and checked free: a port-0 bind or an
    outgoing connection (gRPC clients make many) never lands there, so nothing takes it
    between the pick and the child's bind. (A port-0 pick is such a port itself: with the
    servers' SO_REUSEPORT off, losing that race killed the child with "Address already in
    use".) Never the same port twice in one process; a port-0 pick when none below is free.
    """
    low, _ = ephemeral_range()
    first = max(1024, low - PICKED_SPAN)
    for _ in range(256 if low - count >= first else 0):
        port = _random.randrange(first, low - count + 1)
        block = range(port, port + count)
        if _picked.isdisjoint(block) and all(port_free(host, p) for p in block):
            _picked.update(block)
            return port
    if count > 1:
        raise ClusterError(f"no {count} consecutive free ports in [{first}, {low}) on {host}")
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def health_status(
    target: str,
    timeout: float = 1.0,
    *,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> str:
    """ "SERVING", "NOT_SERVING", ... or "DOWN" when the process does not answer; the
    client's InvalidArgument for a target that is not HOST:PORT (``check_target``)."""
    check_target(target)
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target, options=options)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "DOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@dataclass
class Child:
    name: str
    args: list[str]
    target: str
    metrics_port: int | None
    log_path: Path
    admin_target: str = ""  # the ShardAdmin port, when served
    credentials: grpc.ChannelCredentials | None = None  # TLS for health checks
    shard: int | None = None  # shard id of a shard process
    replica: int | None = None  # its replica number
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of its deaths
    crash_level: int = 0  # deaths in its current crash loop beyond the immediate restarts
    restart_at: float | None = None  # a death seen: when it may start again (monotonic)
    started_at: float = 0.0  # monotonic
    log_start: int = 0  # where this run's output begins in log_path (it is appended to)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "annfleet.cli", *self.args]

    def health(self, timeout: float) -> str:
        """ "SERVING" when it answers its health check, else what it said or "DOWN"."""
        return health_status(self.target, timeout, credentials=self.credentials)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as out, interrupts_deferred():
            self.log_start = out.tell()
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else -1

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the current process wrote (not those of earlier runs)."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self.log_start)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise ClusterError(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self.health(0.5) == "SERVING":
                return
            time.sleep(0.1)
        raise ClusterError(
            f"{self.name} not SERVING after {timeout:.0f}s; last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def stop(self, grace: float) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.exited()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, grace + 5)
            self.process.kill()
            return self.process.wait()


def redis_ping(target: str, timeout: float = 1.0) -> bool:
    """True when a Redis server at ``host:port`` answers PING (not while it loads its data)."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except (OSError, ValueError):
        return False


class RedisChild(Child):
    """The cluster's own ``redis-server`` (``state.start_redis``): the live state store."""

    def __init__(self, binary: str, host: str, port: int, data_dir: Path, log_path: Path) -> None:
        super().__init__("redis", [], host_port(host, port), None, log_path)
        self.binary = binary
        self.data_dir = data_dir
        self.args = [
            "--bind", host,
            "--port", str(port),
            "--dir", str(data_dir),
            # Every write goes to the append-only file (fsync each second); no RDB snapshots.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "",  # stdout: the child's log file
        ]  # fmt: skip

    def command(self) -> list[str]:
        """redis-server, on Linux bound to this process's life: a stub sets
        ``PR_SET_PDEATHSIG`` (SIGTERM: redis syncs its append-only file and exits) and execs
        it, the setting surviving the exec, so a supervisor killed with SIGKILL leaves no
        redis behind. (It fires when the *thread* that started the child ends: the
        supervisor's main thread, which starts and restarts every child.)"""
        if not sys.platform.startswith("linux"):
            return [self.binary, *self.args]
        return [sys.executable, "-c", EXEC_BOUND, str(os.getpid()), self.binary, *self.args]

    def health(self, timeout: float) -> str:
        return "SERVING" if redis_ping(self.target, timeout) else "DOWN"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        super().start()


def redis_child(config: ClusterConfig, log_dir: Path) -> RedisChild:
    """The redis-server child ``state.start_redis`` asks for; ConfigError naming the key
    when the binary cannot be found."""
    state = config.state
    binary = shutil.which(state.redis_server)
    if binary is None:
        raise ConfigError(
            f"state.start_redis: the Redis server binary {state.redis_server!r} "
            "(state.redis_server) is not installed or not on PATH; install it (Debian: "
            "apt-get install redis-server) or set state.start_redis: false and point "
            "state.url at a Redis you run"
        )
    address = redis_loopback(state.url)
    if address is None:  # validate() refuses it first; kept for configs built in code
        raise ConfigError(f"state.url must be a loopback redis:// url, got {state.url!r}")
    host, port = address
    return RedisChild(binary, host, port, config.data_path() / "redis", log_dir / "redis.log")


class LocalCluster:
    """Shard servers (``shards.replicas`` processes per shard) + router for one bundle.

    With ``fixed_ports`` the ports come from the config (``annfleet up``): replica r of shard
    i listens on ``base_port + i * replicas + r`` (metrics likewise from
    ``metrics_base_port``); otherwise free ports are picked (tests, benchmarks) and metrics
    endpoints are off unless ``metrics`` asks for them on free ports. With ``state_file``
    the cluster's description (every process, its pid) is written there at start and again
    whenever a child is restarted. With ``state.start_redis`` a redis-server child listens on
    ``state.url`` (always that port) and persists into ``<data_dir>/redis/``; the router
    finds it through the config file, so that needs ``config_path``.
    """

    def __init__(
        self,
        bundle_path: Path | str,
        config: ClusterConfig | None = None,
        *,
        fixed_ports: bool = False,
        metrics: bool = False,
        log_dir: Path | None = None,
        config_path: Path | None = None,
        rollout_state: Path | None = None,
        state_file: Path | None = None,
        blocked_file: Path | None = None,
    ) -> None:
        self.config = config or ClusterConfig()
        self.bundle = Bundle.open(bundle_path, verify=False)
        self.log_dir = log_dir or self.config.data_path() / "logs"
        # Where rollouts persist their state (every child reads it at start): the data dir
        # for `annfleet up`; tests and benchmarks name one or go without.
        self.rollout_state = rollout_state or (
            rollout_state_file(self.config.data_path()) if fixed_ports else None
        )
        self.state_file = state_file
        # Where the router's in-memory state store keeps the blocked items: likewise.
        self.blocked_file = blocked_file or (
            self.config.data_path() / BLOCKED_FILE if fixed_ports else None
        )
        shards_cfg, router_cfg = self.config.shards, self.config.router
        if self.config.state.start_redis and not config_path:
            raise ConfigError(
                "state.start_redis: the router reads state.url from the config file, "
                "so pass config_path"
            )
        self.redis = (
            redis_child(self.config, self.log_dir) if self.config.state.start_redis else None
        )
        common = ["--bundle", str(self.bundle.path), "--supervisor-pid", str(os.getpid())]
        if config_path:
            common += ["--config", str(config_path)]
        if self.rollout_state is not None:
            common += ["--rollout-state", str(self.rollout_state)]
        admin_args: list[str] = []
        self.admin_token_source = ""
        if shards_cfg.admin_base_port >= 0:
            admin_args, self.admin_token_source = self._admin_token_args()
        replicas = shards_cfg.replicas
        self.replicas: list[list[Child]] = []
        for i in range(self.bundle.num_shards):
            group = []
            for r in range(replicas):
                admin = -1 if shards_cfg.admin_base_port < 0 else 0
                if fixed_ports:
                    port = replica_port(shards_cfg.base_port, i, r, replicas)
                    metrics_port = replica_port(shards_cfg.metrics_base_port, i, r, replicas)
                    admin = replica_port(shards_cfg.admin_base_port, i, r, replicas)
                else:
                    port, metrics_port = 0, 0 if metrics else -1
                # 0 (a free port) is picked here, so the router and the tools know it.
                port = port or free_port(shards_cfg.host)
                metrics_port = metrics_port or free_port(shards_cfg.host)
                admin = admin or free_port(shards_cfg.host)
                name = f"shard-{i:02d}" if replicas == 1 else f"shard-{i:02d}-r{r}"
                group.append(
                    Child(
                        name,
                        [
                            "serve-shard",
                            *common,
                            "--shard",
                            str(i),
                            "--replica",
                            str(r),
                            "--host",
                            shards_cfg.host,
                            "--port",
                            str(port),
                            "--metrics-port",
                            str(metrics_port),
                            "--admin-port",
                            str(admin),
                            *(admin_args if admin >= 0 else []),
                        ],
                        host_port(shards_cfg.host, port),
                        metrics_port if metrics_port >= 0 else None,
                        self.log_dir / f"{name}.log",
                        host_port(shards_cfg.host, admin) if admin >= 0 else "",
                        shard=i,
                        replica=r,
                    )
                )
            self.replicas.append(group)
        # As for the shards: 0 (a free port) is picked here, -1 (off) stays off.
        router_port = (router_cfg.port if fixed_ports else 0) or free_port(router_cfg.host)
        if fixed_ports:
            router_metrics = router_cfg.metrics_port or free_port(router_cfg.host)
        else:
            router_metrics = free_port(router_cfg.host) if metrics else -1
        router_admin: list[str] = []
        self.router_admin_target = ""
        if router_cfg.admin_port >= 0 and self.admin_token_source:
            port = (router_cfg.admin_port if fixed_ports else 0) or free_port(router_cfg.host)
            self.router_admin_target = host_port(router_cfg.host, port)
            router_admin = ["--admin-port", str(port), *admin_args]
            router_admin += ["--shard-admins", ",".join(s.admin_target for s in self.shards)]
        self.router = Child(
            "router",
            [
                "serve-router",
                *common,
                "--shards",
                format_shard_map([[c.target for c in group] for group in self.replicas]),
                "--host",
                router_cfg.host,
                "--port",
                str(router_port),
                "--metrics-port",
                str(router_metrics),
                *(router_admin or ["--admin-port", "-1"]),
                *(["--blocked-file", str(self.blocked_file)] if self.blocked_file else []),
            ],
            host_port(router_cfg.host, router_port),
            router_metrics if router_metrics >= 0 else None,
            self.log_dir / "router.log",
            self.router_admin_target,
        )
        if self.config.tls.enabled and not config_path:
            raise ConfigError(
                "tls is enabled: the processes read it from the config file, so pass config_path"
            )
        self.credentials = channel_credentials(self.config.tls)  # None = plaintext
        for child in self.children:
            child.credentials = self.credentials

    def _admin_token_args(self) -> tuple[list[str], str]:
        """How the shard processes get the admin token, and where it is (for humans).

        The configured file, else the configured environment variable (inherited), else a
        token generated once in the data dir (what `annfleet items`/`rollout` find there).
        """
        admin = self.config.admin
        if admin.token_file:
            return ["--admin-token-file", admin.token_file], admin.token_file
        if read_token(admin) is not None:
            return [], f"${admin.token_env}"
        path = ensure_token_file(default_token_path(self.config))
        return ["--admin-token-file", str(path)], str(path)

    @property
    def shards(self) -> list[Child]:
        """Every shard process, shard by shard, replica by replica."""
        return [c for group in self.replicas for c in group]

    @property
    def children(self) -> list[Child]:
        """Every process, in start order: redis (when started here), the shards, the router."""
        return [*([self.redis] if self.redis else []), *self.shards, self.router]

    @property
    def router_target(self) -> str:
        return self.router.target

    @property
    def shard_targets(self) -> list[str]:
        """One address per shard (its first replica), for clients that call shards directly."""
        return [group[0].target for group in self.replicas]

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children}

    def busy_ports(self) -> list[str]:
        """The ports this cluster's processes would listen on that are taken now, each as
        "HOST:PORT (child what)"; checked before a fixed-port start, where a child's health
        check could otherwise be answered by whatever already listens there."""
        busy = []
        for child in self.children:
            host = child.target.rsplit(":", 1)[0].strip("[]")
            ports = [("", child.target), ("metrics ", host_port(host, child.metrics_port or 0))]
            ports.append(("admin ", child.admin_target or host_port(host, 0)))
            for what, address in ports:
                port = int(address.rsplit(":", 1)[1])
                if port > 0 and not port_free(host, port):
                    busy.append(f"{host_port(host, port)} ({child.name} {what}port)")
        return busy

    def start(self, timeout: float = READY_TIMEOUT_S) -> LocalCluster:
        if self.rollout_state is not None:  # a fresh cluster starts on its bundle
            write_state(
                self.rollout_state,
                RolloutState(stable=BundleRef(self.bundle.id, str(self.bundle.path))),
            )
        try:
            if self.redis is not None:  # the router pings its state store at start
                self.redis.start()
                self.redis.wait_ready(timeout)
            for shard in self.shards:
                shard.start()
            for shard in self.shards:
                shard.wait_ready(timeout)
            self.router.start()
            self.router.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self) -> None:
        """Router first (it stops taking requests), then the shards, then redis (SIGTERM: it
        flushes its append-only file and exits); SIGTERM, then kill."""
        self.router.stop(self.config.router.grace_s)
        for shard in self.shards:
            shard.stop(self.config.shards.grace_s)
        if self.redis is not None:
            self.redis.stop(REDIS_GRACE_S)

    def restart_dead(self) -> list[str]:
        """Restart children that exited; return a line per restart or postponed restart.

        A child is restarted at once up to ``MAX_RESTARTS_PER_MINUTE`` deaths within a
        minute; beyond that it crash-loops (e.g. its bundle files are gone) and waits
        ``CRASH_BACKOFF_S``, doubled per further death up to ``CRASH_BACKOFF_MAX_S``, while
        the others keep serving: a broken shard costs its coverage (or, with replicas,
        nothing), not the cluster. A child that ran ``CRASH_RESET_S`` before it died starts
        afresh."""
        notes: list[str] = []
        for child in self.children:
            code = child.exited()
            if code is None:
                continue
            now = time.monotonic()
            restart_at = child.restart_at
            if restart_at is None:  # a death not seen before
                restart_at = child.restart_at = self._schedule(child, code, now, notes)
            if now < restart_at:
                continue
            child.restart_at = None
            old_pid = child.pid
            child.start()
            notes.append(
                f"{child.name} (pid {old_pid}) exited with code {code}; "
                f"restarted as pid {child.pid}"
            )
        if notes:
            self._write_state()  # `annfleet status` shows the new pids
        return notes

    @staticmethod
    def _schedule(child: Child, code: int, now: float, notes: list[str]) -> float:
        """Count a death; return when the child may start again (a note when it must wait)."""
        if now - child.started_at >= CRASH_RESET_S:
            child.crash_level = 0
        child.restarts = [t for t in child.restarts if now - t < 60] + [now]
        if child.crash_level or len(child.restarts) > MAX_RESTARTS_PER_MINUTE:
            child.crash_level += 1
        delay = (
            min(CRASH_BACKOFF_MAX_S, CRASH_BACKOFF_S * 2 ** (child.crash_level - 1))
            if child.crash_level
            else 0.0
        )
        if delay:
            notes.append(
                f"{child.name} (pid {child.pid}) exited with code {code}, "
                f"{len(child.restarts)} deaths within a minute: restarting it in {delay:g}s "
                f"(the others keep serving). Last lines of {child.log_path}:\n"
                f"{child.log_tail()}"
            )
        return now + delay

    def describe(self) -> dict[str, object]:
        return {
            "supervisor_pid": os.getpid(),  # `annfleet up` (or the program that started it)
            "bundle": str(self.bundle.path),
            "bundle_id": self.bundle.id,
            "replicas": self.config.shards.replicas,
            "admin_token": self.admin_token_source,
            "children": [
                {
                    "name": c.name,
                    "role": self._role(c),
                    "shard": c.shard,
                    "replica": c.replica,
                    "target": c.target,
                    "pid": c.pid,
                    "log": str(c.log_path),
                    "metrics": f"http://{c.target.rsplit(':', 1)[0]}:{c.metrics_port}/metrics"
                    if c.metrics_port
                    else None,
                    **({"admin_target": c.admin_target} if c.admin_target else {}),
                    **({"data": str(c.data_dir)} if isinstance(c, RedisChild) else {}),
                    # crash-looping: when its next start is due (wall clock)
                    **(
                        {"restart_at": time.time() + c.restart_at - time.monotonic()}
                        if c.restart_at is not None
                        else {}
                    ),
                }
                for c in self.children
            ],
        }

    def _role(self, child: Child) -> str:
        if child is self.router:
            return "router"
        return "redis" if child is self.redis else "shard"

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        tmp.replace(self.state_file)  # a reader never sees half a file

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (bound and released at once)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            s.bind((host, port))
    except OSError:
        return False
    return True


def read_cluster_state(config: ClusterConfig) -> dict[str, Any] | None:
    """What ``annfleet up`` recorded in the data dir's ``cluster.json`` (None: no file);
    ClusterError naming the file when it is not such a record."""
    path = state_path(config)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(
            f"{path}: not a cluster record from `annfleet up` ({exc}); if no cluster runs "
            "from this data dir, delete it"
        ) from exc
    children = state.get("children") if isinstance(state, dict) else None
    if (
        not isinstance(children, list)
        or "bundle_id" not in state
        or not all(isinstance(c, dict) and {"name", "target", "pid"} <= set(c) for c in children)
    ):
        raise ClusterError(
            f"{path}: not a cluster record from `annfleet up` (expected bundle_id and children "
            "with name, target, pid); if no cluster runs from this data dir, delete it"
        )
    return state


def running_cluster(config: ClusterConfig) -> dict[str, Any] | None:
    """The cluster ``cluster.json`` in the data dir describes, if any of its processes is
    still alive (a cluster that was killed leaves a stale file: None). Lenient: any pid a
    readable record names counts, whatever else it lacks."""
    try:
        state = json.loads(state_path(config).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("children", []), list):
        return None
    children = [c for c in state.get("children", []) if isinstance(c, dict)]
    pids = [state.get("supervisor_pid")] + [c.get("pid") for c in children]
    return state if alive_pids(pids) else None


LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # a wildcard bind's


def router_address(config: ClusterConfig, *, admin: bool = False) -> str:
    """Where to reach the router (``admin``: its RouterAdmin port): the router of the local
    cluster ``annfleet up`` runs from the config's data dir (``cluster.json``), else the
    config's ``router.host`` (loopback for a wildcard) and ``port`` / ``admin_port``."""
    key = "admin_target" if admin else "target"
    for child in (running_cluster(config) or {}).get("children", []):
        if isinstance(child, dict) and child.get("name") == "router" and child.get(key):
            return str(child[key])
    host = LOOPBACK_FOR.get(config.router.host, config.router.host)
    return host_port(host, config.router.admin_port if admin else config.router.port)


def alive_pids(pids: Sequence[object]) -> list[int]:
    """Those of ``pids`` that name a live annfleet process (not this one)."""
    return [pid for pid in pids if isinstance(pid, int) and _alive(pid)]


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a pid reused by another program is not the cluster's
        return b"annfleet" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def state_path(config: ClusterConfig) -> Path:
    return config.data_path() / "cluster.json"


def remove_state(config: ClusterConfig) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(state_path(config))


def child_health(child: dict[str, Any], credentials: grpc.ChannelCredentials | None = None) -> str:
    """Health of a child described in ``cluster.json``: gRPC health, PING for redis."""
    if child.get("role") == "redis":
        return "SERVING" if redis_ping(child["target"]) else "DOWN"
    return health_status(child["target"], credentials=credentials)
