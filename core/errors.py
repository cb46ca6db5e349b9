"""Server-side exceptions and the one place they become gRPC status codes.

Library code raises these; the gRPC servicers (``annfleet.server.service``,
``annfleet.router.service``) translate them with :func:`status_of`. The client has its own
mirror hierarchy in ``annfleet.client.errors``.
"""

from __future__ import annotations

import grpc


class AnnfleetError(Exception):
    """Base class; ``code`` is the gRPC status the caller sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(AnnfleetError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AnnfleetError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class FailedPrecondition(AnnfleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(AnnfleetError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AnnfleetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(AnnfleetError):
    """Not enough of something (memory, queue room, delta capacity) to do it now."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Aborted(AnnfleetError):
    """Refused because of a concurrent operation (e.g. another rollout is running)."""

    code = grpc.StatusCode.ABORTED


class Unimplemented(AnnfleetError):
    code = grpc.StatusCode.UNIMPLEMENTED


class BundleError(AnnfleetError):
    """A bundle that is missing, corrupt (checksum), or inconsistent (dim, shard count)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ClusterError(AnnfleetError):
    """A local cluster process (``annfleet up``) that exited or never became ready."""

    code = grpc.StatusCode.UNAVAILABLE


class ListenError(AnnfleetError, OSError):
    """A server that cannot listen on its port (in use, or not an address of this host)."""

    code = grpc.StatusCode.UNAVAILABLE


class ConfigError(AnnfleetError, ValueError):
    """A config file with an unknown key, a wrong type or an out-of-range value."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception raised while serving to (status code, message)."""
    if isinstance(exc, AnnfleetError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
