"""What every annfleet gRPC process shares: server set-up, health, reflection, metrics,
exception -> status mapping, and SIGTERM draining.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from annfleet.errors import status_of
from annfleet.metrics import LATENCY, REQUESTS, serve_metrics

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def rpc(service: str) -> Callable[[Handler[R]], Handler[R]]:
    """Decorate a servicer method: count and time it, and turn exceptions into statuses."""

    def decorate(method: Handler[R]) -> Handler[R]:
        name = method.__name__

        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
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
                await context.abort(code, message)
                raise  # unreachable: abort raises
            finally:
                REQUESTS.labels(service, name, code.name).inc()
                LATENCY.labels(service, name).observe(time.perf_counter() - start)

        return wrapper

    return decorate


class GrpcServer:
    """A started grpc.aio server with health (NOT_SERVING until ``set_serving``) and reflection."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        service_names: Sequence[str],
        health_servicer: Any,
        metrics_port: int | None,
    ) -> None:
        self.server = server
        self.port = port
        self.service_names = list(service_names)
        self.health = health_servicer
        self.metrics_port = metrics_port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [*self.service_names, ""]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (load balancers stop sending), then drain for ``grace`` seconds."""
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    services: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    service_names: Sequence[str],
    *,
    host: str,
    port: int,
    metrics_port: int = -1,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> GrpcServer:
    """Bind and start; every service (and the overall "") reports NOT_SERVING."""
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=list(interceptors))
    for add, servicer in services:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    handle = GrpcServer(
        server, bound, service_names, health_servicer, serve_metrics(metrics_port, host)
    )
    await handle.set_serving(False)
    return handle


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
    log.info("%s listening on %s:%d", name, host, server.port)
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
