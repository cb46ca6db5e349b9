"""Python's cyclic garbage collector in a serving process.

A full collection walks every object the interpreter tracks, and a router or shard process
keeps ~190,000 of them for its whole life (modules, classes, functions; most of them torch's
or faiss's): 150-190 ms per full collection on the shared 2-core box, a stall of the event
loop that every request in flight waits out. ``freeze_startup_objects`` moves what exists
once the process has imported everything into the permanent generation, which no
collection walks; objects created later (requests, caches, the next bundle) are collected
as before. A frozen object that later becomes cyclic garbage is never freed, which is why
the freeze happens before a bundle's data and model are loaded (a swap releases them) and
only in processes annfleet owns (``serve-router`` / ``serve-shard``, not a caller that
starts a server in its own process). ``observe_pauses`` records every
collection's pause in ``annfleet_gc_pause_seconds{generation}``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from annfleet.metrics import GC_FROZEN, GC_PAUSE

_started: list[float] = []


def freeze_startup_objects() -> int:
    """Collect once, then freeze every object alive now; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    GC_FROZEN.set(frozen)
    return frozen


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        GC_PAUSE.labels(str(info.get("generation", "?"))).observe(
            time.perf_counter() - _started.pop()
        )


def observe_pauses() -> None:
    """Record each collection's pause (once per process; calling again changes nothing)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
