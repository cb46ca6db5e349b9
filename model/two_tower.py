"""Two-tower retrieval model: user tower (features + recent-item sequence + time) and item
tower (id + genres + year + hashed title words), trained by default with a softmax over every
training item in which the user's other train items are not negatives, plus a second softmax
over content-only item vectors, optionally a third in which only the positive is content-only
(``cold_loss``; an item with no interactions is served from its content,
``served_item_vectors``); the
in-batch sampled softmax with logQ correction and optional mixed uniform negatives stays
available (``full_softmax=False``).

Other options, off by default (tried on validation, see benchmarks/results/eval/TUNING.md and
README.md there): a weighted logQ correction, one item-id embedding shared by both towers,
self-attention blocks over the recent items, a bag of the recent items weighted by learned
per-position weights (``recency_pool``).

By default the towers share no parameters; both outputs are L2-normalised and scored by dot
product.
The user tower is TorchScript-able (it is what the router runs); the item tower runs offline.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from annfleet.model.data import FINE_YEAR_BUCKETS, TITLE_BUCKETS, MovieLens, fine_year_bucket
from annfleet.model.features import (
    RECENT_LEN,
    TREND_WEEKS,
    recent_before,
    time_features,
    user_rows,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-2  # peak of the one-cycle schedule (MODEL_VERSION <= 5: 5e-3)
    weight_decay: float = 1e-4  # Adam's L2 (MODEL_VERSION 6: 1e-5; <= 5: 1e-6). Better members
    # (one member's validation R@50 +0.012 on average) that agree more: it pays with 3 members
    temperature: float = 0.1
    logq: bool = True
    logq_weight: float = 1.0  # logits - w * log q: 1 = full correction, 0 = none
    uniform_negatives: int = 0  # extra uniform catalogue negatives per batch (mixed negatives)
    recent_len: int = RECENT_LEN
    use_recent: bool = True
    id_dropout: float = 0.1  # share of examples whose user id is replaced by "unknown"
    item_id_dropout: float = 0.1  # share of candidates whose item id is replaced by "unknown"
    content_loss: float = 0.5  # weight of a second softmax over content-only item vectors
    cold_loss: float = 0.0  # weight of a softmax with only the positive content-only (0.05:
    # cold items x1.2-1.4 on test, per-user R@50 -0.002; benchmarks/results/eval/cold10/)
    fine_year: bool = True  # item tower also embeds the release year itself (1990s on)
    share_items: bool = False  # user tower's recent items use the item tower's id embedding
    full_softmax: bool = True  # softmax over the whole catalogue instead of in-batch samples
    mask_user_items: bool = True  # (full softmax) the user's other train items are no negatives
    context_shift: int = 4  # context ends up to this many interactions before the target
    # (MODEL_VERSION <= 5: 8; with lr 1e-2 and weight_decay 1e-5, validation R@50 of the pair
    # +0.02: benchmarks/results/eval/TUNING.md round 6)
    shift_frac: float = 0.0  # ... or up to this share of the user's train interactions if more
    hidden: int = 256
    blocks: int = 0  # self-attention blocks over the recent-item sequence (0 = pooling only)
    recency_pool: bool = False  # a fourth bag of the recent items: a softmax over learned
    # per-position weights (starts as the mean; learns how fast older items fade). Tried in
    # round 6: validation R@50 of one member 0.472 vs 0.479 (TUNING.md), so off
    heads: int = 2
    dropout: float = 0.1  # dropout inside the self-attention blocks
    members: int = 3  # independently seeded two-towers served as one (vectors concatenated;
    # MODEL_VERSION <= 6: 2; with weight_decay 1e-4, validation R@50 +0.011 / +0.013 over the
    # MODEL_VERSION 6 pair, 1.5x its training: benchmarks/results/eval/TUNING.md round 7)
    seed: int = 0

    @property
    def out_dim(self) -> int:
        """Width of the served user and item vectors: ``dim`` per member."""
        return self.dim * self.members

    def member_seed(self, j: int) -> int:
        """Training seed of ensemble member ``j`` (member 0 = ``seed``: a one-member
        ensemble is the plain model)."""
        return self.seed + 1000 * j


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block over the recent items (B, L, s); padding masked as keys."""

    def __init__(self, size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)
        self.norm1 = nn.LayerNorm(size)
        self.norm2 = nn.LayerNorm(size)
        self.ff = nn.Sequential(nn.Linear(size, 2 * size), nn.GELU(), nn.Linear(2 * size, size))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        b, length, size = x.shape
        h = size // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, h).permute(2, 0, 3, 1, 4)
        att = qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(h)  # (B, H, L, L)
        att = att.masked_fill(valid[:, None, None, :] == 0, -1e9)
        y = (torch.softmax(att, dim=-1) @ qkv[2]).transpose(1, 2).reshape(b, length, size)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.norm2(x)))


