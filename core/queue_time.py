"""How long a request waited before the server's handler started it (its *queue time*).

gRPC sends a call's deadline as a relative ``grpc-timeout`` header, and a server's
``context.time_remaining()`` counts down from when its gRPC core received the headers. The
header itself is not visible to a Python handler, so annfleet's client also sends the
timeout it gave the call in the ``annfleet-timeout-ms`` metadata entry. At handler entry
the difference is the time the request spent between the client's call and the handler:
the client's and the server's HTTP/2 queues, the server's completion queue, and its event
loop's backlog. Only durations are compared, each on one machine's clock: no clock
synchronisation between client and server is assumed.

The estimate is low by up to the rounding of ``grpc-timeout`` (gRPC rounds the timeout up:
to 1 ms below 1 s, 10 ms below 10 s, 100 ms below 100 s); a negative difference is taken
as 0.

The client (``annfleet.client``) sends the entry; the router's admission
(``annfleet.router.admission``) sheds on it. One module so both sides agree on the name
and the unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from annfleet.errors import InvalidArgument

TIMEOUT_METADATA = "annfleet-timeout-ms"


def timeout_metadata(timeout_s: float) -> tuple[tuple[str, str], ...]:
    """The metadata entry a client sends beside a call with timeout ``timeout_s``."""
    return ((TIMEOUT_METADATA, f"{timeout_s * 1e3:.3f}"),)


def no_metadata(timeout_s: float) -> None:
    """What a client that does not report its timeout sends: nothing."""
    return None


def metadata_ms(
    metadata: Iterable[tuple[str, str | bytes]] | None, key: str
) -> tuple[str, float] | None:
    """The entry ``key`` of ``metadata`` (annfleet's entries are decimal milliseconds): its
    text and value (NaN when it is not a number); None without the entry."""
    value = next((v for k, v in metadata or () if k == key), None)
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    try:
        return text, float(text)
    except ValueError:
        return text, math.nan


def queue_time(
    metadata: Iterable[tuple[str, str | bytes]] | None, time_remaining: float | None
) -> float | None:
    """Seconds the request waited before its handler; None when it cannot be told (no
    ``annfleet-timeout-ms`` entry, or the call has no deadline). A malformed entry (not a
    finite number of milliseconds > 0) is InvalidArgument, naming the entry and value."""
    if time_remaining is None:
        return None
    entry = metadata_ms(metadata, TIMEOUT_METADATA)
    if entry is None:
        return None
    text, sent_ms = entry
    if not (math.isfinite(sent_ms) and sent_ms > 0):
        raise InvalidArgument(
            f"metadata {TIMEOUT_METADATA}: {text[:40]!r} is not the call's timeout in "
            "milliseconds (a finite number > 0)"
        )
    return max(0.0, sent_ms / 1e3 - time_remaining)
