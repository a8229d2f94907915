"""Bilinear up-sampling by 2 (PyTorch's ``align_corners=False``) and its adjoint, for real
float arrays.

The op table's rule (``upsample_bilinear`` in :mod:`autodiff_lab.graph.optable`) up-samples
one axis at a time with whole-array numpy slices: about six passes over memory and as many
temporaries per axis. Here each (image, channel) plane is done in one go, in the order of
operations of that rule, so the results are the same numbers bit for bit, NaN and Inf
included. With scale 2 along an axis of length n, output 2i + r (r = 0, 1) blends input i
with its neighbour i − 1 (r = 0) or i + 1 (r = 1), the edge repeated, with the weights ¾ and
¼ rounded to the array's dtype:

    y[2i]     = ¾·x[i] + ¼·x[max(i − 1, 0)]
    y[2i + 1] = ¾·x[i] + ¼·x[min(i + 1, n − 1)]

the rows first (the H axis), then the columns of that result. The adjoint takes the
columns first, then the rows, each as the rule's adjoint writes it: the "own" share
¾·g[2i] + ¾·g[2i + 1], plus the ¼ shares sent to the neighbours, the one sent down (to
i − 1 ... i.e. read from i + 1) before the one sent up, the edges collecting their own
share after the shifted one (``(¼g + ¼g')`` in that order, and ``0 + ¼g`` for a
length-one axis).

Only scales of 1 or 2 per axis (not both 1) come here (see :mod:`.dispatch`); other scales
keep the numpy rule. Serial loops over planes run when Numba has one thread for the call
(the default), a parallel loop over planes otherwise.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from autodiff_lab.kernels import memory, threads
from autodiff_lab.kernels.numba_cache import cached_njit

#: parallel loops run only when :func:`.threads.many` allows (see :mod:`.threads`)
ONE_THREAD_FLAG = True

# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

@cached_njit(nogil=True)
def _forward_plane(x, p, sh, sw, c, q, row, out):  # pragma: no cover - numba
    """Plane ``p`` of ``x`` (P, H, W) up-sampled into ``out`` (P, sh·H, sw·W); ``row`` is
    a scratch row of length W; ``c``/``q`` the weights ¾ and ¼ in the dtype."""
    h, w = x.shape[1], x.shape[2]
    for i in range(h):
        for r in range(sh):
            if sh == 1:
                for k in range(w):
                    row[k] = x[p, i, k]
            else:
                i2 = (i - 1 if i > 0 else 0) if r == 0 else (i + 1 if i < h - 1 else h - 1)
                for k in range(w):
                    row[k] = c * x[p, i, k] + q * x[p, i2, k]
            o = out[p, i * sh + r]
            if sw == 1:
                for k in range(w):
                    o[k] = row[k]
            else:
                for k in range(w):
                    km = k - 1 if k > 0 else 0
                    kp = k + 1 if k < w - 1 else w - 1
                    own = c * row[k]
                    o[2 * k] = own + q * row[km]
                    o[2 * k + 1] = own + q * row[kp]


@cached_njit(nogil=True)
def _forward_serial(x, sh, sw, c, q, out):  # pragma: no cover - numba
    row = np.empty(x.shape[2], dtype=x.dtype)
    for p in range(x.shape[0]):
        _forward_plane(x, p, sh, sw, c, q, row, out)


@cached_njit(parallel=True)
def _forward_parallel(x, sh, sw, c, q, out):  # pragma: no cover - numba
    for p in prange(x.shape[0]):
        row = np.empty(x.shape[2], dtype=x.dtype)
        _forward_plane(x, p, sh, sw, c, q, row, out)


# --------------------------------------------------------------------------------------
# adjoint
# --------------------------------------------------------------------------------------

@cached_njit(nogil=True)
def _adjoint_columns(g, p, c, q, zero, u):  # pragma: no cover - numba
    """The adjoint along the last axis (scale 2): plane ``p`` of ``g`` (P, R, 2W) into
    ``u`` (R, W)."""
    rows, w = u.shape
    for t in range(rows):
        src = g[p, t]
        dst = u[t]
        if w == 1:
            dst[0] = ((c * src[0] + c * src[1]) + (zero + q * src[0])) + (zero + q * src[1])
            continue
        # k = 0: the share sent down by 1 and its own down share; nothing comes from below
        dst[0] = ((c * src[0] + c * src[1]) + (q * src[2] + q * src[0])) + zero
        for k in range(1, w - 1):
            dst[k] = ((c * src[2 * k] + c * src[2 * k + 1]) + q * src[2 * k + 2]) \
                + q * src[2 * k - 1]
        k = w - 1
        dst[k] = ((c * src[2 * k] + c * src[2 * k + 1]) + zero) \
            + (q * src[2 * k - 1] + q * src[2 * k + 1])


@cached_njit(nogil=True)
def _adjoint_rows(u, p, c, q, zero, out):  # pragma: no cover - numba
    """The adjoint along the rows (scale 2): ``u`` (2H, W) into plane ``p`` of ``out``
    (P, H, W), a whole row at a time."""
    h, w = out.shape[1], out.shape[2]
    if h == 1:
        for k in range(w):
            out[p, 0, k] = ((c * u[0, k] + c * u[1, k]) + (zero + q * u[0, k])) \
                + (zero + q * u[1, k])
        return
    for k in range(w):
        out[p, 0, k] = ((c * u[0, k] + c * u[1, k]) + (q * u[2, k] + q * u[0, k])) + zero
    for i in range(1, h - 1):
        a, b, dn, up = u[2 * i], u[2 * i + 1], u[2 * i + 2], u[2 * i - 1]
        o = out[p, i]
        for k in range(w):
            o[k] = ((c * a[k] + c * b[k]) + q * dn[k]) + q * up[k]
    i = h - 1
    for k in range(w):
        out[p, i, k] = ((c * u[2 * i, k] + c * u[2 * i + 1, k]) + zero) \
            + (q * u[2 * i - 1, k] + q * u[2 * i + 1, k])


@cached_njit(nogil=True)
def _adjoint_plane(g, p, sh, sw, c, q, zero, u, out):  # pragma: no cover - numba
    if sw == 2 and sh == 2:
        _adjoint_columns(g, p, c, q, zero, u)
        _adjoint_rows(u, p, c, q, zero, out)
    elif sw == 2:  # the columns only: straight into the plane of out
        _adjoint_columns(g, p, c, q, zero, out[p])
    else:
        _adjoint_rows(g[p], 0, c, q, zero, out[p:p + 1])


@cached_njit(nogil=True)
def _adjoint_serial(g, sh, sw, c, q, zero, out):  # pragma: no cover - numba
    u = np.empty((g.shape[1], out.shape[2]), dtype=g.dtype)
    for p in range(g.shape[0]):
        _adjoint_plane(g, p, sh, sw, c, q, zero, u, out)


@cached_njit(parallel=True)
def _adjoint_parallel(g, sh, sw, c, q, zero, out):  # pragma: no cover - numba
    for p in prange(g.shape[0]):
        u = np.empty((g.shape[1], out.shape[2]), dtype=g.dtype)
        _adjoint_plane(g, p, sh, sw, c, q, zero, u, out)


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------

#: planes of at least this many output elements in all run in parallel when Numba has more
#: than one thread for the call (a parallel launch costs ~150 µs under ``workqueue``)
PARALLEL_MIN = 1 << 17


def _weights(dtype: np.dtype) -> tuple:
    t = dtype.type
    return t(0.75), t(0.25), t(0)


def _parallel(elements: int, planes: int) -> bool:
    return planes > 1 and elements >= PARALLEL_MIN and threads.many()


def upsample_bilinear2d(x: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """``x`` (..., H, W) up-sampled by ``scale`` (each 1 or 2), as the op table's rule."""
    sh, sw = int(scale[0]), int(scale[1])
    *lead, h, w = x.shape
    x3 = np.ascontiguousarray(x).reshape(-1, h, w)
    out = memory.empty((x3.shape[0], sh * h, sw * w), x.dtype)
    c, q, _ = _weights(x.dtype)
    if _parallel(out.size, x3.shape[0]):
        _forward_parallel(x3, sh, sw, c, q, out)
    else:
        _forward_serial(x3, sh, sw, c, q, out)
    return out.reshape(tuple(lead) + (sh * h, sw * w))


