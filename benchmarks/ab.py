"""A/B of two builds in one run: ``bench load`` (closed loop) alternately from each build.

    python -m annfleet.benchmarks.ab --a /path/new/.venv/bin/annfleet \\
        --b /path/old/.venv/bin/annfleet --rounds 3 --name ab-x -- \\
        --items 200000 --shards 4 --concurrency 32 --processes 2 --duration 15 --ef 200

Each build is an ``annfleet`` executable from its own checkout (a git worktree at the old
commit with its own venv), so its servers run that checkout's code. Two settings of one
build (a config switch) are compared with the same executable on both sides and
``--a-args`` / ``--b-args``, extra ``bench load`` arguments of one side (e.g.
``--a-args "--config stream.yaml"``). Runs go B A B A ...;
each ratio A/B is taken within a pair (the machine's speed drifts less within a pair than
across the session) and the medians are reported. Writes ``<name>/README.md`` and
``results.json``: QPS, p50/p99 and server CPU µs per query (/proc over the measured window,
all server processes, / successful queries) of every run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from annfleet.benchmarks import report

METRICS = ("server_cpu_us_per_query", "achieved_qps", "p50_ms", "p99_ms")


def summarise(result: dict[str, Any]) -> dict[str, float]:
    """A bench load results.json -> the figures compared."""
    ok = max(1, int(result["ok"]))
    server_cpu = sum(
        c["cpu_seconds"] for n, c in result["cpu"].items() if not n.startswith("client")
    )
    return {
        "server_cpu_us_per_query": round(server_cpu * 1e6 / ok, 1),
        "achieved_qps": round(float(result["achieved_qps"]), 1),
        "p50_ms": round(float(result["p50_ms"]), 2),
        "p99_ms": round(float(result["p99_ms"]), 2),
        "errors": sum(result["errors"].values()),
    }


def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median over pairs of A/B for each metric (runs alternate B, A, B, A ...)."""
    out = {}
    pairs = [(runs[i + 1], runs[i]) for i in range(0, len(runs) - 1, 2)]
    for metric in METRICS:
        values = [a["figures"][metric] / b["figures"][metric] for a, b in pairs]
        out[metric] = round(statistics.median(values), 3) if values else float("nan")
    return out


def run_one(exe: str, label: str, i: int, load_args: list[str], scratch: Path) -> dict[str, Any]:
    name = f"{label}-{i}"
    cmd = [exe, "bench", "load", *load_args, "--name", name, "--out", str(scratch)]
    print(f"[{label} {i}] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads((scratch / name / "results.json").read_text())
    figures = summarise(result)
    print(f"[{label} {i}] {figures}", flush=True)
    return {"build": label, "round": i, "git_revision": result["git_revision"], "figures": figures}


def readme(head: dict[str, Any], data: dict[str, Any]) -> str:
    m = head["machine"]
    lines = [
        f"# {head['name']}",
        "",
        f"- command: `{head['command']}`",
        f"- A: `{data['a']}` ({data['a_revision']}); B: `{data['b']}` ({data['b_revision']})",
        f"- each run: `annfleet bench load {' '.join(data['load_args'])}`"
        + (f"; A adds `{' '.join(data['a_args'])}`" if data.get("a_args") else "")
        + (f"; B adds `{' '.join(data['b_args'])}`" if data.get("b_args") else ""),
        f"- date {head['date']}; machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; "
        "loopback; **shared with other engineers' jobs**",
        f"- uptime before: `{data['uptime'][0]}`",
        f"- uptime after: `{data['uptime'][1]}`",
        "",
        "| run | build | server CPU µs/query | QPS | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(data["runs"]):
        f = r["figures"]
        lines.append(
            f"| {i + 1} | {r['build']} | {f['server_cpu_us_per_query']} | {f['achieved_qps']} | "
            f"{f['p50_ms']} | {f['p99_ms']} | {f['errors']} |"
        )
    r = data["ratios"]
    lines += [
        "",
        "Median over pairs of A / B: "
        + ", ".join(f"{metric} **{r[metric]}**" for metric in METRICS),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annfleet.benchmarks.ab")
    parser.add_argument("--a", required=True, help="annfleet executable of the build tried")
    parser.add_argument("--b", required=True, help="annfleet executable of the baseline build")
    parser.add_argument("--a-args", default="", help="extra bench load arguments of A")
    parser.add_argument("--b-args", default="", help="extra bench load arguments of B")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs")
    parser.add_argument("--name", required=True, help="results directory name")
    parser.add_argument("--out", type=Path)
    parser.add_argument("load_args", nargs=argparse.REMAINDER, help="-- bench load arguments")
    args = parser.parse_args(argv)
    load_args = [a for a in args.load_args if a != "--"]
    a_args, b_args = shlex.split(args.a_args), shlex.split(args.b_args)
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs = []
    with tempfile.TemporaryDirectory(prefix="annfleet-ab-") as tmp:
        for i in range(args.rounds):
            runs.append(run_one(args.b, "B", i, [*load_args, *b_args], Path(tmp)))
            runs.append(run_one(args.a, "A", i, [*load_args, *a_args], Path(tmp)))
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    data = {
        "a": args.a,
        "b": args.b,
        "a_revision": runs[1]["git_revision"] if len(runs) > 1 else "",
        "b_revision": runs[0]["git_revision"] if runs else "",
        "load_args": load_args,
        "a_args": a_args,
        "b_args": b_args,
        "uptime": [before, after],
        "runs": runs,
        "ratios": ratios(runs),
    }
    head = report.header(args.name)
    out = report.result_dir(args.name, args.out)
    report.write_json(out / "results.json", {**head, **data})
    (out / "README.md").write_text(readme(head, data))
    print(readme(head, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
