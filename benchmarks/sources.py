"""`annfleet bench sources`: what the candidate sources cost `Retrieve` (issue 10's targets).

Over one bundle with a user tower (the MovieLens default unless ``--bundle``), a local
cluster per variant, each variant's config written to the file its processes read:

- ``ann-only``: every source but ``ann`` off;
- ``all``: the configured sources (the defaults);
- ``hang-<source>``: the configured sources, with ``<source>`` answering ``--hang-ms``
  after it was asked (``sources.<source>.delay_ms``), far past its budget: a source that
  hangs. It must be dropped at its budget, not waited for.

Each variant gets open-loop ``Retrieve`` at ``--qps`` over the bundle's users for
``--duration`` seconds; the variants are interleaved over ``--rounds`` in one run, so the
ratios compare like with like on a shared box. The candidate cache is off in every variant
(each request computes its list); the user-embedding cache is as configured.

Targets: ``all`` p50 <= 1.3x ``ann-only`` p50 (same run); with one source hanging, p99 <=
that source's budget + 2 ms. After each hanging variant, sample answers are checked for
the hanging source in ``dropped_sources``, and every variant's for the sources that served
candidates: a source with a weight or quota that served none in any sampled ``all`` answer
is reported idle (the p50 ratio then compares fewer working sources: before `3e4dede`
co_engagement and content were idle here, the bundle's users having no recent items).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.benchmarks import report
from annfleet.benchmarks.load import LoadSpec, run_load

SAMPLE_ANSWERS = 20  # answers checked for the hanging source's drop, per hanging variant


def variant_configs(
    base: dict[str, Any], names: list[str], hang: str, hang_ms: float
) -> dict[str, dict[str, Any]]:
    """The YAML mapping of each variant, from ``base`` (the run's config file, as loaded).

    ``names``: every source's name (``SourcesConfig.settings()``).
    """

    def with_sources(overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
        sources: dict[str, Any] = {
            k: dict(v) if isinstance(v, dict) else v for k, v in (base.get("sources") or {}).items()
        }
        for name, keys in overrides.items():
            sources.setdefault(name, {}).update(keys)
        sources["candidate_cache_size"] = 0
        return {**base, "sources": sources}

    return {
        "ann-only": with_sources({n: {"enabled": False} for n in names if n != "ann"}),
        "all": with_sources({}),
        f"hang-{hang}": with_sources({hang: {"delay_ms": hang_ms}}),
    }


def _bundle(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    from annfleet.cli import default_bundle
    from annfleet.config import load_config

    return default_bundle(load_config(args.config))


def _sample(target: str, users: np.ndarray, k: int) -> tuple[dict[str, int], dict[str, int]]:
    """Of SAMPLE_ANSWERS answers: how many dropped each source, and why (the reason's head);
    and how many each source served at least one candidate in."""
    from annfleet.client import Client

    dropped: dict[str, int] = {}
    served: dict[str, int] = {}
    with Client(target, timeout=5.0) as client:
        for user in users[:SAMPLE_ANSWERS]:
            result = client.retrieve(int(user), k)
            for name, why in result.dropped_sources.items():
                key = f"{name}: {why.split(':')[0]}"
                dropped[key] = dropped.get(key, 0) + 1
            for name, n in result.source_counts.items():
                if n > 0:
                    served[name] = served.get(name, 0) + 1
    return dropped, served


def run(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from annfleet.bundle import Bundle
    from annfleet.cluster import LocalCluster
    from annfleet.config import SourcesConfig, load_config

    bundle = _bundle(args)
    opened = Bundle.open(bundle, verify=False)
    known = opened.manifest.get("users")
    if not known:
        raise SystemExit(f"{bundle} has no users table: Retrieve needs a bundle with a tower")
    users = np.random.default_rng(0).permutation(opened.load_array(known["ids"]))
    base = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    names = list(SourcesConfig().settings())
    if args.hang not in names or args.hang == "ann":
        raise SystemExit(f"--hang: one of {', '.join(n for n in names if n != 'ann')}")
    configs = variant_configs(base or {}, names, args.hang, args.hang_ms)
    configured = load_config(args.config).sources  # the 'all' variant's sources
    budget = getattr(configured, args.hang).budget_ms
    work = Path(tempfile.mkdtemp(prefix="annfleet-bench-sources-"))
    spec = LoadSpec(
        target="",
        rpc="retrieve",
        mode="open",
        qps=args.qps,
        concurrency=args.client_in_flight,
        duration=args.duration,
        warmup=args.warmup,
        k=args.k,
        timeout=args.timeout,
    )
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for name, mapping in configs.items():
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**mapping, "data_dir": str(work / "data")}))
            with LocalCluster(bundle, load_config(path), config_path=path) as cluster:
                result = run_load(
                    dataclasses.replace(spec, target=cluster.router_target),
                    np.zeros((1, opened.dim), dtype=np.float32),
                    users,
                    dict(cluster.pids),
                )
                dropped, served = _sample(cluster.router_target, users, args.k)
            runs.append(
                {"round": rnd, "variant": name, "dropped": dropped, "served": served, **result}
            )
    weighted = [
        n for n, s in configured.settings().items() if s.enabled and (s.weight > 0 or s.quota > 0)
    ]
    return summarise(runs, args.hang, budget, weighted)


def summarise(
    runs: list[dict[str, Any]], hang: str, budget_ms: float, weighted: Sequence[str] = ()
) -> dict[str, Any]:
    """Per-run rows, per-variant medians over rounds, and the two targets. ``weighted``: the
    ``all`` variant's sources with a weight or a quota; those that served no candidate in
    any sampled ``all`` answer are ``idle`` (the ratio then measures fewer sources at work:
    e.g. co_engagement with no recent items to start from)."""
    rows = [
        {
            "round": r["round"],
            "variant": r["variant"],
            "achieved_qps": round(r["achieved_qps"], 1),
            "p50_ms": round(r["p50_ms"], 2),
            "p95_ms": round(r["p95_ms"], 2),
            "p99_ms": round(r["p99_ms"], 2),
            "errors": r["errors"] or "",
            "dropped_in_sample": r["dropped"] or "",
        }
        for r in runs
    ]
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    med = {
        v: {
            q: float(np.median([r[q] for r in runs if r["variant"] == v]))
            for q in ("p50_ms", "p99_ms")
        }
        for v in variants
    }
    served = {n for r in runs if r["variant"] == "all" for n in r.get("served", {})}
    hang_name = f"hang-{hang}"
    ratio = med["all"]["p50_ms"] / med["ann-only"]["p50_ms"]
    return {
        "rows": rows,
        "median_over_rounds": med,
        "all_over_ann_only_p50": round(ratio, 3),
        "idle": [n for n in weighted if n not in served],
        "hang": {
            "source": hang,
            "budget_ms": budget_ms,
            "p99_ms": round(med[hang_name]["p99_ms"], 2),
            "limit_ms": budget_ms + 2.0,
            "all_p99_ms": round(med["all"]["p99_ms"], 2),
        },
        "raw": [{k: v for k, v in r.items() if k != "records"} for r in runs],
    }


def lines(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    hang = result["hang"]
    return [
        report.format_table(rows, list(rows[0])),
        f"all sources p50 / ann-only p50 = {result['all_over_ann_only_p50']} (target <= 1.3), "
        "medians over rounds",
        (
            f"idle in every sampled 'all' answer: {', '.join(result['idle'])} (these did no "
            "work in this run)"
            if result.get("idle")
            else "every weighted source served candidates in the sampled 'all' answers"
        ),
        f"{hang['source']} hanging: p99 {hang['p99_ms']} ms vs budget {hang['budget_ms']:g} "
        f"+ 2 = {hang['limit_ms']:g} ms (all sources, none hanging: p99 {hang['all_p99_ms']} ms)",
    ]


def cmd(args: argparse.Namespace) -> int:
    load_before = report.loadavg()
    result = run(args)
    load_after = report.loadavg()
    text = "\n".join(lines(result))
    print(text)
    if args.name:
        out = report.result_dir(args.name, args.out)
        head = report.header(args.name)
        report.write_json(out / "results.json", {**head, **result})
        m = head["machine"]
        (out / "README.md").write_text(
            f"# {head['name']}\n\n- command: `{head['command']}`\n"
            f"- git revision: `{head['git_revision']}`, date {head['date']}\n"
            f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; load average "
            f"(1/5/15 min) before / after: {load_before} / {load_after}\n"
            f"- open-loop Retrieve at {args.qps:g}/s, k={args.k}, {args.duration:g} s after "
            f"{args.warmup:g} s warm-up per variant, {args.rounds} round(s) interleaved; "
            "candidate cache off\n\n"
            f"```\n{text}\n```\n\nVariants (the run's config with):\n\n```\n"
            + "ann-only: sources.<every source but ann>.enabled: false\n"
            "all:      the configured sources\n"
            f"hang-{result['hang']['source']}: sources.{result['hang']['source']}.delay_ms: "
            f"{args.hang_ms:g}\n"
            "every variant: sources.candidate_cache_size: 0\n```\n"
        )
        print(f"results: {out}")
    return 0
