"""`annfleet bench profile`: where the servers' CPU goes per query under closed-loop load.

Starts the local cluster (or uses ``--bundle``), runs ``bench load``'s closed loop on
Retrieval.Search, and for the measured window attaches ``py-spy record --native`` to the
router and to shard 0 (one shard stands for all: they run the same code on equal shares).
Writes ``<name>/``: README.md (CPU µs per query per process from /proc, split by the
profiles' busy-sample shares into faiss / gRPC / (de)serialisation / Python glue; where the
samples are), results.json, ``router.svg`` / ``shard-00.svg`` flame graphs and the raw stacks
(py-spy's collapsed format, gzipped).

py-spy needs ptrace rights on the servers (root, or ``kernel.yama.ptrace_scope`` 0 for a
child); when it cannot attach, the README says why and the CPU table has no split.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from annfleet.benchmarks import flamegraph, report
from annfleet.benchmarks.load import LoadSpec, _cluster_for, run_load, table_row

PROFILED = ("router", "shard-00")


def py_spy() -> str | None:
    """The py-spy executable: on PATH, beside this Python, or wherever its wheel put it."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        dist = importlib.metadata.distribution("py-spy")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "py-spy":
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def cpu_per_query(result: dict[str, Any]) -> dict[str, float]:
    """µs of CPU per successful query for every server process over the measured window."""
    ok = max(1, int(result["ok"]))
    return {
        name: c["cpu_seconds"] * 1e6 / ok
        for name, c in result["cpu"].items()
        if not name.startswith("client")
    }


