"""Per-seed cold-start figures of default/ and cold_loss/ -> summary.md (tables) and summary.json.

Usage: python summarize.py  (from this directory)
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
VARIANTS = {"default": "defaults (MODEL_VERSION 5)", "cold_loss": "`cold_loss` 0.05"}
out: dict = {}
lines = []
for split in ("global", "per_user"):
    for var, label in VARIANTS.items():
        rows = []
        for f in sorted((HERE / var).glob(f"{split}-s*.json")):
            (res,) = json.loads(f.read_text())
            c = res["cold_start"]
            rows.append((res["seeds"][0], c))
        if not rows:
            continue
        lifts = np.array([c["lift"] for _, c in rows])
        rec = np.array([c["recall@50"] for _, c in rows])
        rnd = np.array([c["random_recall@50"] for _, c in rows])
        summary = {
            "seeds": [s for s, _ in rows],
            "lift_mean": round(float(lifts.mean()), 3),
            "lift_std": round(float(lifts.std(ddof=1)), 3) if len(rows) > 1 else None,
            "lift_min": round(float(lifts.min()), 3),
            "lift_max": round(float(lifts.max()), 3),
            "seeds_at_or_above_3x": int((lifts >= 3.0).sum()),
            "pooled_lift": round(float(rec.mean() / rnd.mean()), 3),
            "per_seed": {str(s): c for s, c in rows},
        }
        out.setdefault(split, {})[var] = summary
        lines.append(f"\n**{split}, {label}** — seeds {summary['seeds']}\n")
        lines.append(
            "| cold seed | users with a cold test item | cold R@50 | random R@50 | lift "
            "| cold_share@50 | warm R@50 |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for s, c in rows:
            lines.append(
                f"| {s} | {int(c['num_queries'])} | {c['recall@50']:.4f} "
                f"| {c['random_recall@50']:.4f} "
                f"| {c['lift']:.2f}× | {c['cold_share@50']:.4f} | {c['warm_recall@50']:.4f} |"
            )
        std = "" if len(rows) < 2 else f" ± {lifts.std(ddof=1):.2f}"
        users = np.mean([c["num_queries"] for _, c in rows])
        share = np.mean([c["cold_share@50"] for _, c in rows])
        warm = np.mean([c["warm_recall@50"] for _, c in rows])
        lines.append(
            f"| **mean** | {users:.0f} | {rec.mean():.4f} | {rnd.mean():.4f} "
            f"| **{lifts.mean():.2f}×{std}** | {share:.4f} | {warm:.4f} |"
        )
        lines.append(
            f"\nlift min {lifts.min():.2f}×, max {lifts.max():.2f}×; "
            f"seeds at or above 3×: {summary['seeds_at_or_above_3x']} of {len(rows)}; "
            f"ratio of the mean recalls {summary['pooled_lift']:.2f}× (std: sample std, ddof 1)"
        )
(HERE / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
(HERE / "summary.md").write_text("\n".join(lines).lstrip() + "\n")
print("\n".join(lines))

# seed for seed: cold_loss 0.05 against the defaults on the same held-out items
paired = []
for split in ("global", "per_user"):
    v = out.get(split, {})
    if "default" not in v or "cold_loss" not in v:
        continue
    common = [s for s in v["default"]["per_seed"] if s in v["cold_loss"]["per_seed"]]
    if not common:
        continue
    cl, df = v["cold_loss"]["per_seed"], v["default"]["per_seed"]
    d = np.array([cl[s]["lift"] - df[s]["lift"] for s in common])
    w = np.array(
        [
            v["cold_loss"]["per_seed"][s]["warm_recall@50"]
            - v["default"]["per_seed"][s]["warm_recall@50"]
            for s in common
        ]
    )
    paired.append(
        f"{split}: `cold_loss` 0.05 minus defaults over seeds {[int(s) for s in common]}: lift "
        + ", ".join(f"{x:+.2f}" for x in d)
        + f" (mean {d.mean():+.2f}, higher on {int((d > 0).sum())} of {len(d)}); warm R@50 "
        + ", ".join(f"{x:+.4f}" for x in w)
        + f" (mean {w.mean():+.4f})"
    )
if paired:
    text = "\n\n**Seed for seed**\n\n" + "\n".join(f"- {p}" for p in paired) + "\n"
    with open(HERE / "summary.md", "a") as fh:
        fh.write(text)
    print(text)
