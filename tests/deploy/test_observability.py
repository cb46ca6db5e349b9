"""The Grafana dashboard and the Prometheus alert rules name only metrics annfleet exports,
and (with promtool, from Debian's prometheus package) every query parses and every alert
fires on the series it is meant for."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, REPO, find_tool

DASHBOARD = REPO / "deploy" / "grafana" / "annfleet.json"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).parent / "alerts_test.yaml"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def exported_metric_names() -> set[str]:
    """Every sample name the registry can expose once the server and router code is loaded
    (labelled metrics have no samples before first use, so names come from the families)."""
    from prometheus_client import REGISTRY

    for package in ("annfleet.server", "annfleet.router"):
        pkg = importlib.import_module(package)
        for mod in pkgutil.walk_packages(pkg.__path__, f"{package}."):
            importlib.import_module(mod.name)
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)  # Grafana variables
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,.*\)\s*", expr, re.S)
    if m:
        return {m.group(1)}
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for token in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr):  # not 5m, 1e3
        rest = expr[token.end() :].lstrip()
        word = token.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        names.add(word)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", q))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metric_names()


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{x="b{c}"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("sum(rate(a_total[1m])) / sum(rate(b_total[1m])) > 0.01") == {
        "a_total",
        "b_total",
    }
    assert metric_names('max by (pod) (c_bytes{ns=~"$namespace"}) offset 5m') == {"c_bytes"}
    assert metric_names("label_values(d_total, namespace)") == {"d_total"}


def test_the_code_exports_the_documented_metrics(exported: set[str]) -> None:
    for name in (
        "annfleet_requests_total",
        "annfleet_request_seconds_bucket",
        "annfleet_router_shard_failures_total",
        "annfleet_router_degraded_total",
        "annfleet_router_cache_lookups_total",
        "annfleet_router_source_seconds_bucket",
    ):
        assert name in exported


def test_dashboard_names_only_exported_metrics(exported: set[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by annfleet"


def test_dashboard_covers_the_operator_questions() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "qps",
        "latency",
        "p99",
        "error",
        "degraded",
        "shard failures",
        "cache",
        "memory",
        "recall",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "annfleet"


def test_dashboard_shows_the_diversity_of_served_lists(exported: set[str]) -> None:
    """Intra-list distance, catalogue coverage and Gini of exposure: a panel each, reading
    the router's gauge of that name (router/diversity.py), which the code exports."""
    dash = json.loads(DASHBOARD.read_text())
    by_title = {p["title"].lower(): p for p in dash["panels"]}
    for topic, metric in (
        ("intra-list distance", "annfleet_router_intra_list_distance"),
        ("catalogue coverage", "annfleet_router_catalogue_coverage"),
        ("gini of exposure", "annfleet_router_exposure_gini"),
    ):
        panel = next(p for title, p in by_title.items() if topic in title)
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        assert names == {metric} and metric in exported, (topic, names)


def test_alerts_name_only_exported_metrics(exported: set[str]) -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "AnnfleetCoverageBelowOne",
        "AnnfleetRetrieveP99OverSLO",
        "AnnfleetErrorRatio",
    }
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: {sorted(names - exported)} not exported"
    coverage = next(r for r in rules if r["alert"] == "AnnfleetCoverageBelowOne")
    assert coverage["for"] == "1m"


def promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip(
            "promtool not installed (Debian package prometheus; `make test` installs it as root)"
        )
    return path


def test_promtool_checks_the_rule_file() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_alerts_fire_on_their_series(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(ALERT_TESTS.read_text().replace("RULES", str(ALERTS)))
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query becomes a recording rule (Grafana variables substituted)."""
    rules = [
        {
            "record": f"annfleet:dashboard_query_{i}",
            "expr": expr.replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$release", "annfleet"),
        }
        for i, (_, expr) in enumerate(dashboard_queries())
        if not expr.startswith("label_values")
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_wraps_the_rule_file_in_a_prometheusrule(render: Any) -> None:
    objects = render(set={"prometheusRule.enabled": "true"})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
