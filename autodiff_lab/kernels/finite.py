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

:func:`products_finite` proves a sum of products finite from its two factors instead of
testing the sum: a weight gradient ``g @ xᵀ`` of a 784-256-784 MLP has three times as many
elements as ``g`` and ``x`` together, and it is read right after the two-thread product that
wrote it, half of it from the other core's cache (float64: 75-85 µs to test it there, 30-40
µs to bound it from its factors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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


@cached_njit(error_model="numpy", nogil=True)
def _largest_magnitude_bits_32(bits):  # pragma: no cover - numba
    # the float's bits as an integer without the sign: ordered as the magnitudes are, and
    # above every finite number's for ±Inf and NaN; an integer maximum vectorises, where a
    # float maximum (NaN's rules) does not. Kept in 32 bits: twice the lanes of Numba's
    # default 64-bit integers (3.8 µs instead of 8.9 µs for 66,000 float32)
    mask = np.int32(0x7FFFFFFF)
    largest = np.int32(0)
    for i in range(bits.size):
        b = np.int32(bits[i] & mask)
        largest = b if b > largest else largest
    return largest


@cached_njit(error_model="numpy", nogil=True)
def _largest_magnitude_bits_64(bits):  # pragma: no cover - numba
    largest = 0
    for i in range(bits.size):
        largest = max(largest, bits[i] & 0x7FFFFFFFFFFFFFFF)
    return largest


@cached_njit(error_model="numpy", nogil=True)
def _products_finite(p_bits, q_bits, terms, limit):  # pragma: no cover - numba
    if p_bits.itemsize == 4:
        shift, bias, inf_bits = 23, 127, 0x7F800000
        top, other = _largest_magnitude_bits_32(p_bits), _largest_magnitude_bits_32(q_bits)
    else:
        shift, bias, inf_bits = 52, 1023, 0x7FF0000000000000
        top, other = _largest_magnitude_bits_64(p_bits), _largest_magnitude_bits_64(q_bits)
    if top >= inf_bits or other >= inf_bits:
        return False  # an Inf or a NaN
    # a float whose biased exponent is e is below 2^(e − bias + 1) in magnitude
    exponent = (top >> shift) + (other >> shift) - 2 * bias + 2
    return terms * 2.0 ** exponent <= limit


#: per dtype: the integers of its size, and half its largest number
_BITS_AND_LIMIT = {np.dtype(d): (np.dtype(i), float(np.finfo(d).max) / 2)
                   for d, i in ((np.float32, np.int32), (np.float64, np.int64))}


def products_finite(p: Any, q: Any, terms: int) -> bool:
    """Whether every sum of at most ``terms`` products of an element of ``p`` with an element
    of ``q`` is finite, proven from the factors: both hold no NaN or Inf, and
    ``terms · max|p| · max|q|`` (each maximum rounded up to a power of two) is at most half
    the largest number of their dtype (so that rounding on the way cannot reach it).
    ``False`` means "not proven" -- a factor is not finite, the bound is too large, or ``p``
    and ``q`` are not C-contiguous float32/float64 arrays of one dtype -- and the caller
    tests the sum itself."""
    if type(p) is not np.ndarray or type(q) is not np.ndarray or p.dtype != q.dtype:
        return False
    known = _BITS_AND_LIMIT.get(p.dtype)
    if known is None or not (p.flags.c_contiguous and q.flags.c_contiguous) or not p.size \
            or not q.size:
        return False
    bits, limit = known
    return _products_finite(p.reshape(-1).view(bits), q.reshape(-1).view(bits),
                            float(terms), limit)


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