def upsample_bilinear2d_backward(g: np.ndarray, x_shape: tuple[int, ...],
                                 scale: tuple[int, int]) -> np.ndarray:
    """The adjoint of :func:`upsample_bilinear2d`: ``g`` (..., sh·H, sw·W) to (..., H, W)."""
    sh, sw = int(scale[0]), int(scale[1])
    *lead, h, w = x_shape
    g3 = np.ascontiguousarray(g).reshape(-1, sh * h, sw * w)
    out = memory.empty((g3.shape[0], h, w), g.dtype)
    c, q, zero = _weights(g.dtype)
    if _parallel(g3.size, g3.shape[0]):
        _adjoint_parallel(g3, sh, sw, c, q, zero, out)
    else:
        _adjoint_serial(g3, sh, sw, c, q, zero, out)
    return out.reshape(tuple(x_shape))


# --------------------------------------------------------------------------------------
# nearest-neighbour up-sampling and its adjoint
# --------------------------------------------------------------------------------------
# The op table's rule repeats each pixel sh × sw times (np.repeat, twice) and sums the
# gradient over each sh × sw block (a reshape and numpy's sum over two axes). For a
# gradient in C order with W ≥ 2 and 2 ≤ sw < 8, numpy's sum adds each block as
#     0 + (g[r=0, 0] + g[0, 1] + …) + (g[1, 0] + g[1, 1] + …) + …
# (the row sums left to right, then the rows top to bottom onto a zero), which the adjoint
# here follows to the bit, ±0, NaN and ±Inf included (see :mod:`.dispatch` for the cases
# that keep the numpy rule).

