"""The transforms of Winograd F(4×4, 3×3) for float32: 36 products per 4×4 output tile.

A 4×4 block of outputs ("tile") of a 3×3 cross-correlation needs the 6×6 block ``d`` of
the padded input at the same corner; it is ``Aᵀ [Σ_c (G w_fc Gᵀ) ⊙ (Bᵀ d_c B)] A`` with
``Bᵀ`` (6×6), ``G`` (6×3) and ``Aᵀ`` (4×6) of Cook and Toom's construction for the
interpolation points 0, ±1, ±½ and ∞ (:data:`BT`, :data:`G`, :data:`AT`). Per output,
36 / 16 = 2.25 products instead of 4 for F(2×2, 3×3) and 9 for the direct sum: the 36
matrix products of the transformed domain take 44 % fewer operations than the 16 of
F(2×2). The drivers (blocks, threads, NaN handling, the shared backward) are those of
:mod:`.winograd` (``tile=4``); this module has what differs: the matrices and the four
Numba transforms.

Accuracy: the DnCNN-lite float32 gradient (16×1×40×40, batch norm) is within 1.4e-6 of the
float64 one (the largest error relative to each parameter's largest entry), against 6.4e-7
with F(2×2); with the classic points ±2 (Lavin and Gray), whose transforms reach entries
of 8, it was 8.8e-6, too close to the 1e-5 the project allows.

Layout: as in :mod:`.winograd`, with one extra column of tiles, S = tw + 1, whose values
are ignored (output transform) or zero (gradient transform), and phase planes; but the
images of a block sit side by side: the tiles of a block (images n0..n1, tile rows
ty0..ty1) are numbered t = (ty − ty0)·R + (n − n0)·S + tx with R = (n1 − n0)·S, and the
padded images are split into 16 phase planes P_ab[i·R + (n − n0)·S + j] = x_pad[n, 4i + a,
4j + b], so that the pixel (r, s) of every tile of a plane is P_{r%4, s%4} shifted by
(r//4)·R + s//4. Each transform is then a few loops over the whole block (a loop per image
was measured 1.3–2x slower: with 40×40 images, loops of 110 elements spent much of their
time starting and finishing) that LLVM vectorises.

Speed: the transforms cost more per output than those of F(2×2) (a 6×6 tile mixes 36
pixels; the split into four column phases is a scalar loop), and on this project's machine
that ate the saving in the products, so :data:`.dispatch.WINOGRAD_TILE` keeps F(2×2) by
default (see the numbers there).
"""

from __future__ import annotations

import numpy as np

from autodiff_lab.kernels.numba_cache import cached_njit
from autodiff_lab.kernels.winograd import _nonfinite

#: the matrices for the points 0, ±1, ±½, ∞: ``Aᵀ`` 4×6, ``G`` 6×3, ``Bᵀ`` 6×6 (the entries of
#: ``Aᵀ`` and ``Bᵀ`` are sums of powers of two: exact in float32)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 0.5, -0.5, 0], [0, 1, 1, 0.25, 0.25, 0],
               [0, 1, -1, 0.125, -0.125, 1]], dtype=np.float64)
G = np.array([[4, 0, 0], [2 / 3, 2 / 3, 2 / 3], [2 / 3, -2 / 3, 2 / 3],
              [-8 / 3, -4 / 3, -2 / 3], [-8 / 3, 4 / 3, -2 / 3], [0, 0, 1]], dtype=np.float64)
BT = np.array([[0.25, 0, -1.25, 0, 1, 0], [0, -0.25, -0.25, 1, 1, 0],
               [0, 0.25, -0.25, -1, 1, 0], [0, -0.5, -1, 0.5, 1, 0],
               [0, 0.5, -1, -0.5, 1, 0], [0, 0.25, 0, -1.25, 0, 1]], dtype=np.float64)


# --------------------------------------------------------------------------------------
# transforms (serial, nogil: the blocks run on Python threads)
# --------------------------------------------------------------------------------------
# The products with Bᵀ, Aᵀ and their transposes are written out with the entries of the
# matrices above, one loop per output (LLVM vectorises a loop only after checking at run
# time that its arrays do not overlap, and gives up when there are too many pairs: loops
# writing six outputs at once ran 2x slower than these); the helpers are inlined (a call
# between Numba functions costs a reference count per array). The test checks them against
# the matrices.