def recency_bag(logits: Tensor, items: Tensor, valid: Tensor) -> Tensor:
    """logits (L,) one weight per position, items (B, L, s), valid (B, L) float 0/1 ->
    (B, s): the valid items weighted by the softmax of their positions' logits (all equal:
    the mean of the valid items; a row with none: zeros)."""
    w = logits[None, :].expand(items.shape[0], -1).masked_fill(valid == 0, -1e9)
    w = torch.softmax(w, dim=1) * valid
    return (w[:, :, None] * items).sum(1)


class UserTower(nn.Module):
    """(user (B, 5), recent (B, L), time (B, 4)) int64 -> (B, dim) float32, L2-normalised."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        vocab: list[int],
        dim: int,
        hidden: int = 256,
        recent_len: int = RECENT_LEN,
        use_recent: bool = True,
        blocks: int = 0,
        heads: int = 2,
        dropout: float = 0.1,
        recency_pool: bool = False,
    ) -> None:
        super().__init__()
        self.user_id = nn.Embedding(num_users + 1, 32, padding_idx=0)
        self.age = nn.Embedding(vocab[0], 8)
        self.gender = nn.Embedding(vocab[1], 4)
        self.occupation = nn.Embedding(vocab[2], 8)
        self.zip = nn.Embedding(vocab[3], 8)
        self.hour = nn.Embedding(25, 8)
        self.dow = nn.Embedding(8, 4)
        self.gap = nn.Embedding(10, 8)
        self.trend = nn.Embedding(TREND_WEEKS + 1, 8)
        s = 64
        self.item = nn.Embedding(num_items + 1, s, padding_idx=0)
        self.position = nn.Embedding(recent_len, s)
        self.recent_len = recent_len
        self.use_recent = use_recent
        side = 32 + 8 + 4 + 8 + 8 + 8 + 4 + 8 + 8
        self.query = nn.Linear(side, s)
        self.key = nn.Linear(s, s)
        self.blocks = nn.ModuleList([SelfAttentionBlock(s, heads, dropout) for _ in range(blocks)])
        # recency_pool: one learned logit per position (empty when off: same model as before)
        self.recency_pool = recency_pool
        self.recency = nn.Parameter(torch.zeros(recent_len if recency_pool else 0))
        bags = 4 if recency_pool else 3
        self.mlp = nn.Sequential(
            nn.Linear(side + bags * s, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, user: Tensor, recent: Tensor, time: Tensor) -> Tensor:
        side = torch.cat(
            [
                self.user_id(user[:, 0]),
                self.age(user[:, 1]),
                self.gender(user[:, 2]),
                self.occupation(user[:, 3]),
                self.zip(user[:, 4]),
                self.hour(time[:, 0]),
                self.dow(time[:, 1]),
                self.gap(time[:, 2]),
                self.trend(time[:, 3]),
            ],
            dim=1,
        )
        recent = recent[:, -self.recent_len :]
        if not self.use_recent:
            recent = torch.zeros_like(recent)
        valid = (recent > 0).to(torch.float32)  # (B, L)
        n_valid = valid.sum(1, keepdim=True)
        items = self.item(recent)  # (B, L, s)
        length = recent.shape[1]
        pos = torch.arange(self.recent_len - length, self.recent_len, device=recent.device)
        if len(self.blocks) > 0:
            x = items + self.position(pos)[None, :, :]
            for block in self.blocks:
                x = block(x, valid)
            items = x * valid[:, :, None]
        keys = self.key(items + self.position(pos)[None, :, :])
        # attention pooling: a query from the user's features and time attends over the items
        att = (keys * self.query(side)[:, None, :]).sum(2) / math.sqrt(keys.shape[2])
        att = att.masked_fill(valid == 0, -1e9)
        weights = torch.softmax(att, dim=1) * valid
        attended = (weights[:, :, None] * items).sum(1)
        mean = (items * valid[:, :, None]).sum(1) / n_valid.clamp(min=1.0)
        last = items[:, -1, :]
        bags = [side, attended, mean, last]
        if self.recency_pool:
            bags.append(recency_bag(self.recency[self.recent_len - length :], items, valid))
        out = self.mlp(torch.cat(bags, dim=1))
        return F.normalize(out, dim=1)


class ItemTower(nn.Module):
    """(item (N,), genres (N, G), year (N,), title (N, W)) -> (N, dim) float32, L2-normalised.

    Item index 0 means "no id" (cold items): the vector then comes from content alone.
    """

    def __init__(
        self, num_items: int, num_genres: int, dim: int, hidden: int = 256, fine_year: bool = False
    ) -> None:
        super().__init__()
        self.item_id = nn.Embedding(num_items + 1, 64, padding_idx=0)
        self.genres = nn.Linear(num_genres, 16)
        self.year = nn.Embedding(20, 8)
        self.title = nn.EmbeddingBag(TITLE_BUCKETS, 16, mode="mean", padding_idx=0)
        self.fine_year = nn.Embedding(FINE_YEAR_BUCKETS, 8) if fine_year else None
        width = 64 + 16 + 8 + 16 + (8 if fine_year else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(
        self,
        item: Tensor,
        genres: Tensor,
        year: Tensor,
        title: Tensor,
        fine_year: Tensor | None = None,
    ) -> Tensor:
        parts = [self.item_id(item), self.genres(genres), self.year(year), self.title(title)]
        if self.fine_year is not None and fine_year is not None:
            parts.append(self.fine_year(fine_year))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


@dataclass
class ItemFeatures:
    """Item-tower inputs for every item index 0..N (row 0 = padding)."""

    genres: Tensor  # (N + 1, G) float32
    year: Tensor  # (N + 1,) int64
    title: Tensor  # (N + 1, W) int64
    fine_year: Tensor  # (N + 1,) int64 fine_year_bucket of the release year

    @classmethod
    def of(cls, data: MovieLens) -> ItemFeatures:
        return cls(
            torch.from_numpy(data.item_genres),
            torch.from_numpy(data.item_year),
            torch.from_numpy(data.item_title),
            torch.from_numpy(fine_year_bucket(data.item_release_year)),
        )


class TwoTower(nn.Module):
    def __init__(self, data: MovieLens, config: TwoTowerConfig) -> None:
        super().__init__()
        vocab = [int(data.user_feats[:, j].max()) + 1 for j in range(4)]
        vocab[0] = max(vocab[0], 8)
        self.config = config
        self.vocab = vocab
        self.user = UserTower(
            data.num_users,
            data.num_items,
            vocab,
            config.dim,
            config.hidden,
            config.recent_len,
            config.use_recent,
            config.blocks,
            config.heads,
            config.dropout,
            config.recency_pool,
        )
        self.item = ItemTower(
            data.num_items, data.item_genres.shape[1], config.dim, config.hidden, config.fine_year
        )
        if config.share_items:  # one id embedding serves the recent items and the candidates
            self.user.item = self.item.item_id
        self.features = ItemFeatures.of(data)
        self.losses: list[float] = []  # mean training loss per epoch

    def item_vectors(self, index: Tensor, id_known: Tensor | None = None) -> Tensor:
        """index (n,) int64 item indices -> (n, dim); where id_known is False, content only."""
        ids = index if id_known is None else torch.where(id_known, index, torch.zeros_like(index))
        f = self.features
        return self.item(ids, f.genres[index], f.year[index], f.title[index], f.fine_year[index])


class EnsembleUserTower(nn.Module):
    """The members' user towers as one: their (B, dim) outputs concatenated and scaled by
    1/sqrt(K), so the result is L2-normalised and its dot product with an ensemble item vector
    is the mean of the members' scores. TorchScript-able, same inputs as ``UserTower``."""

    def __init__(self, towers: list[UserTower]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.scale = 1.0 / math.sqrt(len(towers))

    def forward(self, user: Tensor, recent: Tensor, time: Tensor) -> Tensor:
        outs: list[Tensor] = []
        for tower in self.towers:
            outs.append(tower(user, recent, time))
        return torch.cat(outs, dim=1) * self.scale


class TwoTowerEnsemble(nn.Module):
    """K independently trained two-towers served as one two-tower of width K * dim: user and
    item vectors are the members' concatenated (each scaled by 1/sqrt(K)), so one
    inner-product index over the item vectors ranks by the mean of the members' scores."""

    def __init__(self, members: list[TwoTower], config: TwoTowerConfig) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = config
        self.user = EnsembleUserTower([m.user for m in members])
        self.scale = 1.0 / math.sqrt(len(members))
        # mean training loss per epoch, averaged over the members
        per_member = [m.losses for m in members]
        self.losses: list[float] = [float(np.mean(e)) for e in zip(*per_member, strict=True)]

    def item_vectors(self, index: Tensor, id_known: Tensor | None = None) -> Tensor:
        """index (n,) int64 -> (n, K * dim), as ``TwoTower.item_vectors``."""
        vecs = [cast(TwoTower, m).item_vectors(index, id_known) for m in self.members]
        return torch.cat(vecs, dim=1) * self.scale


Model = TwoTower | TwoTowerEnsemble


def sampled_softmax_logits(
    user: Tensor, items: Tensor, log_q: Tensor | None, temperature: float
) -> Tensor:
    """user (B, d), items (M, d), log_q (M,) or None -> logits (B, M) = u·v/T - log q."""
    logits = user @ items.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    return logits


def sampled_softmax_loss(
    user: Tensor,
    items: Tensor,
    pos_item: Tensor,
    cand_item: Tensor,
    log_q: Tensor | None,
    temperature: float,
) -> Tensor:
    """In-batch softmax: row i's positive is column i; other columns holding the same item
    as row i's positive are masked out (they are not negatives)."""
    logits = sampled_softmax_logits(user, items, log_q, temperature)
    return F.cross_entropy(_mask_clashes(logits, pos_item, cand_item), torch.arange(len(user)))


def _mask_clashes(logits: Tensor, pos_item: Tensor, cand_item: Tensor) -> Tensor:
    """In-batch logits (B, M) with every column holding row i's positive item masked, except
    column i (the positive itself)."""
    b = logits.shape[0]
    clash = pos_item[:, None] == cand_item[None, :]
    clash[torch.arange(b), torch.arange(b)] = False
    return logits.masked_fill(clash, -1e9)


def logq_correction(
    p: np.ndarray, cand: np.ndarray, batch: int, uniform: int = 0, weight: float = 1.0
) -> np.ndarray:
    """p (N + 1,) float64 item sampling probabilities, cand (M,) int64 candidate items ->
    (M,) float32 weight * log of each candidate's expected count in the sampled set
    (batch * p_j, plus uniform / N for mixed uniform negatives)."""
    expected = batch * p[cand] + uniform / (len(p) - 1)
    return (weight * np.log(np.maximum(expected, 1e-12))).astype(np.float32)


def two_tower_loss(
    model: TwoTower,
    user: Tensor,
    pos_item: Tensor,
    cand_item: Tensor,
    id_known: Tensor,
    log_q: Tensor | None,
    exclude: Tensor | None = None,
) -> Tensor:
    """The training loss of one batch: user (B, d) vectors, pos_item (B,) their positives,
    cand_item (M,) candidates (the positives first; with ``full_softmax`` every training item,
    sorted), id_known (M,) bool, log_q (M,) or None, exclude (B, M) bool or None (full softmax
    only: candidates that are not negatives for that row).

    Softmax over the candidates' vectors (in-batch sampled, or over the whole catalogue), plus
    ``content_loss`` times the same softmax with every candidate scored from its content alone
    (so the content features carry the signal by themselves: that is all a cold item has),
    plus ``cold_loss`` times the same softmax with only each row's positive scored from its
    content alone, the other candidates as served (what a cold item competes with).
    """
    c = model.config

    def logits_of(v: Tensor) -> tuple[Tensor, Tensor]:
        if c.full_softmax:  # cand_item is sorted: the positive's column by binary search
            target = torch.searchsorted(cand_item, pos_item)
            return _mask_excluded(user @ v.T / c.temperature, target, exclude), target
        logits = sampled_softmax_logits(user, v, log_q, c.temperature)  # in-batch: column i
        return _mask_clashes(logits, pos_item, cand_item), torch.arange(len(user))

    logits, target = logits_of(model.item_vectors(cand_item, id_known))
    loss = F.cross_entropy(logits, target)
    if c.content_loss > 0 or c.cold_loss > 0:
        content = model.item_vectors(cand_item, torch.zeros_like(id_known))
        if c.content_loss > 0:
            loss = loss + c.content_loss * F.cross_entropy(logits_of(content)[0], target)
        if c.cold_loss > 0:  # the positive as a cold item meets it at serving time: from
            # its content alone, against the other candidates as served (with their ids)
            score = (user * content[target]).sum(1) / c.temperature
            if not c.full_softmax and log_q is not None:
                score = score - log_q[target]
            cold = logits.scatter(1, target[:, None], score[:, None])
            loss = loss + c.cold_loss * F.cross_entropy(cold, target)
    return loss


def full_softmax_loss(
    user: Tensor, items: Tensor, target: Tensor, exclude: Tensor | None, temperature: float
) -> Tensor:
    """Softmax over every training item: user (B, d), items (M, d), target (B,) int64 the
    column of each row's positive, exclude (B, M) bool or None: columns that are not negatives
    for that row (the user's other train items; the positive itself is always kept)."""
    return F.cross_entropy(_mask_excluded(user @ items.T / temperature, target, exclude), target)


def _mask_excluded(logits: Tensor, target: Tensor, exclude: Tensor | None) -> Tensor:
    """Full-softmax logits (B, M) with the excluded columns masked, each row's target kept."""
    if exclude is None:
        return logits
    keep = torch.zeros_like(exclude)
    keep[torch.arange(len(target)), target] = True
    return logits.masked_fill(exclude & ~keep, -1e9)


def user_item_mask(ex: Examples, rows: np.ndarray, num_items: int) -> np.ndarray:
    """(B, N + 1) bool: every train item of each row's user."""
    mask = np.zeros((len(rows), num_items + 1), dtype=bool)
    lo, n = ex.start[rows], ex.count[rows]
    r = np.repeat(np.arange(len(rows)), n)
    cols = ex.item[np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))]
    mask[r, cols] = True
    return mask


