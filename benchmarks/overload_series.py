"""A per-second series of one overload phase: *when* the accepted tail builds.

The phase's totals (``overload.client_row``) say how long the accepted requests took, not
when. This samples the router while the phase runs and buckets every request by the
second it was scheduled in (relative to the measured window's start, so warm-up seconds
are negative):

- from the load's and the probe's own records (``LoadSpec.record``): sent (not rejected
  locally), OK, refused (RESOURCE_EXHAUSTED), timed out (DEADLINE_EXCEEDED / CANCELLED),
  the load's accepted p99 and the probe's accepted maximum (50 calls a second: its p99 is
  its maximum);
- from the router's metrics, sampled every ``SAMPLE_S``: the queue time's p99 (the
  histogram bucket it falls in) over the requests that reached the handler in that second,
  requests refused on queue time, and the adaptive in-flight limit at the sample;
- ``health_ms``: the slowest of the router's ``grpc.health.v1`` Check round trips in that
  second (sent from this process every ``SAMPLE_S``): how long a trivial RPC waits behind
  the router's HTTP/2 queue and event loop, i.e. its lag.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SAMPLE_S = 0.1
TIMEOUTS = ("DEADLINE_EXCEEDED", "CANCELLED")
LOCAL = ("THROTTLED", "CLIENT_BACKLOG")

Record = tuple[float, float, str, bool]  # load.Record


class RouterSampler:
    """A thread that samples ``admission()`` (``overload.router_admission`` for one router)
    and the router's health round trip every ``SAMPLE_S`` while the ``with`` block runs."""

    def __init__(self, target: str, admission: Callable[[], dict[str, Any]]) -> None:
        self.target = target
        self.admission = admission
        self.samples: list[tuple[float, dict[str, Any], float]] = []  # (time, state, health s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RouterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    check(health_pb2.HealthCheckRequest(), timeout=2.0)
                    rtt = time.perf_counter() - t0
                except grpc.RpcError:
                    rtt = math.inf
                try:
                    state = self.admission()
                except OSError:
                    state = {}
                self.samples.append((time.time(), state, rtt))
                self._stop.wait(max(0.0, SAMPLE_S - (time.perf_counter() - t0)))


def _p99_ms(latencies: list[float]) -> float | None:
    return round(float(np.percentile(latencies, 99)) * 1e3, 1) if latencies else None


def _bucket_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The queue time's p99 (its histogram bucket's bound, ms) between two samples."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(math.inf, 0.0)
    if total <= 0:
        return None
    return next(le * 1e3 for le, n in counts.items() if n >= 0.99 * total)


def per_second(
    load: Sequence[Record],
    probe: Sequence[Record],
    samples: Sequence[tuple[float, dict[str, Any], float]],
    measure_from: float,
) -> list[dict[str, Any]]:
    """One row per second of the phase (``second`` 0 = the measured window's first)."""
    rows: dict[int, dict[str, Any]] = {}

    def row(t: float) -> dict[str, Any]:
        s = math.floor(t - measure_from)
        return rows.setdefault(
            s,
            {"second": s, "sent": 0, "ok": 0, "refused": 0, "timed_out": 0, "_lat": [], "_p": []},
        )

    for t, latency, code, _ in load:
        if code in LOCAL:
            continue
        r = row(t)
        r["sent"] += 1
        r["ok"] += code == "OK"
        r["refused"] += code == "RESOURCE_EXHAUSTED"
        r["timed_out"] += code in TIMEOUTS
        if code == "OK":
            r["_lat"].append(latency)
    for t, latency, code, _ in probe:
        if code == "OK":
            row(t)["_p"].append(latency)
    by_second: dict[int, list[tuple[float, dict[str, Any], float]]] = {}
    for sample in samples:
        by_second.setdefault(math.floor(sample[0] - measure_from), []).append(sample)
    previous: tuple[float, dict[str, Any], float] | None = None
    for s in sorted(by_second):
        group = by_second[s]
        r = row(measure_from + s)
        last = group[-1][1]
        if previous is not None and previous[1] and last:
            r["queue_p99_ms"] = _bucket_p99_ms(previous[1]["queue_buckets"], last["queue_buckets"])
            r["queue_shed"] = int(last["queue_shed"] - previous[1]["queue_shed"])
        r["limit"] = last.get("limit")
        finite = [h for _, _, h in group if math.isfinite(h)]
        r["health_ms"] = round(max(finite) * 1e3, 1) if finite else None
        previous = group[-1]
    out = []
    for s in sorted(rows):
        r = rows[s]
        lat, p = r.pop("_lat"), r.pop("_p")
        out.append(
            {
                "second": r["second"],
                "sent": r["sent"],
                "ok": r["ok"],
                "refused": r["refused"],
                "timed_out": r["timed_out"],
                "load_p99_ms": _p99_ms(lat),
                "probe_max_ms": round(max(p) * 1e3, 1) if p else None,
                "queue_p99_ms": r.get("queue_p99_ms"),
                "queue_shed": r.get("queue_shed"),
                "limit": r.get("limit"),
                "health_ms": r.get("health_ms"),
            }
        )
    return out
