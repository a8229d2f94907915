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
        out[i] = v if v > 0 else 0


@cached_njit(parallel=True)
def _relu_backward(g, x, out):  # pragma: no cover - numba
    # relu'(0) = 0, as in PyTorch
    for i in prange(x.size):
        out[i] = g[i] if x[i] > 0 else 0


@cached_njit(parallel=True)
def _leaky_relu_backward(g, x, alpha, out):  # pragma: no cover - numba
    for i in prange(x.size):
        out[i] = g[i] if x[i] > 0 else alpha * g[i]


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in one pass."""
    out = memory.empty(x.shape, x.dtype)
    _relu_forward(x.reshape(-1), out.reshape(-1))
    return out


def relu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g where x > 0, else 0, in one pass (``g`` and ``x`` of one shape)."""
    out = memory.empty(x.shape, x.dtype)
    _relu_backward(np.ascontiguousarray(g).reshape(-1), x.reshape(-1), out.reshape(-1))
    return out


def leaky_relu_backward(g: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """g where x > 0, else alpha·g."""
    out = memory.empty(x.shape, x.dtype)
    _leaky_relu_backward(np.ascontiguousarray(g).reshape(-1), x.reshape(-1),
                         x.dtype.type(alpha), out.reshape(-1))
    return out
