"""`annfleet train` / `annfleet eval` argument handling (no training)."""

from __future__ import annotations

import argparse

import pytest

from annfleet.model import cli, evaluate


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="annfleet")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_the_cli_lists_the_models_and_splits_evaluate_runs() -> None:
    assert cli.MODELS == evaluate.MODELS and cli.SPLITS == evaluate.SPLITS
    args = _parse(["eval", "--models", "two_tower", "cold_start", "--cold-seeds", "0"])
    assert args.models == ["two_tower", "cold_start"] and args.cold_seeds == [0]
    with pytest.raises(SystemExit):
        _parse(["eval", "--models", "nope"])


def test_members_sets_the_ensemble_size_and_the_served_width() -> None:
    default = cli._config(_parse(["train", "--out", "x"]))
    assert default.members == 3 and default.out_dim == 192  # the tuned default: 3 x 64
    cfg = cli._config(_parse(["train", "--out", "x", "--members", "3", "--dim", "16"]), seed=4)
    assert (cfg.members, cfg.dim, cfg.out_dim, cfg.seed) == (3, 16, 48, 4)
    assert [cfg.member_seed(j) for j in range(3)] == [4, 1004, 2004]
    with pytest.raises(SystemExit):  # a usage error at parse time (test_cli_mistakes.py)
        _parse(["eval", "--members", "0"])
