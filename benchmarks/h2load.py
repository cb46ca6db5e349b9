"""h2load (nghttp2's HTTP/2 load generator, written in C) as a cheap gRPC load generator.

A gRPC call over cleartext HTTP/2 is a POST to ``/<package>.<Service>/<Method>`` with
``content-type: application/grpc``, ``te: trailers`` and a body of one length-prefixed
message; h2load sends exactly that, as many times as asked, for a few microseconds of CPU
per request where a Python gRPC client spends a few hundred. That is what lets the
overload benchmark offer 4x the cluster's capacity from the same 2 cores the cluster runs
on without the generator taking the cores the cluster needs.

What h2load cannot see is the gRPC status: it lives in the HTTP/2 trailers, and every
response (an answer or a RESOURCE_EXHAUSTED refusal) is HTTP 200 to h2load. So the
outcome counts come from the server's own ``annfleet_requests_total`` counters, and an
accepted request's latency from a light Python probe running beside h2load.

- closed loop: ``connections x streams`` requests in flight for ``duration`` seconds
  (``h2load -D``);
- open loop: a timing script schedules every request at its time on each connection
  (``--timing-script-file``), whether earlier ones were answered or not (with enough
  concurrent streams allowed: no coordinated omission).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import report

BINARY = "h2load"


def available() -> str | None:
    """Path of the h2load binary (Debian package ``nghttp2-client``), None if absent."""
    return shutil.which(BINARY)


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class H2LoadResult:
    requests: int  # requests h2load finished (answered, whatever the gRPC status)
    failed: int  # requests h2load saw fail at the HTTP/2 level (reset, timeout)
    wall_s: float  # h2load's whole run
    cpu_s: float  # h2load's user + system CPU
    latencies_s: np.ndarray  # (n,) float64, every finished request (accepted or refused)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_request": round(1e6 * self.cpu_s / max(1, self.requests), 1),
            **{f"all_{k}": v for k, v in report.percentiles(self.latencies_s).items()},
        }


class H2Load:
    """Runs h2load against one gRPC method of a cleartext loopback target."""

    def __init__(self, target: str, method: str, message: bytes, connections: int = 4) -> None:
        binary = available()
        if binary is None:
            raise RuntimeError("h2load is not installed (Debian package nghttp2-client)")
        self.binary = binary
        self.url = f"http://{target}/{method.lstrip('/')}"
        self.connections = connections
        self.workdir = Path(tempfile.mkdtemp(prefix="annfleet-h2load-"))
        self.body = self.workdir / "body"
        self.body.write_bytes(grpc_frame(message))

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _args(self, streams: int) -> list[str]:
        return [
            self.binary,
            "--clients",
            str(self.connections),
            "--threads",
            "1",
            "--max-concurrent-streams",
            str(streams),
            "--data",
            str(self.body),
            "--header",
            "content-type: application/grpc",
            "--header",
            "te: trailers",
            "--log-file",
            str(self.workdir / "log"),
        ]

    def closed(self, in_flight: int, duration: float) -> H2LoadResult:
        """``in_flight`` requests outstanding (spread over the connections) for ``duration``."""
        streams = max(1, -(-in_flight // self.connections))
        return self._run(
            [*self._args(streams), "--duration", f"{max(1, round(duration * 1000))}ms", self.url]
        )

    def open(self, rate: float, duration: float, streams: int = 4096) -> H2LoadResult:
        """``rate`` requests/s in all, on a fixed schedule, for ``duration`` seconds."""
        per_conn = rate / self.connections
        n = max(1, int(per_conn * duration))
        step_ms = 1000.0 / per_conn
        script = self.workdir / "script"
        with script.open("w") as f:
            for i in range(n):
                f.write(f"{i * step_ms:.3f}\t{self.url}\n")
        return self._run([*self._args(streams), "--timing-script-file", str(script)])

    def _run(self, args: list[str]) -> H2LoadResult:
        log = self.workdir / "log"
        log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"h2load exited {proc.returncode}: {output[-2000:]}")
        latencies = _log_latencies(log)
        return H2LoadResult(
            requests=len(latencies),
            failed=_count(output, "failed"),
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            latencies_s=latencies,
        )


def _log_latencies(path: Path) -> np.ndarray:
    """h2load's --log-file: one line per request, ``start_us<TAB>status<TAB>duration_us``."""
    if not path.exists() or path.stat().st_size == 0:
        return np.empty(0)
    cols = np.loadtxt(path, dtype=np.int64, ndmin=2, usecols=(1, 2))
    return cols[cols[:, 0] > 0, 1].astype(np.float64) / 1e6


def _count(output: str, word: str) -> int:
    """A count from h2load's summary line ``requests: N total, ..., F failed, ...``."""
    for line in output.splitlines():
        if line.startswith("requests:"):
            for part in line.split(":", 1)[1].split(","):
                value, _, name = part.strip().partition(" ")
                if name == word:
                    return int(value)
    return 0
