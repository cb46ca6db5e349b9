"""Result directories: JSON + CSV + PNG + README.md with command, git revision, machine, date."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentiles(latencies_s: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Latencies in seconds -> p50/p95/p99/p99.9/mean in milliseconds."""
    a = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if len(a) == 0:
        return {
            "p50_ms": float("nan"),
            "p95_ms": float("nan"),
            "p99_ms": float("nan"),
            "p999_ms": float("nan"),
            "mean_ms": float("nan"),
        }
    p = np.percentile(a, [50, 95, 99, 99.9])
    return {
        "p50_ms": float(p[0]),
        "p95_ms": float(p[1]),
        "p99_ms": float(p[2]),
        "p999_ms": float(p[3]),
        "mean_ms": float(a.mean()),
    }


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("annfleet", "faiss-cpu", "grpcio", "numpy", *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def header(name: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv if argv is None else argv)
    cmd = argv[:]
    if cmd and cmd[0].endswith(("cli.py", "__main__.py", "annfleet")):
        cmd[0] = "annfleet"
    return {
        "name": name,
        "command": " ".join(cmd),
        "git_revision": git_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(
            ("hnswlib", "usearch", "pymilvus", "milvus-lite", "qdrant-edge-py", "chromadb")
        ),
    }


def result_dir(name: str, root: Path | None = None) -> Path:
    out = (root or RESULTS_DIR) / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: _csv_cell(v) for k, v in row.items()})


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns`` (floats with 3 significant decimals)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items())
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [
        max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)
    ]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(b.ljust(w) for b, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def plot_recall_latency(path: Path, rows: Sequence[dict[str, Any]], title: str, k: int) -> None:
    """recall@k (x) vs p50 and p99 latency (y, log), one line per system; two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        systems.setdefault(str(r["series"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    for ax, metric in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for series, pts in sorted(systems.items()):
            pts = sorted(pts, key=lambda r: r["recall"])
            ax.plot(
                [p["recall"] for p in pts],
                [p[metric] for p in pts],
                marker="o",
                markersize=3,
                label=series,
            )
        ax.set_xlabel(f"recall@{k} vs exact")
        ax.set_ylabel(f"{metric[:-3]} latency per single query (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(metric[:-3])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loadavg() -> str:
    """The 1/5/15-minute load averages (``/proc/loadavg``), e.g. ``"2.10 1.85 1.40"``; ``?``
    where they cannot be read. Result files record them before and after a run."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