@dataclass
class Examples:
    """Training examples: one per train interaction (data order)."""

    user: np.ndarray  # (n, 5) int64
    item: np.ndarray  # (n,) int64
    ts: np.ndarray  # (n,) int64
    recent: np.ndarray  # (n, L) int64 recent items strictly before the example
    last_ts: np.ndarray  # (n,) int64
    start: np.ndarray  # (n,) int64 row of the user's first example
    count: np.ndarray  # (n,) int64 number of train examples of the row's user
    reference_ts: int  # last train timestamp (the trend feature counts weeks before it)


def build_examples(data: MovieLens, train: np.ndarray, length: int) -> Examples:
    idx = np.flatnonzero(train)
    users = data.inter_user[idx]
    recent, last_ts = recent_before(data, train, length)
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[first, len(idx)])
    start = np.repeat(first, sizes)
    return Examples(
        user_rows(data, users),
        data.inter_item[idx],
        data.inter_ts[idx],
        recent,
        last_ts,
        start,
        np.repeat(sizes, sizes),
        int(data.inter_ts[idx].max()),
    )


def _shifted_context(
    ex: Examples, rows: np.ndarray, rng: np.random.Generator, shift: int, frac: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Context of each example taken up to ``shift`` interactions earlier (or up to ``frac``
    of the user's train interactions if that is more; never later): the test targets are the
    next several items after the context, not only the next one."""
    if shift <= 0 and frac <= 0:
        src = rows
    else:
        if frac <= 0:
            g = rng.integers(0, shift + 1, size=len(rows))
        else:
            top = np.maximum(shift, np.floor(frac * ex.count[rows]).astype(np.int64))
            g = np.floor(rng.random(len(rows)) * (top + 1)).astype(np.int64)
        src = np.maximum(rows - g, ex.start[rows])
    return ex.recent[src], time_features(ex.ts[rows], ex.last_ts[src], ex.reference_ts)


def train_two_tower(
    data: MovieLens, train: np.ndarray, config: TwoTowerConfig, *, progress: bool = True
) -> Model:
    """Train on the interactions selected by ``train`` (n,) bool; deterministic per seed.

    With ``config.members`` > 1: that many two-towers, member j seeded
    ``config.member_seed(j)``, returned as one ``TwoTowerEnsemble``.
    """
    if config.members <= 1:
        return _train_one(data, train, config, progress)
    members = [
        _train_one(data, train, replace(config, members=1, seed=config.member_seed(j)), progress)
        for j in range(config.members)
    ]
    return TwoTowerEnsemble(members, config)


def _train_one(
    data: MovieLens, train: np.ndarray, config: TwoTowerConfig, progress: bool
) -> TwoTower:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TwoTower(data, config)
    ex = build_examples(data, train, config.recent_len)
    counts = np.bincount(ex.item, minlength=data.num_items + 1).astype(np.float64)
    p = counts / counts.sum()
    # the full softmax's candidates: items with a training interaction (an item held out of
    # training, e.g. a cold item, is unknown to training, as it is to the sampled softmax)
    train_items = np.flatnonzero(counts > 0)
    n_items = data.num_items
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(ex.item) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps, pct_start=0.1
    )
    t0 = time.monotonic()
    bar = tqdm(range(config.epochs), desc="two-tower", disable=not progress, leave=False)
    model.train()
    for _epoch in bar:
        perm = rng.permutation(len(ex.item))
        total, batches = 0.0, 0
        for s in range(0, len(perm), config.batch_size):
            rows = perm[s : s + config.batch_size]
            b = len(rows)
            recent, tfeat = _shifted_context(ex, rows, rng, config.context_shift, config.shift_frac)
            user = ex.user[rows].copy()
            drop = rng.random(b) < config.id_dropout
            user[drop, 0] = 0
            pos = ex.item[rows]
            exclude = None
            if config.full_softmax:  # every training item is a candidate: no sampling, no logQ
                cand = train_items
                log_q = None
                if config.mask_user_items:
                    exclude = torch.from_numpy(user_item_mask(ex, rows, n_items)[:, cand])
            else:
                cand = pos
                if config.uniform_negatives:
                    cand = np.r_[pos, rng.integers(1, n_items + 1, size=config.uniform_negatives)]
                log_q = torch.from_numpy(
                    logq_correction(p, cand, b, config.uniform_negatives, config.logq_weight)
                )
            id_known = torch.from_numpy(rng.random(len(cand)) >= config.item_id_dropout)
            cand_t = torch.from_numpy(cand)
            u = model.user(
                torch.from_numpy(user), torch.from_numpy(recent), torch.from_numpy(tfeat)
            )
            loss = two_tower_loss(
                model,
                u,
                torch.from_numpy(pos),
                cand_t,
                id_known,
                log_q if config.logq else None,
                exclude,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            batches += 1
        model.losses.append(total / max(batches, 1))
        bar.set_postfix(loss=f"{total / max(batches, 1):.3f}")
        log.debug("epoch %d loss %.4f", _epoch, total / max(batches, 1))
    model.eval()
    log.info(
        "two-tower trained on %d examples in %.1fs (%s)",
        len(ex.item),
        time.monotonic() - t0,
        asdict(config),
    )
    return model


def items_without_interactions(data: MovieLens, train: np.ndarray) -> np.ndarray:
    """Item indices (sorted int64) with no interaction selected by ``train`` (n,) bool: their
    id embeddings were never trained, so they are served from content alone."""
    counts = np.bincount(data.inter_item[train], minlength=data.num_items + 1)
    return (np.flatnonzero(counts[1:] == 0) + 1).astype(np.int64)


def served_item_vectors(model: Model, data: MovieLens, train: np.ndarray) -> np.ndarray:
    """(N + 1, out_dim) float32 item vectors as served after training on ``train``: items
    with no interaction there (cold items) from their content alone, the rest with their id."""
    return all_item_vectors(model, data.num_items, cold=items_without_interactions(data, train))


@torch.no_grad()
def all_item_vectors(model: Model, num_items: int, cold: np.ndarray | None = None) -> np.ndarray:
    """(N + 1, out_dim) float32 item vectors (row 0 = padding); ``cold``: content only."""
    index = torch.arange(num_items + 1)
    known = torch.ones(num_items + 1, dtype=torch.bool)
    if cold is not None and len(cold):
        known[torch.from_numpy(cold)] = False
    return model.item_vectors(index, known).numpy().astype(np.float32)


@torch.no_grad()
def user_vectors(
    model: Model, user: np.ndarray, recent: np.ndarray, tfeat: np.ndarray, batch: int = 4096
) -> np.ndarray:
    """Tower inputs (n, 5), (n, L), (n, 4) int64 -> (n, out_dim) float32."""
    out = [
        model.user(
            torch.from_numpy(user[s : s + batch]),
            torch.from_numpy(recent[s : s + batch]),
            torch.from_numpy(tfeat[s : s + batch]),
        ).numpy()
        for s in range(0, len(user), batch)
    ]
    return np.concatenate(out).astype(np.float32)
