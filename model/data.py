"""MovieLens-100k: loading, per-user and global time splits, feature tables, sequences.

The files come from the installed ``recbole`` wheel (found without importing recbole) or from
a directory holding ``ml-100k.inter``, ``ml-100k.item`` and ``ml-100k.user`` (RecBole atomic
files: tab-separated, headers like ``user_id:token``). Every rating is an implicit interaction.

Dense indices: users and items are numbered 1..U / 1..N in id order; index 0 is reserved for
"unknown / padding" in every feature vocabulary, so an unknown user, an unseen item or a
missing attribute all map to 0.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # the MovieLens-1M age groups; bucket 0 = unknown
YEAR_MIN, YEAR_MAX = 1920, 2000  # release years are bucketed by 5 years inside this range
FINE_YEAR_MIN = 1990  # ... and by single years from here (fine_year_bucket)
FINE_YEAR_BUCKETS = 2 + YEAR_MAX - FINE_YEAR_MIN + 1
TITLE_BUCKETS = 1024  # hashed bag of title words; bucket 0 = padding
TITLE_WORDS = 8  # at most this many words per title
GAP_EDGES = (60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)  # seconds since last item


def recbole_data_dir() -> Path:
    """The ml-100k directory shipped inside the installed recbole wheel (not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "recbole is not installed; `pip install --no-deps recbole==1.2.1` or pass --data DIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"


def resolve_data_dir(path: Path | str | None = None) -> Path:
    """``path`` if given (a directory with the three ml-100k files), else the recbole copy."""
    root = Path(path) if path is not None else recbole_data_dir()
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: missing MovieLens file(s) {missing}")
    return root


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header names without their ``:type`` suffix, and the rows as strings."""
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        rows = [r + [""] * (len(header) - len(r)) for r in reader if r]
    return header, rows


def _vocab(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes 1..V in sorted-value order (0 = unknown/empty) and the vocabulary (index 0 = '')."""
    vocab = ["", *sorted({v for v in values if v})]
    pos = {v: i for i, v in enumerate(vocab)}
    return np.array([pos[v] for v in values], dtype=np.int64), vocab


def age_bucket(age: int) -> int:
    """1..7 for the MovieLens age groups, 0 if unknown (age <= 0)."""
    if age <= 0:
        return 0
    return 1 + int(np.searchsorted(AGE_EDGES, age, side="right"))


def year_bucket(year: int) -> int:
    """1..17 (5-year buckets, clipped to [1920, 2000]), 0 if unknown."""
    if year <= 0:
        return 0
    return 1 + (min(max(year, YEAR_MIN), YEAR_MAX) - YEAR_MIN) // 5


def fine_year_bucket(years: np.ndarray) -> np.ndarray:
    """(n,) int64 release years (0 = unknown) -> (n,) int64: 0 unknown, 1 before
    FINE_YEAR_MIN, then one bucket per year up to YEAR_MAX (most of the catalogue is from the
    1990s, and a new release is a different item from a 1995 one)."""
    years = np.asarray(years, dtype=np.int64)
    fine = 2 + np.clip(years, FINE_YEAR_MIN, YEAR_MAX) - FINE_YEAR_MIN
    return np.where(years <= 0, 0, np.where(years < FINE_YEAR_MIN, 1, fine)).astype(np.int64)


def title_hashes(title: str) -> np.ndarray:
    """(TITLE_WORDS,) int64: stable hashes of the lower-cased words into 1..TITLE_BUCKETS-1."""
    words = re.findall(r"[a-z0-9]+", title.lower())[:TITLE_WORDS]
    out = np.zeros(TITLE_WORDS, dtype=np.int64)
    for i, w in enumerate(words):
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        out[i] = 1 + h % (TITLE_BUCKETS - 1)
    return out


def gap_bucket(seconds: np.ndarray) -> np.ndarray:
    """(n,) int64 seconds since the previous interaction (-1 = none) -> buckets 0..8."""
    seconds = np.asarray(seconds, dtype=np.int64)
    return np.where(seconds < 0, 0, 1 + np.searchsorted(GAP_EDGES, seconds, side="right"))


@dataclass
class MovieLens:
    """The three files as arrays. Interactions are sorted by (user, timestamp, file row).

    inter_user, inter_item (n,) int64 dense indices (1-based); inter_ts (n,) int64 unix seconds;
    inter_row (n,) int64 row in the file. user_ids (U,) / item_ids (N,) int64 original ids, so
    dense index i is ``user_ids[i - 1]``. user_feats (U + 1, 4) int64 columns age bucket,
    gender, occupation, zip region (row 0 = unknown user, all zeros). item_genres (N + 1, G)
    float32 multi-hot; item_year (N + 1,) int64 bucket; item_release_year (N + 1,) int64
    release year (0 = unknown); item_title (N + 1, TITLE_WORDS) int64.
    """

    root: Path
    inter_user: np.ndarray
    inter_item: np.ndarray
    inter_ts: np.ndarray
    inter_row: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_feats: np.ndarray
    item_genres: np.ndarray
    item_year: np.ndarray
    item_release_year: np.ndarray
    item_title: np.ndarray
    titles: list[str]
    genres: list[str]
    vocabs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.inter_user)

    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of the three files' bytes: identifies the training data."""
        digest = hashlib.sha256()
        for name in FILES:
            digest.update((self.root / name).read_bytes())
        return digest.hexdigest()[:16]

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        """Original ids (n,) -> dense indices (n,) int64, 0 for unknown ids."""
        return _lookup(self.user_ids, user_ids)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        """Original ids (n,) -> dense indices (n,) int64, 0 for unknown ids."""
        return _lookup(self.item_ids, item_ids)


