"""Measure the inputs of the capacity model (``annfleet capacity``, deploy/CAPACITY.md).

- bytes per item of each shard file (index.faiss, ids.npy, vectors.npy) for every index type
  at several dims, from real one-shard bundles built at two sizes (the difference cancels
  fixed costs: IVF centroids, PQ codebooks, headers), fitted as ``a + b * dim``;
- the resident memory of an idle shard server and router process (Python, faiss, gRPC)
  on a tiny bundle.

    python -m annfleet.benchmarks.capacity [--dims 32,64,128] [--items 40000,80000]

writes ``benchmarks/results/capacity/{results.json,README.md}``. Per-shard QPS per core comes
from ``annfleet bench load`` runs (see deploy/CAPACITY.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks.procstat import memory_kib
from annfleet.benchmarks.report import format_table, header, result_dir, write_json
from annfleet.cluster import free_port, health_status
from annfleet.server.builder import build_bundle
from annfleet.synthetic import make_catalogue

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
FILES = ("index.faiss", "ids.npy", "vectors.npy")


def shard_file_sizes(root: Path, index_type: str, items: int, dim: int) -> dict[str, int]:
    """Build a one-shard bundle with the default parameters; sizes of its shard files."""
    cat = make_catalogue(items, dim, clusters=64, users=10, seed=1)
    bundle = build_bundle(
        root / f"{index_type}-{items}x{dim}",
        cat.ids,
        cat.vectors,
        num_shards=1,
        index_type=index_type,
        progress=False,
    )
    shard = bundle.shard_dir(0)
    return {name: (shard / name).stat().st_size for name in FILES}


def fit_linear(dims: list[int], values: list[float]) -> tuple[float, float]:
    """Least squares ``values ~ a + b * dims`` -> (a, b)."""
    b, a = np.polyfit(np.asarray(dims, dtype=np.float64), np.asarray(values), 1)
    return float(a), float(b)


def idle_rss_mib(root: Path) -> dict[str, float]:
    """RSS of a shard server and a router serving a 1,000-item flat bundle, after start-up."""
    cat = make_catalogue(1000, 16, clusters=8, users=10, seed=1)
    bundle = build_bundle(
        root / "tiny",
        cat.ids,
        cat.vectors,
        num_shards=1,
        index_type="flat",
        user_ids=cat.user_ids,
        user_vectors=cat.user_vectors,
        progress=False,
    )
    shard_port, router_port = free_port(), free_port()
    cli = [sys.executable, "-m", "annfleet.cli"]
    # fmt: off
    procs = {
        "shard": subprocess.Popen(
            [*cli, "serve-shard", "--bundle", str(bundle.path), "--shard", "0",
             "--port", f"{shard_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    }
    try:
        _wait_serving(f"127.0.0.1:{shard_port}")
        procs["router"] = subprocess.Popen(
            [*cli, "serve-router", "--bundle", str(bundle.path), "--port", f"{router_port}",
             "--shards", f"127.0.0.1:{shard_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # fmt: on
        _wait_serving(f"127.0.0.1:{router_port}")
        time.sleep(1.0)
        return {name: memory_kib(p.pid)["VmRSS"] / 1024 for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(30)


def _wait_serving(target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while health_status(target) != "SERVING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} not SERVING after {timeout:.0f}s")
        time.sleep(0.2)


def measure(dims: list[int], items: tuple[int, int]) -> dict[str, Any]:
    n1, n2 = items
    rows: list[dict[str, Any]] = []
    fits: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="annfleet-capacity-") as tmp:
        root = Path(tmp)
        for index_type in INDEX_TYPES:
            per_file: dict[str, list[float]] = {name: [] for name in FILES}
            for dim in dims:
                small = shard_file_sizes(root, index_type, n1, dim)
                large = shard_file_sizes(root, index_type, n2, dim)
                row: dict[str, Any] = {"index": index_type, "dim": dim}
                for name in FILES:
                    per_item = (large[name] - small[name]) / (n2 - n1)
                    per_file[name].append(per_item)
                    row[f"{name}_bytes_per_item"] = round(per_item, 3)
                    row[f"{name}_fixed_bytes"] = round(small[name] - per_item * n1)
                rows.append(row)
            fits[index_type] = {
                name: dict(zip(("a", "b"), fit_linear(dims, per_file[name]), strict=True))
                for name in FILES
            }
        rss = idle_rss_mib(root)
    return {"items": list(items), "dims": dims, "rows": rows, "fits": fits, "idle_rss_mib": rss}


def readme(head: dict[str, Any], result: dict[str, Any]) -> str:
    columns = ["index", "dim", *(f"{name}_bytes_per_item" for name in FILES)]
    fit_rows = [
        {"index": t, **{name: f"{f['a']:.2f} + {f['b']:.3f}*d" for name, f in fits.items()}}
        for t, fits in result["fits"].items()
    ]
    rss = result["idle_rss_mib"]
    return "\n".join(
        [
            f"# {head['name']}",
            "",
            f"- command: `{head['command']}`",
            f"- git revision: `{head['git_revision']}`, date {head['date']}",
            f"- machine: {head['machine']['cores']} cores, {head['machine']['memory_gib']} GiB, "
            f"{head['machine']['cpu']} (shared with other jobs; sizes do not depend on load)",
            f"- one-shard bundles of {result['items'][0]} and {result['items'][1]} synthetic "
            "items per (index, dim), default index parameters (hnsw M=32; ivfpq nlist=1024, "
            "pq_m=16, nbits=8); bytes per item = size difference / item difference",
            "",
            "## Bytes per item of each shard file",
            "",
            "```",
            format_table(result["rows"], columns),
            "```",
            "",
            "## Linear fit in the dimension d (what `annfleet capacity` uses)",
            "",
            "```",
            format_table(fit_rows, ["index", *FILES]),
            "```",
            "",
            f"Idle process RSS on a 1,000-item bundle: shard server {rss['shard']:.0f} MiB, "
            f"router {rss['router']:.0f} MiB (Python, numpy, faiss, gRPC).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="32,64,128")
    p.add_argument("--items", default="40000,80000", help="two sizes, comma-separated")
    p.add_argument("--name", default="capacity")
    p.add_argument("--out", type=Path, default=None, help="results root (default: committed)")
    args = p.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    n1, n2 = (int(n) for n in args.items.split(","))
    argv_full = [sys.executable.rsplit("/", 1)[-1], "-m", "annfleet.benchmarks.capacity"]
    head = header(args.name, argv_full + list(argv if argv is not None else sys.argv[1:]))
    result = measure(dims, (n1, n2))
    out = result_dir(args.name, args.out)
    write_json(out / "results.json", {**head, **result})
    (out / "README.md").write_text(readme(head, result))
    print(readme(head, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
