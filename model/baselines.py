"""Baselines scored with the same queries and metrics as the two-tower model.

Each returns scores (Q, N + 1) float32 for ``Queries`` (column 0 = padding). Models that have
nothing to say about a user (no history) fall back to all-time popularity through a tiny
tie-breaking term, so every baseline ranks the whole catalogue.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from annfleet.model.data import MovieLens
from annfleet.model.features import Queries

log = logging.getLogger(__name__)
TIEBREAK = 1e-6


def item_counts(data: MovieLens, train: np.ndarray) -> np.ndarray:
    """(N + 1,) float64 train interaction count per item index."""
    return np.bincount(data.inter_item[train], minlength=data.num_items + 1).astype(np.float64)


def _tiebreak(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) float32 in [0, TIEBREAK): popularity order, for breaking ties."""
    return (TIEBREAK * counts / max(counts.max(), 1.0)).astype(np.float32)


def popularity(data: MovieLens, train: np.ndarray, queries: Queries) -> np.ndarray:
    """All-time train popularity, the same list for every user."""
    counts = item_counts(data, train)
    return np.broadcast_to(counts.astype(np.float32), (len(queries), len(counts))).copy()


def popularity_recent(
    data: MovieLens, train: np.ndarray, queries: Queries, window_days: float = 7.0
) -> np.ndarray:
    """Popularity over the ``window_days`` of train interactions before each query's time."""
    idx = np.flatnonzero(train)
    order = np.argsort(data.inter_ts[idx], kind="stable")
    ts = data.inter_ts[idx][order]
    items = data.inter_item[idx][order]
    n1 = data.num_items + 1
    base = _tiebreak(item_counts(data, train))
    end_ts = np.minimum(queries.query_ts, ts[-1] + 1)
    out = np.empty((len(queries), n1), dtype=np.float32)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for q, end in enumerate(end_ts.tolist()):
        hi = int(np.searchsorted(ts, end, side="left"))
        lo = int(np.searchsorted(ts, end - window_days * 86400, side="left"))
        if (lo, hi) not in cache:
            cache[(lo, hi)] = np.bincount(items[lo:hi], minlength=n1).astype(np.float32) + base
        out[q] = cache[(lo, hi)]
    return out


def _user_item_matrix(data: MovieLens, train: np.ndarray) -> np.ndarray:
    """(U + 1, N + 1) float32 binary train matrix."""
    x = np.zeros((data.num_users + 1, data.num_items + 1), dtype=np.float32)
    x[data.inter_user[train], data.inter_item[train]] = 1.0
    return x


def item_item(
    data: MovieLens, train: np.ndarray, queries: Queries, last: int = 5, decay: float = 0.8
) -> np.ndarray:
    """Co-engagement: cosine item-item similarity of the train matrix, summed over the user's
    ``last`` recent items with weights decay**age (most recent = 1)."""
    x = _user_item_matrix(data, train)
    co = x.T @ x
    norm = np.sqrt(np.maximum(np.diag(co), 1.0))
    sim = co / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0.0)
    sim[0] = 0.0
    recent = queries.recent[:, -last:]
    weights = decay ** np.arange(last - 1, -1, -1, dtype=np.float32)
    scores = np.zeros((len(queries), data.num_items + 1), dtype=np.float32)
    for j in range(last):
        scores += weights[j] * sim[recent[:, j]]
    return scores + _tiebreak(item_counts(data, train))


def ease(data: MovieLens, train: np.ndarray, queries: Queries, lam: float = 300.0) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diag(1/diag P), P = (X^T X + lam I)^-1; scores = X_u B."""
    x = _user_item_matrix(data, train).astype(np.float64)
    g = x.T @ x + lam * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    scores = (x[queries.users] @ b).astype(np.float32)
    return scores + _tiebreak(item_counts(data, train))


def mf_bpr(
    data: MovieLens,
    train: np.ndarray,
    queries: Queries,
    *,
    dim: int = 64,
    epochs: int = 30,
    lr: float = 0.005,
    reg: float = 1e-5,
    batch: int = 2048,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Matrix factorisation with BPR loss and uniform negatives (an ID-only two-tower)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    nu, ni = data.num_users + 1, data.num_items + 1
    user_emb = torch.nn.Embedding(nu, dim)
    item_emb = torch.nn.Embedding(ni, dim)
    item_bias = torch.nn.Embedding(ni, 1)
    for e in (user_emb, item_emb):
        torch.nn.init.normal_(e.weight, std=0.05)
    torch.nn.init.zeros_(item_bias.weight)
    params = [*user_emb.parameters(), *item_emb.parameters(), *item_bias.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    users = data.inter_user[train]
    items = data.inter_item[train]
    seen_keys = np.unique(users * ni + items)
    bar = tqdm(range(epochs), desc="mf-bpr", disable=not progress, leave=False)
    for _ in bar:
        perm = rng.permutation(len(users))
        neg = rng.integers(1, ni, size=len(users))
        # resample negatives the user has seen (once is enough at this density)
        clash = np.isin(users * ni + neg, seen_keys)
        neg[clash] = rng.integers(1, ni, size=int(clash.sum()))
        total = 0.0
        for s in range(0, len(perm), batch):
            b = perm[s : s + batch]
            u = user_emb(torch.from_numpy(users[b]))
            p = torch.from_numpy(items[b])
            n = torch.from_numpy(neg[b])
            pos = (u * item_emb(p)).sum(1) + item_bias(p).squeeze(1)
            negs = (u * item_emb(n)).sum(1) + item_bias(n).squeeze(1)
            loss = -torch.nn.functional.logsigmoid(pos - negs).mean()
            loss = loss + reg * (
                u.pow(2).sum() + item_emb(p).pow(2).sum() + item_emb(n).pow(2).sum()
            ) / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        bar.set_postfix(loss=f"{total / len(perm):.4f}")
    with torch.no_grad():
        u = user_emb.weight[torch.from_numpy(queries.users)]
        scores = (u @ item_emb.weight.T + item_bias.weight.T).numpy().astype(np.float32)
    # users with no train interactions have an untrained vector: fall back to popularity
    counts = item_counts(data, train)
    has_history = np.diff(queries.seen_ptr) > 0
    scores[~has_history] = 0.0
    return scores + _tiebreak(counts)
