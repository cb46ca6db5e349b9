"""A call's *return time*: its reply's way back to the caller, measured by the caller and sent
to the router with the next calls.

A source's budget bounds the whole ``Retrieve`` as its caller sees it (README "Retrieve").
The router measures the request's way in (``annfleet.queue_time``) and its own time after a
budget (``router/margin.py``), but not the reply's way back: its handler ends when it hands
the response to gRPC, and serialising, sending, the caller's gRPC poller and event loop and
the caller's parsing all come after. The caller can measure it: it knows each call's whole
time (from just before the call to the parsed response) and the response says how much of it
the router accounted for (``timings_ms``: ``inbound``, the measured way in, and ``total``, the
handler's start to the response built). What is left is the return time:

    return = whole - inbound - total     (inbound 0 when the router did not measure it)

which also holds the way in the router could not see (gRPC's rounding of the deadline it
sends, below 1 ms for timeouts under 1 s). A client's first answered call and a call that
needed a retry are left out: their time holds the channel's connecting. Each annfleet
client keeps the ``QUANTILE`` (0.99) of the last ``WINDOW`` (512) such times of its
``Retrieve`` calls (:class:`ReturnTime`) and, once ``MIN_SAMPLES`` (20) are in, sends it
with each ``Retrieve`` in the ``annfleet-return-ms`` metadata entry, beside
``annfleet-timeout-ms``. The router
keeps it back from each source's budget on top of its reply margin, at most
``router.return_time_max_share`` of that budget (``blend.budget_deadline``). Only durations
on the caller's own clock are involved, and the time is independent of the budgets (a
shorter budget shortens ``total``, not the way back), so the estimate does not feed on
itself.

One module so that both sides agree on the name, the unit and what is measured.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from annfleet.errors import InvalidArgument
from annfleet.queue_time import metadata_ms
from annfleet.recent import RecentQuantile

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

RETURN_METADATA = "annfleet-return-ms"
QUANTILE = 0.99  # of the recent return times, sent
WINDOW = 512  # recent Retrieve calls it is taken over
MIN_SAMPLES = 20  # nothing is sent before this many calls are measured
EVERY = 8  # recomputed once this many new times are in (a quantile of 512 costs ~20 us)


def return_metadata(seconds: float) -> Metadata:
    """The metadata entry a client sends to report its return time ``seconds``."""
    return ((RETURN_METADATA, f"{seconds * 1e3:.3f}"),)


def reported_return(metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The return time (seconds) the caller reported; None without the entry. A malformed
    entry (not a finite number of milliseconds >= 0) is InvalidArgument, naming the entry
    and value."""
    entry = metadata_ms(metadata, RETURN_METADATA)
    if entry is None:
        return None
    text, ms = entry
    if not (math.isfinite(ms) and ms >= 0):
        raise InvalidArgument(
            f"metadata {RETURN_METADATA}: {text[:40]!r} is not a return time in milliseconds "
            "(a finite number >= 0)"
        )
    return ms / 1e3


def return_seconds(whole_s: float, timings_ms: Mapping[str, float]) -> float | None:
    """One call's return time: its whole time (seconds) less what the router accounted for
    in ``timings_ms`` (``inbound`` + ``total``), at least 0; None when the response has no
    ``total`` (not a ``Retrieve`` answer)."""
    total = timings_ms.get("total")
    if total is None:
        return None
    return max(whole_s - (total + timings_ms.get("inbound", 0.0)) / 1e3, 0.0)


def with_return_time(sent: Metadata | None, estimate: ReturnTime | None) -> Metadata | None:
    """A ``Retrieve`` attempt's metadata: ``sent`` (its timeout entry, or None) and the
    client's return time ``estimate`` (nothing while unmeasured, or with none)."""
    entries = (sent or ()) + (estimate.metadata() if estimate is not None else ())
    return entries or None


class ReturnTime:
    """A client's running ``quantile`` of its last ``window`` return times (module doc);
    thread-safe (one lock around a ring write or a cached read)."""

    def __init__(
        self, quantile: float = QUANTILE, window: int = WINDOW, min_samples: int = MIN_SAMPLES
    ) -> None:
        self._times = RecentQuantile(
            quantile, 0.0, math.inf, window=window, min_samples=min_samples, every=EVERY
        )
        self._lock = threading.Lock()
        self._connected = False  # a call was answered: the channel has connected

    @property
    def samples(self) -> int:
        return self._times.samples

    def observe(
        self, whole_s: float, timings_ms: Mapping[str, float], retried: bool = False
    ) -> None:
        """Note one answered call: its last attempt's whole time and the response's
        ``timings_ms``. The first answered call, and one that needed a retry, are not noted:
        their time holds the channel's connecting (to a new or restarted server), not a
        way back."""
        seconds = return_seconds(whole_s, timings_ms)
        if seconds is None:
            return
        with self._lock:
            if self._connected and not retried:
                self._times.add(seconds)
            self._connected = True

    def value(self) -> float | None:
        """The quantile in seconds; None until ``min_samples`` calls are noted."""
        with self._lock:
            if self._times.samples < self._times.min_samples:
                return None
            return self._times.value()

    def metadata(self) -> Metadata:
        """The entry to send with the next call (none until measured)."""
        seconds = self.value()
        return () if seconds is None else return_metadata(seconds)


class Attempts(Generic[T]):
    """The attempts of one ``Retrieve`` call as ``call_with_retry`` makes them (both clients):
    each is sent with the timeout entry (``metadata(timeout)``) and the client's return time
    ``estimate``; once the call is answered, :meth:`answered` notes its last attempt's whole
    time (from that attempt's start) in ``estimate``, a retried call as such."""

    def __init__(
        self,
        send: Callable[[float, Metadata | None], T],
        metadata: Callable[[float], Metadata | None],
        estimate: ReturnTime | None,
    ) -> None:
        self._send = send
        self._metadata = metadata
        self._estimate = estimate
        self._started = 0.0  # the last attempt's start: the return time's base
        self._count = 0

    def __call__(self, timeout: float) -> T:
        self._started, self._count = time.perf_counter(), self._count + 1
        return self._send(timeout, with_return_time(self._metadata(timeout), self._estimate))

    def answered(self, timings_ms: Mapping[str, float]) -> None:
        if self._estimate is not None:
            whole = time.perf_counter() - self._started
            self._estimate.observe(whole, timings_ms, retried=self._count > 1)
