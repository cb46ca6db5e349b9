"""table.py: the round's validation table from scores.jsonl: per config and seed, each member's
R@50 and the pair's (members 0 and 1 of that config) R@10 / R@50 / R@100 / NDCG@50."""

import json
from collections import defaultdict
from pathlib import Path

rows = [json.loads(x) for x in Path(__file__).with_name("scores.jsonl").read_text().splitlines()]
single: dict[tuple[str, int, str], float] = {}
pair: dict[tuple[str, int], dict] = {}
for r in rows:
    parts = [m.split("-", 4) for m in r["members"]]
    tags = {p[4] for p in parts}
    if len(r["members"]) == 1:
        single[(parts[0][4], r["seed"], parts[0][3])] = r["recall@50"]
    elif len(r["members"]) == 2 and len(tags) == 1 and [p[3] for p in parts] == ["m0", "m1"]:
        pair[(parts[0][4], r["seed"])] = r
by_cfg = defaultdict(list)
for (tag, seed, m), v in single.items():
    by_cfg[tag].append((seed, m, v))
for tag in by_cfg:
    for seed in (0, 1):
        ms = " / ".join(f"{m} {v:.4f}" for s, m, v in sorted(by_cfg[tag]) if s == seed)
        if not ms:
            continue
        p = pair.get((tag, seed))
        keys = ("recall@10", "recall@50", "recall@100", "ndcg@50")
        ps = " / ".join(f"{p[k]:.4f}" for k in keys) if p else "-"
        print(f"| {tag} | {seed} | {ms} | {ps} |")
