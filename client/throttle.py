"""Client-side adaptive throttling, as in Google's SRE book ("Handling Overload").

A server that refuses a request still pays for it: a Python gRPC router spends about as
much CPU refusing an RPC as serving one, so clients that keep sending at 4x its capacity
make it refuse 3x its capacity and the requests it accepts queue behind the refusals. The
remedy is that each client stops sending what the server is going to refuse.

Each client keeps, over a sliding window of ``window_s`` seconds (``buckets`` buckets):

- ``requests``: attempts that finished, plus calls this client rejected locally;
- ``accepts``: attempts the server took: all but those it refused (RESOURCE_EXHAUSTED from
  an admission or queue limit; grpc's message-size RESOURCE_EXHAUSTED is not a refusal)
  and those that ran out of time (DEADLINE_EXCEEDED, or CANCELLED by the server), see
  ``errors.overloaded``. The timeouts count because an overloaded Python gRPC server may
  not get to refuse at all: requests wait in HTTP/2 until their deadline passes (measured:
  at 4x capacity with a throttle that counted only refusals, the router refused 3.7/s and
  let 2,900/s time out, and the throttle never engaged). As grpc-java's RLS throttler,
  which counts every error; unlike it, UNAVAILABLE (a server down, not busy) is an accept.

and rejects a new attempt locally, before any RPC, with probability
``max(0, (requests - k * accepts) / (requests + 1))``. While the server accepts everything
nothing is rejected; when it accepts only a fraction ``a`` of what it is offered, the client
sends about ``k * a`` of its calls (up to all of them) and rejects the rest. With ``k`` = 2
a client still sends the server twice what it accepts, so that a recovering server is seen
within about one window; ``k`` nearer 1 sends less that is refused and reacts more slowly.
Attempts in flight count only once finished (as grpc-go's adaptive throttler in
``balancer/rls/internal/adaptive`` registers them), so a client with many slow calls
outstanding does not throttle itself.

One module for the sync and asyncio clients; thread-safe (one lock, held for a few
arithmetic operations). A local rejection costs no RPC: a clock read, a random draw and
the exception.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from annfleet.client.errors import InvalidArgument, Throttled


@dataclass(frozen=True)
class ThrottleConfig:
    """Knobs of the client's adaptive throttle (pass ``throttle=None`` to a client for none).

    ``k``: how many times the accepted requests a client may still send (the SRE book's
    multiplier; >= 1). ``window_s``: how much history counts, in ``buckets`` steps. The
    defaults (2.0, 2 s, 20 buckets of 100 ms) suit a ranking service: calls of tens of
    milliseconds at hundreds per second per client put hundreds of answers in a window,
    enough for a steady estimate, and the throttle follows the onset and the end of an
    overload within about 2 s (the book keeps two minutes, grpc-go's throttler 30 s: made
    for lower request rates).
    """

    k: float = 2.0
    window_s: float = 2.0
    buckets: int = 20

    def __post_init__(self) -> None:
        if not self.k >= 1.0:
            raise InvalidArgument(f"throttle k must be >= 1, got {self.k}")
        if not self.window_s > 0:
            raise InvalidArgument(f"throttle window_s must be > 0, got {self.window_s}")
        if self.buckets < 1:
            raise InvalidArgument(f"throttle buckets must be >= 1, got {self.buckets}")


DEFAULT_THROTTLE = ThrottleConfig()


@dataclass(frozen=True)
class ThrottleStats:
    """A client's throttle counters since it was created (``requests = accepts + refused +
    throttled``) and the rejection probability over the current window."""

    requests: int  # attempts that finished + calls rejected locally
    accepts: int  # attempts the server did not refuse
    refused: int  # attempts refused (RESOURCE_EXHAUSTED from a limit) or timed out
    throttled: int  # calls rejected locally, never sent
    probability: float  # what the next attempt is rejected with, now


def rejection_probability(requests: float, accepts: float, k: float) -> float:
    """The SRE book's rule: ``max(0, (requests - k * accepts) / (requests + 1))``."""
    return max(0.0, (requests - k * accepts) / (requests + 1.0))


class AdaptiveThrottle:
    """The sliding-window counts and the admit / record bookkeeping of one client."""

    def __init__(
        self,
        config: ThrottleConfig = DEFAULT_THROTTLE,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        n = config.buckets
        self._per_s = n / config.window_s  # bucket index = int(time * per_s)
        self._requests = [0] * n
        self._accepts = [0] * n
        self._slot = int(clock() * self._per_s)
        self._window_requests = 0
        self._window_accepts = 0
        self.accepts = 0
        self.refused = 0
        self.throttled = 0

    def _advance(self) -> int:
        """Move the window to now (caller holds the lock); returns the current bucket."""
        slot = int(self._clock() * self._per_s)
        n = len(self._requests)
        if slot != self._slot:
            if slot - self._slot >= n:
                self._requests = [0] * n
                self._accepts = [0] * n
                self._window_requests = self._window_accepts = 0
            else:
                for s in range(self._slot + 1, slot + 1):
                    i = s % n
                    self._window_requests -= self._requests[i]
                    self._window_accepts -= self._accepts[i]
                    self._requests[i] = self._accepts[i] = 0
            self._slot = slot
        return slot % n

    def admit(self) -> None:
        """Before an attempt: returns to send it, raises ``Throttled`` to reject it locally."""
        with self._lock:
            i = self._advance()
            requests, accepts = self._window_requests, self._window_accepts
            p = rejection_probability(requests, accepts, self.config.k)
            if p <= 0.0 or self._draw() >= p:
                return
            self._requests[i] += 1
            self._window_requests += 1
            self.throttled += 1
        raise Throttled(
            f"throttled locally, not sent: the server accepted {accepts} of this client's "
            f"last {requests} requests (window {self.config.window_s:g} s, k "
            f"{self.config.k:g}); rejection probability {p:.2f}"
        )

    def record(self, refused: bool) -> None:
        """After an attempt finished: ``refused`` if the server refused it or it timed out
        (``errors.overloaded``); any other outcome, success or failure, is an accept."""
        with self._lock:
            i = self._advance()
            self._requests[i] += 1
            self._window_requests += 1
            if refused:
                self.refused += 1
            else:
                self._accepts[i] += 1
                self._window_accepts += 1
                self.accepts += 1

    def probability(self) -> float:
        """The rejection probability an attempt would see now."""
        with self._lock:
            self._advance()
            return rejection_probability(self._window_requests, self._window_accepts, self.config.k)

    def stats(self) -> ThrottleStats:
        p = self.probability()
        with self._lock:
            return ThrottleStats(
                requests=self.accepts + self.refused + self.throttled,
                accepts=self.accepts,
                refused=self.refused,
                throttled=self.throttled,
                probability=p,
            )
