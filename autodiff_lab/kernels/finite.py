"""One compiled NaN/Inf test over several arrays: the anomaly check of the tape's generated
functions for small graphs (:mod:`autodiff_lab.engines.tape_codegen`), and the convolution
kernels' tests of their operands and results (0.04 ms for a 16×32×40×40 float32 activation,
numpy's ``isfinite(a.sum())`` 0.11 ms).

A numpy reduction costs ~0.8 µs a call whatever the size of a small array, which on a
16-8-16 MLP's six gradients was a third of the gradient's time; one Numba call over all of
them costs about as much as one numpy call. Each ``all_finite_<k>`` takes ``k`` real arrays
of any shape and layout (Numba compiles one version per combination of dtypes, dimensions
and layouts, cached on disk like the other kernels) and says whether every element of
every one is finite: ``x − x`` is 0 for a finite ``x`` and NaN for ±Inf and NaN, so the
test is exact (no sum that could overflow) and has no branch in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autodiff_lab.kernels.numba_cache import cached_njit

#: the most arrays one function takes; more are split over several calls
MAX_ARRAYS = 8


@cached_njit(error_model="numpy", nogil=True)
def _bad(a):  # pragma: no cover - numba
    bad = False
    for x in a.flat:
        bad |= (x - x) != 0
    return bad


@cached_njit(error_model="numpy", nogil=True)
def all_finite_1(a0):  # pragma: no cover - numba
    return not _bad(a0)


@cached_njit(error_model="numpy", nogil=True)
def all_finite_2(a0, a1):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_3(a0, a1, a2):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_4(a0, a1, a2, a3):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2) or _bad(a3))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_5(a0, a1, a2, a3, a4):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2) or _bad(a3) or _bad(a4))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_6(a0, a1, a2, a3, a4, a5):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2) or _bad(a3) or _bad(a4) or _bad(a5))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_7(a0, a1, a2, a3, a4, a5, a6):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2) or _bad(a3) or _bad(a4) or _bad(a5)
                or _bad(a6))


@cached_njit(error_model="numpy", nogil=True)
def all_finite_8(a0, a1, a2, a3, a4, a5, a6, a7):  # pragma: no cover - numba
    return not (_bad(a0) or _bad(a1) or _bad(a2) or _bad(a3) or _bad(a4) or _bad(a5)
                or _bad(a6) or _bad(a7))


_BY_COUNT: dict[int, Callable[..., Any]] = {
    1: all_finite_1, 2: all_finite_2, 3: all_finite_3, 4: all_finite_4,
    5: all_finite_5, 6: all_finite_6, 7: all_finite_7, 8: all_finite_8,
}


def checker(count: int) -> Callable[..., Any]:
    """The function that tests ``count`` arrays (1 ≤ count ≤ :data:`MAX_ARRAYS`)."""
    return _BY_COUNT[count]


def all_finite(arrays: Sequence[Any]) -> bool:
    """Whether every element of every array in ``arrays`` (real float32/float64 ndarrays of
    any shape and layout) is finite: one compiled call per :data:`MAX_ARRAYS` of them."""
    n = len(arrays)
    if n <= MAX_ARRAYS:
        return n == 0 or _BY_COUNT[n](*arrays)
    return all(_BY_COUNT[len(arrays[i:i + MAX_ARRAYS])](*arrays[i:i + MAX_ARRAYS])
               for i in range(0, n, MAX_ARRAYS))
