"""The bundles one shard process holds: load and verify beside the active one, switch,
release. Each held bundle's shard carries its live updates (``delta.py``).

A shard process has one shard id (its place in the cluster) and serves that shard of
every bundle it holds. Exactly one held bundle is active: what a Search that pins no
bundle gets. Loading is blocking (sha256 of every shard file, faiss read): callers run it
off the event loop. Before loading, the memory the shard needs (its files' sizes plus its
update log) is compared with what the machine, the cgroup and ``shards.memory_limit_mb``
leave, and the bundle is refused rather than risk the OOM killer.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annfleet.bundle import Bundle
from annfleet.config import SearchConfig, ShardsConfig
from annfleet.errors import (
    BundleError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from annfleet.server.delta import Delta, UpdateLog, updates_dir
from annfleet.server.index import ExactPacing, IndexSpec, ShardIndex

log = logging.getLogger(__name__)

MB = 1 << 20


def open_bundle(path: Path) -> Bundle:
    """The manifest of the bundle at ``path`` (checked, files not yet hashed)."""
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise InvalidArgument(f"bundle {str(path)[:200]!r}: {exc.strerror}") from exc
    if not exists:
        raise NotFound(f"no bundle at {path}")
    return Bundle.open(path, verify=False)


def load_shard(
    bundle_path: Path, shard_id: int, search: SearchConfig | None = None
) -> tuple[Bundle, ShardIndex]:
    """Open the bundle, verify this shard's files (sha256) and load its index; ``search``
    fills the search parameters a request leaves at 0."""
    bundle = Bundle.open(bundle_path, verify=False)
    shard = bundle.shard(shard_id)
    bundle.verify(only=[shard["dir"] + "/"])
    spec = IndexSpec(shard["index"]["type"], shard["index"]["params"])
    try:
        index = ShardIndex.load(bundle.shard_dir(shard_id), bundle.metric, spec, search)
    except ValueError as exc:  # np.load of a malformed .npy
        raise BundleError(f"bundle {bundle.id}: shard {shard_id} unreadable: {exc}") from exc
    if index.dim != bundle.dim:
        raise BundleError(f"shard {shard_id} index has dim {index.dim}, manifest says {bundle.dim}")
    return bundle, index


# ---------------------------------------------------------------------------- memory
def shard_bytes(bundle: Bundle, shard_id: int) -> int:
    """Bytes of this shard's files in the bundle (index, vectors, ids)."""
    prefix = bundle.shard(shard_id)["dir"] + "/"
    total = 0
    for rel in bundle.manifest["files"]:
        if rel.startswith(prefix):
            try:
                total += (bundle.path / rel).stat().st_size
            except OSError as exc:
                raise BundleError(f"bundle {bundle.id}: file {rel} is missing") from exc
    return total


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _resident_bytes(proc: Path) -> int:
    try:
        pages = int((proc / "self" / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def available_memory(
    limit_bytes: int = 0,
    *,
    proc: Path = Path("/proc"),
    cgroup: Path = Path("/sys/fs/cgroup"),
) -> tuple[int, str]:
    """(bytes this process may still allocate, where that number comes from).

    The least of: MemAvailable (/proc/meminfo); the cgroup's limit less its usage (v2
    memory.max / memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes);
    ``limit_bytes`` less this process's resident size.
    """
    candidates: list[tuple[int, str]] = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                kib = int(line.split()[1])
                candidates.append((kib * 1024, "MemAvailable in /proc/meminfo"))
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(cgroup / limit_file), _read_int(cgroup / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            candidates.append((max(0, limit - usage), f"cgroup {cgroup / limit_file}"))
            break
    if limit_bytes > 0:
        resident = _resident_bytes(proc)
        candidates.append((max(0, limit_bytes - resident), "shards.memory_limit_mb"))
    if not candidates:
        return 1 << 62, "unknown (no /proc/meminfo or cgroup limit)"
    return min(candidates)


# ---------------------------------------------------------------------------- holdings
@dataclass
class Holding:
    """One bundle's copy of this process's shard, with its live updates."""

    bundle: Bundle
    shard_id: int
    index: ShardIndex
    delta: Delta
    memory_bytes: int
    loaded_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.bundle.id

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        rerank: int = 0,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.delta.search(
            queries, k, ef_search=ef_search, nprobe=nprobe, rerank=rerank, exclude=exclude
        )

    def exact(
        self,
        queries: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        pacing: ExactPacing | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.delta.exact(queries, k, exclude, pacing)


class Holdings:
    """The bundles held by one shard process, and which one is active."""

    def __init__(
        self,
        config: ShardsConfig,
        search: SearchConfig | None = None,
        shard_id: int | None = None,
        replica: int = 0,
    ) -> None:
        self.config = config
        self.search = search or SearchConfig()
        self.shard_id = shard_id
        self.replica = replica
        self._held: dict[str, Holding] = {}
        self._active: Holding | None = None

    @property
    def active(self) -> Holding | None:
        return self._active

    def all(self) -> list[Holding]:
        """Every held bundle, the active one first."""
        return sorted(self._held.values(), key=lambda h: (h is not self._active, h.loaded_at))

    def get(self, bundle_id: str = "") -> Holding:
        """The held bundle ``bundle_id`` pins; "" = the active one."""
        if not bundle_id:
            if self._active is None:
                raise Unavailable("shard is starting: no bundle loaded yet")
            return self._active
        holding = self._held.get(bundle_id)
        if holding is None:
            held = ", ".join(self._held) or "none"
            raise FailedPrecondition(
                f"bundle {bundle_id} is not held by shard {self.shard_id} (held: {held})"
            )
        return holding

    def is_held(self, bundle_id: str) -> bool:
        return bundle_id in self._held

    # ------------------------------------------------------------------ checks (cheap)
    def check(self, bundle: Bundle, expect_num_shards: int = 0, expect_dim: int = 0) -> int:
        """Refuse a bundle this process cannot hold; return the shard id it would load."""
        if self.shard_id is None:
            raise FailedPrecondition(
                "this shard process has no shard id yet (start it with a bundle and --shard)"
            )
        num_shards = expect_num_shards or (self._active.bundle.num_shards if self._active else 0)
        if num_shards and bundle.num_shards != num_shards:
            raise BundleError(
                f"bundle {bundle.id} has {bundle.num_shards} shards, this cluster has {num_shards}"
            )
        if expect_dim and bundle.dim != expect_dim:
            raise BundleError(f"bundle {bundle.id} has dim {bundle.dim}, expected {expect_dim}")
        bundle.shard(self.shard_id)  # BundleError when the bundle has no such shard
        needed = shard_bytes(bundle, self.shard_id) + self._log(bundle).size_bytes()
        free, source = available_memory(self.config.memory_limit_mb * MB)
        if needed > free:
            raise ResourceExhausted(
                f"bundle {bundle.id} shard {self.shard_id} needs ~{needed / MB:.1f} MB "
                f"(index + vectors + ids + updates), only {free / MB:.1f} MB available "
                f"({source})"
            )
        return needed

    def _log(self, bundle: Bundle) -> UpdateLog:
        assert self.shard_id is not None
        root = Path(self.config.updates_dir) if self.config.updates_dir else bundle.path.parent
        directory = updates_dir(root, bundle.id, self.shard_id, self.replica)
        header = {
            "bundle_id": bundle.id,
            "shard_id": self.shard_id,
            "num_shards": bundle.num_shards,
            "dim": bundle.dim,
        }
        return UpdateLog(directory, header)

    # ------------------------------------------------------------------ load (blocking)
    def load(self, path: Path, expect_num_shards: int = 0, expect_dim: int = 0) -> Holding:
        """Check, verify and load a bundle's shard and replay its update log. Blocking; does
        not hold it yet (``add``)."""
        bundle = open_bundle(path)
        needed = self.check(bundle, expect_num_shards, expect_dim)
        assert self.shard_id is not None
        started = time.monotonic()
        bundle, index = load_shard(bundle.path, self.shard_id, self.search)
        delta = Delta(
            index,
            shard_id=self.shard_id,
            num_shards=bundle.num_shards,
            log=self._log(bundle),
            max_items=self.config.max_delta_items,
            compact_records=self.config.update_log_compact_records,
        )
        records = delta.replay()
        log.info(
            "loaded shard %d of bundle %s (%d items, %d update records replayed) in %.1fs",
            self.shard_id,
            bundle.id,
            len(index.ids),
            records,
            time.monotonic() - started,
        )
        return Holding(bundle, self.shard_id, index, delta, needed)

    # ------------------------------------------------------------------ changes (event loop)
    def add(self, holding: Holding) -> Holding:
        """Hold a loaded bundle (the first one held becomes active); idempotent."""
        held = self._held.setdefault(holding.id, holding)
        if self._active is None:
            self._active = held
        return held

    def commit(self, bundle_id: str) -> Holding:
        if not bundle_id:
            raise InvalidArgument("bundle_id: empty; name a held bundle")
        holding = self.get(bundle_id)
        if holding is not self._active:
            previous = self._active.id if self._active else "none"
            self._active = holding
            log.info("shard %s: active bundle %s -> %s", self.shard_id, previous, bundle_id)
        return holding

    def release(self, bundle_id: str) -> Holding:
        if not bundle_id:
            raise InvalidArgument("bundle_id: empty; name a held bundle")
        holding = self._held.get(bundle_id)
        if holding is None:
            raise NotFound(f"bundle {bundle_id} is not held by shard {self.shard_id}")
        if holding is self._active:
            raise FailedPrecondition(
                f"bundle {bundle_id} is the active bundle of shard {self.shard_id}; "
                "commit another one before releasing it"
            )
        del self._held[bundle_id]
        log.info("shard %s: released bundle %s", self.shard_id, bundle_id)
        return holding
