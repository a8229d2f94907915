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
refers to it. That pool is bounded (:data:`POOL_MAX_BYTES` per thread, least recently used
shapes dropped first; :func:`set_pool_limit` changes it) and :func:`clear_pool` empties it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Hand memory the allocator keeps free back to the operating system (glibc's
    ``malloc_trim``). Returns False where it cannot (not glibc)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def keep_freed_memory(mmap_threshold: int = 256 << 20) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from the heap and keep freed heap memory
    (trim threshold twice that). Returns False where it cannot (not glibc)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    ok &= mallopt(_M_TRIM_THRESHOLD, int(2 * mmap_threshold))
    return bool(ok)


# --------------------------------------------------------------------------------------
# recycled output arrays
# --------------------------------------------------------------------------------------

_local = threading.local()
#: arrays smaller than this come from np.empty as usual: glibc serves blocks below its
#: default mmap threshold (128 KiB) from its heap and reuses them well; from that size on, a
#: fresh block is mapped and faulted in page by page on every call
POOL_MIN_BYTES = 128 << 10
#: at most this many bytes of arrays are kept for recycling, per thread; when a new array
#: would go over, the shapes used least recently are dropped first. 256 MiB holds every
#: recycled array of a DnCNN step with batch 16, 32 channels, 40×40 patches (69 MiB) a few
#: times over. Change it with :func:`set_pool_limit`.
POOL_MAX_BYTES = 256 << 20

_Key = tuple[tuple[int, ...], np.dtype]


def _pool() -> OrderedDict[_Key, list[np.ndarray]]:
    """This thread's pool, least recently used shape first."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = OrderedDict()
        _local.bytes = 0
    return pool


def _trim(pool: OrderedDict[_Key, list[np.ndarray]], limit: int, keep: _Key | None = None
          ) -> None:
    """Drop the least recently used shapes until the pool holds at most ``limit`` bytes
    (``keep``, the shape being handed out, goes last). An array still in use elsewhere is
    only forgotten by the pool; its memory goes when its last user lets go."""
    while _local.bytes > limit and pool:
        key = next(iter(pool))
        if key == keep:
            if len(pool) == 1:
                break
            pool.move_to_end(key)
            continue
        bucket = pool.pop(key)
        _local.bytes -= sum(a.nbytes for a in bucket)


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Like ``np.empty``, but big arrays are recycled once nothing else refers to them.

    The kernels' outputs (convolution results, ReLU masks, image gradients) have the same
    shapes on every training step. A recycled array skips the page faults of fresh memory
    (see :func:`keep_freed_memory`) without changing the process's allocator. An array is
    handed out again only when the pool holds its only reference: not while a caller, a
    view of it or a returned gradient still uses it (CPython reference counts say so).
    The pool holds at most :data:`POOL_MAX_BYTES` per thread, dropping the shapes used
    least recently, so a sweep over many batch sizes does not keep every size it saw.
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype)
    pool = _pool()
    key = (shape, dtype)
    bucket = pool.get(key)
    if bucket is None:
        bucket = pool[key] = []
    else:
        pool.move_to_end(key)
        for a in bucket:
            # references: the bucket, the loop variable and getrefcount's argument
            if sys.getrefcount(a) <= 3:
                return a
    out = np.empty(shape, dtype)
    limit = POOL_MAX_BYTES
    if nbytes <= limit:
        bucket.append(out)
        _local.bytes += nbytes
        _trim(pool, limit, keep=key)
        if _local.bytes > limit:  # this shape alone is over the limit: do not keep the new one
            bucket.pop()
            _local.bytes -= nbytes
    if not bucket:
        del pool[key]
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


def clear_pool() -> int:
    """Forget every array this thread keeps for recycling; returns the bytes released.

    Arrays nobody else refers to go back to the allocator at once, and the allocator's
    free memory to the operating system (:func:`release_freed_memory`). Call it after a
    burst of work on shapes that will not come again (a sweep over batch sizes, one large
    evaluation); training simply refills the pool on its next step.
    """
    pool = _pool()
    released = int(_local.bytes)
    pool.clear()
    _local.bytes = 0
    release_freed_memory()
    return released


def set_pool_limit(max_bytes: int) -> int:
    """Set :data:`POOL_MAX_BYTES` (for every thread; 0 turns recycling off) and trim this
    thread's pool to it. Returns the previous limit."""
    global POOL_MAX_BYTES
    max_bytes = int(max_bytes)
    if max_bytes < 0:
        raise ValueError(f"the pool limit must be at least 0 bytes, got {max_bytes}")
    previous, POOL_MAX_BYTES = POOL_MAX_BYTES, max_bytes
    _trim(_pool(), max_bytes)
    return previous