#: the entries of the matrices as float32 constants (a Python float would make Numba
#: compute in float64 and convert every element twice)
_EIGHTH = np.float32(0.125)
_QUARTER = np.float32(0.25)
_HALF = np.float32(0.5)
_FIVE_QUARTERS = np.float32(1.25)


@cached_njit(nogil=True, inline="always")
def _bt_rows(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5):  # pragma: no cover - numba
    """o_k = Σ_r Bᵀ[k, r] d_r over the arrays' length."""
    for t in range(o0.size):
        o0[t] = _QUARTER * d0[t] - _FIVE_QUARTERS * d2[t] + d4[t]
    for t in range(o0.size):
        o1[t] = d3[t] + d4[t] - _QUARTER * (d1[t] + d2[t])
    for t in range(o0.size):
        o2[t] = d4[t] - d3[t] + _QUARTER * (d1[t] - d2[t])
    for t in range(o0.size):
        o3[t] = d4[t] - d2[t] - _HALF * (d1[t] - d3[t])
    for t in range(o0.size):
        o4[t] = d4[t] - d2[t] + _HALF * (d1[t] - d3[t])
    for t in range(o0.size):
        o5[t] = _QUARTER * d1[t] - _FIVE_QUARTERS * d3[t] + d5[t]


@cached_njit(nogil=True, inline="always")
def _bt_columns(v0, v1, v2, v3, v4, v5, o0, o1, o2, o3, o4, o5):  # pragma: no cover - numba
    """o_s = Σ_k Bᵀ[k, s] v_k over the arrays' length: the transpose of :func:`_bt_rows`."""
    for t in range(v0.size):
        o0[t] = _QUARTER * v0[t]
    for t in range(v0.size):
        o1[t] = _QUARTER * (v2[t] - v1[t] + v5[t]) + _HALF * (v4[t] - v3[t])
    for t in range(v0.size):
        o2[t] = -_FIVE_QUARTERS * v0[t] - _QUARTER * (v1[t] + v2[t]) - v3[t] - v4[t]
    for t in range(v0.size):
        o3[t] = v1[t] - v2[t] + _HALF * (v3[t] - v4[t]) - _FIVE_QUARTERS * v5[t]
    for t in range(v0.size):
        o4[t] = v0[t] + v1[t] + v2[t] + v3[t] + v4[t]
    for t in range(v0.size):
        o5[t] = v5[t]


@cached_njit(nogil=True, inline="always")
def _at_rows(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3, bias):  # pragma: no cover - numba
    """o_i = Σ_k Aᵀ[i, k] m_k + bias."""
    for t in range(o0.size):
        o0[t] = m0[t] + m1[t] + m2[t] + m3[t] + m4[t] + bias
    for t in range(o0.size):
        o1[t] = m1[t] - m2[t] + _HALF * (m3[t] - m4[t]) + bias
    for t in range(o0.size):
        o2[t] = m1[t] + m2[t] + _QUARTER * (m3[t] + m4[t]) + bias
    for t in range(o0.size):
        o3[t] = m1[t] - m2[t] + _EIGHTH * (m3[t] - m4[t]) + m5[t] + bias


@cached_njit(nogil=True, inline="always")
def _at_columns(e0, e1, e2, e3, o0, o1, o2, o3, o4, o5):  # pragma: no cover - numba
    """o_k = Σ_i Aᵀ[i, k] e_i: the transpose of :func:`_at_rows` (without the bias)."""
    for t in range(o0.size):
        o0[t] = e0[t]
    for t in range(o0.size):
        o1[t] = e0[t] + e1[t] + e2[t] + e3[t]
    for t in range(o0.size):
        o2[t] = e0[t] - e1[t] + e2[t] - e3[t]
    for t in range(o0.size):
        o3[t] = e0[t] + _HALF * e1[t] + _QUARTER * e2[t] + _EIGHTH * e3[t]
    for t in range(o0.size):
        o4[t] = e0[t] - _HALF * e1[t] + _QUARTER * e2[t] - _EIGHTH * e3[t]
    for t in range(o0.size):
        o5[t] = e3[t]


