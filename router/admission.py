"""Router admission: how many requests the router serves at once; beyond, RESOURCE_EXHAUSTED.

A fixed cap (``router.max_in_flight``) bounds the router's memory, but a cap large enough
for a big fleet lets a small one queue: by Little's law, L requests in flight at a
capacity of C per second wait L / C each (512 in flight at 500/s is a second). Requests
accepted that way all come back late. So by default (``router.admission: adaptive``) the
limit adapts to what the shards behind the router deliver, as the gradient limiters do
(Netflix concurrency-limits' Gradient, Envoy's adaptive concurrency filter):

- the router keeps the median latency of its requests per window (at least
  ``WINDOW_S`` and ``WINDOW_MIN`` requests) and, as its no-load latency, the lowest window
  median of the last ``BASELINE_S``;
- a window whose median exceeds ``latency_tolerance`` x that baseline shrinks the limit
  by the ratio (at most halving it, never below ``min_in_flight``, or below
  ``overload_min_in_flight`` in an overload, see below): requests are queueing;
- a window that used the whole limit with latency within tolerance grows it by
  sqrt(limit) (at most ``max_in_flight``); a window that did not use it leaves it alone,
  so a quiet period does not open the gate for a burst.

A shed request costs the router one status reply; the client retries it with backoff
(the client treats RESOURCE_EXHAUSTED like UNAVAILABLE), or another router takes it.
``router.admission: fixed`` keeps the limit at ``max_in_flight``.

The in-flight limit sees only requests that reached the handler. An overloaded Python
gRPC router queues requests before that, in gRPC's HTTP/2 and completion queues and its
starved event loop, until their deadline passes. So the router also sheds on each
request's *queue time* (``annfleet.queue_time``: the timeout the client sent in
``annfleet-timeout-ms`` minus ``time_remaining()`` at handler entry), ahead of any other
work. Requests without the entry (other clients) are not shed on queue time;
``queue_target_s: 0`` turns this off. Two rules, each for waits beyond twice
``queue_target_s``:

- in an overload (``OVERLOAD_WINDOWS``, 3, windows in a row each refused a request: not
  a burst that the callers' retries absorb), such a request is refused: what the router
  accepts does not wait behind what it refuses, and the refusal is a signal the client's
  throttle acts on within a window, where a timeout costs the router the same work a
  second later;
- while a queue stands before the handler (CoDel, Nichols & Jacobson, in the RPC form of
  Facebook's wangle ``Codel``: the lowest queue time of the last ``queue_interval_s``
  exceeded ``queue_target_s``: a standing queue, not a burst), a request that waited
  longer than it has left is refused: it would most likely time out, after using the
  router's and the shards' time.

The adaptive limit's floor tells an overload from a busy router. A closed loop of callers
at capacity (a benchmark, a batch job with N workers) may queue a little before the
handler on a busy box, but up to ``min_in_flight`` (32) callers nothing is refused, and
the floor stays at ``min_in_flight``, enough to keep the shards busy and batching. In an
overload more arrives than the limit: while the last ``OVERLOAD_WINDOWS`` windows each
refused a request (in flight or on queue time) the floor is ``overload_min_in_flight``,
so the limit follows the latency down to what the router and shards serve within
``latency_tolerance`` of their no-load latency, and the callers' throttles (or retries)
take the refusals as their signal. A burst (64 requests at an idle router, retried by the
client 50 ms later) is not an overload. Once a window passes without a refusal, a limit
below ``min_in_flight`` grows back to it by sqrt(limit) per window.
``overload_min_in_flight`` equal to ``min_in_flight`` keeps the floor in an overload too
(more throughput; accepted requests as slow as 32 in flight make them). A closed loop of
more than ``min_in_flight`` callers is an overload.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Callable, Iterator

import numpy as np

from annfleet.config import RouterConfig
from annfleet.errors import ResourceExhausted
from annfleet.metrics import IN_FLIGHT_LIMIT, QUEUE_SECONDS, QUEUE_SHED

WINDOW_S = 0.1  # a window closes after this long...
WINDOW_MIN = 16  # ...and at least this many finished requests
BASELINE_S = 30.0  # the no-load latency is the lowest window median this far back
INITIAL = 32  # the adaptive limit's start (at most max_in_flight)
OVERLOAD_WINDOWS = 3  # an overload: this many windows in a row refused requests (a burst: fewer)


class QueueShed:
    """CoDel on the queue time at handler entry (see the module's docstring)."""

    def __init__(self, target_s: float, interval_s: float, clock: Callable[[], float]) -> None:
        self.target = target_s
        self.interval = interval_s
        self.clock = clock
        self.stood = False  # the last interval's lowest queue time exceeded the target
        self._lowest = math.inf  # the lowest queue time of the current interval
        self._interval_start = clock()

    def check(self, queued: float, remaining: float, overload: bool = False) -> None:
        """One request's queue time and time left (s); ResourceExhausted when it is to be
        shed: it waited beyond 2 x target in an overload (``overload``), or
        longer than it has left while a queue stands."""
        QUEUE_SECONDS.observe(queued)
        now = self.clock()
        if now - self._interval_start >= self.interval:
            self.stood = self.target < self._lowest < math.inf
            self._lowest = math.inf
            self._interval_start = now
        if queued < self._lowest:
            self._lowest = queued
        if queued <= 2 * self.target:
            return
        if overload:
            QUEUE_SHED.inc()
            raise ResourceExhausted(
                f"router overloaded: the request waited {queued * 1e3:.1f} ms before the "
                f"router started it (in an overload, a wait beyond {2e3 * self.target:g} ms = "
                "2 x router.queue_target_s is refused); retry with backoff"
            )
        if self.stood and queued > remaining:
            QUEUE_SHED.inc()
            raise ResourceExhausted(
                f"router overloaded: the request waited {queued * 1e3:.1f} ms before the "
                f"router started it, more than the {remaining * 1e3:.1f} ms it has left, "
                "behind a standing queue; retry with backoff"
            )


class Admission:
    """Counts the router's requests in flight and sheds beyond the current limit."""

    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.adaptive = config.admission == "adaptive"
        self.ceiling = config.max_in_flight
        self.floor = min(config.min_in_flight, self.ceiling)
        # the floor in an overload (the last OVERLOAD_WINDOWS windows each shed a request)
        self.overload_floor = min(config.overload_min_in_flight, self.floor)
        self.limit = float(min(INITIAL, self.ceiling) if self.adaptive else self.ceiling)
        self.in_flight = 0
        self._window: list[float] = []
        self._window_start = clock()
        self._peak = 0  # most requests in flight during the window
        self._shed = False  # a request was shed during the window
        self.overloaded = False  # the last OVERLOAD_WINDOWS windows each shed a request
        self._shedding = 0  # windows in a row that shed a request
        self._medians: collections.deque[tuple[float, float]] = collections.deque()
        self.queue: QueueShed | None = (
            QueueShed(config.queue_target_s, config.queue_interval_s, clock)
            if config.queue_target_s > 0
            else None
        )
        IN_FLIGHT_LIMIT.set(self.limit)

    @property
    def baseline(self) -> float | None:
        """The no-load latency: the lowest window median of the last BASELINE_S."""
        return min(m for _, m in self._medians) if self._medians else None

    @contextlib.contextmanager
    def admit(self, queued: float | None = None, remaining: float | None = None) -> Iterator[None]:
        """Count one request in flight for the block; RESOURCE_EXHAUSTED beyond the limit,
        or when it queued too long (``queued``: its queue time, None: unknown;
        ``remaining``: its time left, s)."""
        if queued is not None and remaining is not None and self.queue is not None:
            try:
                self.queue.check(queued, remaining, self.overloaded)
            except ResourceExhausted:
                self._shed = True
                raise
        if self.in_flight >= int(self.limit):
            self._shed = True
            raise ResourceExhausted(
                f"router overloaded: {self.in_flight} requests in flight (limit "
                f"{int(self.limit)}, max_in_flight {self.ceiling}); retry with backoff"
            )
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)
        started = self.clock()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.adaptive:
                self.observe(self.clock() - started)

    def observe(self, seconds: float) -> None:
        """One finished request's time in the router; closes the window when it is due."""
        self._window.append(seconds)
        now = self.clock()
        if now - self._window_start < WINDOW_S or len(self._window) < WINDOW_MIN:
            return
        median = float(np.median(self._window))
        while self._medians and self._medians[0][0] < now - BASELINE_S:
            self._medians.popleft()
        self._medians.append((now, median))
        baseline = self.baseline
        assert baseline is not None
        allowed = self.config.latency_tolerance * baseline
        self._shedding = self._shedding + 1 if self._shed else 0
        self.overloaded = self._shedding >= OVERLOAD_WINDOWS
        floor = self.overload_floor if self.overloaded else self.floor
        if self.limit < floor:  # the queue is gone: back towards min_in_flight
            self.limit = min(float(floor), self.limit + math.sqrt(self.limit))
        elif median > allowed:
            self.limit = max(float(floor), self.limit * max(0.5, allowed / median))
        elif self._shed or self._peak >= int(self.limit):
            self.limit = min(float(self.ceiling), self.limit + math.sqrt(self.limit))
        IN_FLIGHT_LIMIT.set(self.limit)
        self._window.clear()
        self._window_start = now
        self._peak = self.in_flight
        self._shed = False
