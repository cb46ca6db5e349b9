"""Live item updates of one bundle's shard: upserts and deletes between bundle builds.

The bundle stays immutable. Upserted items live in a small exact index (their vectors,
searched brute force) whose hits are merged with the bundle index's; an upserted id that
the bundle also has hides the bundle's copy, and a deleted one is hidden inside faiss (an
``IDSelectorBitmap`` over index positions), so it never comes back from any search.

Every update is written to an update log before it is applied, and the log is replayed
when the shard process loads the bundle again. Layout (safe formats only: JSON and .npy)::

    <updates root>/<bundle_id>.updates/shard-00-r0/
        log.jsonl             first line: header {format, bundle_id, shard_id, num_shards, dim,
                              generation?}, then one record per update
                              {seq, op, ids, vectors?, count, time}
        00000001-ids.npy      int64 (n,)             (g0002-00000001-ids.npy after compactions)
        00000001-vectors.npy  float32 (n, dim)       (upserts)

A record counts once its JSON line is complete (fsynced after its segments); a torn last
line from a crash is dropped at the next open. Ops: ``upsert``, ``delete`` and ``forget``
(ids deleted that neither the bundle nor an upsert holds, remembered for a rollout's
carry-over).

The log is **compacted** once it holds ``compact_records`` records and at least twice the
bytes of a snapshot of the state: a new generation of at most three records (the upserted
rows, the deleted bundle ids, the forgotten ids) is written beside the old segments, a new
``log.jsonl`` replaces the old one with one atomic rename, and only then are the old
segments removed. A crash before the rename leaves the old log whole; one after it leaves
unreferenced segments, removed at the next compaction. Searches never take a lock: updates are
published copy-on-write (appends go past the end readers know), and a bundle item is
hidden before the row that replaces it is published, so no search sees an id twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annfleet.arrays import load_npy
from annfleet.errors import BundleError, InvalidArgument, NotFound, ResourceExhausted
from annfleet.files import replace_durably, save_npy_durable
from annfleet.merge import merge_rows
from annfleet.partition import shard_of
from annfleet.server.index import ExactPacing, ShardIndex, exact_search
from annfleet.validation import higher_is_better, worst_score

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
LOG_FORMAT = 1
SHOW_IDS = 10  # ids named in an error message


def updates_dir(root: Path, bundle_id: str, shard_id: int, replica: int) -> Path:
    """Where one replica of one bundle shard keeps its update log."""
    return root / f"{bundle_id}.updates" / f"shard-{shard_id:02d}-r{replica}"


def _record_bytes(ids: np.ndarray, vectors: np.ndarray | None) -> int:
    """The segment bytes one record references (what compaction weighs)."""
    return ids.nbytes + (vectors.nbytes if vectors is not None else 0)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UpdateLog:
    """The append-only log of one bundle shard's updates (created on the first append)."""

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.directory = directory
        self.header = {"format": LOG_FORMAT, **header}
        self.path = directory / LOG_NAME
        self.records = 0
        self.generation = 0  # compactions so far (segment names carry it)
        self.bytes = 0  # segment bytes the records reference (what compaction weighs)

    def replay(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """Yield (op, ids, vectors or None) for every complete record, oldest first."""
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        if torn:
            log.warning("%s: dropping a torn last record (%d bytes)", self.path, len(torn))
            self._truncate(sum(len(line) + 1 for line in complete))
        if not complete:
            return
        header = self._parse(complete[0], 1)
        self.generation = int(header.get("generation", 0))
        for key in ("bundle_id", "shard_id", "num_shards", "dim"):
            if header.get(key) != self.header[key]:
                raise BundleError(
                    f"{self.path}: update log of {key} {header.get(key)!r}, "
                    f"expected {self.header[key]!r}"
                )
        for number, line in enumerate(complete[1:], start=2):
            record = self._parse(line, number)
            try:
                ids = self._load(record["ids"])
                vectors = self._load(record["vectors"]) if record["op"] == "upsert" else None
            except KeyError as exc:
                raise BundleError(f"{self.path}:{number}: record lacks {exc}") from exc
            self.records += 1
            self.bytes += _record_bytes(ids, vectors)
            yield str(record["op"]), ids, vectors

    def append(self, op: str, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """Write the segments, then the record line; fsync both. Raises OSError."""
        if not self.path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                f.write(json.dumps(self.header, sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.directory)
        record = self._write_segments(self.records + 1, op, ids, vectors)
        with self.path.open("ab") as f:
            f.write(json.dumps(record, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.records = record["seq"]
        self.bytes += _record_bytes(ids, vectors)

    def compact(self, records: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
        """Replace the whole log by ``records`` (a snapshot of the state), crash-safely: new
        segments first, then one atomic rename of the log file, then the old segments go.
        Raises OSError (the old log stays as it was)."""
        generation = self.generation + 1
        self.generation = generation  # the new segments' names
        try:
            lines = [json.dumps({**self.header, "generation": generation}, sort_keys=True)]
            lines += [
                json.dumps(self._write_segments(seq, op, ids, vectors), sort_keys=True)
                for seq, (op, ids, vectors) in enumerate(records, start=1)
            ]
            replace_durably(self.path, lambda f: f.write("\n".join(lines).encode() + b"\n"))
            _fsync_dir(self.directory)
        except BaseException:
            self.generation = generation - 1
            raise
        prefix = f"g{generation:04d}-"
        for path in self.directory.glob("*.npy"):
            if not path.name.startswith(prefix):
                path.unlink(missing_ok=True)
        self.records = len(records)
        self.bytes = sum(_record_bytes(ids, vectors) for _, ids, vectors in records)

    def _write_segments(
        self, seq: int, op: str, ids: np.ndarray, vectors: np.ndarray | None
    ) -> dict[str, Any]:
        """Save one record's segments durably; its JSON record (not written yet)."""
        name = f"g{self.generation:04d}-{seq:08d}" if self.generation else f"{seq:08d}"
        record: dict[str, Any] = {"seq": seq, "op": op, "count": len(ids), "time": time.time()}
        record["ids"] = f"{name}-ids.npy"
        save_npy_durable(self.directory / record["ids"], ids)
        if vectors is not None:
            record["vectors"] = f"{name}-vectors.npy"
            save_npy_durable(self.directory / record["vectors"], vectors)
        return record

    def size_bytes(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def _parse(self, line: bytes, number: int) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{self.path}:{number}: not a JSON record ({exc})") from exc
        if not isinstance(value, dict):
            raise BundleError(f"{self.path}:{number}: not a JSON object")
        return value

    def _load(self, name: str) -> np.ndarray:
        path = self.directory / Path(name).name  # never outside the log directory
        try:
            return load_npy(path)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.path}: cannot read segment {path.name}: {exc}") from exc

    def _truncate(self, size: int) -> None:
        with self.path.open("r+b") as f:
            f.truncate(size)


@dataclass(frozen=True)
class Rows:
    """The upserted items a search sees: the first ``n`` rows of ``ids`` and ``vectors``."""

    ids: np.ndarray  # (capacity,) int64
    vectors: np.ndarray  # (capacity, dim) float32
    n: int


class Delta:
    """Upserts and deletes over one bundle shard's index, searched together with it."""

    def __init__(
        self,
        index: ShardIndex,
        *,
        shard_id: int,
        num_shards: int,
        log: UpdateLog | None = None,
        max_items: int = 1_000_000,
        compact_records: int = 1000,
    ) -> None:
        self.index = index
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.log = log
        self.max_items = max_items
        self.compact_records = compact_records  # 0: never compact the log
        self.hidden = index.hidden
        self.rows = Rows(np.empty(0, np.int64), np.empty((0, index.dim), np.float32), 0)
        self._row_of: dict[int, int] = {}  # upserted id -> row
        self._replacing = 0  # upserted ids that hide a bundle item
        self._deleted_upserts: set[int] = set()  # deleted ids the bundle never had
        self._lock = threading.Lock()  # one writer at a time; readers never lock

    # ------------------------------------------------------------------ reads (any thread)
    @property
    def upserted(self) -> int:
        return self.rows.n

    @property
    def deleted(self) -> int:
        """Bundle items deleted (replaced ones not counted)."""
        return self.hidden.count - self._replacing

    @property
    def num_items(self) -> int:
        return len(self.index.ids) - self.hidden.count + self.rows.n

    def updates(self) -> tuple[np.ndarray, np.ndarray]:
        """(upserted ids, deleted ids), both sorted int64: what a rollout carries over. A
        deleted id is a bundle item hidden and not upserted again, or an upserted-only id
        deleted since."""
        with self._lock:
            upserted = np.sort(self.rows.ids[: self.rows.n])
            deleted = np.union1d(self._hidden_only(upserted), self._forgotten())
        return upserted, deleted.astype(np.int64)

    def has(self, ids: np.ndarray) -> np.ndarray:
        """ids (n,) int64 -> bool (n,): searchable now (in the bundle and not deleted, or
        upserted)."""
        if len(ids) == 0:
            return np.zeros(0, bool)
        with self._lock:
            return self._present(np.asarray(ids, dtype=np.int64))

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
        """queries (nq, d) float32 -> ids, scores (nq, k): the bundle index's hits minus hidden
        ones, merged with the exact hits among upserted items; ids in ``exclude`` never."""
        rows = self.rows  # before the index search: see the module docstring
        ids, scores = self.index.search(
            queries, k, ef_search=ef_search, nprobe=nprobe, rerank=rerank, exclude=exclude
        )
        return self._merge(rows, queries, k, ids, scores, exclude)

    def exact(
        self,
        queries: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        pacing: ExactPacing | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over exactly what ``search`` sees (the ground truth for recall);
        ``pacing`` paces both scans (the bundle's vectors and the upserted ones)."""
        rows = self.rows
        ids, scores = self.index.exact(queries, k, exclude, pacing)
        return self._merge(rows, queries, k, ids, scores, exclude, pacing)

    def _merge(
        self,
        rows: Rows,
        queries: np.ndarray,
        k: int,
        ids: np.ndarray,
        scores: np.ndarray,
        exclude: np.ndarray | None = None,
        pacing: ExactPacing | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if rows.n == 0:
            return ids, scores
        upserted = rows.ids[: rows.n]
        skip = np.isin(upserted, exclude) if exclude is not None and len(exclude) else None
        fetch = min(k + (int(skip.sum()) if skip is not None else 0), rows.n)
        positions, delta_scores = exact_search(
            rows.vectors[: rows.n], queries, fetch, self.index.metric, pacing
        )
        valid = positions >= 0
        if skip is not None:
            valid &= ~skip[np.maximum(positions, 0)]
            delta_scores = np.where(valid, delta_scores, worst_score(self.index.metric))
        delta_ids = np.where(valid, rows.ids[np.maximum(positions, 0)], -1)
        return merge_rows(
            np.concatenate([ids, delta_ids], axis=1),
            np.concatenate([scores, delta_scores], axis=1),
            k,
            higher_is_better=higher_is_better(self.index.metric),
        )

    # ------------------------------------------------------------------ writes (one at a time)
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[int, int]:
        """ids (n,) int64, vectors (n, d) float32 (finite) -> (inserted, replaced)."""
        ids = np.asarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.dim:
            raise InvalidArgument(
                f"vectors have shape {vectors.shape}, expected (n, {self.index.dim})"
            )
        if len(ids) != len(vectors):
            raise InvalidArgument(f"{len(ids)} ids but {len(vectors)} vectors")
        self._check_ids(ids)
        if not np.isfinite(vectors).all():
            bad = int(np.argwhere(~np.isfinite(vectors))[0][0])
            raise InvalidArgument(f"vectors: row {bad} (id {int(ids[bad])}) contains NaN or Inf")
        with self._lock:
            new = sum(1 for i in ids.tolist() if i not in self._row_of)
            if self.rows.n + new > self.max_items:
                raise ResourceExhausted(
                    f"upserting {new} new items would hold {self.rows.n + new} upserted items "
                    f"in shard {self.shard_id}, over shards.max_delta_items {self.max_items}"
                )
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if self.log is not None:
                self.log.append("upsert", ids, vectors)
            counts = self._apply_upsert(ids, vectors)
            self._maybe_compact()
            return counts

    def delete(self, ids: np.ndarray, *, missing_ok: bool = False) -> tuple[int, int]:
        """ids (n,) int64 -> (deleted, missing); NotFound for missing ids unless missing_ok."""
        ids = np.asarray(ids, dtype=np.int64)
        self._check_ids(ids)
        with self._lock:
            present = self._present(ids)
            if not missing_ok and not present.all():
                missing = ids[~present]
                raise NotFound(
                    f"{len(missing)} id(s) not in shard {self.shard_id} (never there, or "
                    f"already deleted): {missing[:SHOW_IDS].tolist()}"
                )
            found = ids[present]
            if len(found) and self.log is not None:
                self.log.append("delete", found)
            self._apply_delete(found)
            self._maybe_compact()
            return len(found), len(ids) - len(found)

    def replay(self) -> int:
        """Apply the update log's records (at load, before the bundle serves)."""
        if self.log is None:
            return 0
        with self._lock:
            for op, ids, vectors in self.log.replay():
                if op == "upsert" and vectors is not None:
                    self._apply_upsert(ids.astype(np.int64), vectors.astype(np.float32))
                elif op == "delete":
                    self._apply_delete(ids[self._present(ids.astype(np.int64))])
                elif op == "forget":
                    self._deleted_upserts.update(ids.astype(np.int64).tolist())
                else:
                    raise BundleError(f"{self.log.path}: unknown record op {op!r}")
            return self.log.records

    # ------------------------------------------------------------------ internals (locked)
    def _hidden_only(self, upserted: np.ndarray) -> np.ndarray:
        """Bundle ids hidden and not upserted again: the deleted bundle items."""
        hidden_ids = self.index.ids[self.hidden.positions()]
        return hidden_ids[~np.isin(hidden_ids, upserted)]

    def _forgotten(self) -> np.ndarray:
        return np.fromiter(self._deleted_upserts, np.int64, len(self._deleted_upserts))

    def _maybe_compact(self) -> None:
        """Rewrite the log as a snapshot once it is long and at least twice the snapshot's
        size (so rewriting costs O(1) amortised per update). A failure leaves the old log
        (whole and correct) and is logged; the update it follows has been applied."""
        log_ = self.log
        if log_ is None or not self.compact_records or log_.records < self.compact_records:
            return
        rows = self.rows
        # The snapshot's size from the counts (the deleted bundle items are ``deleted``), so
        # an update that does not compact copies nothing.
        int64 = np.dtype(np.int64).itemsize
        size = rows.n * (int64 + rows.vectors.itemsize * self.index.dim)
        size += (self.deleted + len(self._deleted_upserts)) * int64
        if log_.bytes < 2 * size:
            return
        # Under the writer lock nothing changes these rows while they are written.
        upserted = rows.ids[: rows.n]
        snapshot: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        if rows.n:
            snapshot.append(("upsert", upserted, rows.vectors[: rows.n]))
        if len(hidden := self._hidden_only(upserted)):
            snapshot.append(("delete", hidden.astype(np.int64), None))
        if len(forgotten := self._forgotten()):
            snapshot.append(("forget", np.sort(forgotten), None))
        records = log_.records
        try:
            log_.compact(snapshot)
        except OSError as exc:
            log.warning("%s: compaction failed, the log stays as it was: %s", log_.path, exc)
            return
        log.info(
            "%s: compacted %d records into %d (generation %d)",
            log_.path,
            records,
            len(snapshot),
            log_.generation,
        )

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.ndim != 1 or len(ids) == 0:
            raise InvalidArgument("ids: empty; expected at least one int64 id")
        if (ids == -1).any():
            raise InvalidArgument("ids: -1 is reserved (it pads short result rows)")
        if len(np.unique(ids)) != len(ids):
            values, counts = np.unique(ids, return_counts=True)
            raise InvalidArgument(f"ids: duplicates {values[counts > 1][:SHOW_IDS].tolist()}")
        owner = shard_of(ids, self.num_shards)
        foreign = owner != self.shard_id
        if foreign.any():
            named = ", ".join(
                f"{i} (shard {s})"
                for i, s in zip(ids[foreign][:SHOW_IDS], owner[foreign][:SHOW_IDS], strict=True)
            )
            raise InvalidArgument(
                f"{int(foreign.sum())} id(s) belong to other shards of {self.num_shards} "
                f"(splitmix64 mod {self.num_shards}), not shard {self.shard_id}: {named}"
            )

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """ids (n,) -> their positions in the bundle index, -1 where the bundle lacks them."""
        return self.index.positions(ids)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        """ids (n,) -> bool (n,): searchable now (upserted, or in the bundle and not hidden)."""
        positions = self._positions(ids)
        in_bundle = positions >= 0
        visible = in_bundle.copy()
        visible[in_bundle] = ~self.hidden.contains(positions[in_bundle])
        upserted = np.fromiter((i in self._row_of for i in ids.tolist()), bool, len(ids))
        return visible | upserted

    def _apply_upsert(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[int, int]:
        positions = self._positions(ids)
        known = np.fromiter((i in self._row_of for i in ids.tolist()), bool, len(ids))
        visible_in_bundle = positions >= 0
        visible_in_bundle[visible_in_bundle] = ~self.hidden.contains(positions[visible_in_bundle])
        # Bundle copies hidden first, then the new rows published (no id seen twice).
        newly_replacing = (positions >= 0) & ~known
        self.hidden.hide(positions[positions >= 0])
        self._replacing += int(newly_replacing.sum())
        rows = self.rows
        if known.any():  # replace upserted rows: a new copy, never an in-place write
            vecs = rows.vectors[: rows.n].copy()
            vecs[[self._row_of[i] for i in ids[known].tolist()]] = vectors[known]
            rows = Rows(rows.ids[: rows.n].copy(), vecs, rows.n)
        self._deleted_upserts.difference_update(ids.tolist())
        fresh_ids, fresh_vectors = ids[~known], vectors[~known]
        self.rows = self._append(rows, fresh_ids, fresh_vectors)
        for offset, item in enumerate(fresh_ids.tolist()):
            self._row_of[item] = rows.n + offset
        replaced = int(known.sum() + (visible_in_bundle & ~known).sum())
        return len(ids) - replaced, replaced

    def _append(self, rows: Rows, ids: np.ndarray, vectors: np.ndarray) -> Rows:
        if len(ids) == 0:
            return rows
        end = rows.n + len(ids)
        if end > len(rows.ids):  # grow: new buffers (readers keep the old ones)
            capacity = max(end, 2 * len(rows.ids), 1024)
            grown_ids = np.empty(capacity, np.int64)
            grown_vectors = np.empty((capacity, self.index.dim), np.float32)
            grown_ids[: rows.n] = rows.ids[: rows.n]
            grown_vectors[: rows.n] = rows.vectors[: rows.n]
            rows = Rows(grown_ids, grown_vectors, rows.n)
        rows.ids[rows.n : end] = ids  # past every reader's n
        rows.vectors[rows.n : end] = vectors
        return Rows(rows.ids, rows.vectors, end)

    def _apply_delete(self, ids: np.ndarray) -> None:
        positions = self._positions(ids)
        self.hidden.hide(positions[positions >= 0])
        gone = [i for i in ids.tolist() if i in self._row_of]
        if not gone:
            return
        in_bundle = self._positions(np.array(gone, np.int64)) >= 0
        self._replacing -= int(np.count_nonzero(in_bundle))
        self._deleted_upserts.update(
            i for i, b in zip(gone, in_bundle.tolist(), strict=True) if not b
        )
        rows = self.rows
        keep = np.ones(rows.n, bool)
        keep[[self._row_of.pop(i) for i in gone]] = False
        self.rows = Rows(rows.ids[: rows.n][keep], rows.vectors[: rows.n][keep], int(keep.sum()))
        self._row_of = {int(item): row for row, item in enumerate(self.rows.ids.tolist())}
