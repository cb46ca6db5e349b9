"""The reply margin: how much of a source's budget ``Retrieve`` keeps back to blend and reply,
measured rather than guessed.

A source that hangs is dropped at its deadline; what the router does after that (wake up
from the budget's timer, which the event loop fires up to a millisecond or more late, blend,
build the response) is on the caller's clock too, and so is the request's way in. So each
source's deadline is ``sent + budget - router.deadline_margin_s - margin``
(``blend.budget_deadline``), where:

- ``sent`` is when the caller sent the request: its arrival at the handler less the inbound
  delay measured from the timeout the caller sent (``annfleet.queue_time``: the
  ``annfleet-timeout-ms`` entry minus ``time_remaining()`` at handler entry; at most the
  whole budget), or the arrival itself when the caller sent no timeout;
- ``router.deadline_margin_s`` is a fixed allowance for the request's path the router cannot
  time: from the handler's reply to the caller (gRPC's serialising and sending, the
  caller's parsing), and the way in where it is not measured (a caller that sends no
  timeout; the measured delay is low by up to gRPC's rounding of the deadline it sends,
  1 ms below 1 s);
- ``margin`` is what the router measures it needs after a budget (this module):

- after each ``Retrieve`` whose wait for its sources ended at a budget (the last source
  still running was dropped at its deadline), the router notes how long after that deadline
  its response was ready to hand back to gRPC (:meth:`ReplyMargin.observe`): the budget
  timer's lateness, the blend and the response. gRPC's own serialising and sending are left
  to ``deadline_margin_s``: the time the RPC is seen done (a completion the gRPC poller
  thread passes to the event loop) came up to several ms after the reply on a busy box, a
  tail of the notification rather than of the reply;
- the margin is the ``router.reply_margin_quantile`` of the last
  ``router.reply_margin_window`` such times, never below 0 nor above
  ``router.reply_margin_max_s`` (a burst of stalls, e.g. a rollout loading a model, must
  not eat the sources' budgets); until ``MIN_SAMPLES`` are noted it is that cap.

Each time is measured from the deadline itself, not from the margin it was computed with,
so the estimate does not feed on itself: a larger margin moves the deadline earlier, not
the time the router needs after it.
"""

from __future__ import annotations

from annfleet.config import RouterConfig
from annfleet.metrics import REPLY_MARGIN
from annfleet.recent import MIN_SAMPLES, RecentQuantile

__all__ = ["MIN_SAMPLES", "ReplyMargin"]  # MIN_SAMPLES: below this many times, the cap


class ReplyMargin:
    """The measured part of the time kept back from each source's budget (module doc)."""

    def __init__(self, quantile: float = 0.99, window: int = 512, max_s: float = 0.005) -> None:
        self._times = RecentQuantile(quantile, 0.0, max_s, window=window)
        self.value = max_s  # seconds
        REPLY_MARGIN.set(self.value)

    @classmethod
    def from_config(cls, config: RouterConfig) -> ReplyMargin:
        return cls(
            config.reply_margin_quantile, config.reply_margin_window, config.reply_margin_max_s
        )

    @property
    def samples(self) -> int:
        """How many times the margin is computed over (at most the window)."""
        return self._times.samples

    def observe(self, seconds: float) -> None:
        """Note one reply's time after the budget that ended its wait (negative when the
        budget's timer fired early and the reply left before the deadline)."""
        self._times.add(seconds)
        self.value = self._times.value()
        REPLY_MARGIN.set(self.value)
