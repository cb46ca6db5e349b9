"""`annfleet eval --blend` / `--served` on a MovieLens subset (40 users): the figures it
reports are the ones a client gets from a real router over the bundle it wrote, and a
disabled source contributes nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from support import LoopThread, patient, start_cluster

from annfleet.bundle import TABLE_SEEN_IDS, Bundle
from annfleet.client import Client, Engagement
from annfleet.config import load_config
from annfleet.errors import InvalidArgument
from annfleet.model import cli
from annfleet.model.blend_eval import run_blend_eval, run_served_eval
from annfleet.model.data import load_movielens, make_split, recbole_data_dir
from annfleet.model.features import build_queries

USERS = 40
REPLAYED = 6
SOURCES_YAML = """\
sources:
  content: {enabled: false}
  exploration: {enabled: false}
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ml-100k with the interactions of users 1..USERS only (items and users files whole)."""
    out = tmp_path_factory.mktemp("ml-tiny")
    src = recbole_data_dir()
    lines = (src / "ml-100k.inter").read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t", 1)[0]) <= USERS]
    (out / "ml-100k.inter").write_text("\n".join(kept) + "\n")
    for name in ("ml-100k.item", "ml-100k.user"):
        (out / name).write_bytes((src / name).read_bytes())
    return out


def run_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="annfleet")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0


@pytest.fixture(scope="module")
def blend_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:  # type: ignore[type-arg]
    """`annfleet eval --blend` over the subset: (its result, the bundle dir, the config)."""
    tmp = tmp_path_factory.mktemp("blend")
    config = tmp / "sources.yaml"
    config.write_text(SOURCES_YAML)
    bundle, out = tmp / "bundle", tmp / "out"
    run_cli(
        [
            "eval",
            *("--blend", "--data", str(tiny_data), "--epochs", "1", "--dim", "16"),
            *("--users", str(REPLAYED), "--config", str(config), "--seeds", "0"),
            *("--export-bundle", str(bundle), "--out", str(out)),
            *("--no-baselines", "--no-progress"),
        ]
    )
    (result,) = json.loads((out / "blend.json").read_text())
    csv_rows = (out / "blend.csv").read_text().splitlines()
    assert csv_rows[0].startswith("split,measured,config,recall@10")
    assert any(",in_process,blend," in row for row in csv_rows)
    return result, bundle, config


def test_the_bundle_knows_only_the_train_part(blend_run, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    _, bundle_dir, _ = blend_run
    bundle = Bundle.open(bundle_dir)
    data = load_movielens(tiny_data)
    split = make_split(data, "per_user")
    assert bundle.manifest["eval_split"]["train_interactions"] == int(split.train.sum())
    train_end = int(data.inter_ts[split.train].max())
    assert bundle.manifest["user_tower"]["time"]["reference_ts"] == train_end
    events = bundle.table("engagement_events")
    assert events[:, 1].max() == train_end
    assert len(bundle.table(TABLE_SEEN_IDS)) == int(split.train.sum())


def test_reported_recall_is_what_the_client_gets(blend_run, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    """A cluster started here over the exported bundle, fed and asked through the client by
    this test itself, gives the recall the eval reported; `--served` through the same
    cluster reports it too."""
    result, bundle_dir, config_path = blend_run
    data = load_movielens(tiny_data)
    split = make_split(data, "per_user")
    queries = build_queries(data, split)
    train = np.flatnonzero(split.train)
    train = train[np.lexsort((train, data.inter_ts[train]))]
    events = [
        Engagement(
            int(data.user_ids[data.inter_user[i] - 1]),
            int(data.item_ids[data.inter_item[i] - 1]),
            "view",
            int(data.inter_ts[i]),
        )
        for i in train
    ]
    sources = patient(load_config(config_path).sources)
    lt = LoopThread()
    cluster = start_cluster(lt, Bundle.open(bundle_dir), sources=sources)
    try:
        with Client(cluster.router_target, timeout=30) as client:
            assert client.record_engagement(events) == len(events)
            recalls: dict[int, list[float]] = {10: [], 50: [], 100: []}
            for q in range(REPLAYED):
                user = int(data.user_ids[queries.users[q] - 1])
                targets = data.item_ids[queries.targets_of(q) - 1]
                seen = data.item_ids[queries.seen_of(q) - 1]
                for k in recalls:
                    got = client.retrieve(user, k, timestamp=int(queries.query_ts[q]))
                    assert len(got.ids) == k and not np.isin(got.ids, seen).any()
                    recalls[k].append(np.isin(targets, got.ids).sum() / len(targets))
        blend = result["router"]["blend"]
        for k, values in recalls.items():
            assert blend[f"recall@{k}"] == round(float(np.mean(values)), 4)
        assert sum(np.mean(v) for v in recalls.values()) > 0  # something was found
        served = run_served_eval(
            cluster.router_target,
            tiny_data,
            users=REPLAYED,
            bundle_dir=bundle_dir,
            record_first=False,  # this test recorded them above
            progress=False,
        )
        for k in recalls:
            assert served["router"]["blend"][f"recall@{k}"] == blend[f"recall@{k}"]
        assert served["bundle_id"] == result["bundle_id"]
    finally:
        cluster.close()
        lt.close()


def test_a_disabled_source_contributes_nothing(blend_run, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    result, _, _ = blend_run
    router = result["router"]
    assert set(result["sources"]) == {"ann", "trending", "co_engagement", "popular"}
    blend_share = router["blend"]["source_share"]
    assert blend_share["ann"] > 0 and blend_share["co_engagement"] > 0
    for name in result["sources"]:
        assert name not in router[f"without {name}"]["source_share"]
        assert set(router[f"only {name}"]["source_share"]) == {name}
        for k in (10, 50, 100):
            expected = router["blend"][f"recall@{k}"] - router[f"without {name}"][f"recall@{k}"]
            assert result["incremental"][name][f"recall@{k}"] == pytest.approx(expected, abs=1e-4)
    for res in router.values():
        assert res["requests"] == 3 * REPLAYED and res["short_lists"] == 0 and not res["dropped"]
    train = make_split(load_movielens(tiny_data), "per_user").train
    assert result["engagements_recorded"] == int(train.sum())


def test_served_refuses_a_bundle_of_another_split(blend_run, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    _, bundle_dir, _ = blend_run
    with pytest.raises(InvalidArgument, match="would see the test items"):
        run_served_eval(
            "127.0.0.1:1", tiny_data, split_name="global", bundle_dir=bundle_dir, progress=False
        )


def test_blend_reuses_an_exported_bundle(blend_run, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    """`--blend --bundle DIR` serves the bundle an earlier run wrote (no training): the same
    blend figures, no offline references."""
    result, bundle_dir, config_path = blend_run
    again = run_blend_eval(
        tiny_data,
        users=REPLAYED,
        bundle_dir=bundle_dir,
        cluster_config=load_config(config_path),
        ablations=False,
        singles=False,
        progress=False,
    )
    assert again["bundle_id"] == result["bundle_id"] and again["offline"] == {}
    assert list(again["router"]) == ["blend"]
    for k in (10, 50, 100):
        key = f"recall@{k}"
        assert again["router"]["blend"][key] == result["router"]["blend"][key]
    with pytest.raises(InvalidArgument, match="would see the test items"):
        run_blend_eval(tiny_data, split_name="global", bundle_dir=bundle_dir, progress=False)
