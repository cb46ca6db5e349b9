"""Request outcomes over the last minute, for the status pages (no Prometheus needed).

One bucket per second in a ring of ``span_s`` buckets: each counts requests by method and
status code, keeps a log-spaced latency histogram per method, and (router) sums coverage,
degraded responses and candidates per source. A snapshot merges the live buckets, so memory
and the cost of one ``record`` stay fixed whatever the request rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annfleet.web import Cell, fmt_ms, fmt_share, paragraph, section, table

LATENCY_FLOOR_S = 1e-5  # the first bin holds everything below 10 µs
LATENCY_RATIO = 1.04  # each bin 4% wider than the last: percentiles within 2% of the truth
LATENCY_BINS = 450  # up to ~460 s
_LOG_RATIO = math.log(LATENCY_RATIO)


def latency_bin(seconds: float) -> int:
    """The histogram bin of a latency: [floor * ratio**i, floor * ratio**(i + 1))."""
    if seconds <= LATENCY_FLOOR_S:
        return 0
    return min(int(math.log(seconds / LATENCY_FLOOR_S) / _LOG_RATIO), LATENCY_BINS - 1)


def quantile(hist: np.ndarray, q: float) -> float | None:
    """hist (LATENCY_BINS,) int64 counts -> the q-quantile in seconds (geometric middle of
    its bin), None when empty."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    i = int(np.searchsorted(np.cumsum(hist), rank))
    return LATENCY_FLOOR_S * LATENCY_RATIO ** (i + 0.5)


@dataclass
class _Method:
    count: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    latency: np.ndarray = field(default_factory=lambda: np.zeros(LATENCY_BINS, np.int64))

    def add(self, other: _Method) -> None:
        self.count += other.count
        self.codes.update(other.codes)
        self.latency += other.latency


@dataclass
class _Second:
    second: int
    methods: dict[str, _Method] = field(default_factory=dict)
    covered: int = 0  # responses that carried a coverage
    coverage_sum: float = 0.0
    coverage_min: float = 1.0
    degraded: int = 0
    sources: Counter[str] = field(default_factory=Counter)


class RequestWindow:
    """Outcomes of the requests that finished in the last ``span_s`` seconds.

    ``record`` and ``snapshot`` may be called from different threads.
    """

    def __init__(self, span_s: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.span_s = span_s
        self.clock = clock
        self._ring: list[_Second | None] = [None] * span_s
        self._lock = threading.Lock()

    def _bucket(self, second: int) -> _Second:
        slot = second % self.span_s
        bucket = self._ring[slot]
        if bucket is None or bucket.second != second:
            bucket = self._ring[slot] = _Second(second)
        return bucket

    def record(
        self,
        method: str,
        code: str,
        seconds: float,
        *,
        coverage: tuple[int, int] | None = None,
        degraded: bool = False,
        sources: Mapping[str, int] | None = None,
    ) -> None:
        """One finished request: its status code name, latency, and (for answers that carry
        them) shards answered / asked, the degraded flag and candidates per source."""
        with self._lock:
            bucket = self._bucket(int(self.clock()))
            stats = bucket.methods.get(method)
            if stats is None:
                stats = bucket.methods[method] = _Method()
            stats.count += 1
            stats.codes[code] += 1
            stats.latency[latency_bin(seconds)] += 1
            if coverage is not None and coverage[1] > 0:
                share = coverage[0] / coverage[1]
                bucket.covered += 1
                bucket.coverage_sum += share
                bucket.coverage_min = min(bucket.coverage_min, share)
                bucket.degraded += bool(degraded)
            if sources:
                bucket.sources.update(sources)

    def snapshot(self) -> dict[str, Any]:
        """The window as plain data (JSON-ready): per method count, QPS, codes, p50/p99 ms;
        coverage mean/min and degraded rate over answers that carried a coverage; candidates
        and share per source."""
        now = int(self.clock())
        methods: dict[str, _Method] = {}
        total = _Second(now)
        with self._lock:
            live = [b for b in self._ring if b is not None and now - b.second < self.span_s]
            for bucket in live:
                for name, stats in bucket.methods.items():
                    methods.setdefault(name, _Method()).add(stats)
                total.covered += bucket.covered
                total.coverage_sum += bucket.coverage_sum
                total.coverage_min = min(total.coverage_min, bucket.coverage_min)
                total.degraded += bucket.degraded
                total.sources.update(bucket.sources)
        requests = {}
        for name in sorted(methods):
            stats = methods[name]
            p50, p99 = quantile(stats.latency, 0.50), quantile(stats.latency, 0.99)
            ok = stats.codes.get("OK", 0)
            requests[name] = {
                "count": stats.count,
                "qps": stats.count / self.span_s,
                "ok": ok,
                "error_rate": (stats.count - ok) / stats.count,
                "codes": dict(sorted(stats.codes.items())),
                "p50_ms": None if p50 is None else p50 * 1e3,
                "p99_ms": None if p99 is None else p99 * 1e3,
            }
        candidates = sum(total.sources.values())
        return {
            "window_s": self.span_s,
            "requests": requests,
            "coverage": {
                "responses": total.covered,
                "mean": total.coverage_sum / total.covered if total.covered else None,
                "min": total.coverage_min if total.covered else None,
                "degraded": total.degraded,
                "degraded_rate": total.degraded / total.covered if total.covered else None,
            },
            "sources": {
                name: {"candidates": n, "share": n / candidates}
                for name, n in sorted(total.sources.items(), key=lambda kv: (-kv[1], kv[0]))
            },
        }


def requests_section(snapshot: dict[str, Any]) -> str:
    """HTML: one row per method of a ``RequestWindow.snapshot()`` (count, QPS, p50, p99, codes)."""
    window = snapshot["window_s"]
    requests = snapshot["requests"]
    return section(
        f"Requests, last {window} s",
        table(
            ["method", "requests", "QPS", "p50", "p99", "errors", "codes"],
            [
                [
                    name,
                    Cell(m["count"], "num"),
                    Cell(f"{m['qps']:.2f}", "num"),
                    Cell(fmt_ms(m["p50_ms"]), "num"),
                    Cell(fmt_ms(m["p99_ms"]), "num"),
                    Cell(fmt_share(m["error_rate"]), "bad" if m["error_rate"] else "num"),
                    ", ".join(f"{c} {n}" for c, n in m["codes"].items()),
                ]
                for name, m in requests.items()
            ],
        )
        if requests
        else paragraph(f"No requests in the last {window} s.", "muted"),
    )
