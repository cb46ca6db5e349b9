"""What every annfleet gRPC process shares: server set-up, health, reflection, metrics,
safe request parsing, exception -> status mapping, and SIGTERM draining.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from annfleet.arrays import GRPC_OPTIONS
from annfleet.client.channels import tls_credentials
from annfleet.config import TlsConfig, host_port
from annfleet.errors import ConfigError, ListenError, status_of
from annfleet.metrics import LATENCY, REQUESTS
from annfleet.web import HttpPort, StatusSource, serve_http

log = logging.getLogger(__name__)

# Servers accept the router's keepalive pings (one a second, also on an idle health stream),
# which find a hung replica; gRPC's default would answer them with GOAWAY "too_many_pings".
SERVER_OPTIONS = [
    *GRPC_OPTIONS,
    # gRPC sets SO_REUSEPORT by default: a second server on a port already in use (another
    # `annfleet up`, a stray serve-shard) would bind it too and take half the connections.
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.keepalive_permit_without_calls", 1),
]

R = TypeVar("R")
# A status message travels in a trailer; past 8 KiB of metadata the client drops the whole
# status (RESOURCE_EXHAUSTED "metadata size exceeds soft limit"). Messages can quote input.
MAX_STATUS_MESSAGE = 1000


def short_message(message: str) -> str:
    if len(message) <= MAX_STATUS_MESSAGE:
        return message
    return f"{message[:MAX_STATUS_MESSAGE]}... ({len(message)} characters, cut)"


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def deadline_of(context: grpc.aio.ServicerContext, default_s: float | None = None) -> float | None:
    """The request's absolute deadline (``time.monotonic()`` seconds), computed once where
    it enters: the caller's ``time_remaining()``, else ``default_s`` from now, else None."""
    remaining = context.time_remaining()
    if remaining is None:
        remaining = default_s
    return None if remaining is None else time.monotonic() + remaining


class RpcObserver(Protocol):
    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, response: Any | None
    ) -> None: ...


class CallRecorder:
    """Counts and times one service method's calls (``annfleet_requests``,
    ``annfleet_request_seconds``) and tells the servicer's ``rpc_observer``, if any.

    The labelled metric children are looked up once (per status code) and kept: a
    prometheus ``labels()`` lookup costs a lock and a dict walk per call.
    """

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self._latency: Any = None
        self._counts: dict[grpc.StatusCode, Any] = {}

    def __call__(
        self, owner: Any, code: grpc.StatusCode, seconds: float, response: Any | None
    ) -> None:
        counter = self._counts.get(code)
        if counter is None:
            counter = self._counts[code] = REQUESTS.labels(self.service, self.method, code.name)
        counter.inc()
        if self._latency is None:
            self._latency = LATENCY.labels(self.service, self.method)
        self._latency.observe(seconds)
        observer: RpcObserver | None = getattr(owner, "rpc_observer", None)
        if observer is not None:
            try:
                observer(self.method, code, seconds, response)
            except Exception:  # a status page never breaks an answer
                log.exception("rpc observer failed on %s.%s", self.service, self.method)