def _lookup(sorted_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    query = np.asarray(query, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, query)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos_c] == query, pos_c + 1, 0).astype(np.int64)


def load_movielens(path: Path | str | None = None) -> MovieLens:
    """Read ml-100k from ``path`` (a directory) or from the installed recbole wheel."""
    root = resolve_data_dir(path)
    header, rows = _read_atomic(root / "ml-100k.inter")
    col = {h: i for i, h in enumerate(header)}
    raw_user = np.array([int(r[col["user_id"]]) for r in rows], dtype=np.int64)
    raw_item = np.array([int(r[col["item_id"]]) for r in rows], dtype=np.int64)
    ts = np.array([int(float(r[col["timestamp"]])) for r in rows], dtype=np.int64)

    uh, urows = _read_atomic(root / "ml-100k.user")
    uc = {h: i for i, h in enumerate(uh)}
    user_ids = np.array(sorted({int(r[uc["user_id"]]) for r in urows} | set(raw_user.tolist())))
    by_user = {int(r[uc["user_id"]]): r for r in urows}
    ages, genders, occs, zips = [], [], [], []
    for u in user_ids.tolist():
        r = by_user.get(u)
        age = r[uc["age"]] if r else ""
        ages.append(age_bucket(int(age)) if age.isdigit() else 0)
        genders.append(r[uc["gender"]] if r else "")
        occs.append(r[uc["occupation"]] if r else "")
        z = r[uc["zip_code"]].strip().upper() if r else ""
        # US zip codes: the first digit is a region; non-numeric (Canadian) codes are one region.
        zips.append(z[0] if z[:1].isdigit() else ("CA" if z else ""))
    gender_code, gender_vocab = _vocab(genders)
    occ_code, occ_vocab = _vocab(occs)
    zip_code, zip_vocab = _vocab(zips)
    user_feats = np.zeros((len(user_ids) + 1, 4), dtype=np.int64)
    user_feats[1:, 0] = ages
    user_feats[1:, 1] = gender_code
    user_feats[1:, 2] = occ_code
    user_feats[1:, 3] = zip_code

    ih, irows = _read_atomic(root / "ml-100k.item")
    ic = {h: i for i, h in enumerate(ih)}
    item_ids = np.array(sorted({int(r[ic["item_id"]]) for r in irows} | set(raw_item.tolist())))
    by_item = {int(r[ic["item_id"]]): r for r in irows}
    genre_lists = [
        (by_item[i][ic["class"]].split() if i in by_item else []) for i in item_ids.tolist()
    ]
    genres = sorted({g for gl in genre_lists for g in gl})
    gpos = {g: j for j, g in enumerate(genres)}
    n_items = len(item_ids)
    item_genres = np.zeros((n_items + 1, len(genres)), dtype=np.float32)
    item_year = np.zeros(n_items + 1, dtype=np.int64)
    release_year = np.zeros(n_items + 1, dtype=np.int64)
    item_title = np.zeros((n_items + 1, TITLE_WORDS), dtype=np.int64)
    titles: list[str] = []
    for k, i in enumerate(item_ids.tolist(), start=1):
        r = by_item.get(i)
        title = r[ic["movie_title"]] if r else ""
        titles.append(title)
        year = r[ic["release_year"]] if r else ""
        release_year[k] = int(year) if year.isdigit() else 0
        item_year[k] = year_bucket(release_year[k])
        item_title[k] = title_hashes(title)
        for g in genre_lists[k - 1]:
            item_genres[k, gpos[g]] = 1.0

    data = MovieLens(
        root=root,
        inter_user=_lookup(user_ids, raw_user),
        inter_item=_lookup(item_ids, raw_item),
        inter_ts=ts,
        inter_row=np.arange(len(ts), dtype=np.int64),
        user_ids=user_ids.astype(np.int64),
        item_ids=item_ids.astype(np.int64),
        user_feats=user_feats,
        item_genres=item_genres,
        item_year=item_year,
        item_release_year=release_year,
        item_title=item_title,
        titles=titles,
        genres=genres,
        vocabs={"gender": gender_vocab, "occupation": occ_vocab, "zip_region": zip_vocab},
    )
    order = np.lexsort((data.inter_row, data.inter_ts, data.inter_user))
    for name in ("inter_user", "inter_item", "inter_ts", "inter_row"):
        setattr(data, name, getattr(data, name)[order])
    log.info(
        "loaded %d interactions, %d users, %d items from %s",
        data.num_interactions,
        data.num_users,
        data.num_items,
        root,
    )
    return data


