"""Files written whole or not at all (servers and tools; not the client's)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def replace_durably(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """``write`` fills a temp file beside ``path``, which is fsynced and renamed over it: a
    reader sees the old file or the new one, never half of one, and after a crash the new
    one is there whole or not at all. The temp file is removed if anything fails."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy_durable(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a .npy whole or not at all (never pickled)."""
    replace_durably(path, lambda f: np.save(f, array, allow_pickle=False))
