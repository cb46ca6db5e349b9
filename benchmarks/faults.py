"""`annfleet bench faults`: replica loss under load.

A local cluster with R processes per shard (``LocalCluster``, the same supervisor loop as
``annfleet up`` restarts a dead child) takes open-loop load (``benchmarks/load.py``, every
request recorded). During the measured window one replica of one shard is killed with
SIGKILL, and later another replica is frozen with SIGSTOP and thawed with SIGCONT. Reported
per second: answers, errors by status code, degraded answers, p50/p99; per window (steady,
after the kill, while stopped, after); the time from the killed replica's restart to
SERVING and from SERVING to its first search served for the router (its own /metrics).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annfleet.benchmarks import report
from annfleet.benchmarks.load import LoadSpec, Record, run_load

log = logging.getLogger(__name__)

POLL_S = 0.05


def served(metrics_port: int | None, host: str = "127.0.0.1") -> float:
    """IndexShard.Search calls a shard process answered OK (its /metrics); nan if unreadable."""
    from prometheus_client.parser import text_string_to_metric_families

    if metrics_port is None:
        return float("nan")
    try:
        with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "annfleet_requests_total"
                and labels.get("service") == "IndexShard"
                and labels.get("method") == "Search"
                and labels.get("code") == "OK"
            ):
                return float(sample.value)
    return 0.0


def router_counters(metrics_port: int | None) -> dict[str, float]:
    """The router's replica and hedge counters, summed over shards and replicas."""
    from prometheus_client.parser import text_string_to_metric_families

    if metrics_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "annfleet_router_hedges_total":
                key = f"hedges_{sample.labels['outcome']}"
            elif sample.name == "annfleet_router_replica_attempts_total":
                key = f"attempts_{sample.labels['outcome']}"
            elif sample.name == "annfleet_router_shard_failures_total":
                key = f"shard_failures_{sample.labels['code']}"
            else:
                continue
            out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass
class Injector:
    """Supervises the cluster (restart the dead) and injects the faults on a schedule.

    Times are ``time.time()``; events are recorded relative to ``t0`` (measuring starts).
    """

    cluster: Any
    t0: float
    kill: tuple[int, int, float]  # shard, replica, at (s after t0)
    stop: tuple[int, int, float, float]  # shard, replica, at, for
    end: float
    events: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def _at(self, name: str) -> None:
        self.events[name] = round(time.time() - self.t0, 3)
        log.info("t=%+.2fs %s", self.events[name], name)

    def _run(self) -> None:
        from annfleet.cluster import health_status

        k_shard, k_rep, k_at = self.kill
        s_shard, s_rep, s_at, s_for = self.stop
        killed = self.cluster.replicas[k_shard][k_rep]
        stopped = self.cluster.replicas[s_shard][s_rep]
        stage = "before-kill"
        before_stop = float("nan")
        while time.time() < self.t0 + self.end:
            now = time.time() - self.t0
            for note in self.cluster.restart_dead():
                self.notes.append(f"t={now:+.2f}s {note}")
                if "kill_restarted" not in self.events:
                    self._at("kill_restarted")
            if stage == "before-kill" and now >= k_at:
                os.kill(killed.pid, signal.SIGKILL)
                self._at("kill")
                stage = "killed"
            elif stage == "killed" and "kill_restarted" in self.events:
                if health_status(killed.target, timeout=0.5) == "SERVING":
                    self._at("kill_serving")
                    stage = "killed-serving"
            elif stage == "killed-serving" and served(killed.metrics_port) > 0:
                self._at("kill_in_rotation")
                stage = "before-stop"
            if stage in ("before-stop", "killed", "killed-serving") and now >= s_at:
                if stage != "before-stop":
                    self.notes.append("the SIGSTOP came before the killed replica was back")
                before_stop = served(stopped.metrics_port)
                os.kill(stopped.pid, signal.SIGSTOP)
                self._at("stop")
                stage = "stopped"
            elif stage == "stopped" and now >= s_at + s_for:
                os.kill(stopped.pid, signal.SIGCONT)
                self._at("cont")
                stage = "thawed"
            elif stage == "thawed" and served(stopped.metrics_port) > before_stop:
                self._at("cont_in_rotation")
                stage = "done"
            time.sleep(POLL_S)
        if stage == "stopped":  # never leave a stopped process behind
            os.kill(stopped.pid, signal.SIGCONT)


