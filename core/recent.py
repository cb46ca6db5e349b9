"""A clamped quantile of the most recent samples: self-tuned delays.

The hedge delay of a shard's replicas (``router/replicas.py``: the running
``hedge_quantile`` of attempt latencies), the reply margin of ``Retrieve``
(``router/margin.py``) and the return time a client reports (``annfleet.return_time``) are
the q-quantile of the last ``window`` samples, kept within [``low``, ``high``], and ``high``
until ``min_samples`` are in: the cautious end until there is something to measure.
"""

from __future__ import annotations

import numpy as np

WINDOW = 512  # samples the quantile is taken over
MIN_SAMPLES = 20  # below this many the value is ``high``


class RecentQuantile:
    """The ``q``-quantile of the last ``window`` samples, clamped to [``low``, ``high``].

    It is recomputed when read once ``every`` new samples have come in (a quantile over the
    window costs microseconds: a hot path adds often and recomputes rarely).
    """

    def __init__(
        self,
        q: float,
        low: float,
        high: float,
        *,
        window: int = WINDOW,
        min_samples: int = MIN_SAMPLES,
        every: int = 1,
    ) -> None:
        self.q, self.low, self.high = q, low, high
        self.min_samples, self.every = min_samples, every
        self._ring = np.zeros(max(window, 1), np.float64)  # the latest samples
        self._count = 0  # samples added in all (the ring holds the last len(_ring))
        self._new = 0  # samples added since the value was last computed
        self._value = high

    @property
    def samples(self) -> int:
        """How many samples the quantile is taken over (at most the window)."""
        return min(self._count, len(self._ring))

    def add(self, sample: float) -> None:
        self._ring[self._count % len(self._ring)] = sample
        self._count += 1
        self._new += 1

    def value(self) -> float:
        if self._new >= self.every and self.samples >= self.min_samples:
            measured = float(np.quantile(self._ring[: self.samples], self.q))
            self._value = min(max(measured, self.low), self.high)
            self._new = 0
        return self._value
