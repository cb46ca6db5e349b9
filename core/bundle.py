"""Retrieval bundles: the immutable offline -> online contract (see DESIGN.md).

Layout of a bundle directory::

    manifest.json                 id, model, partitioning, shards, tables, files {path: sha256}
    shard-00/ids.npy              int64 (n,)    item ids of this shard
    shard-00/vectors.npy          float32 (n, d) item vectors (exact re-rank, rebuilds)
    shard-00/index.faiss          faiss.write_index of the shard's index
    users/ids.npy, vectors.npy    optional precomputed user vectors
    tables/*                      optional router tables (popular_ids.npy, item_titles.json, ...)
    user_tower.pt                 optional TorchScript user tower

``bundle_id`` is the sha256 of the manifest's content (every field but ``bundle_id`` and
``created``), so two identical builds get one id. Every file is checked against its sha256
before it serves. Only safe formats: .npy without pickle, faiss indexes, JSON, TorchScript.

This module reads bundles (router, shards, benchmarks) and imports neither faiss nor torch;
``annfleet.server.builder.build_bundle`` writes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from annfleet.arrays import load_npy
from annfleet.errors import BundleError, InvalidArgument
from annfleet.partition import SCHEME

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TABLE_POPULAR_IDS = "popular_ids"
TABLE_ITEM_TITLES = "item_titles"
# Items each user has already engaged with, as CSR over users/ids.npy order:
# user_seen_offsets (u + 1,) int64, user_seen_ids (nnz,) int64 item ids.
TABLE_SEEN_OFFSETS = "user_seen_offsets"
TABLE_SEEN_IDS = "user_seen_ids"


def shard_dirname(shard_id: int) -> str:
    return f"shard-{shard_id:02d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_id(manifest: Mapping[str, Any]) -> str:
    """The bundle id: sha256 of the canonical JSON of the manifest without id and timestamp."""
    content = {k: v for k, v in manifest.items() if k not in ("bundle_id", "created")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "b" + hashlib.sha256(canonical.encode()).hexdigest()[:15]


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its directory and parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(
        cls, path: Path | str, *, verify: bool = True, only: Iterable[str] | None = None
    ) -> Bundle:
        """Read and check the manifest; with ``verify`` also check files' sha256.

        ``only``: path prefixes to verify (e.g. ``["shard-01/"]`` for one shard server);
        default is every file.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        for key in ("bundle_id", "model", "partitioning", "shards", "files"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: missing key {key!r}")
        if content_id(manifest) != manifest["bundle_id"]:
            raise BundleError(
                f"{manifest_path}: content does not match bundle_id {manifest['bundle_id']} "
                "(the manifest was edited after the build)"
            )
        scheme = dict(manifest["partitioning"] or {}).get("scheme")
        if scheme != SCHEME:
            raise BundleError(
                f"{manifest_path}: partitioning scheme {scheme!r} is not supported: items "
                f"must be placed on shards by {SCHEME!r} (the router routes exclusions and "
                "live upserts, and sizes each shard's part of k, by it)"
            )
        bundle = cls(path, manifest)
        if verify:
            bundle.verify(only)
        return bundle

    @property
    def id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["model"]["metric"])

    @property
    def num_shards(self) -> int:
        return int(self.manifest["partitioning"]["num_shards"])

    def shard(self, shard_id: int) -> dict[str, Any]:
        if not 0 <= shard_id < self.num_shards:
            raise BundleError(
                f"bundle {self.id} has shards 0..{self.num_shards - 1}, not {shard_id}"
            )
        return dict(self.manifest["shards"][shard_id])

    def shard_dir(self, shard_id: int) -> Path:
        return self.path / self.shard(shard_id)["dir"]

    def verify(self, only: Iterable[str] | None = None) -> None:
        """Check every listed file (or those under the ``only`` prefixes) against its sha256."""
        prefixes = tuple(only) if only is not None else ("",)
        for rel, expected in self.manifest["files"].items():
            if not rel.startswith(prefixes):
                continue
            file = self.path / rel
            if not file.is_file():
                raise BundleError(f"bundle {self.id}: file {rel} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"bundle {self.id}: checksum mismatch for {rel} "
                    f"(expected sha256 {expected[:12]}…, got {actual[:12]}…)"
                )

    def load_array(self, rel: str) -> np.ndarray:
        """A .npy file of the bundle, never unpickled."""
        try:
            return load_npy(self.path / rel)
        except (ValueError, OSError) as exc:
            raise BundleError(f"bundle {self.id}: cannot read {rel}: {exc}") from exc

    @property
    def embeds_users(self) -> bool:
        """Whether the router can embed users with this bundle (a user tower or a user
        table): without, Retrieve answers NOT_FOUND for every user."""
        return "user_tower" in self.manifest or bool(self.manifest.get("users"))

    def users(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Precomputed user table: ids (u,) int64, vectors (u, d) float32; None if absent."""
        users = self.manifest.get("users")
        if not users:
            return None
        ids = self.load_array(users["ids"])
        vectors = self.load_array(users["vectors"])
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise BundleError(
                f"bundle {self.id}: user table has vectors of shape {vectors.shape} for "
                f"{len(ids)} ids, expected ({len(ids)}, {self.dim})"
            )
        if vectors.shape[1] != self.dim:
            raise BundleError(
                f"bundle {self.id}: its user table's vectors are {vectors.shape[1]}-d, its "
                f"items are {self.dim}-d (Retrieve's queries would not fit the index)"
            )
        return ids, vectors

    def table(self, name: str) -> Any:
        """A table by name (array for .npy, parsed JSON for .json); None if the bundle has none."""
        rel = self.manifest.get("tables", {}).get(name)
        if rel is None:
            return None
        if rel.endswith(".npy"):
            return self.load_array(rel)
        return json.loads((self.path / rel).read_text())


def bundle_path(source: str) -> Path:
    """A bundle location as Prepare receives it (path or file:// URI) -> a local path."""
    if not source:
        raise InvalidArgument("bundle: empty; give the bundle directory (path or file:// URI)")
    if "\x00" in source:
        raise InvalidArgument("bundle: a path cannot contain a NUL character")
    if "://" in source:
        uri = urlparse(source)
        if uri.scheme != "file":
            raise InvalidArgument(f"bundle {source!r}: only file:// URIs are supported")
        return Path(unquote(uri.path))
    try:
        return Path(source).expanduser()
    except RuntimeError as exc:  # "~name/..." of a user this machine does not know
        raise InvalidArgument(f"bundle {source[:200]!r}: {exc}") from exc
