"""Fit the ``learned`` blend (``annfleet.router.blend.Fusion``) on captured source lists.

The lists are ``../tuning/tune_blend.py capture``'s (each source's own Retrieve list at depth
200 through a real router). Every candidate of a query (the union of the lists, after the
router's filters) is one row: per source a one-hot of its rank bucket (``Fusion.bucket``)
or "absent", and a one-hot of how many sources returned it; the label is whether it is one
of the query's targets. A logistic regression (Newton / IRLS, L2 ``l2``, numpy only) gives
one weight per one-hot column: exactly the ``Fusion`` tables (and the intercept its bias).

    python fit_fusion.py fit SPLIT CAPTURE.npz OUT.json [L2]       # validation captures only
    python fit_fusion.py score SPLIT WHICH CAPTURE.npz FUSION.json SETTINGS.json OUT.json

``score`` blends the captured lists with the router's own ``blend`` (learned with FUSION.json
and rrf, both with SETTINGS.json's quotas as floors, weights, c and depth) and each source
alone, and writes the recalls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tuning"))

from tune_blend import Lists

from annfleet.router.blend import LEARNED, QUOTA, RRF, Fusion

EDGES = (0, 1, 2, 3, 5, 10, 20, 35, 50, 75, 100, 150, 200)
DEPTH = 200


def rows(lists: Lists, edges: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X one-hot float64, y 0/1) over every query's candidates, and the source names."""
    names = lists.names
    nb = len(edges) - 1
    probe = Fusion(edges, (), (0.0, 0.0))
    xs, ys = [], []
    for q in range(len(lists.queries)):
        ranks: dict[int, dict[int, int]] = {}
        for s, name in enumerate(names):
            seen: set[int] = set()
            for item in lists.arrs[name][q][:DEPTH].tolist():
                if item < 0 or item in seen:
                    continue
                ranks.setdefault(item, {})[s] = len(seen)
                seen.add(item)
        items = np.array(list(ranks), np.int64)
        x = np.zeros((len(items), len(names) * (nb + 1) + len(names) + 1))
        for s in range(len(names)):
            r = np.array([ranks[i].get(s, -1) for i in items.tolist()], np.int64)
            col = np.where(r >= 0, probe.bucket(np.maximum(r, 0)), nb)
            x[np.arange(len(items)), s * (nb + 1) + col] = 1.0
        count = np.array([len(ranks[i]) for i in items.tolist()])
        x[np.arange(len(items)), len(names) * (nb + 1) + count] = 1.0
        targets = lists.queries.targets_of(q)
        ys.append(np.isin(lists.data.item_index(items), targets).astype(np.float64))
        xs.append(x)
    return np.concatenate(xs), np.concatenate(ys), names


def logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """Weights (columns + intercept last) of an L2-penalised logistic regression (IRLS)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + l2 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def fit(split: str, capture: str, out: str, l2: float = 30.0) -> None:
    lists = Lists(split, "val", capture)
    x, y, names = rows(lists, EDGES)
    w = logistic(x, y, l2)
    nb = len(EDGES) - 1
    tables = {
        n: [round(float(v), 6) for v in w[s * (nb + 1) : (s + 1) * (nb + 1)]]
        for s, n in enumerate(names)
    }
    agree = [round(float(v), 6) for v in w[len(names) * (nb + 1) : -1]]
    fusion = Fusion.from_json(
        dict(edges=list(EDGES), tables=tables, agreement=agree, bias=round(float(w[-1]), 6))
    )
    doc: dict[str, Any] = {
        "fitted": dict(
            split=split,
            on="validation",
            capture=Path(capture).name,
            rows=len(y),
            positives=int(y.sum()),
            l2=l2,
            model="logistic regression on one-hot rank buckets per source + agreement count",
        ),
        **fusion.as_json(),
    }
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["fitted"]))


def score(split: str, which: str, capture: str, fusion_path: str, settings: str, out: str) -> None:
    lists = Lists(split, which, capture)
    cfg = json.loads(Path(settings).read_text())
    q, w, kw = cfg["quotas"], cfg["weights"], dict(c=cfg["c"], depth=cfg["depth"])
    fusion = Fusion.load(fusion_path)
    rows_out = {
        "learned": lists.recall(q, w, mode=LEARNED, fusion=fusion, **kw),
        "rrf": lists.recall(q, w, mode=RRF, **kw),
    }
    for n in lists.names:
        rows_out[f"only {n}"] = lists.recall({n: 1.0}, {n: 1.0}, mode=QUOTA, use=[n])
    doc = dict(split=split, which=which, fusion=Path(fusion_path).name, settings=cfg, rows=rows_out)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    for k, v in rows_out.items():
        print(f"{k:<24}", v, flush=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "fit":
        fit(args[0], args[1], args[2], *(float(a) for a in args[3:]))
    else:
        score(*args)  # type: ignore[arg-type]