def rpc(service: str) -> Callable[[Handler[R]], Handler[R]]:
    """Decorate a servicer method: count and time it, and turn exceptions into statuses.

    A servicer whose ``rpc_observer`` attribute is set also tells it each call's method
    name, status code, seconds and response (None when the call failed): the status pages'
    window of recent requests.
    """

    def decorate(method: Handler[R]) -> Handler[R]:
        name = method.__name__
        record = CallRecorder(service, name)

        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            response = None
            try:
                response = await method(self, request, context)
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = status_of(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s.%s failed", service, name)
                await context.abort(code, short_message(message))
                raise  # unreachable: abort raises
            finally:
                record(self, code, time.perf_counter() - start, response)

        return wrapper

    return decorate


# ---------------------------------------------------------------- safe request parsing
# grpc parses a request before the servicer runs, and a payload that does not parse comes
# back UNKNOWN ("Unexpected <class 'DecodeError'>"). Every service registered through
# ``start_server`` instead receives the raw bytes and parses them inside the call, so a
# malformed payload is INVALID_ARGUMENT with a message (and counted like any other RPC).


class _HandlerCapture:
    """Stands in for a server when a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        pass  # the same table also arrives through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


async def _parse(
    deserialize: Callable[[bytes], Any], raw: bytes, context: Any, service: str, method: str
) -> Any:
    try:
        return deserialize(raw)
    except Exception as exc:  # DecodeError, or whatever a deserializer raises on bad bytes
        REQUESTS.labels(service, method, grpc.StatusCode.INVALID_ARGUMENT.name).inc()
        message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        name = getattr(message_type, "full_name", f"{method} request")
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed request: {len(raw)} bytes are not a valid {name} ({exc})",
        )


def safe_handler(handler: grpc.RpcMethodHandler, service: str, method: str) -> Any:
    """The same handler with its request(s) parsed inside the call (client-streaming only
    with a streamed response: bidirectional streams)."""
    deserialize: Any = handler.request_deserializer
    if deserialize is None or (handler.request_streaming and not handler.response_streaming):
        return handler
    short = service.rsplit(".", 1)[-1]
    if handler.request_streaming:
        bidi: Any = handler.stream_stream

        async def parsed(raw: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
            async for message in raw:
                try:
                    request = deserialize(message)
                except Exception:
                    request = await _parse(deserialize, message, context, short, method)
                yield request

        if inspect.isasyncgenfunction(bidi):

            async def stream_stream_gen(raw: Any, context: Any) -> AsyncIterator[Any]:
                async for item in bidi(parsed(raw, context), context):
                    yield item

            return handler._replace(request_deserializer=None, stream_stream=stream_stream_gen)  # type: ignore[attr-defined]

        async def stream_stream(raw: Any, context: Any) -> Any:  # writes with context.write
            return await bidi(parsed(raw, context), context)

        return handler._replace(request_deserializer=None, stream_stream=stream_stream)  # type: ignore[attr-defined]
    if not handler.response_streaming:
        behavior: Any = handler.unary_unary

        async def unary_unary(raw: bytes, context: Any) -> Any:
            request = await _parse(deserialize, raw, context, short, method)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)  # type: ignore[attr-defined]
    stream: Any = handler.unary_stream
    if inspect.isasyncgenfunction(stream):

        async def unary_stream_gen(raw: bytes, context: Any) -> AsyncIterator[Any]:
            request = await _parse(deserialize, raw, context, short, method)
            async for item in stream(request, context):
                yield item

        return handler._replace(request_deserializer=None, unary_stream=unary_stream_gen)  # type: ignore[attr-defined]

    async def unary_stream(raw: bytes, context: Any) -> Any:  # writes with context.write
        request = await _parse(deserialize, raw, context, short, method)
        return await stream(request, context)

    return handler._replace(request_deserializer=None, unary_stream=unary_stream)  # type: ignore[attr-defined]


def add_safely(
    add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
) -> list[str]:
    """Register ``servicer`` the way the generated ``add`` would, with safe request parsing.

    Returns the full names of the services registered.
    """
    capture = _HandlerCapture()
    add(servicer, capture)
    for service, handlers in capture.services.items():
        safe = {m: safe_handler(h, service, m) for m, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        server.add_registered_method_handlers(service, safe)  # type: ignore[attr-defined]
    return list(capture.services)


class GrpcServer:
    """A started grpc.aio server with health (NOT_SERVING until ``set_serving``) and reflection."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        service_names: Sequence[str],
        health_servicer: Any,
        http: HttpPort | None,
    ) -> None:
        self.server = server
        self.port = port
        self.service_names = list(service_names)
        self.health = health_servicer
        self.http = http

    @property
    def metrics_port(self) -> int | None:
        """The HTTP port (/metrics, /status), None when off."""
        return self.http.port if self.http else None

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [*self.service_names, ""]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (load balancers stop sending), then drain for ``grace`` seconds.

        Health stays NOT_SERVING for good: a load finishing during the drain cannot flip it.
        """
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.http is not None:
            await asyncio.to_thread(self.http.stop)


# ---------------------------------------------------------------- TLS
def _read_pem(path: str, key: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{key}: cannot read {path}: {exc.strerror}") from exc


def server_credentials(tls: TlsConfig | None) -> grpc.ServerCredentials | None:
    """TLS (mutual with ``require_client_cert``) for a server port; None = plaintext."""
    if tls is None or not tls.enabled:
        return None
    return grpc.ssl_server_credentials(
        [(_read_pem(tls.key, "key"), _read_pem(tls.cert, "cert"))],
        root_certificates=_read_pem(tls.ca, "ca") if tls.ca else None,
        require_client_auth=tls.require_client_cert,
    )


def channel_credentials(tls: TlsConfig | None) -> grpc.ChannelCredentials | None:
    """What this process's own channels (router -> shards, health checks, CLI) use: ``ca``
    to verify servers, ``cert``/``key`` as the client certificate. None = plaintext."""
    if tls is None or not tls.enabled:
        return None
    pem = {k: _read_pem(getattr(tls, k), k) for k in ("ca", "cert", "key") if getattr(tls, k)}
    return tls_credentials(ca=pem.get("ca"), cert=pem.get("cert"), key=pem.get("key"))


async def not_serving_health(service_names: Sequence[str]) -> Any:
    """A health servicer that answers NOT_SERVING for every name (and "") from the start.

    grpc's ``HealthServicer()`` starts with "" SERVING: registered as is, a client polling
    as the port opens would be told SERVING before anything is loaded.
    """
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    for name in [*service_names, ""]:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return servicer


async def start_server(
    services: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    service_names: Sequence[str],
    *,
    host: str,
    port: int,
    metrics_port: int = -1,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsConfig | None = None,
    status: StatusSource | None = None,
) -> GrpcServer:
    """Bind and start; every service (and the overall "") reports NOT_SERVING.

    Health is NOT_SERVING before the port opens: grpc's HealthServicer starts with "" SERVING,
    so a client polling as the port opens would otherwise be told SERVING too early.
    Every service's requests are parsed inside the call (``add_safely``).

    ``metrics_port`` (0 = a free port, -1 = off) serves /metrics and, from ``status``,
    /status and /status.json, on ``host``.
    """
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors))
    for add, servicer in services:
        add_safely(add, servicer, server)
    health_servicer = await not_serving_health(service_names)
    add_safely(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(tls)
    address = host_port(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        bound = 0
    if bound == 0:
        raise ListenError(
            f"cannot listen on {address} ({service_names[0] if service_names else 'gRPC'}):"
            " the port is in use (another cluster or process?) or the host is not an address "
            "of this machine; stop that process or choose another port"
        )
    handle = GrpcServer(server, bound, service_names, health_servicer, None)
    await server.start()
    try:
        handle.http = serve_http(metrics_port, host, status)
    except OSError as exc:
        await server.stop(0)
        raise ListenError(
            f"cannot listen on {host_port(host, metrics_port)} (metrics): {exc.strerror}; stop the "
            "process using it or choose another metrics port (-1 = off)"
        ) from exc
    return handle


def stop_with_supervisor(pid: int | None, interval_s: float = 0.5) -> None:
    """SIGTERM this process (a graceful stop, or the end of a load in progress) once process
    ``pid``, the supervisor that started it, is no longer its parent: a supervisor killed
    with SIGKILL (or by the OOM killer) cannot stop its children, and they would hold its
    ports forever. Watches ``os.getppid()`` (an orphan is re-parented) on a daemon thread:
    portable, and unlike ``prctl(PR_SET_PDEATHSIG)`` blind to which thread forked."""
    if pid is None:
        return

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(interval_s)
        log.warning("the supervisor (pid %d) is gone: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-supervisor", daemon=True).start()


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


class Stoppable(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self, grace: float = 0.0) -> None: ...


async def serve_until_signal(
    start: Awaitable[Stoppable], *, name: str, host: str, grace: float
) -> None:
    """Start a server, run it until SIGTERM/SIGINT, then drain for ``grace`` seconds."""
    server = await start
    log.info("%s listening on %s", name, host_port(host, server.port))
    await wait_for_signal()
    log.info("%s draining (up to %.1fs)", name, grace)
    await server.stop(grace)


def run(main: Callable[[], Coroutine[Any, Any, R]]) -> R:
    """Run a coroutine on uvloop when it is installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
