"""Runs a bundle's TorchScript user tower: (user id, request context) -> query vector.

The tower's inputs are built from the bundle's user feature table (demographics, the user's
last items and last interaction time at training) plus the request context (recent item ids,
timestamp). Unknown users are embedded from the context alone (user features all "unknown").
``embed`` blocks (torch): the router calls it in an executor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from annfleet.bundle import Bundle
from annfleet.errors import BundleError
from annfleet.router.users import RequestContext

log = logging.getLogger(__name__)

# Must match annfleet.model.data.GAP_EDGES; the manifest carries the edges actually used.
_DEFAULT_GAP_EDGES = (60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
WEEK = 7 * 86400
BATCH = 64  # rows per tower call of embed_batch (a rollout's cache warm-up)


class TowerEmbedder:
    """UserEmbedder backed by ``user_tower.pt``; embed() -> (dim,) float32, L2-normalised."""

    blocking = True

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        if threads > 0:
            # One request's tower call is a few small matmuls: intra-op threads only wait on
            # each other (standalone on a busy 2-core box a call took 20-40 ms with 2 threads,
            # 0.1-0.4 ms with 1).
            torch.set_num_threads(threads)
        spec: dict[str, Any] = bundle.manifest["user_tower"]
        self.bundle_id = bundle.id
        self.dim = bundle.dim
        path = bundle.path / spec.get("file", "user_tower.pt")
        try:
            self._module = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise BundleError(f"bundle {bundle.id}: cannot load user tower {path}: {exc}") from exc
        tables = spec.get("tables", {})
        self._recent_len = int(spec.get("recent_len", 30))
        self._gap_edges = np.asarray(
            spec.get("time", {}).get("gap_edges_seconds", _DEFAULT_GAP_EDGES), np.int64
        )
        time_spec = spec.get("time", {})
        ref = time_spec.get("reference_ts")
        self._reference_ts = int(ref) if ref is not None else None
        self._trend_weeks = int(time_spec.get("trend_weeks", 8))
        self._item_ids = np.asarray(bundle.table(tables.get("item_ids", "item_ids")), np.int64)
        users = np.asarray(bundle.table(tables.get("users", "user_features")), np.int64)
        recent = bundle.table(tables.get("recent", "user_recent"))
        last_ts = bundle.table(tables.get("last_ts", "user_last_ts"))
        if users.ndim != 2 or users.shape[1] != 6:
            raise BundleError(
                f"bundle {bundle.id}: user_features has shape {users.shape}, expected (U, 6)"
            )
        self._row = {int(u): i for i, u in enumerate(users[:, 0])}
        self._user_rows = users[:, 1:]  # (U, 5) tower "user" input
        self._recent = (
            np.asarray(recent, np.int64)
            if recent is not None
            else np.zeros((len(users), self._recent_len), np.int64)
        )
        self._last_ts = (
            np.asarray(last_ts, np.int64)
            if last_ts is not None
            else np.full(len(users), -1, np.int64)
        )
        self._lock = threading.Lock()  # TorchScript modules are not documented thread-safe
        log.info(
            "user tower of bundle %s loaded: %d known users, %d items, dim %d",
            bundle.id,
            len(users),
            len(self._item_ids),
            self.dim,
        )

    def _item_index(self, item_ids: tuple[int, ...]) -> np.ndarray:
        """Item ids -> dense 1-based indices (0 for ids the bundle does not know)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(ids) == 0:
            return ids
        pos = np.searchsorted(self._item_ids, ids)
        pos_c = np.minimum(pos, len(self._item_ids) - 1)
        return np.where(self._item_ids[pos_c] == ids, pos_c + 1, 0).astype(np.int64)

    def inputs(
        self, user_id: int, context: RequestContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tower inputs: user (1, 5), recent (1, L), time (1, 4) int64."""
        row = self._row.get(int(user_id))
        now = int(context.timestamp) if context.timestamp > 0 else int(time.time())
        length = self._recent_len
        if row is not None:
            user = self._user_rows[row]
            history = self._recent[row][self._recent[row] > 0]
            last_ts = int(self._last_ts[row])
        else:
            user = np.zeros(5, dtype=np.int64)
            history = np.zeros(0, dtype=np.int64)
            last_ts = -1
        fresh = self._item_index(tuple(context.recent_item_ids))
        fresh = fresh[fresh > 0]
        if len(fresh):
            # The request's recent items are newer than the stored history; a repeated item
            # keeps only its latest position.
            history = history[~np.isin(history, fresh)]
            last_ts = context.recent_timestamp if context.recent_timestamp > 0 else now
        seq = np.concatenate([history, fresh])[-length:]
        recent = np.zeros(length, dtype=np.int64)
        if len(seq):
            recent[length - len(seq) :] = seq
        hour = 1 + (now // 3600) % 24
        dow = 1 + (now // 86400 + 3) % 7
        if last_ts < 0 or len(seq) == 0:
            gap = 0
        else:
            gap = 1 + int(np.searchsorted(self._gap_edges, max(now - last_ts, 0), side="right"))
        trend = 0
        if self._reference_ts is not None:
            weeks = min(max((self._reference_ts - now) // WEEK, 0), self._trend_weeks - 1)
            trend = 1 + weeks
        return (
            user[None, :].astype(np.int64),
            recent[None, :],
            np.array([[hour, dow, gap, trend]], dtype=np.int64),
        )

    def warm_up(self, calls: int = 4) -> None:
        """Run the module a few times in both shapes it is called with (one request; a batch
        of :data:`BATCH`), for a known and an unknown user, with and without recent items:
        TorchScript's first calls profile and optimise the graph and are many times slower
        than the rest."""
        known = next(iter(self._row), 0)
        contexts = [RequestContext(), RequestContext(tuple(int(i) for i in self._item_ids[:3]))]
        shape = self.embed(known, contexts[0]).shape
        if shape != (self.dim,):
            raise BundleError(
                f"bundle {self.bundle_id}: the user tower outputs vectors of shape {shape}, "
                f"the bundle's items are {self.dim}-d"
            )
        for i in range(calls):
            self.embed(known if i % 2 else 0, contexts[(i // 2) % 2])
        for context in contexts:
            self.embed_batch([known, 0], [context, context])

    def _run(self, user: np.ndarray, recent: np.ndarray, tfeat: np.ndarray) -> np.ndarray:
        with self._lock, torch.inference_mode():
            out = self._module(
                torch.from_numpy(user), torch.from_numpy(recent), torch.from_numpy(tfeat)
            )
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def embed(self, user_id: int, context: RequestContext) -> np.ndarray:
        """(dim,) float32. Unknown users are embedded from the context alone."""
        return self._run(*self.inputs(user_id, context))[0]

    def embed_batch(
        self, user_ids: Sequence[int], contexts: Sequence[RequestContext]
    ) -> np.ndarray:
        """(n, dim) float32: :meth:`embed` of every (user, context), :data:`BATCH` rows per
        tower call (the last call padded: the module sees two shapes only, both warmed up).
        The lock is released between calls, so requests' own calls are not held up."""
        rows = [self.inputs(u, c) for u, c in zip(user_ids, contexts, strict=True)]
        out = np.empty((len(rows), self.dim), np.float32)
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            chunk += [chunk[-1]] * (BATCH - len(chunk))
            vectors = self._run(*(np.concatenate([r[i] for r in chunk]) for i in range(3)))
            n = min(BATCH, len(rows) - start)
            out[start : start + n] = vectors[:n]
        return out
