"""Feasibility: re-rank the union of the sources' lists by a model over their scores.

    python fit_rerank.py VAL.npz TEST.npz

Fitted on the validation capture, scored on the test capture (``capture_scores.py``)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from annfleet.model.data import load_movielens, make_split
from annfleet.model.features import build_queries

SOURCES = ("ann", "co_engagement", "trending", "content", "exploration", "popular")
KS = (10, 50, 100)


def load(path: str, which: str):
    data = load_movielens()
    split = make_split(data, "per_user", validation=which == "val")
    queries = build_queries(data, split)
    z = dict(np.load(path, allow_pickle=False))
    return data, queries, z


def recall(lists: list[np.ndarray], targets: list[np.ndarray], k: int) -> float:
    pairs = zip(lists, targets, strict=True)
    return float(np.mean([np.isin(t, top[:k]).sum() / len(t) for top, t in pairs if len(t)]))


def features(data, queries, z, names=SOURCES, depth=200):
    """Per query: (candidate ids (n,), X (n, f), y (n,))."""
    out = []
    for q in range(len(queries)):
        targets = set(data.item_ids[queries.targets_of(q) - 1].tolist())
        per = {}
        for s in names:
            ids = z[f"{s}_ids"][q]
            sc = z[f"{s}_scores"][q]
            keep = ids >= 0
            per[s] = (ids[keep][:depth], sc[keep][:depth])
        cand = np.unique(np.concatenate([per[s][0] for s in names]))
        cols = []
        for s in names:
            ids, sc = per[s]
            pos = {int(i): r for r, i in enumerate(ids.tolist())}
            rank = np.array([pos.get(int(c), -1) for c in cand])
            present = rank >= 0
            r = np.where(present, rank, depth)
            score = np.zeros(len(cand), np.float32)
            if len(ids):
                val = sc[np.maximum(rank, 0)]
                if s == "ann":
                    val = val - sc[0]  # gap to the list's best
                    fill = (sc[-1] - sc[0]) if len(sc) else 0.0
                elif s in ("co_engagement", "trending", "popular"):
                    val = np.log1p(np.maximum(val, 0))
                    fill = 0.0
                else:
                    fill = 0.0
                score = np.where(present, val, fill).astype(np.float32)
            cols += [present.astype(np.float32), np.log1p(r).astype(np.float32), score]
        n_src = np.asarray(np.sum([cols[3 * i] for i in range(len(names))], axis=0), np.float32)
        cols.append(n_src)
        X = np.stack(cols, 1)
        y = np.array([int(c) in targets for c in cand], np.float32)
        out.append((cand, X, y, [t for t in targets]))
    return out


def fit(rows, hidden=0, epochs=300, wd=1e-4, seed=0):
    torch.manual_seed(seed)
    X = torch.tensor(np.concatenate([r[1] for r in rows]))
    y = torch.tensor(np.concatenate([r[2] for r in rows]))
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    f = X.shape[1]
    net: torch.nn.Module
    if hidden:
        net = torch.nn.Sequential(
            torch.nn.Linear(f, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )
    else:
        net = torch.nn.Linear(f, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=wd)
    pos_weight = torch.tensor(1.0)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(Xn).squeeze(1), y, pos_weight=pos_weight
        )
        loss.backward()
        opt.step()
    return lambda x: net((torch.tensor(x) - mu) / sd).squeeze(1).detach().numpy()


def ranked(rows, model):
    return [r[0][np.argsort(-model(r[1]), kind="stable")] for r in rows]


def report(name, lists, targets):
    print(f"{name:40s}", " ".join(f"R@{k} {recall(lists, targets, k):.4f}" for k in KS))


def main(val_path, test_path):
    for which, path in (("val", val_path), ("test", test_path)):
        data, queries, z = load(path, which)
        rows = features(data, queries, z)
        targets = [np.array(r[3]) for r in rows]
        pool = np.mean([len(r[0]) for r in rows])
        print(f"== {which}: {len(rows)} queries, mean pool {pool:.0f}")
        report("ann", [z["ann_ids"][q] for q in range(len(rows))], targets)
        report("served blend (rrf)", [z["blend_ids"][q] for q in range(len(rows))], targets)
        report("co_engagement", [z["co_engagement_ids"][q] for q in range(len(rows))], targets)
        ceil = [
            np.concatenate([z["ann_ids"][q][:100], z["co_engagement_ids"][q][:100]])
            for q in range(len(rows))
        ]
        print("union ann+co first 100 each", recall(ceil, targets, 200))
        print("pool recall", recall([r[0] for r in rows], targets, 10_000))
        if which == "val":
            fitted = {
                "linear": fit(rows),
                "mlp16": fit(rows, hidden=16),
                "mlp64": fit(rows, hidden=64, epochs=500),
            }
        for name, model in fitted.items():
            report(name, ranked(rows, model), targets)


if __name__ == "__main__":
    main(*sys.argv[1:3])
