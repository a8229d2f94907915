"""Fused element-wise kernels for large real float arrays.

numpy evaluates ``g * (x > 0).astype(dtype)`` as three passes over memory with two
temporaries; here each rule is one pass. The op table calls these (through
:mod:`.dispatch`) only for arrays big enough that the call overhead is repaid; small arrays
stay with numpy.

Each rule is a serial loop over a span of the flattened arrays (``nogil``, vectorised by
LLVM), run on the whole array when Numba has one thread for us (the default: see
:data:`.dispatch.kernel_threads`) and over chunks in a parallel loop otherwise. A parallel
launch of Numba's ``workqueue`` layer was measured at 140-180 µs even with one thread (the
serial call: under 1 µs), about what the 2 MB ReLU of a U-Net layer takes.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from autodiff_lab.kernels import memory, threads
from autodiff_lab.kernels.numba_cache import cached_njit

#: parallel loops run only when :func:`.threads.many` allows (see :mod:`.threads`)
ONE_THREAD_FLAG = True

#: elements per chunk of the parallel loops (and the least for which they run at all)
CHUNK = 1 << 16


@cached_njit(nogil=True)
def _relu_forward_span(x, out, lo, hi):  # pragma: no cover - numba
    # slices first: indexing with range(lo, hi) (a possibly negative index) kept LLVM from
    # vectorising the loop (measured 0.30 against 0.17 ms for 2 MB)
    x, out = x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        # "not v <= 0" keeps a NaN (numpy's maximum propagates it; "v > 0" would write 0)
        out[i] = 0 if v <= 0 else v


@cached_njit(nogil=True)
def _relu_backward_span(g, x, out, lo, hi):  # pragma: no cover - numba
    # g · relu'(x), relu'(x) = 1 for x > 0, 0 for x ≤ 0 (relu'(0) = 0, as in PyTorch), NaN
    # at a NaN: the product of the numpy rule, so an infinite g times 0 is NaN there too
    g, x, out = g[lo:hi], x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        gv = g[i]
        z = gv * 0
        out[i] = gv if v > 0 else (z if v <= 0 else v)


@cached_njit(nogil=True)
def _leaky_relu_forward_span(x, alpha, out, lo, hi):  # pragma: no cover - numba
    # the reference's np.where(x > 0, x, alpha·x): alpha·x where x ≤ 0 or NaN (NaN stays)
    x, out = x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        s = alpha * v
        out[i] = v if v > 0 else s


@cached_njit(nogil=True)
def _leaky_relu_backward_span(g, x, alpha, out, lo, hi):  # pragma: no cover - numba
    g, x, out = g[lo:hi], x[lo:hi], out[lo:hi]
    for i in range(x.size):
        v = x[i]
        gv = g[i]
        s = alpha * gv
        out[i] = gv if v > 0 else (s if v <= 0 else v)


@cached_njit(parallel=True)
def _relu_forward_par(x, out):  # pragma: no cover - numba
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        _relu_forward_span(x, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@cached_njit(parallel=True)
def _relu_backward_par(g, x, out):  # pragma: no cover - numba
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        _relu_backward_span(g, x, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@cached_njit(parallel=True)
def _leaky_relu_forward_par(x, alpha, out):  # pragma: no cover - numba
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        _leaky_relu_forward_span(x, alpha, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@cached_njit(parallel=True)
def _leaky_relu_backward_par(g, x, alpha, out):  # pragma: no cover - numba
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        _leaky_relu_backward_span(g, x, alpha, out, c * CHUNK, min(n, (c + 1) * CHUNK))


@cached_njit(nogil=True, fastmath={"reassoc"})
def _difference_squares(pred, target, d):  # pragma: no cover - numba
    # d = pred − target and Σ d², the squares summed in float64 (reassociation lets LLVM
    # keep several partial sums, vectorised; without "nnan" a NaN or Inf still reaches it)
    s = 0.0
    for i in range(d.size):
        v = pred[i] - target[i]
        d[i] = v
        w = np.float64(v)
        s += w * w
    return s


def parallel(size: int) -> bool:
    """Whether a loop over ``size`` elements should run in parallel: Numba has more than
    one thread for this call and there are at least two chunks."""
    return size >= 2 * CHUNK and threads.many()


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0) in one pass (NaN stays NaN)."""
    out = memory.empty(x.shape, x.dtype)
    xf, of = _flat(x), out.reshape(-1)
    if parallel(xf.size):
        _relu_forward_par(xf, of)
    else:
        _relu_forward_span(xf, of, 0, xf.size)
    return out


def difference_squares(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``pred − target`` (a recycled array of their shape) and the sum of its squares, in
    one pass over the inputs: numpy's mse forward takes three (subtract, square, sum) and
    its gradient a fourth. The squares are summed in float64 whatever the dtype (numpy's
    pairwise float32 sum is no closer), so the float32 loss is the float64 sum rounded
    once."""
    d = memory.empty(pred.shape, pred.dtype)
    total = _difference_squares(_flat(pred), _flat(target), d.reshape(-1))
    return d, float(total)


def relu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g where x > 0, 0·g where x ≤ 0, NaN where x is NaN, in one pass (``g`` and ``x`` of
    one shape)."""
    out = memory.empty(x.shape, x.dtype)
    gf, xf, of = _flat(g), _flat(x), out.reshape(-1)
    if parallel(xf.size):
        _relu_backward_par(gf, xf, of)
    else:
        _relu_backward_span(gf, xf, of, 0, xf.size)
    return out


def leaky_relu_forward(x: np.ndarray, alpha: float) -> np.ndarray:
    """x where x > 0, alpha·x elsewhere (NaN stays NaN), alpha rounded to x's dtype as
    numpy's ``alpha * x`` rounds it."""
    out = memory.empty(x.shape, x.dtype)
    xf, of = _flat(x), out.reshape(-1)
    a = x.dtype.type(alpha)
    if parallel(xf.size):
        _leaky_relu_forward_par(xf, a, of)
    else:
        _leaky_relu_forward_span(xf, a, of, 0, xf.size)
    return out


def leaky_relu_backward(g: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray:
    """g where x > 0, alpha·g where x ≤ 0, NaN where x is NaN."""
    out = memory.empty(x.shape, x.dtype)
    gf, xf, of = _flat(g), _flat(x), out.reshape(-1)
    a = x.dtype.type(alpha)
    if parallel(xf.size):
        _leaky_relu_backward_par(gf, xf, a, of)
    else:
        _leaky_relu_backward_span(gf, xf, a, of, 0, xf.size)
    return out