@cached_njit(nogil=True, inline="always")
def _column_phases(src, p4, a, i, off, j0):  # pragma: no cover - numba
    """p4[a, b, i, j0 + j] = src[k] for k + off = 4j + b: a row of pixels split into the
    four column phases of its padded row (``off`` the padding on the left). One scalar
    loop: loops over the phases, a quarter of a row each, were slower (their set-up costs
    more than a few elements take)."""
    for k in range(src.size):
        c = k + off
        p4[a, c % 4, i, j0 + c // 4] = src[k]


@cached_njit(nogil=True, inline="always")
def _from_column_phases(p4, a, i, dst, off, j0):  # pragma: no cover - numba
    """The inverse of :func:`_column_phases`: dst[k] = p4[a, b, i, j0 + j] for k + off =
    4j + b."""
    for k in range(dst.size):
        c = k + off
        dst[k] = p4[a, c % 4, i, j0 + c // 4]


@cached_njit(nogil=True)
def _input_transform(x, n0, n1, ty0, ty1, ph, pw, tw, out):  # pragma: no cover - numba
    """out[6a + b, c, t] = (Bᵀ d B)[a, b] for the 6×6 block d of the zero-padded x at rows
    4·ty − ph.., columns 4·tx − pw.. of tile t (numbered as in the module's docstring).
    Returns 0 when every pixel read is finite, else NaN."""
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    sr = tw + 1
    wr = (n1 - n0) * sr             # a row of tiles of every image of the block
    nty = ty1 - ty0
    size = nty * wr
    # p[a, b, i, (n − n0)·sr + j] = x_pad[n, 4·(ty0 + i) + a, 4j + b]: rows ty0 .. ty1, and
    # room to shift. Only pixels of x are written, the same for every channel: the
    # padding stays zero.
    p4 = np.zeros((4, 4, nty + 2, wr), dtype=x.dtype)
    p = p4.reshape((4, 4, (nty + 2) * wr))
    q = np.empty((6, 4, size + 1), dtype=x.dtype)
    first = max(0, ph - 4 * ty0)                 # padded rows of the block inside x
    last = min(4 * nty + 2, h + ph - 4 * ty0)
    xf = x.reshape(-1)
    check = xf[0] - xf[0]
    for c in range(n_ch):
        for n in range(n0, n1):
            if last > first:
                xb = (n * n_ch + c) * h * w
                check += _nonfinite(xf, xb + (4 * ty0 + first - ph) * w,
                                    xb + (4 * ty0 + last - ph) * w)
            for k in range(first, last):
                _column_phases(x[n, c, 4 * ty0 + k - ph], p4, k % 4, k // 4, pw,
                               (n - n0) * sr)
        for b in range(4):  # rows: pixel row r is plane r % 4 shifted by r // 4
            _bt_rows(p[0, b, 0:size + 1], p[1, b, 0:size + 1], p[2, b, 0:size + 1],
                     p[3, b, 0:size + 1], p[0, b, wr:wr + size + 1],
                     p[1, b, wr:wr + size + 1], q[0, b], q[1, b], q[2, b], q[3, b],
                     q[4, b], q[5, b])
        for a in range(6):  # columns: pixel column s is phase s % 4 shifted by s // 4
            o = 6 * a
            _bt_rows(q[a, 0, 0:size], q[a, 1, 0:size], q[a, 2, 0:size], q[a, 3, 0:size],
                     q[a, 0, 1:size + 1], q[a, 1, 1:size + 1], out[o, c], out[o + 1, c],
                     out[o + 2, c], out[o + 3, c], out[o + 4, c], out[o + 5, c])
    return check


@cached_njit(nogil=True)
def _output_transform(m, n0, n1, ty0, ty1, tw, bias, relu, y):  # pragma: no cover - numba
    """y[n, f, 4·ty + i, 4·tx + j] = (Aᵀ m_t A)[i, j] + bias[f] (clipped to y's size) for
    the tiles of the block, m[6a + b, f, t], then max(·, 0) when ``relu``. Returns 0 when
    every output is finite, else NaN."""
    n_f, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    sr = tw + 1
    wr = (n1 - n0) * sr
    nty = ty1 - ty0
    size = nty * wr
    r = np.empty((4, 6, size), dtype=y.dtype)
    yy4 = np.empty((4, 4, nty, wr), dtype=y.dtype)
    yy = yy4.reshape((4, 4, size))
    yf = y.reshape(-1)
    check = 0.0  # (not yf[0] − yf[0]: y is not written yet, and may hold a NaN)
    rows = min(ho, 4 * ty1) - 4 * ty0
    zero = y.dtype.type(0)
    for f in range(n_f):
        for b in range(6):
            _at_rows(m[b, f], m[6 + b, f], m[12 + b, f], m[18 + b, f], m[24 + b, f],
                     m[30 + b, f], r[0, b], r[1, b], r[2, b], r[3, b], zero)
        for i in range(4):
            _at_rows(r[i, 0], r[i, 1], r[i, 2], r[i, 3], r[i, 4], r[i, 5], yy[i, 0],
                     yy[i, 1], yy[i, 2], yy[i, 3], bias[f])
            if relu:  # v − v: 0, or NaN for ±Inf and NaN, which the check declines
                for j in range(4):
                    o = yy[i, j]
                    for t in range(size):
                        v = o[t]
                        o[t] = v if v > 0 else v - v
        for n in range(n0, n1):
            for k in range(rows):
                _from_column_phases(yy4, k % 4, k // 4, y[n, f, 4 * ty0 + k], 0,
                                    (n - n0) * sr)
            yb = ((n * n_f + f) * ho + 4 * ty0) * wo
            check += _nonfinite(yf, yb, yb + rows * wo)
    return check


@cached_njit(nogil=True)
def _gradient_transform(g, n0, n1, ty0, ty1, tw, masked, r, out):  # pragma: no cover
    """out[6a + b, f, t] = (A e Aᵀ)[a, b] for the 4×4 block e of g at (4·ty, 4·tx) (zeros
    beyond g, and for the extra column of tiles): the adjoint of the output transform.
    With ``masked``, e is g where r > 0 and 0 elsewhere (ReLU's rule, r its result, of g's
    shape). Returns 0 when g's entries (and r's) are finite, else NaN."""
    n_f, ho, wo = g.shape[1], g.shape[2], g.shape[3]
    sr = tw + 1
    wr = (n1 - n0) * sr
    nty = ty1 - ty0
    size = nty * wr
    # p[i, j, (ty − ty0)·wr + (n − n0)·sr + tx] = g[n, 4·ty + i, 4·tx + j]: only entries
    # of g are written, the same for every plane, so the rest (beyond g, the extra
    # column) stays 0
    p4 = np.zeros((4, 4, nty, wr), dtype=g.dtype)
    p = p4.reshape((4, 4, size))
    gf = g.reshape(-1)
    rf = r.reshape(-1)
    masked_row = np.empty(wo, dtype=g.dtype)
    zero = g.dtype.type(0)
    cb = np.empty((6, 4, size), dtype=g.dtype)
    check = gf[0] - gf[0]
    rows = min(ho, 4 * ty1) - 4 * ty0
    for f in range(n_f):
        for n in range(n0, n1):
            gb = ((n * n_f + f) * ho + 4 * ty0) * wo
            check += _nonfinite(gf, gb, gb + rows * wo)
            if masked:
                check += _nonfinite(rf, gb, gb + rows * wo)
            for k in range(rows):
                oh = 4 * ty0 + k
                if masked:  # the row masked first, contiguously (vectorised), then split
                    gr = g[n, f, oh]
                    rr = r[n, f, oh]
                    for j in range(wo):
                        masked_row[j] = gr[j] if rr[j] > 0 else zero
                    src = masked_row
                else:
                    src = g[n, f, oh]
                _column_phases(src, p4, k % 4, k // 4, 0, (n - n0) * sr)
        for j in range(4):  # rows of the tile
            _at_columns(p[0, j], p[1, j], p[2, j], p[3, j], cb[0, j], cb[1, j], cb[2, j],
                        cb[3, j], cb[4, j], cb[5, j])
        for a in range(6):  # columns
            o = 6 * a
            _at_columns(cb[a, 0], cb[a, 1], cb[a, 2], cb[a, 3], out[o, f], out[o + 1, f],
                        out[o + 2, f], out[o + 3, f], out[o + 4, f], out[o + 5, f])
    return check


@cached_njit(nogil=True)
def _input_adjoint(dv, n0, n1, ty0, ty1, ph, pw, tw, last, dx, spill):  # pragma: no cover
    """The adjoint of :func:`_input_transform`: dx_pad[4·ty + r, 4·tx + s] = Σ over the tiles
    holding that pixel of (B dv_t Bᵀ)[r, s], written to the pixels of dx (the padding is
    dropped). The padded rows 4·ty0 .. 4·ty1 − 1 of the block are written (=); the two rows
    4·ty1, 4·ty1 + 1, which the next block of the image adds to, are written too when
    ``last`` (the block ends the image), else stored in spill[c, 0:2, :] for the caller to
    add (a block of several images always ends them). Returns 0 when every value written
    to dx is finite, else NaN."""
    n_ch, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    sr = tw + 1
    wr = (n1 - n0) * sr
    nty = ty1 - ty0
    size = nty * wr
    # ws[s, t]: column s of tile t; dq[a, b, t]: the column adjoint of row a for column
    # phase b (t ≤ size); dp[a, b, t]: the pixels of plane (a, b), rows 0 .. nty + 1. The
    # extra column of tiles holds zeros (dv = Uᵀ E, E zero there): what a shift carries
    # from one image's row to the next is 0.
    ws = np.empty((6, size + 1), dtype=dx.dtype)
    dq = np.empty((6, 4, size + 1), dtype=dx.dtype)
    dp4 = np.empty((4, 4, nty + 2, wr), dtype=dx.dtype)
    dp = dp4.reshape((4, 4, (nty + 2) * wr))
    first = max(0, ph - 4 * ty0)
    rows = 4 * nty + 2 if last else 4 * nty
    stop = min(rows, h + ph - 4 * ty0)
    plane = (nty + 2) * wr
    dxf = dx.reshape(-1)
    check = 0.0  # (dx is not written yet, and may hold a NaN)
    for c in range(n_ch):
        for a in range(6):
            # column s of the tile goes to phase s % 4, shifted by s // 4
            o = 6 * a
            _bt_columns(dv[o, c], dv[o + 1, c], dv[o + 2, c], dv[o + 3, c], dv[o + 4, c],
                        dv[o + 5, c], ws[0, 0:size], ws[1, 0:size], ws[2, 0:size],
                        ws[3, 0:size], ws[4, 0:size], ws[5, 0:size])
            w0, w1, w2, w3, w4, w5 = ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]
            o0, o1, o2, o3 = dq[a, 0], dq[a, 1], dq[a, 2], dq[a, 3]
            o0[0] = w0[0]
            o1[0] = w1[0]
            for t in range(1, size):
                o0[t] = w0[t] + w4[t - 1]
            for t in range(1, size):
                o1[t] = w1[t] + w5[t - 1]
            o0[size] = w4[size - 1]
            o1[size] = w5[size - 1]
            for t in range(size):
                o2[t] = w2[t]
            for t in range(size):
                o3[t] = w3[t]
            o2[size] = 0
            o3[size] = 0
        for b in range(4):
            # row r of the tile goes to plane r % 4, shifted by r // 4
            _bt_columns(dq[0, b], dq[1, b], dq[2, b], dq[3, b], dq[4, b], dq[5, b], ws[0],
                        ws[1], ws[2], ws[3], ws[4], ws[5])
            z0, z1, z2, z3, z4, z5 = ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]
            e0, e1, e2, e3 = dp[0, b], dp[1, b], dp[2, b], dp[3, b]
            for t in range(wr):
                e0[t] = z0[t]
            for t in range(wr):
                e1[t] = z1[t]
            for t in range(wr, size + 1):
                e0[t] = z0[t] + z4[t - wr]
            for t in range(wr, size + 1):
                e1[t] = z1[t] + z5[t - wr]
            for t in range(size + 1, size + 1 + wr):
                e0[t] = z4[t - wr]
            for t in range(size + 1, size + 1 + wr):
                e1[t] = z5[t - wr]
            for t in range(size + 1):
                e2[t] = z2[t]
            for t in range(size + 1):
                e3[t] = z3[t]
            for t in range(size + 1, plane):
                e2[t] = 0
                e3[t] = 0
            for t in range(size + 1 + wr, plane):
                e0[t] = 0
                e1[t] = 0
        for n in range(n0, n1):
            for k in range(first, 4 * nty + 2):
                if k >= rows:
                    # a row the next block adds to (or beyond x: the caller skips it)
                    dst = spill[c, k - 4 * nty]
                elif k < stop:
                    dst = dx[n, c, 4 * ty0 + k - ph]
                else:
                    continue
                _from_column_phases(dp4, k % 4, k // 4, dst, pw, (n - n0) * sr)
            if stop > first:
                xb = (n * n_ch + c) * h * w
                check += _nonfinite(dxf, xb + (4 * ty0 + first - ph) * w,
                                    xb + (4 * ty0 + stop - ph) * w)
    return check
