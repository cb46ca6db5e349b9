"""`annfleet train` and `annfleet eval` (registered into the main CLI by annfleet.cli)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

# From data.py, not evaluate.py: the main CLI starts without importing torch.
from annfleet.model.data import MODELS, SPLITS

DEFAULT_CACHE = Path(os.environ.get("ANNFLEET_CACHE", Path.home() / ".cache" / "annfleet"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="directory with ml-100k.{inter,item,user} (default: the recbole wheel's)",
    )
    p.add_argument(
        "--dim",
        type=positive_int,
        default=64,
        help="embedding dimension per ensemble member (default 64)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="two-tower epochs (default: tuned)"
    )
    p.add_argument(
        "--members",
        type=positive_int,
        default=None,
        help="independently seeded two-towers served as one (default: tuned)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide tqdm progress bars")


def positive_int(text: str) -> int:
    """argparse type of a count that must be >= 1 (a usage error otherwise, before any data
    is loaded or a model trained)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `train` and `eval` subcommands."""
    t = subparsers.add_parser(
        "train",
        help="train the two-tower model on MovieLens-100k and export a bundle",
        description="Train the two-tower model on all MovieLens-100k interactions and write a "
        "retrieval bundle (item shards + faiss indexes, TorchScript user tower, user "
        "feature table, popularity/co-engagement/title tables).",
    )
    _common(t)
    t.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    t.add_argument("--shards", type=int, default=2, help="number of item shards (default 2)")
    t.add_argument("--index", choices=("hnsw", "ivfpq", "flat"), default="hnsw")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    t.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the quick per-user-split evaluation recorded in the manifest",
    )
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser(
        "eval",
        help="evaluate popularity, MF-BPR, item-item, EASE and the two-tower",
        description="Train every model on the per-user and global time splits of "
        "MovieLens-100k and print Recall@10/50/100 and NDCG@50 (means over seeds), "
        "two-tower through the ANN index, and cold-start recall.",
    )
    _common(e)
    e.add_argument("--json", action="store_true", help="print JSON (one object per split)")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    e.add_argument(
        "--cold-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds that also train the cold-start model (default: all --seeds)",
    )
    e.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    e.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        help="only these models (default all; cold_start still only for --cold-seeds)",
    )
    e.add_argument(
        "--split",
        choices=SPLITS,
        action="append",
        default=None,
        help="only this split (repeatable; default both)",
    )
    e.add_argument(
        "--validation",
        action="store_true",
        help="evaluate on the validation split carved from train (for tuning)",
    )
    e.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE / "eval",
        help="reuse results of an identical earlier run from here",
    )
    e.add_argument("--no-cache", action="store_true", help="always retrain")
    b = e.add_argument_group(
        "through the router",
        "--blend: train the two-tower on the split's train part, serve it in process (real "
        "shard servers and router on free loopback ports), record the train engagements "
        "through RecordEngagement and measure the blended Retrieve list, each source's "
        "incremental recall and each source alone. --served HOST:PORT: the same replay "
        "through a running router. Both use --split (default per_user) and the first of --seeds.",
    )
    b.add_argument("--blend", action="store_true", help="measure Retrieve in process")
    b.add_argument(
        "--served",
        metavar="HOST:PORT",
        default=None,
        help="measure Retrieve through the router at HOST:PORT (serving the bundle that "
        "--blend --export-bundle wrote, with fresh state)",
    )
    b.add_argument(
        "--export-bundle",
        type=Path,
        default=None,
        metavar="DIR",
        help="--blend: keep the bundle trained on the split's train part here",
    )
    b.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="DIR",
        help="--served: the bundle the router serves (checked: split and answering bundle "
        "id); --blend: serve this bundle (an --export-bundle of this split) instead of training",
    )
    b.add_argument("--users", type=positive_int, default=None, help="only the first N test users")
    b.add_argument("--config", type=Path, default=None, help="cluster YAML: sources, router")
    b.add_argument("--shards", type=int, default=2, help="--blend: item shards (default 2)")
    b.add_argument(
        "--no-ablation",
        action="store_true",
        help="--blend: the blend only (no router per disabled source, none per single source)",
    )
    b.add_argument(
        "--no-baselines", action="store_true", help="--blend: skip offline popularity/MF-BPR"
    )
    b.add_argument(
        "--no-record",
        action="store_true",
        help="--served: the router already holds the train engagements (a second run)",
    )
    b.add_argument("--out", type=Path, default=None, help="write blend.json and blend.csv here")
    b.add_argument("--overwrite", action="store_true", help="replace --export-bundle")
    e.set_defaults(func=cmd_eval)


def _config(args: argparse.Namespace, seed: int = 0):  # type: ignore[no-untyped-def]
    from annfleet.model.two_tower import TwoTowerConfig

    cfg = replace(TwoTowerConfig(), dim=args.dim, seed=seed)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.members is not None:
        cfg = replace(cfg, members=args.members)
    return cfg


def cmd_eval(args: argparse.Namespace) -> int:
    if args.blend or args.served:
        return cmd_blend_eval(args)
    from annfleet.model.evaluate import run_eval

    results = run_eval(
        args.data,
        splits=tuple(args.split or SPLITS),
        seeds=tuple(args.seeds),
        config=_config(args),
        validation=args.validation,
        cache_dir=None if args.no_cache else args.cache_dir,
        progress=not args.no_progress,
        cold_seeds=None if args.cold_seeds is None else tuple(args.cold_seeds),
        threads=args.threads,
        models=tuple(args.models or MODELS),
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for res in results:
        print(
            f"\nsplit {res['split']}  ({res['num_queries']} users, means over seeds "
            f"{res['seeds']}{', VALIDATION' if res['validation'] else ''})"
        )
        print(f"{'model':<20}{'R@10':>8}{'R@50':>8}{'R@100':>8}{'NDCG@50':>9}")
        for name in (m for m in MODELS if m != "cold_start"):  # cold start: its own line
            m = res.get(name)
            if m:
                print(
                    f"{name:<20}{m['recall@10']:>8.3f}{m['recall@50']:>8.3f}"
                    f"{m['recall@100']:>8.3f}{m['ndcg@50']:>9.3f}"
                )
        ann = res.get("two_tower_ann", {})
        if ann:
            print(f"ANN recall@100 vs exact: {ann['ann_recall@100']:.4f}")
        cold = res.get("cold_start")
        if cold:
            print(
                f"cold items: R@50 {cold['recall@50']:.3f} vs random "
                f"{cold['random_recall@50']:.3f} ({cold['lift']:.1f}x); their share of the "
                f"top 50 {cold.get('cold_share@50', float('nan')):.3f}, R@50 of the other "
                f"items {cold.get('warm_recall@50', float('nan')):.3f}"
            )
    return 0


def cmd_blend_eval(args: argparse.Namespace) -> int:
    from annfleet.config import load_config
    from annfleet.model.blend_eval import print_blend, run_blend_eval, run_served_eval, write_out

    if args.blend and args.served:
        raise SystemExit("annfleet eval: --blend and --served are two modes; pick one")
    if args.bundle and args.export_bundle:
        raise SystemExit("annfleet eval: --bundle reuses a bundle, --export-bundle writes one")
    results = []
    for split in args.split or ["per_user"]:
        if args.served:
            res = run_served_eval(
                args.served,
                args.data,
                split_name=split,
                validation=args.validation,
                users=args.users,
                bundle_dir=args.bundle,
                record_first=not args.no_record,
                progress=not args.no_progress,
            )
        else:
            res = run_blend_eval(
                args.data,
                split_name=split,
                validation=args.validation,
                config=_config(args, args.seeds[0]),
                users=args.users,
                export_bundle=args.export_bundle,
                bundle_dir=args.bundle,
                num_shards=args.shards,
                cluster_config=load_config(args.config),
                ablations=not args.no_ablation,
                singles=not args.no_ablation,
                baselines_too=not args.no_baselines,
                progress=not args.no_progress,
                threads=args.threads,
                overwrite=args.overwrite,
            )
        results.append(res)
    if args.out is not None:
        write_out(args.out, results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for res in results:
            print_blend(res)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from annfleet.model.export import train_and_export

    bundle = train_and_export(
        args.out,
        data_dir=args.data,
        config=_config(args, args.seed),
        num_shards=args.shards,
        index_type=args.index,
        evaluate=not args.no_eval,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"bundle {bundle.id} written to {bundle.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("ANNFLEET_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = argparse.ArgumentParser(prog="annfleet")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
