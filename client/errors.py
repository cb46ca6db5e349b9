"""Exceptions a caller of annfleet sees, mapped from gRPC status codes in one place."""

from __future__ import annotations

import time

import grpc


class AnnfleetError(Exception):
    """Any failed annfleet call. ``code`` is the gRPC status, ``details`` the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code


class InvalidArgument(AnnfleetError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AnnfleetError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AnnfleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(AnnfleetError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AnnfleetError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(AnnfleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Throttled(ResourceExhausted):
    """RESOURCE_EXHAUSTED from the client's own adaptive throttle (``client/throttle.py``):
    the call was rejected locally, never sent, and is not retried."""


_BY_CODE: dict[grpc.StatusCode, type[AnnfleetError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
    )
}


RETRY_BACKOFF_S = 0.05
# grpc's own RESOURCE_EXHAUSTED for an over-size message: the same request fails again.
# "Received message larger than max (N vs. M)" / "Sent message larger than max ..." from the
# client's channel, "SERVER: Received message larger than max ..." from the server's.
MESSAGE_SIZE = "message larger than max"


def refused(error: AnnfleetError) -> bool:
    """The server refused the request (RESOURCE_EXHAUSTED from its admission or queue
    limit), not grpc's message-size RESOURCE_EXHAUSTED nor the client's own throttle."""
    return (
        error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and not isinstance(error, Throttled)
        and MESSAGE_SIZE not in error.details
    )


# Outcomes that say the server could not take the call in time: it refused it, or the call
# ran out of time (queued in the server's HTTP/2 or handler queue, the deadline passed).
OVERLOAD_TIMEOUTS = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def overloaded(error: AnnfleetError) -> bool:
    """What the client's throttle counts against the server: a refusal (``refused``), or a
    call that timed out or was cancelled by the server. Not UNAVAILABLE (down, not busy),
    nor the caller's own mistakes, nor grpc's message-size limit."""
    return refused(error) or error.code in OVERLOAD_TIMEOUTS


def retryable(error: AnnfleetError) -> bool:
    """UNAVAILABLE (server down or starting) and RESOURCE_EXHAUSTED (a full queue shed the
    request), except grpc's message-size RESOURCE_EXHAUSTED and a local throttle."""
    return error.code == grpc.StatusCode.UNAVAILABLE or refused(error)


def retry_backoff(error: AnnfleetError, attempt: int, retries: int, deadline: float) -> float:
    """Seconds to wait before retry number ``attempt + 1``; raises ``error`` to give up.

    Only ``retryable`` errors are retried, at most ``retries`` times, 50 ms doubling, never
    past ``deadline`` (``time.monotonic()``). The sync and async clients share this rule.
    """
    backoff = RETRY_BACKOFF_S * 2**attempt
    if not retryable(error) or attempt >= retries or time.monotonic() + backoff >= deadline:
        raise error from None
    return backoff


def from_rpc_error(error: grpc.RpcError) -> AnnfleetError:
    """The annfleet exception for a failed RPC (``AnnfleetError`` for unmapped codes)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, AnnfleetError)
    return cls(details, code)
