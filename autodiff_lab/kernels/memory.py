"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

A gradient step allocates the same large arrays on every call (a 784×256 float64 weight
gradient is 1.6 MB, a DnCNN activation 6.5 MB). glibc serves blocks above its mmap
threshold with a fresh ``mmap`` and unmaps them on ``free``, so each call pays one page
fault per 4 KiB page: measured on the inpainting MLP (float64), 2.7 ms per gradient
against 1.05 ms once freed memory is kept, for the tape engine and hand-written numpy alike.

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds with ``mallopt`` (what the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables do at process
start). It is process-wide, so the library never calls it by itself: training scripts and
benchmarks opt in (the benchmark applies it to every framework alike, or not at all).

What the library does instead, locally: the Numba kernels take their big outputs from
:func:`empty` / :func:`zeros`, which recycle an array of the same shape once nothing else
refers to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import threading
from typing import Any

import numpy as np

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 256 << 20) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep freed heap memory
    (trim threshold twice that). Returns False where it cannot (not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    ok &= mallopt(_M_TRIM_THRESHOLD, int(2 * mmap_threshold))
    return bool(ok)


# --------------------------------------------------------------------------------------
# recycled output arrays
# --------------------------------------------------------------------------------------

_local = threading.local()
#: arrays smaller than this come from np.empty as usual (malloc reuses them well)
POOL_MIN_BYTES = 256 << 10
#: at most this many bytes of arrays are kept for recycling, per thread
POOL_MAX_BYTES = 1 << 30


def _pool() -> dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]]:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
        _local.bytes = 0
    return pool


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Like ``np.empty``, but big arrays are recycled once nothing else refers to them.

    The kernels' outputs (convolution results, ReLU masks, image gradients) have the same
    shapes on every training step. A recycled array skips the page faults of fresh memory
    (see :func:`keep_freed_memory`) without changing the process's allocator. An array is
    handed out again only when the pool holds its only reference: not while a caller, a
    view of it or a returned gradient still uses it (CPython reference counts say so).
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    pool = _pool()
    bucket = pool.setdefault((shape, dtype), [])
    for a in bucket:
        # references: the bucket, the loop variable and getrefcount's argument
        if sys.getrefcount(a) <= 3:
            return a
    out = np.empty(shape, dtype)
    if _local.bytes + nbytes <= POOL_MAX_BYTES:
        bucket.append(out)
        _local.bytes += nbytes
    return out


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Like ``np.zeros``, recycling as :func:`empty` does."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def pooled_bytes() -> int:
    """Bytes this thread keeps for recycling."""
    _pool()
    return int(_local.bytes)