def _record(exe: str, pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))),
            *("--rate", str(rate), "--native", "--format", "raw", "--output", str(out)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def split_table(
    per_query: dict[str, float], profiles: dict[str, flamegraph.Profile]
) -> list[dict[str, Any]]:
    """Rows: process, CPU µs/query and its split by category (shard 0's shares for shards)."""
    rows = []
    for name, us in per_query.items():
        source = name if name in profiles else ("shard-00" if name.startswith("shard") else "")
        row: dict[str, Any] = {"process": name, "cpu_us_per_query": round(us, 1)}
        profile = profiles.get(source)
        for c in flamegraph.CATEGORIES:
            row[c] = round(us * profile.shares()[c], 1) if profile else None
        row["split_from"] = source if profile else ""
        rows.append(row)
    total: dict[str, Any] = {"process": "all servers", "split_from": ""}
    total["cpu_us_per_query"] = round(sum(per_query.values()), 1)
    for c in flamegraph.CATEGORIES:
        parts = [r[c] for r in rows]
        total[c] = round(sum(parts), 1) if all(p is not None for p in parts) else None
    return [*rows, total]


def run(args: argparse.Namespace) -> dict[str, Any]:
    exe = None if args.no_spy else py_spy()
    out = (
        report.result_dir(args.name, args.out)
        if args.name
        else Path(tempfile.mkdtemp(prefix="annfleet-profile-"))
    )
    spy_notes: list[str] = []
    if not args.no_spy and exe is None:
        spy_notes.append("py-spy is not installed (pip install 'annfleet[dev]'): no profiles")
    with _cluster_for(args) as (target, pids, queries, _):
        spec = LoadSpec(
            target=target,
            rpc="search",
            mode="closed",
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            processes=args.processes,
            k=args.k,
            ef_search=args.ef,
            timeout=args.timeout,
        )
        start_at = time.time() + 2.0 + 0.5 * spec.processes
        spies: dict[str, subprocess.Popen[bytes]] = {}

        def attach() -> None:
            assert exe is not None
            for name in PROFILED:
                if name in pids:
                    spies[name] = _record(
                        exe, pids[name], spec.duration, args.rate, out / f"{name}.raw"
                    )

        timer = threading.Timer(max(0.0, start_at + spec.warmup - time.time()), attach)
        if exe is not None:
            timer.start()
        result = run_load(spec, queries, None, pids, start_at=start_at)
        if exe is not None:
            timer.join()
        profiles: dict[str, flamegraph.Profile] = {}
        for name, proc in spies.items():
            log_text = proc.communicate(timeout=60)[0].decode(errors="replace")
            raw = out / f"{name}.raw"
            if proc.returncode != 0 or not raw.exists():
                spy_notes.append(f"py-spy could not profile {name}: {log_text.strip()[-400:]}")
                continue
            text = raw.read_text()
            busy, idle = flamegraph.parse_raw(text.splitlines())
            with gzip.open(out / f"{name}.raw.gz", "wt") as packed:  # 10x smaller to commit
                packed.write(text)
            raw.unlink()
            profiles[name] = flamegraph.Profile(busy, idle)
            title = f"{name}: {args.name or 'profile'} ({spec.concurrency} in flight, closed loop)"
            (out / f"{name}.svg").write_text(flamegraph.svg(profiles[name], title))
    per_query = cpu_per_query(result)
    return {
        "load": result,
        "cpu_us_per_query": {n: round(v, 1) for n, v in per_query.items()},
        "server_cpu_us_per_query": round(sum(per_query.values()), 1),
        "split": split_table(per_query, profiles),
        "profiles": {
            name: {
                "busy_samples": p.samples,
                "idle_samples": p.idle,
                "shares": {c: round(s, 4) for c, s in p.shares().items()},
                "top": [
                    {"frame": f, "category": c, "share": round(s, 4)}
                    for f, c, s in p.top_frames(args.top)
                ],
            }
            for name, p in profiles.items()
        },
        "notes": spy_notes,
        "out": out,
    }


def readme(head: dict[str, Any], data: dict[str, Any], uptime: tuple[str, str]) -> str:
    m = head["machine"]
    load = data["load"]
    lines = [
        f"# {head['name']}",
        "",
        f"- command: `{head['command']}`",
        f"- git revision: `{head['git_revision']}`, date {head['date']}",
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; loopback",
        f"- uptime before: `{uptime[0]}`",
        f"- uptime after: `{uptime[1]}`",
        "",
        "```",
        report.format_table([table_row(load)], list(table_row(load))),
        "```",
        "",
        f"Server CPU per query (all processes, /proc over the window / successful queries): "
        f"**{data['server_cpu_us_per_query']} µs**.",
        "",
        "CPU µs per query per process, split by the busy-sample shares of the py-spy profile "
        "(shards: shard-00's shares):",
        "",
        "| process | CPU µs/query | faiss | gRPC | (de)serialisation | Python glue |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["split"]:
        cells = [r[c] if r[c] is not None else "–" for c in flamegraph.CATEGORIES]
        lines.append(
            f"| {r['process']} | {r['cpu_us_per_query']} | " + " | ".join(map(str, cells)) + " |"
        )
    for name, p in data["profiles"].items():
        lines += [
            "",
            f"## {name}: [flame graph]({name}.svg), {p['busy_samples']} busy samples "
            f"({p['idle_samples']} idle samples left out)",
            "",
            "| where (innermost frame < innermost Python frame) | category | share |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| `{t['frame'][:150]}` | {t['category']} | {t['share']:.1%} |" for t in p["top"]
        ]
    lines += [
        "",
        "How the split is made: py-spy samples every thread at the rate given (native frames "
        "too); samples whose stack waits (epoll, a lock, the GIL, a condition variable) are "
        "idle and left out; each busy sample goes to the first frame from the leaf that is "
        "faiss, protobuf/upb or `core/arrays.py` ((de)serialisation), grpc's core or "
        "`grpc/aio` (gRPC, with the socket syscalls it makes), or our / asyncio / uvloop code "
        "(glue). The shares times the /proc CPU per query give the µs. py-spy pauses the "
        "process it samples, so a profiled run serves a little less than an unprofiled one.",
    ]
    for note in data["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def cmd(args: argparse.Namespace) -> int:
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    data = run(args)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load = data["load"]
    print(report.format_table([table_row(load)], list(table_row(load))))
    print(f"server CPU per query: {data['server_cpu_us_per_query']} µs")
    for r in data["split"]:
        print(
            f"  {r['process']:12s} {r['cpu_us_per_query']:8.1f} µs  "
            + "  ".join(f"{c} {r[c]}" for c in flamegraph.CATEGORIES)
        )
    for note in data["notes"]:
        print(f"note: {note}")
    if args.name:
        out = data["out"]
        head = report.header(args.name)
        report.write_json(out / "results.json", {**head, "uptime": [before, after], **data})
        (out / "README.md").write_text(readme(head, data, (before, after)))
        print(f"results: {out}")
    return 1 if load["ok"] == 0 else 0
