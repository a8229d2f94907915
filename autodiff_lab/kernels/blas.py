"""The thread count of the OpenBLAS numpy calls, read and set through its C interface.

Only thread counts pass through here, never data. The convolution kernels split their
blocks over a few Python threads, each running its matrix products on one BLAS thread
(:func:`single_threaded` while they run): measured on the 2-core machine, a DnCNN-lite
float32 gradient took 45 ms that way against 58 ms with OpenBLAS splitting every product
over its two threads, whose hand-over at each of some 300 small products costs more than
it saves, and which spin while they wait (117 ms of CPU per step against 73).

The library is found the way threadpoolctl finds it: numpy's bundled OpenBLAS (its
``numpy.libs`` / ``.dylibs`` folder) or any OpenBLAS already loaded in the process
(``/proc/self/maps``), with the symbol names of scipy-openblas (numpy ≥ 2 wheels),
64-bit-integer and plain builds. Where none is found (numpy on MKL or Accelerate),
:func:`threads` says 1 and nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import threading
from collections.abc import Iterator

import numpy as np

_NAMES = [("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
          ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
          ("openblas_get_num_threads", "openblas_set_num_threads")]

_bound: tuple | None = None
_searched = False
_lock = threading.Lock()
_depth = 0
_saved = 1


def _candidates() -> list[str]:
    here = os.path.dirname(np.__file__)
    paths = []
    for folder in (os.path.join(here, "..", "numpy.libs"), os.path.join(here, ".dylibs")):
        paths += sorted(glob.glob(os.path.join(folder, "*openblas*")))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _bind() -> tuple | None:
    """(get, set) of the OpenBLAS in use, or None."""
    global _bound, _searched
    if _searched:
        return _bound
    _searched = True
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is None or put is None:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            try:
                if get() >= 1:
                    _bound = (get, put)
                    return _bound
            except OSError:
                continue
    return None


def available() -> bool:
    """Whether the thread count of numpy's BLAS can be read and set."""
    return _bind() is not None


def threads() -> int:
    """The threads numpy's BLAS uses now (1 when it cannot be told)."""
    bound = _bind()
    if bound is None:
        return 1
    with _lock:
        return _saved if _depth else max(1, int(bound[0]()))


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run numpy's BLAS on one thread inside the block, process-wide, then restore the
    count. Nested and concurrent uses share one change: the first to enter sets it, the
    last to leave restores it."""
    global _depth, _saved
    bound = _bind()
    if bound is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = max(1, int(bound[0]()))
            if _saved > 1:
                bound[1](1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved > 1:
                bound[1](_saved)