def _window(records: list[Record], t0: float, lo: float, hi: float) -> dict[str, Any]:
    rows = [r for r in records if lo <= r[0] - t0 < hi]
    ok = [r[1] for r in rows if r[2] == "OK"]
    errors = Counter(r[2] for r in rows if r[2] != "OK")
    pct = report.percentiles(ok)
    return {
        "from_s": lo,
        "to_s": hi,
        "requests": len(rows),
        "answers": len(ok),
        "errors": dict(errors),
        "degraded": sum(1 for r in rows if r[3]),
        "p50_ms": round(pct["p50_ms"], 2),
        "p99_ms": round(pct["p99_ms"], 2),
        "max_ms": round(max(ok) * 1e3, 2) if ok else float("nan"),
    }


def per_second(records: list[Record], t0: float, duration: float) -> list[dict[str, Any]]:
    rows = []
    for s in range(int(duration)):
        w = _window(records, t0, s, s + 1)
        rows.append(
            {
                "second": s,
                "answers": w["answers"],
                "errors": " ".join(f"{c}={n}" for c, n in sorted(w["errors"].items())) or "",
                "degraded": w["degraded"],
                "p50_ms": w["p50_ms"],
                "p99_ms": w["p99_ms"],
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from annfleet.benchmarks import datasets
    from annfleet.benchmarks.recall_latency import ensure_bundle
    from annfleet.cluster import LocalCluster
    from annfleet.config import ClusterConfig, ShardsConfig

    data_dir = args.data_dir or datasets.default_data_dir()
    ds = datasets.synthetic(args.items, args.dim, queries=1000, data_dir=data_dir)
    bundle = ensure_bundle(ds, "hnsw", {}, args.shards, data_dir)
    config = ClusterConfig(shards=ShardsConfig(count=args.shards, replicas=args.replicas))
    assert ds.query_ids is not None
    load_before = report.loadavg()
    with tempfile.TemporaryDirectory(prefix="annfleet-faults-") as logs:
        cluster = LocalCluster(bundle, config, metrics=True, log_dir=Path(logs))
        with cluster:
            spec = LoadSpec(
                target=cluster.router_target,
                rpc=args.rpc,
                mode="open",
                concurrency=args.concurrency,
                qps=args.qps,
                duration=args.duration,
                warmup=args.warmup,
                processes=args.processes,
                k=args.k,
                timeout=args.timeout,
                record=True,
            )
            start_at = time.time() + 3.0 + 0.5 * args.processes
            t0 = start_at + args.warmup
            injector = Injector(
                cluster,
                t0,
                kill=(args.kill_shard, 0, args.kill_at),
                stop=(args.stop_shard, args.replicas - 1, args.stop_at, args.stop_for),
                end=args.duration,
            )
            thread = threading.Thread(target=injector.run, name="faults", daemon=True)
            thread.start()
            result = run_load(spec, ds.queries, ds.query_ids, dict(cluster.pids), start_at)
            thread.join(args.duration + 30)
            if injector.error is not None:
                raise injector.error
            counters = router_counters(cluster.router.metrics_port)
    records: list[Record] = result.pop("records")
    duration = args.duration
    k_at, s_at, s_end = args.kill_at, args.stop_at, args.stop_at + args.stop_for
    windows = {
        "steady": _window(records, t0, 0, k_at),
        "after_kill": _window(records, t0, k_at, min(k_at + 10, s_at)),
        "stopped": _window(records, t0, s_at, s_end),
        "after_cont": _window(records, t0, s_end, duration),
        "all": _window(records, t0, 0, duration),
    }
    ev = injector.events
    back = (
        round(ev["kill_in_rotation"] - ev["kill_serving"], 3)
        if "kill_in_rotation" in ev and "kill_serving" in ev
        else None
    )
    steady_p99 = windows["steady"]["p99_ms"]
    all_w = windows["all"]
    targets = {
        "failed_requests": {"value": sum(all_w["errors"].values()), "target": 0},
        "degraded_answers": {"value": all_w["degraded"], "target": 0},
        "p99_stopped_over_steady": {
            "value": round(windows["stopped"]["p99_ms"] / steady_p99, 2) if steady_p99 else None,
            "target": "<= 2.0",
        },
        "killed_back_in_rotation_s": {"value": back, "target": "<= 5.0"},
    }
    targets["failed_requests"]["met"] = targets["failed_requests"]["value"] == 0
    targets["degraded_answers"]["met"] = targets["degraded_answers"]["value"] == 0
    ratio = targets["p99_stopped_over_steady"]["value"]
    targets["p99_stopped_over_steady"]["met"] = ratio is not None and ratio <= 2.0
    targets["killed_back_in_rotation_s"]["met"] = back is not None and back <= 5.0
    return {
        "bundle": str(bundle),
        "dataset": ds.description,
        "replicas": args.replicas,
        "shards": args.shards,
        "load": result,
        "events_s": ev,
        "supervisor": injector.notes,
        "windows": windows,
        "targets": targets,
        "router_counters": counters,
        "per_second": per_second(records, t0, duration),
        "loadavg": {"before": load_before, "after": report.loadavg()},
    }


def readme(head: dict[str, Any], out: dict[str, Any], args: argparse.Namespace) -> str:
    m = head["machine"]
    ev = out["events_s"]
    cols = ["second", "answers", "errors", "degraded", "p50_ms", "p99_ms"]
    windows = [{"window": n, **{k: v for k, v in w.items()}} for n, w in out["windows"].items()]
    wcols = [
        "window",
        "from_s",
        "to_s",
        "requests",
        "answers",
        "errors",
        "degraded",
        "p50_ms",
        "p99_ms",
        "max_ms",
    ]
    for w in windows:
        w["errors"] = " ".join(f"{c}={n}" for c, n in sorted(w["errors"].items())) or ""
    targets = [
        {"target": n, "value": t["value"], "goal": t["target"], "met": "yes" if t["met"] else "NO"}
        for n, t in out["targets"].items()
    ]
    events = "\n".join(f"- {name}: t = {t:+.2f} s" for name, t in ev.items())
    notes = "\n".join(f"- {n}" for n in out["supervisor"]) or "- (none)"
    counters = ", ".join(f"{k} {v:g}" for k, v in sorted(out["router_counters"].items()))
    return (
        f"# {head['name']}\n\n"
        f"- command: `{head['command']}`\n"
        f"- git revision: `{head['git_revision']}`, date {head['date']}\n"
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; loopback. "
        f"**Shared with other jobs while this ran** (load average before "
        f"{out['loadavg']['before']}, after {out['loadavg']['after']}), so absolute "
        "latencies are pessimistic; compare windows within the run.\n"
        f"- cluster: {out['shards']} HNSW shards x {out['replicas']} replicas + router "
        f"(defaults), synthetic {out['dataset']['items']} x {out['dataset']['dim']}; "
        f"open-loop {args.rpc.capitalize()} at {args.qps:g}/s, k={args.k}, client timeout "
        f"{args.timeout:g} s, no client retries; t = 0 is the start of the measured "
        f"{args.duration:g} s (after {args.warmup:g} s warm-up)\n"
        f"- faults: SIGKILL shard {args.kill_shard} replica 0 at t = {args.kill_at:g} s "
        f"(restarted by the supervisor loop of `annfleet up`); SIGSTOP shard "
        f"{args.stop_shard} replica {args.replicas - 1} at t = {args.stop_at:g} s, SIGCONT "
        f"{args.stop_for:g} s later\n\n"
        "## Targets\n\n```\n"
        + report.format_table(targets, ["target", "value", "goal", "met"])
        + "\n```\n\n## Windows\n\n```\n"
        + report.format_table(windows, wcols)
        + f"\n```\n\nEvents (from the injector, polling every {POLL_S * 1e3:.0f} ms):\n\n"
        f"{events}\n\n`kill_serving` is when the restarted process's health said SERVING, "
        "`kill_in_rotation` when its own /metrics first counted a search served (so "
        "in-rotation time = kill_in_rotation - kill_serving); `cont_in_rotation` likewise for "
        f"the thawed replica.\n\nSupervisor:\n\n{notes}\n\nRouter counters at the end: "
        f"{counters}\n\n## Per second\n\n```\n"
        + report.format_table(out["per_second"], cols)
        + "\n```\n"
    )


def cmd(args: argparse.Namespace) -> int:
    if not 0 <= args.kill_at < args.stop_at < args.stop_at + args.stop_for <= args.duration:
        raise SystemExit("need 0 <= --kill-at < --stop-at < --stop-at + --stop-for <= --duration")
    if args.replicas < 2:
        raise SystemExit("--replicas must be >= 2 (a fault on a lone replica loses coverage)")
    if not (0 <= args.kill_shard < args.shards and 0 <= args.stop_shard < args.shards):
        raise SystemExit("--kill-shard and --stop-shard must be shard numbers < --shards")
    out = run(args)
    name = args.name or f"faults-{args.items // 1000}k-r{args.replicas}"
    head = report.header(name)
    print(report.format_table(out["per_second"], list(out["per_second"][0])))
    for n, t in out["targets"].items():
        print(f"{n}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'NOT MET'}")
    if args.name or args.out:
        d = report.result_dir(name, args.out)
        report.write_json(d / "results.json", {**head, **out})
        report.write_csv(d / "results.csv", out["per_second"])
        (d / "README.md").write_text(readme(head, out, args))
        print(f"results: {d}")
    return 0 if all(t["met"] for t in out["targets"].values()) else 1
