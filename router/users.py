"""User embeddings for ``Retrieve``: how the router turns (user id, context) into a query vector.

A bundle either carries precomputed user vectors (``users/``; the seeds' "precomputed
embeddings for active users") or a TorchScript user tower (``user_tower.pt`` with its
input spec under ``manifest["user_tower"]``), which ``annfleet.router.tower`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from annfleet.bundle import Bundle
from annfleet.errors import NotFound


@dataclass(frozen=True)
class RequestContext:
    """What the caller knows about the request besides the user id."""

    recent_item_ids: tuple[int, ...] = ()  # most recent last
    timestamp: int = 0  # unix seconds; 0 = now
    country: str = ""
    device: str = ""
    # Unix seconds of the newest of recent_item_ids; 0 = engaged at the request's time (what
    # a caller's own recent items are). The router sets it from the live state's last
    # engagement when the items come from there, so the tower sees the real gap.
    recent_timestamp: int = 0


class UserEmbedder(Protocol):
    """Turns a user (and context) into a (dim,) float32 query vector."""

    # True when embed() does real work (torch) and must run off the event loop.
    blocking: bool

    def embed(self, user_id: int, context: RequestContext) -> np.ndarray:
        """(dim,) float32. Raises annfleet.errors.NotFound when the user cannot be embedded."""
        ...


class PrecomputedUsers:
    """Looks user vectors up in the bundle's user table."""

    blocking = False

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._row = {int(u): i for i, u in enumerate(ids)}
        self._vectors = vectors

    def embed(self, user_id: int, context: RequestContext) -> np.ndarray:
        row = self._row.get(int(user_id))
        if row is None:
            raise NotFound(f"unknown user id {user_id}: not in this bundle's user table")
        return np.asarray(self._vectors[row], dtype=np.float32)


class NoUsers:
    """A bundle with neither user vectors nor a tower: Retrieve is not possible."""

    blocking = False

    def embed(self, user_id: int, context: RequestContext) -> np.ndarray:
        raise NotFound(f"unknown user id {user_id}: this bundle has no user table or user tower")


def load_embedder(bundle: Bundle, tower_threads: int = 0) -> UserEmbedder:
    """The embedder a bundle supports: its user tower if it has one (``tower_threads``:
    torch's intra-op threads, 0 = torch's default), else its user table."""
    if "user_tower" in bundle.manifest:
        from annfleet.router.tower import TowerEmbedder  # needs torch; only for tower bundles

        return TowerEmbedder(bundle, threads=tower_threads)
    users = bundle.users()
    if users is None:
        return NoUsers()
    return PrecomputedUsers(*users)


def embed_many(
    embedder: UserEmbedder, user_ids: Sequence[int], contexts: Sequence[RequestContext]
) -> list[np.ndarray | None]:
    """Each user's vector (None for a user the embedder cannot embed): in batches when the
    embedder can (a tower: ``embed_batch``), else one by one."""
    batched = getattr(embedder, "embed_batch", None)
    if batched is not None:
        return list(batched(user_ids, contexts))
    out: list[np.ndarray | None] = []
    for user_id, context in zip(user_ids, contexts, strict=True):
        try:
            out.append(embedder.embed(user_id, context))
        except NotFound:
            out.append(None)
    return out
