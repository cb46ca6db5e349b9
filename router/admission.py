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
  by the ratio (at most halving it, never below ``min_in_flight``): requests are queueing;
- a window that used the whole limit with latency within tolerance grows it by
  sqrt(limit) (at most ``max_in_flight``); a window that did not use it leaves it alone,
  so a quiet period does not open the gate for a burst.

A shed request costs the router one status reply; the client retries it with backoff
(the client treats RESOURCE_EXHAUSTED like UNAVAILABLE), or another router takes it.
``router.admission: fixed`` keeps the limit at ``max_in_flight``.
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
from annfleet.metrics import IN_FLIGHT_LIMIT

WINDOW_S = 0.1  # a window closes after this long...
WINDOW_MIN = 16  # ...and at least this many finished requests
BASELINE_S = 30.0  # the no-load latency is the lowest window median this far back
INITIAL = 32  # the adaptive limit's start (at most max_in_flight)


class Admission:
    """Counts the router's requests in flight and sheds beyond the current limit."""

    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.adaptive = config.admission == "adaptive"
        self.ceiling = config.max_in_flight
        self.floor = min(config.min_in_flight, self.ceiling)
        self.limit = float(min(INITIAL, self.ceiling) if self.adaptive else self.ceiling)
        self.in_flight = 0
        self._window: list[float] = []
        self._window_start = clock()
        self._peak = 0  # most requests in flight during the window
        self._shed = False  # a request was shed during the window
        self._medians: collections.deque[tuple[float, float]] = collections.deque()
        IN_FLIGHT_LIMIT.set(self.limit)

    @property
    def baseline(self) -> float | None:
        """The no-load latency: the lowest window median of the last BASELINE_S."""
        return min(m for _, m in self._medians) if self._medians else None

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request in flight for the block; RESOURCE_EXHAUSTED beyond the limit."""
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
        if median > allowed:
            self.limit = max(float(self.floor), self.limit * max(0.5, allowed / median))
        elif self._shed or self._peak >= int(self.limit):
            self.limit = min(float(self.ceiling), self.limit + math.sqrt(self.limit))
        IN_FLIGHT_LIMIT.set(self.limit)
        self._window.clear()
        self._window_start = now
        self._peak = self.in_flight
        self._shed = False
