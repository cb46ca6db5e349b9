"""numpy arrays <-> protobuf ``bytes`` fields (little-endian, row-major).

Both sides of every RPC use these, so validation messages are the same everywhere.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

import numpy as np
import numpy.ma  # np.unique imports it on its first call (~20 ms): not a request's

from annfleet.errors import InvalidArgument

# Every server and channel the project opens sets these limits explicitly (grpc's own default
# is 4 MiB received, unlimited sent); a larger message is RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 64 << 20
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

F32 = np.dtype("<f4")
I64 = np.dtype("<i8")
U8 = np.dtype("u1")
U32 = np.dtype("<u4")


def to_bytes(array: np.ndarray, dtype: np.dtype) -> bytes:
    """Any array -> contiguous little-endian bytes of ``dtype``."""
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def decode_matrix(
    data: bytes, dim: int, *, name: str = "queries", max_rows: int | None = None
) -> np.ndarray:
    """bytes (float32 LE) -> (n, dim) float32, all finite; InvalidArgument says what is wrong."""
    if dim <= 0:
        raise InvalidArgument(f"{name}: dim must be > 0, got {dim}")
    if not data:
        raise InvalidArgument(f"{name}: empty; expected n x {dim} float32 values")
    row_bytes = dim * F32.itemsize
    if len(data) % row_bytes:
        raise InvalidArgument(
            f"{name}: {len(data)} bytes is not a whole number of rows of dim {dim} float32 "
            f"({row_bytes} bytes per row)"
        )
    rows = len(data) // row_bytes
    if max_rows is not None and rows > max_rows:
        raise InvalidArgument(f"{name}: batch of {rows} rows exceeds max_batch {max_rows}")
    matrix = np.frombuffer(data, dtype=F32).reshape(rows, dim)
    if not np.isfinite(matrix).all():
        bad = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise InvalidArgument(f"{name}: row {bad} contains NaN or Inf")
    return matrix


def decode_ids(data: bytes, *, name: str = "ids") -> np.ndarray:
    """bytes (int64 LE) -> (n,) int64; empty bytes -> empty array."""
    if len(data) % I64.itemsize:
        raise InvalidArgument(f"{name}: {len(data)} bytes is not a whole number of int64 values")
    return np.frombuffer(data, dtype=I64)


def decode_rows(data: bytes, dtype: np.dtype, rows: int, cols: int, *, name: str) -> np.ndarray:
    """bytes -> (rows, cols) array of ``dtype``, for responses that carry their shape."""
    expected = rows * cols * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(f"{name}: {len(data)} bytes, expected {rows}x{cols} {dtype} values")
    return np.frombuffer(data, dtype=dtype).reshape(rows, cols)


def check_k(k: int, max_k: int) -> int:
    if k <= 0:
        raise InvalidArgument(f"k must be > 0, got {k}")
    if k > max_k:
        raise InvalidArgument(f"k={k} exceeds max_k {max_k}")
    return k


# np.load parses a .npy header with ast.literal_eval, and CPython 3.11's AST constructor is
# not safe when two threads build ASTs at once: it fails with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905; seen here with shards built in parallel).
_NPY_HEADER_LOCK = threading.Lock()


def npy_error(exc: Exception) -> str:
    """Why ``np.load(..., allow_pickle=False)`` failed, for a person: numpy calls anything
    that is not a .npy file "pickled data" and suggests allow_pickle, which annfleet never
    uses (a file that is not a .npy, or an object array, is refused)."""
    if isinstance(exc, ValueError) and "pickled" in str(exc):
        return "not a .npy file of numbers (an object array or another format; never unpickled)"
    return str(exc)


def load_npy(path: str | os.PathLike[str], mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """A .npy file, never unpickled; safe from several threads at once (the header is parsed
    under a lock, the data read outside it). ``mmap_mode="r"``: memory-mapped, read-only."""
    with _NPY_HEADER_LOCK:
        mapped = np.load(path, allow_pickle=False, mmap_mode="r")
    return mapped if mmap_mode == "r" else np.array(mapped)