@cached_njit(nogil=True)
def _nearest_plane(x, p, sh, sw, out):  # pragma: no cover - numba
    h, w = x.shape[1], x.shape[2]
    for i in range(h):
        src = x[p, i]
        first = out[p, i * sh]
        if sw == 1:
            for k in range(w):
                first[k] = src[k]
        else:
            for k in range(w):
                v = src[k]
                for c in range(sw):
                    first[k * sw + c] = v
        for r in range(1, sh):
            dst = out[p, i * sh + r]
            for k in range(w * sw):
                dst[k] = first[k]


@cached_njit(nogil=True)
def _nearest_serial(x, sh, sw, out):  # pragma: no cover - numba
    for p in range(x.shape[0]):
        _nearest_plane(x, p, sh, sw, out)


@cached_njit(parallel=True)
def _nearest_parallel(x, sh, sw, out):  # pragma: no cover - numba
    for p in prange(x.shape[0]):
        _nearest_plane(x, p, sh, sw, out)


@cached_njit(nogil=True)
def _nearest_adjoint_plane(g, p, sh, sw, zero, out):  # pragma: no cover - numba
    h, w = out.shape[1], out.shape[2]
    for i in range(h):
        o = out[p, i]
        for k in range(w):
            o[k] = zero
        for r in range(sh):
            src = g[p, i * sh + r]
            if sw == 1:
                for k in range(w):
                    o[k] = o[k] + src[k]
            elif sw == 2:
                for k in range(w):
                    o[k] = o[k] + (src[2 * k] + src[2 * k + 1])
            else:
                for k in range(w):
                    s = src[k * sw]
                    for c in range(1, sw):
                        s = s + src[k * sw + c]
                    o[k] = o[k] + s


@cached_njit(nogil=True)
def _nearest_adjoint_serial(g, sh, sw, zero, out):  # pragma: no cover - numba
    for p in range(g.shape[0]):
        _nearest_adjoint_plane(g, p, sh, sw, zero, out)


@cached_njit(parallel=True)
def _nearest_adjoint_parallel(g, sh, sw, zero, out):  # pragma: no cover - numba
    for p in prange(g.shape[0]):
        _nearest_adjoint_plane(g, p, sh, sw, zero, out)


def upsample_nearest2d(x: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """``x`` (..., H, W) with each pixel repeated ``scale`` = (sh, sw) times, as the op
    table's ``upsample`` rule."""
    sh, sw = int(scale[0]), int(scale[1])
    *lead, h, w = x.shape
    x3 = np.ascontiguousarray(x).reshape(-1, h, w)
    out = memory.empty((x3.shape[0], sh * h, sw * w), x.dtype)
    if _parallel(out.size, x3.shape[0]):
        _nearest_parallel(x3, sh, sw, out)
    else:
        _nearest_serial(x3, sh, sw, out)
    return out.reshape(tuple(lead) + (sh * h, sw * w))


def upsample_nearest2d_backward(g: np.ndarray, x_shape: tuple[int, ...],
                                scale: tuple[int, int]) -> np.ndarray:
    """The adjoint of :func:`upsample_nearest2d`: each sh × sw block of ``g`` (W ≥ 2)
    summed in the order numpy's sum takes for a C-contiguous ``g``."""
    sh, sw = int(scale[0]), int(scale[1])
    *lead, h, w = x_shape
    g3 = np.ascontiguousarray(g).reshape(-1, sh * h, sw * w)
    out = memory.empty((g3.shape[0], h, w), g.dtype)
    if _parallel(g3.size, g3.shape[0]):
        _nearest_adjoint_parallel(g3, sh, sw, g.dtype.type(0), out)
    else:
        _nearest_adjoint_serial(g3, sh, sw, g.dtype.type(0), out)
    return out.reshape(tuple(x_shape))
