"""The README's reference parts against the code: the config table's knobs and defaults,
and every relative link."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from annfleet.config import ClusterConfig, SourceSettings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _section(text: str, heading: str) -> str:
    """From ``heading`` (a whole line) to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    ends = [
        m.start()
        for m in re.finditer(r"\n(#+) ", text[start + 1 :])
        if len(m.group(1)) <= len(level)
    ]
    return text[start : start + 1 + ends[0]] if ends else text[start:]


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-dataclass field of ``obj``, by dotted key (``router.max_k``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _config_table() -> dict[str, str | None]:
    """The config reference table: dotted key -> its documented default (None: "see below").

    A row's first cell names keys in backticks: the first one dotted in full, the others
    either dotted in full or bare names in the first one's section; its second cell lists
    the defaults in the same order, comma-separated."""
    rows = [
        line
        for line in _section(README, "## Config reference").splitlines()
        if line.startswith("| `")
    ]
    assert len(rows) > 50, "the config reference table was not found"
    table: dict[str, str | None] = {}
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        names = re.findall(r"`([^`]+)`", cells[0])
        section = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        keys = [name if "." in name or name == names[0] else section + name for name in names]
        if cells[1] == "see below":
            defaults: list[str | None] = [None] * len(keys)
        else:
            defaults = [d.strip() for d in cells[1].split(",")]
        assert len(defaults) == len(keys), f"{row[:60]}...: {len(keys)} keys, defaults {defaults}"
        for key, default in zip(keys, defaults, strict=True):
            assert key not in table, f"{key} is documented twice"
            table[key] = default
    return table


def _same(value: Any, documented: str) -> bool:
    text = documented.strip("`")
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(text) == value
        except ValueError:
            return False
    return text == (value or '""')


def test_every_config_knob_is_in_the_readme_table_with_its_default() -> None:
    table = _config_table()
    settings = {f.name for f in dataclasses.fields(SourceSettings)}
    documented = set()
    for key, value in _leaves(ClusterConfig()).items():
        parts = key.split(".")
        generic = f"sources.<name>.{parts[-1]}"
        if key.startswith("sources.") and len(parts) == 3 and parts[2] in settings:
            assert generic in table, f"{generic} (e.g. {key}) is not in the README's table"
            documented.add(generic)
            continue
        assert key in table, f"config knob {key} (default {value!r}) is not in the README's table"
        documented.add(key)
        default = table[key]
        assert default is not None and _same(value, default), (
            f"README's table says {key} defaults to {default}; core/config.py: {value!r}"
        )
    assert not set(table) - documented, (
        f"README documents knobs that do not exist: {sorted(set(table) - documented)}"
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_in_the_readme_resolves() -> None:
    text = re.sub(r"```.*?```", "", README, flags=re.S)  # links inside code blocks are not links
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = _slug(heading)
        anchor, n = slug, 0
        while anchor in anchors:  # GitHub numbers repeated headings: slug-1, slug-2, ...
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<a href=\"([^\"]+)\"", text)
    assert len(links) > 20
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        if not path:
            if anchor not in anchors:
                broken.append(link)
        elif not (REPO / path).exists():
            broken.append(link)
    assert not broken, f"README links that resolve to nothing: {broken}"


def _registered_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """core/metrics.py's metrics: exported name (a counter's with ``_total``) -> (type, labels)."""
    from prometheus_client.metrics import MetricWrapperBase

    from annfleet import metrics

    out = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type  # type: ignore[attr-defined]
            name = value._name + ("_total" if kind == "counter" else "")  # type: ignore[attr-defined]
            out[name] = (kind, tuple(value._labelnames))  # type: ignore[attr-defined]
    return out


def test_the_readme_metrics_table_lists_every_metric_with_its_type_and_labels() -> None:
    registered = _registered_metrics()
    assert len(registered) > 20
    rows = [
        line
        for line in _section(README, "### Metrics (`core/metrics.py`)").splitlines()
        if line.startswith("| `")
    ]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        table[cells[0].strip("`")] = (cells[1], tuple(re.findall(r"`([^`]+)`", cells[2])))
    assert table == registered


def test_every_metric_name_the_readme_mentions_exists() -> None:
    names = set()
    for name, (kind, _) in _registered_metrics().items():
        base = name.removesuffix("_total")
        names |= {base, name} | (
            {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "histogram" else set()
        )
    mentioned = set(re.findall(r"\bannfleet_[a-z_]+", README))
    assert mentioned, "no metric found in the README"
    assert not mentioned - names, f"README names metrics that do not exist: {mentioned - names}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _flags(parser: argparse.ArgumentParser, nested: bool) -> set[str]:
    """The parser's long options (and those of its subcommands when ``nested``)."""
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    if nested:
        for sub in _subcommands(parser).values():
            flags |= _flags(sub, nested)
    return flags - {"--help"}


def test_the_cli_reference_lists_every_command_and_flag() -> None:
    """Each command's flags (``items``: its subcommands' too; ``bench``: only the names of
    its subcommands, whose flags the Benchmarks section documents) against its rows."""
    from annfleet.cli import build_parser

    rows = [
        line.split(" | ", 1)[0]
        for line in _section(README, "## CLI reference").splitlines()
        if line.startswith("| `annfleet ")
    ]
    documented: dict[str, set[str]] = {}
    for cell in rows:  # a row documents one command, in one or more usages
        command = cell.removeprefix("| `annfleet ").split()[0]
        documented.setdefault(command, set()).update(re.findall(r"--[a-z][a-z0-9-]*", cell))
    commands = _subcommands(build_parser())
    assert "up" in commands and "rollout" in commands
    assert not set(commands) - set(documented), "commands missing from the CLI reference"
    for command, parser in commands.items():
        flags = _flags(parser, nested=command != "bench")
        assert documented[command] == flags, (
            f"annfleet {command}: the README's CLI reference lacks "
            f"{sorted(flags - documented[command])}, names flags that do not exist: "
            f"{sorted(documented[command] - flags)}"
        )
    bench = " ".join(cell for cell in rows if "annfleet bench " in cell)
    if "bench" in commands:
        for name in _subcommands(commands["bench"]):
            assert name in bench, f"annfleet bench {name} is not in the CLI reference"


def test_the_default_sources_paragraph_matches_the_source_defaults() -> None:
    start = README.index("Default sources (`deploy/local.yaml`)")
    text = " ".join(README[start : README.index("Chosen on the", start)].split())
    number = r"(\d+(?:\.\d+)?)"
    found = {
        name: (float(q), float(w), float(b))
        for name, q, w, b in re.findall(
            rf"`(\w+)` (?:off \(when enabled: )?(?:quota )?{number}(?: weight | / ){number}"
            rf"(?: budget | / ){number} ms",
            text,
        )
    }
    settings = ClusterConfig().sources.settings()
    assert found == {n: (s.quota, s.weight, s.budget_ms) for n, s in settings.items()}
    assert ("`social` off" in text) == (not settings["social"].enabled)