@dataclass(frozen=True)
class Split:
    """Boolean masks (n,) over ``MovieLens`` interactions (in its sorted order)."""

    name: str
    train: np.ndarray
    test: np.ndarray


def per_user_split(data: MovieLens, fraction: float = 0.1, mask: np.ndarray | None = None) -> Split:
    """Per user, the last max(1, floor(fraction * n)) interactions by (time, row) are test.

    ``mask`` (n,) bool restricts the split to a subset (e.g. a train set, to carve validation).
    """
    mask = np.ones(data.num_interactions, dtype=bool) if mask is None else mask
    test = np.zeros(data.num_interactions, dtype=bool)
    idx = np.flatnonzero(mask)
    users = data.inter_user[idx]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    for s, e in zip(starts, ends, strict=True):
        n_test = max(1, int(np.floor(fraction * (e - s))))
        if e - s > n_test:  # keep at least one train interaction per user
            test[idx[e - n_test : e]] = True
    return Split("per_user", mask & ~test, test)


def global_split(data: MovieLens, quantile: float = 0.9, mask: np.ndarray | None = None) -> Split:
    """Train: timestamp before the ``quantile`` timestamp; test: at or after it."""
    mask = np.ones(data.num_interactions, dtype=bool) if mask is None else mask
    cut = np.quantile(data.inter_ts[mask], quantile)
    test = mask & (data.inter_ts >= cut)
    return Split("global", mask & ~test, test)


# The splits ``make_split`` knows and the models ``annfleet eval`` compares (evaluate.py
# runs them); here, in a module without torch, so the CLI can offer them as choices.
SPLITS = ("per_user", "global")
MODELS = (
    "popularity",
    "popularity_recent",
    "mf_bpr",
    "item_item",
    "ease",
    "two_tower",
    "two_tower_ann",
    "cold_start",
)


def make_split(data: MovieLens, name: str, *, validation: bool = False) -> Split:
    """The named split; with ``validation`` the same rule applied inside its train set."""
    fn = {"per_user": per_user_split, "global": global_split}[name]
    split = fn(data)
    if validation:
        inner = fn(data, mask=split.train)
        return Split(name, inner.train, inner.test)
    return split


def cold_items(data: MovieLens, fraction: float, seed: int) -> np.ndarray:
    """A random ``fraction`` of item indices (sorted int64), held out of training entirely."""
    rng = np.random.default_rng(seed + 7919)
    n = round(fraction * data.num_items)
    return np.sort(rng.choice(np.arange(1, data.num_items + 1), size=n, replace=False))
