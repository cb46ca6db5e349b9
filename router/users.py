"""User embeddings for ``Retrieve``: how the router turns (user id, context) into a query vector.

A bundle either carries precomputed user vectors (``users/``; the seeds' "precomputed
embeddings for active users") or a TorchScript user tower (``user_tower.pt`` with its
input spec under ``manifest["user_tower"]``), which ``annfleet.router.tower`` runs.
"""

from __future__ import annotations

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


def load_embedder(bundle: Bundle) -> UserEmbedder:
    """The embedder a bundle supports: its user tower if it has one, else its user table."""
    if "user_tower" in bundle.manifest:
        from annfleet.router.tower import TowerEmbedder  # needs torch; only for tower bundles

        return TowerEmbedder(bundle)
    users = bundle.users()
    if users is None:
        return NoUsers()
    return PrecomputedUsers(*users)
