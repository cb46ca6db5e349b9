"""Bearer-token authentication of the admin ports (ShardAdmin, RouterAdmin).

The token comes from the file named by ``admin.token_file``, else from the environment
variable named by ``admin.token_env``. Callers send gRPC metadata
``authorization: Bearer <token>``; the server compares it in constant time
(``hmac.compare_digest``). No token (or not a bearer token) -> UNAUTHENTICATED; a wrong
token -> PERMISSION_DENIED; the refused call never reaches the servicer, and its payload is
never parsed. Health checks stay open so that probes need no secret.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from annfleet.config import AdminConfig, ClusterConfig
from annfleet.errors import ConfigError
from annfleet.metrics import ADMIN_REFUSED

log = logging.getLogger(__name__)

HEADER = "authorization"
SCHEME = "bearer"
OPEN_SERVICES = ("grpc.health.v1.Health",)
TOKEN_FILE_NAME = "admin.token"


def read_token(admin: AdminConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The configured admin token, or None when neither the file nor the variable is set."""
    environ = os.environ if environ is None else environ
    if admin.token_file:
        path = Path(admin.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"admin.token_file {path}: cannot read: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"admin.token_file {path} is empty")
        return token
    if admin.token_env and environ.get(admin.token_env, "").strip():
        return environ[admin.token_env].strip()
    return None


def default_token_path(config: ClusterConfig) -> Path:
    """Where `annfleet up` keeps a generated token when the config names none."""
    return config.data_path() / TOKEN_FILE_NAME


def client_token(config: ClusterConfig, token_file: str | None = None) -> str:
    """The token an admin client sends: ``token_file``, else the config's file or variable,
    else the token `annfleet up` generated in the data dir."""
    if token_file:
        token = read_token(AdminConfig(token_file=token_file, token_env=""))
    else:
        token = read_token(config.admin)
    if token is None:
        generated = default_token_path(config)
        if generated.is_file():
            token = read_token(AdminConfig(token_file=str(generated), token_env=""))
    if token is None:
        raise ConfigError(
            f"no admin token: set admin.token_file or ${config.admin.token_env}, or run "
            f"`annfleet up` (it writes one to {default_token_path(config)})"
        )
    return token


def ensure_token_file(path: Path) -> Path:
    """A random token in ``path`` (0600), created if missing: `annfleet up`'s default."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        log.info("generated an admin token in %s", path)
    return path


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates an admin call."""
    return ((HEADER, f"Bearer {token}"),)


def check(token: str, received: Sequence[tuple[str, Any]] | None) -> tuple[grpc.StatusCode, str]:
    """(OK, "") when ``received`` metadata carries the bearer ``token``, else the refusal."""
    values = [v for k, v in received or () if k.lower() == HEADER]
    if not values:
        return grpc.StatusCode.UNAUTHENTICATED, (
            "admin calls need metadata 'authorization: Bearer <token>' (admin.token_file or "
            "the admin.token_env variable)"
        )
    value = values[0].decode() if isinstance(values[0], bytes) else str(values[0])
    scheme, _, given = value.partition(" ")
    if scheme.lower() != SCHEME or not given.strip():
        return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata is not 'Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return grpc.StatusCode.PERMISSION_DENIED, "wrong admin token"
    return grpc.StatusCode.OK, ""


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same streaming kind as ``handler`` that only aborts."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover  (a generator, as streaming handlers are)

    def ignore(data: bytes) -> None:  # never parse an unauthenticated payload
        return None

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, ignore)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, ignore)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, ignore)
    return grpc.unary_unary_rpc_method_handler(abort, ignore)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call (but health checks) whose metadata lacks the bearer token."""

    def __init__(self, token: str, open_services: Sequence[str] = OPEN_SERVICES) -> None:
        if not token:
            raise ConfigError("the admin token is empty")
        self._token = token
        self._open = tuple(f"/{name}/" for name in open_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._open):
            return handler
        code, message = check(self._token, handler_call_details.invocation_metadata)
        if code == grpc.StatusCode.OK:
            return handler
        ADMIN_REFUSED.labels(code.name).inc()
        log.warning("admin call %s refused: %s", method, code.name)
        return _refusal(handler, code, message)
