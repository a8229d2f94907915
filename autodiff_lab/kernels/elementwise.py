"""Fused element-wise kernels for large real float arrays.

numpy evaluates ``g * (x > 0).astype(dtype)`` as three passes over memory with two
temporaries; here each rule is one parallel pass. The op table calls these (through
:mod:`.dispatch`) only for arrays big enough that the Numba call overhead (about a
microsecond) is repaid; small arrays stay with numpy.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from autodiff_lab.kernels import memory
from autodiff_lab.kernels.numba_cache import cached_njit


@cached_njit(parallel=True)
def _relu_forward(x, out):  # pragma: no cover - numba
    for i in prange(x.size):
        v = x[i]
        # "not v <= 0" keeps a NaN (numpy's maximum propagates it; "v > 0" would write 0)
        out[i] = 0 if v <= 0 else v


@cached_njit(parallel=True)
def _relu_backward(g, x, out):  # pragma: no cover - numba
    # g · relu'(x), relu'(x) = 1 for x > 0, 0 for x ≤ 0 (relu'(0) = 0, as in PyTorch), NaN
    # at a NaN: the product of the numpy rule, so an infinite g times 0 is NaN there too
    for i in prange(x.size):
        v = x[i]
        if v > 0:
            out[i] = g[i]
        elif v <= 0:
            out[i] = g[i] * 0
        else:
            out[i] = v


@cached_njit(parallel=True)
def _leaky_relu_backward(g, x, alpha, out):  # pragma: no cover - numba
    for i in prange(x.size):
        v = x[i]
        if v > 0:
            out[i] = g[i]
        elif v <= 0:
            out[i] = alpha * g[i]
        else:
            out[i] = v


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in one pass (NaN stays NaN)."""
    out = memory.empty(x.shape, x.dtype)
    _relu_forward(x.reshape(-1), out.reshape(-1))
    return out


def relu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g where x > 0, 0·g where x ≤ 0, NaN where x is NaN, in one pass (``g`` and ``x`` of
    one shape)."""
    out = memory.empty(x.shape, x.dtype)
    _relu_backward(np.ascontiguousarray(g).reshape(-1), x.reshape(-1), out.reshape(-1))
    return out


def leaky_relu_backward(g: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """g where x > 0, alpha·g where x ≤ 0, NaN where x is NaN."""
    out = memory.empty(x.shape, x.dtype)
    _leaky_relu_backward(np.ascontiguousarray(g).reshape(-1), x.reshape(-1),
                         x.dtype.type(alpha), out.reshape(-1))
    return out
