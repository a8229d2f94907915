"""Winograd F(2×2, 3×3) convolution for float32: 3×3 kernels, stride 1, no dilation, one group.

A 2×2 block of outputs ("tile") of a 3×3 cross-correlation needs a 4×4 block ``d`` of the
padded input; with the transforms of Lavin and Gray (2015)

    Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]

it is ``Aᵀ [Σ_c (G w_fc Gᵀ) ⊙ (Bᵀ d_c B)] A``: 16 products per tile and channel pair
instead of 36. Summed over channels, the element-wise products become 16 matrix products
``M[ξ] = U[ξ] @ V[ξ]`` (``U[ξ]`` F × C transformed weights, ``V[ξ]`` C × tiles
transformed inputs), which OpenBLAS runs near its peak; the transforms are additions in
Numba. The weight gradient is the adjoint in the same domain,
``dU[ξ] = Σ_tiles (A g Aᵀ)[ξ] @ V[ξ]ᵀ`` then ``dw = Gᵀ dU G``; the input gradient is the
Winograd convolution of ``g`` with the flipped, channel-swapped weights.

Tiles are processed in blocks (a few images, or a few tile rows of one image) whose
transformed arrays stay in the core's cache, on the threads of
:func:`autodiff_lab.kernels.conv_fast._run_blocks`, each taking the next block from one
queue when done with its last (:class:`_Queue`).

The same drivers run F(4×4, 3×3) with ``tile=4``: its matrices and transforms are in
:mod:`.winograd4` (a :class:`_Scheme` holds either); :func:`.dispatch.winograd_tile` picks.

NaN and Inf: a transform mixes the 16 pixels of a tile, so one NaN or Inf would reach
outputs whose window does not hold it. Every function here therefore returns ``None``
when an operand or the result is not finite (the transforms check as they go), and the
caller falls back to the im2col kernels, which follow the reference's NaN and Inf
pattern. float64 never comes here: its convolutions stay exact sums of products.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import numpy as np

from autodiff_lab.kernels import conv_fast, finite, memory
from autodiff_lab.kernels.numba_cache import cached_njit

#: no parallel loop of its own: those of conv_fast it calls ask :func:`.threads.many`
ONE_THREAD_FLAG = True

Pair = tuple[int, int]

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

#: bytes of one block's transformed input (16 · C · tiles floats): with the transformed
#: output of the same size, both stay in a core's 2 MB L2 cache between the transform
#: and the matrix products.
BLOCK_BYTES = 1 << 20


# --------------------------------------------------------------------------------------
# transforms (serial, nogil: the blocks run on Python threads)
# --------------------------------------------------------------------------------------

# Layout: the tiles of a block are numbered t = ((n − n0)·(ty1 − ty0) + ty − ty0)·S + tx with
# the row stride S = tw + 1: one column of tiles more than there are (tx = tw), whose values
# are ignored (the output transform skips them; the gradient transform sets them to 0). With
# it, every transform is a few long loops over contiguous arrays that LLVM vectorises: the
# padded image is split into its four "phase planes" P_ab[i·S + j] = x_pad[2i + a, 2j + b],
# and the pixel (r, s) of every tile of a plane is P_{r%2, s%2} shifted by (r//2)·S + s//2.

@cached_njit(nogil=True, fastmath={"reassoc"})
def _nonfinite(a, start, stop):  # pragma: no cover - numba
    """0 when a[start:stop] is finite, else NaN: x − x is 0 for a finite x and NaN for NaN
    and ±Inf. (Reassociation lets LLVM vectorise the sum; without "nnan" it may not fold
    x − x to 0.) Only a[start:stop] is read: an output checked block by block may still
    hold a recycled buffer's NaN elsewhere, being written by another thread."""
    b = a[start:stop]  # (a loop over range(start, stop) measured 5x slower)
    s = a.dtype.type(0)
    for j in range(b.size):
        s += b[j] - b[j]
    return s


@cached_njit(nogil=True)
def _accumulate(acc, part):  # pragma: no cover - numba
    """acc += part for a float64 ``acc`` and a float32 ``part`` (flat, of one size): numpy's
    mixed-type ``+=`` casts through a buffer and took 20 µs a block, this 2."""
    for i in range(acc.size):
        acc[i] += part[i]


@cached_njit(nogil=True)
def _input_transform(x, n0, n1, ty0, ty1, ph, pw, tw, out):  # pragma: no cover - numba
    """out[4a + b, c, t] = (Bᵀ d B)[a, b] for the 4×4 block d of the zero-padded x at rows
    2·ty − ph.., columns 2·tx − pw.. of tile t (numbered as above). Returns 0 when every
    pixel read is finite, else NaN."""
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    sr = tw + 1
    nty = ty1 - ty0
    size = nty * sr                 # tiles of one plane, with the extra column
    prow = nty + 3                  # phase planes: rows ty0 .. ty1 + 1, and room to shift
    # p[a, b, i, j] = x_pad[2·(ty0 + i) + a, 2j + b]. Only pixels of x are written, the
    # same ones for every plane of the block, so the padding stays zero. (Indexing the
    # arrays by their dimensions, not by computed flat offsets, measured 3x faster: LLVM
    # vectorises the loops when it can see that no index is negative.)
    p4 = np.zeros((2, 2, prow, sr), dtype=x.dtype)
    p = p4.reshape((2, 2, prow * sr))
    q = np.empty((4, 2, size + 1), dtype=x.dtype)
    first = max(0, ph - 2 * ty0)                 # padded rows of the block inside x
    last = min(2 * (nty + 2), h + ph - 2 * ty0)
    # x column 2j goes to phase pw % 2 at column j + pw // 2, x column 2j + 1 to the other
    # phase at column j + (pw + 1) // 2
    even_phase = pw % 2
    even_off = pw // 2
    odd_off = (pw + 1) // 2
    half = w // 2
    xf = x.reshape(-1)
    check = xf[0] - xf[0]  # x holds a pixel: ho, wo >= 1
    for n in range(n0, n1):
        for c in range(n_ch):
            base = ((n - n0) * nty) * sr
            if last > first:
                xb = (n * n_ch + c) * h * w
                check += _nonfinite(xf, xb + (2 * ty0 + first - ph) * w,
                                    xb + (2 * ty0 + last - ph) * w)
            for k in range(first, last):
                ih = 2 * ty0 + k - ph
                a = k % 2
                i = k // 2
                for j in range(half):
                    p4[a, even_phase, i, even_off + j] = x[n, c, ih, 2 * j]
                    p4[a, 1 - even_phase, i, odd_off + j] = x[n, c, ih, 2 * j + 1]
                if w % 2:
                    p4[a, even_phase, i, even_off + half] = x[n, c, ih, w - 1]
            for b in range(2):
                # rows of Bᵀ: d0 − d2, d1 + d2, d2 − d1, d1 − d3 (d_r: phase r % 2 shifted
                # by r // 2 tile rows)
                p0 = p[0, b, 0:size + 1]
                p1 = p[1, b, 0:size + 1]
                p0s = p[0, b, sr:sr + size + 1]
                p1s = p[1, b, sr:sr + size + 1]
                o = q[0, b]
                for t in range(size + 1):
                    o[t] = p0[t] - p0s[t]
                o = q[1, b]
                for t in range(size + 1):
                    o[t] = p1[t] + p0s[t]
                o = q[2, b]
                for t in range(size + 1):
                    o[t] = p0s[t] - p1[t]
                o = q[3, b]
                for t in range(size + 1):
                    o[t] = p1[t] - p1s[t]
            for a in range(4):
                e = q[a, 0, 0:size]
                e1 = q[a, 0, 1:size + 1]
                d = q[a, 1, 0:size]
                d1 = q[a, 1, 1:size + 1]
                o = out[4 * a, c, base:base + size]
                for t in range(size):
                    o[t] = e[t] - e1[t]
                o = out[4 * a + 1, c, base:base + size]
                for t in range(size):
                    o[t] = d[t] + e1[t]
                o = out[4 * a + 2, c, base:base + size]
                for t in range(size):
                    o[t] = e1[t] - d[t]
                o = out[4 * a + 3, c, base:base + size]
                for t in range(size):
                    o[t] = d[t] - d1[t]
    return check


@cached_njit(nogil=True)
def _output_transform(m, n0, n1, ty0, ty1, tw, bias, relu, y):  # pragma: no cover - numba
    """y[n, f, 2·ty + i, 2·tx + j] = (Aᵀ m_t A)[i, j] + bias[f] (clipped to y's size) for
    the tiles of the block, m[4a + b, f, t], then max(·, 0) when ``relu``. Returns 0 when
    every output is finite, else NaN."""
    n_f, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    sr = tw + 1
    nty = ty1 - ty0
    size = nty * sr
    r = np.empty((2, 4, size), dtype=y.dtype)
    yy4 = np.empty((2, 2, nty, sr), dtype=y.dtype)
    yy = yy4.reshape((2, 2, size))
    yf = y.reshape(-1)
    check = 0.0  # (not yf[0] − yf[0]: y is not written yet, and may hold a NaN)
    half = wo // 2  # tiles whose both columns are inside y
    rows = min(ho, 2 * ty1) - 2 * ty0
    for n in range(n0, n1):
        for f in range(n_f):
            base = ((n - n0) * nty) * sr
            for b in range(4):  # rows of Aᵀ: m0 + m1 + m2, m1 − m2 − m3
                m0 = m[b, f, base:base + size]
                m1 = m[4 + b, f, base:base + size]
                m2 = m[8 + b, f, base:base + size]
                m3 = m[12 + b, f, base:base + size]
                o = r[0, b]
                for t in range(size):
                    o[t] = m0[t] + m1[t] + m2[t]
                o = r[1, b]
                for t in range(size):
                    o[t] = m1[t] - m2[t] - m3[t]
            bf = bias[f]
            for i in range(2):
                r0, r1, r2, r3 = r[i, 0], r[i, 1], r[i, 2], r[i, 3]
                o = yy[i, 0]
                for t in range(size):
                    o[t] = r0[t] + r1[t] + r2[t] + bf
                o = yy[i, 1]
                for t in range(size):
                    o[t] = r1[t] - r2[t] - r3[t] + bf
                if relu:  # v − v: 0, or NaN for ±Inf and NaN, which the check declines
                    for j in range(2):
                        o = yy[i, j]
                        for t in range(size):
                            v = o[t]
                            o[t] = v if v > 0 else v - v
            for k in range(rows):
                oh = 2 * ty0 + k
                i = k % 2
                r_ = k // 2
                for tx in range(half):
                    y[n, f, oh, 2 * tx] = yy4[i, 0, r_, tx]
                    y[n, f, oh, 2 * tx + 1] = yy4[i, 1, r_, tx]
                if wo % 2:
                    y[n, f, oh, wo - 1] = yy4[i, 0, r_, half]
            yb = ((n * n_f + f) * ho + 2 * ty0) * wo
            check += _nonfinite(yf, yb, yb + rows * wo)
    return check


@cached_njit(nogil=True)
def _gradient_transform(g, n0, n1, ty0, ty1, tw, masked, r, out):  # pragma: no cover - numba
    """out[4a + b, f, t] = (A e Aᵀ)[a, b] for the 2×2 block e of g at (2·ty, 2·tx) (zeros
    beyond g, and for the extra column of tiles), A = [[1, 0], [1, 1], [1, −1], [0, −1]]:
    the adjoint of the output transform. With ``masked``, e is g where r > 0 and 0
    elsewhere (ReLU's rule, r its result, of g's shape). Returns 0 when g's entries (and
    r's) are finite, else NaN."""
    n_f, ho, wo = g.shape[1], g.shape[2], g.shape[3]
    sr = tw + 1
    nty = ty1 - ty0
    size = nty * sr
    # p[i, j, (ty − ty0)·sr + tx] = g[2·ty + i, 2·tx + j]: only entries of g are written,
    # the same for every plane, so the rest (beyond g, the extra column) stays 0
    p4 = np.zeros((2, 2, nty, sr), dtype=g.dtype)
    p = p4.reshape((2, 2, size))
    gf = g.reshape(-1)
    rf = r.reshape(-1)
    row = np.empty(wo, dtype=g.dtype)
    c = np.empty((4, 2, size), dtype=g.dtype)
    check = gf[0] - gf[0]
    half = wo // 2
    rows = min(ho, 2 * ty1) - 2 * ty0
    for n in range(n0, n1):
        for f in range(n_f):
            base = ((n - n0) * nty) * sr
            gb = ((n * n_f + f) * ho + 2 * ty0) * wo
            check += _nonfinite(gf, gb, gb + rows * wo)
            if masked:
                check += _nonfinite(rf, gb, gb + rows * wo)
            for k in range(rows):
                oh = 2 * ty0 + k
                i = k % 2
                r_ = k // 2
                if masked:  # the row masked first, contiguously (vectorised), then split
                    gr = g[n, f, oh]
                    rr = r[n, f, oh]
                    for j in range(wo):
                        row[j] = gr[j] if rr[j] > 0 else 0
                    for tx in range(half):
                        p4[i, 0, r_, tx] = row[2 * tx]
                        p4[i, 1, r_, tx] = row[2 * tx + 1]
                    if wo % 2:
                        p4[i, 0, r_, half] = row[wo - 1]
                    continue
                for tx in range(half):
                    p4[i, 0, r_, tx] = g[n, f, oh, 2 * tx]
                    p4[i, 1, r_, tx] = g[n, f, oh, 2 * tx + 1]
                if wo % 2:
                    p4[i, 0, r_, half] = g[n, f, oh, wo - 1]
            for j in range(2):  # rows of A: e0, e0 + e1, e0 − e1, −e1
                e0 = p[0, j]
                e1 = p[1, j]
                o = c[0, j]
                for t in range(size):
                    o[t] = e0[t]
                o = c[1, j]
                for t in range(size):
                    o[t] = e0[t] + e1[t]
                o = c[2, j]
                for t in range(size):
                    o[t] = e0[t] - e1[t]
                o = c[3, j]
                for t in range(size):
                    o[t] = -e1[t]
            for a in range(4):
                e0 = c[a, 0]
                e1 = c[a, 1]
                o = out[4 * a, f, base:base + size]
                for t in range(size):
                    o[t] = e0[t]
                o = out[4 * a + 1, f, base:base + size]
                for t in range(size):
                    o[t] = e0[t] + e1[t]
                o = out[4 * a + 2, f, base:base + size]
                for t in range(size):
                    o[t] = e0[t] - e1[t]
                o = out[4 * a + 3, f, base:base + size]
                for t in range(size):
                    o[t] = -e1[t]
    return check


@cached_njit(nogil=True)
def _input_adjoint(dv, n0, n1, ty0, ty1, ph, pw, tw, last, dx, spill):  # pragma: no cover
    """The adjoint of :func:`_input_transform`: dx_pad[2·ty + r, 2·tx + s] = Σ over the tiles
    holding that pixel of (B dv_t Bᵀ)[r, s], written to the pixels of dx (the padding is
    dropped). The padded rows 2·ty0 .. 2·ty1 − 1 of the block are written (=); the two rows
    2·ty1, 2·ty1 + 1, which the next block of the image adds to, are written too when
    ``last`` (the block ends the image), else stored in spill[c, 0:2, :] for the caller to
    add. Returns 0 when every value written to dx is finite, else NaN."""
    n_ch, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    sr = tw + 1
    nty = ty1 - ty0
    size = nty * sr
    plane = size + sr               # plane rows 0 .. nty
    # dq[a, b, t]: the column adjoint of row a for column phase b, zero beyond t = size
    dq = np.zeros((4, 2, plane + 1), dtype=dx.dtype)
    dp4 = np.empty((2, 2, nty + 1, sr), dtype=dx.dtype)
    dp = dp4.reshape((2, 2, plane))
    first = max(0, ph - 2 * ty0)
    rows = 2 * nty + 2 if last else 2 * nty
    stop = min(rows, h + ph - 2 * ty0)
    even_phase = pw % 2
    even_off = pw // 2
    odd_off = (pw + 1) // 2
    half = w // 2
    dxf = dx.reshape(-1)
    check = 0.0  # (dx is not written yet, and may hold a NaN)
    for n in range(n0, n1):
        base = ((n - n0) * nty) * sr
        for c in range(n_ch):
            for a in range(4):
                # columns of the tile: e = v0 − v2 at s = 0, d + e1 ... (see the forward):
                # phase 0 gets v0[t] and (−v0 + v1 + v2)[t − 1], phase 1 (v1 − v2 + v3)[t]
                # and −v3[t − 1]
                v0 = dv[4 * a, c, base:base + size]
                v1 = dv[4 * a + 1, c, base:base + size]
                v2 = dv[4 * a + 2, c, base:base + size]
                v3 = dv[4 * a + 3, c, base:base + size]
                o = dq[a, 0, 0:size]
                for t in range(size):
                    o[t] = v0[t]
                dq[a, 0, size] = 0
                o = dq[a, 0, 1:size + 1]
                for t in range(size):
                    o[t] += v1[t] + v2[t] - v0[t]
                o = dq[a, 1, 0:size]
                for t in range(size):
                    o[t] = v1[t] - v2[t] + v3[t]
                dq[a, 1, size] = 0
                o = dq[a, 1, 1:size + 1]
                for t in range(size):
                    o[t] -= v3[t]
            for b in range(2):
                # rows: phase 0 gets q0[t] and (−q0 + q1 + q2)[t − sr], phase 1
                # (q1 − q2 + q3)[t] and −q3[t − sr]
                q0 = dq[0, b]
                q1 = dq[1, b]
                q2 = dq[2, b]
                q3 = dq[3, b]
                o = dp[0, b]
                for t in range(sr):
                    o[t] = q0[t]
                o = dp[0, b, sr:plane]
                q0s = dq[0, b, sr:plane]
                for t in range(size):
                    o[t] = q0s[t] - q0[t] + q1[t] + q2[t]
                o = dp[1, b]
                for t in range(sr):
                    o[t] = q1[t] - q2[t] + q3[t]
                o = dp[1, b, sr:plane]
                q1s = dq[1, b, sr:plane]
                q2s = dq[2, b, sr:plane]
                q3s = dq[3, b, sr:plane]
                for t in range(size):
                    o[t] = q1s[t] - q2s[t] + q3s[t] - q3[t]
            for k in range(first, 2 * nty + 2):
                a = k % 2
                i = k // 2
                if k >= rows:
                    # a row the next block adds to (or beyond x: the caller skips it)
                    for j in range(half):
                        spill[c, k - 2 * nty, 2 * j] = dp4[a, even_phase, i, even_off + j]
                        spill[c, k - 2 * nty, 2 * j + 1] = dp4[a, 1 - even_phase, i,
                                                               odd_off + j]
                    if w % 2:
                        spill[c, k - 2 * nty, w - 1] = dp4[a, even_phase, i, even_off + half]
                    continue
                if k >= stop:
                    continue
                ih = 2 * ty0 + k - ph
                for j in range(half):
                    dx[n, c, ih, 2 * j] = dp4[a, even_phase, i, even_off + j]
                    dx[n, c, ih, 2 * j + 1] = dp4[a, 1 - even_phase, i, odd_off + j]
                if w % 2:
                    dx[n, c, ih, w - 1] = dp4[a, even_phase, i, even_off + half]
            if stop > first:
                xb = (n * n_ch + c) * h * w
                check += _nonfinite(dxf, xb + (2 * ty0 + first - ph) * w,
                                    xb + (2 * ty0 + stop - ph) * w)
    return check


# --------------------------------------------------------------------------------------
# weights, blocks
# --------------------------------------------------------------------------------------

def transform_weights(w: np.ndarray, tile: int = 2) -> np.ndarray:
    """U[α·a + b, f, c] = (G w[f, c] Gᵀ)[a, b] (α = tile + 2, G that of F(tile×tile, 3×3)),
    computed in float64 and rounded once."""
    g = _scheme(tile).g
    al = g.shape[0]
    f, c = w.shape[:2]
    right = w.astype(np.float64).reshape(f * c * 3, 3) @ g.T          # (f·c·i, b)
    both = g @ right.reshape(f * c, 3, al).transpose(1, 0, 2).reshape(3, -1)  # (a, f·c·b)
    u = both.reshape(al, f * c, al).transpose(0, 2, 1)                    # (a, b, f·c)
    return np.ascontiguousarray(u.reshape(al * al, f, c), dtype=w.dtype)


def weights_from_transformed(du: np.ndarray, dtype: np.dtype, tile: int = 2) -> np.ndarray:
    """dw[f, c] = Gᵀ dU[f, c] G: the adjoint of :func:`transform_weights` (float64 inside)."""
    g = _scheme(tile).g
    al = g.shape[0]
    f, c = du.shape[1:]
    d = du.astype(np.float64).reshape(al, al * f * c)                      # (a, b·f·c)
    left = (g.T @ d).reshape(3, al, f * c).transpose(2, 0, 1)             # (f·c, i, b)
    dw = left.reshape(-1, al) @ g                                         # (f·c·i, j)
    return np.ascontiguousarray(dw.reshape(f, c, 3, 3), dtype=dtype)


class _Scheme:
    """One Winograd algorithm F(tile×tile, 3×3): its weight matrix ``g`` (α×3, α = tile +
    2) and its four transforms, called with the arguments of this module's F(2×2) ones."""

    def __init__(self, tile: int, g: np.ndarray, input_transform: Callable,
                 output_transform: Callable, gradient_transform: Callable,
                 input_adjoint: Callable) -> None:
        self.tile, self.g = tile, g
        self.alpha = g.shape[0]
        self.input_transform = input_transform
        self.output_transform = output_transform
        self.gradient_transform = gradient_transform
        self.input_adjoint = input_adjoint


_SCHEMES: dict[int, _Scheme] = {}


def _scheme(tile: int) -> _Scheme:
    """F(2×2, 3×3) (the transforms above) or F(4×4, 3×3) (:mod:`.winograd4`, imported on
    first use)."""
    got = _SCHEMES.get(tile)
    if got is not None:
        return got
    if tile == 2:
        got = _Scheme(2, _G, _input_transform, _output_transform, _gradient_transform,
                      _input_adjoint)
    elif tile == 4:
        from autodiff_lab.kernels import winograd4 as w4
        got = _Scheme(4, w4.G, w4._input_transform, w4._output_transform,
                      w4._gradient_transform, w4._input_adjoint)
    else:
        raise ValueError(f"Winograd tiles of 2 or 4 outputs, not {tile}")
    _SCHEMES[tile] = got
    return got


Block = tuple[int, int, int, int]


def tile_blocks(n: int, th: int, tw: int, floats_per_tile: int) -> list[Block]:
    """Blocks ``(n0, n1, ty0, ty1)`` of tiles -- images n0..n1, tile rows ty0..ty1 -- whose
    transformed arrays take about :data:`BLOCK_BYTES`: several whole images when one is
    small, else tile rows of one image (at least one); the im2col kernels' blocking, with
    a row of tiles for a row of outputs."""
    return conv_fast._blocks(n, th, floats_per_tile * 4 * tw, BLOCK_BYTES)


class _Queue:
    """The blocks of one call, taken one at a time by whichever thread is free: a thread
    that another process holds back from its core (or that starts late) does not hold back
    a fixed share of the blocks. ``deque.popleft`` is atomic, so no lock is needed."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self._left = collections.deque(blocks)

    def __iter__(self) -> Iterator[Block]:
        while True:
            try:
                yield self._left.popleft()
            except IndexError:
                return

    def run(self, work: Callable[[_Queue], object]) -> list:
        """``work(self)`` on the threads of :func:`conv_fast._run_blocks` (as many as there
        are blocks, at most); each part's result."""
        return conv_fast._run_blocks(lambda _part: work(self), self.blocks)


# --------------------------------------------------------------------------------------
# convolution and its gradients
# --------------------------------------------------------------------------------------

def conv2d_forward(x: np.ndarray, w: np.ndarray, padding: Pair, bias: np.ndarray | None = None,
                   relu: bool = False, tile: int = 2) -> np.ndarray | None:
    """The 3×3 stride-1 cross-correlation of float32 ``x`` (N, C, H, W) with ``w`` (F, C, 3,
    3), zero padding ``padding``, plus ``bias`` (F,) and through a ReLU when asked (both
    in the output transform: no extra pass), by F(tile×tile, 3×3) (``tile`` 2 or 4);
    ``None`` when an operand or the result before the ReLU is not finite."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, wd + 2 * pw - 2
    if not finite.all_finite_1(w):
        return None
    if bias is None:
        bias = np.zeros(f, dtype=x.dtype)
    elif not finite.all_finite_1(bias):
        return None
    bias = np.ascontiguousarray(bias, dtype=x.dtype)
    sch = _scheme(tile)
    th, tw = -(-ho // tile), -(-wo // tile)
    u = transform_weights(w, tile)
    y = memory.empty((n, f, ho, wo), x.dtype)

    def work(blocks: _Queue) -> float:
        with np.errstate(all="ignore"):  # an overflow is seen below, and declined
            return _forward_blocks(sch, x, u, bias, bool(relu), y, blocks, ph, pw, tw)

    parts = _Queue(tile_blocks(n, th, tw + 1, sch.alpha ** 2 * max(c, f))).run(work)
    return y if np.isfinite(sum(parts)) else None


def _forward_blocks(sch: _Scheme, x: np.ndarray, u: np.ndarray, bias: np.ndarray, relu: bool,
                    y: np.ndarray, blocks: _Queue, ph: int, pw: int, tw: int) -> float:
    """The forward's blocks: transform, α² products, transform back; 0 or NaN (see the
    transforms)."""
    c, f = x.shape[1], y.shape[1]
    a2 = sch.alpha ** 2
    bad = 0.0
    most = max((n1 - n0) * (ty1 - ty0) for n0, n1, ty0, ty1 in blocks.blocks) * (tw + 1)
    v_buf = conv_fast.scratch("wino_v", (a2 * c * most,), x.dtype)
    m_buf = conv_fast.scratch("wino_m", (a2 * f * most,), x.dtype)
    for n0, n1, ty0, ty1 in blocks:
        tiles = (n1 - n0) * (ty1 - ty0) * (tw + 1)
        v = v_buf[:a2 * c * tiles].reshape(a2, c, tiles)
        m = m_buf[:a2 * f * tiles].reshape(a2, f, tiles)
        bad += sch.input_transform(x, n0, n1, ty0, ty1, ph, pw, tw, v)
        np.matmul(u, v, out=m)
        bad += sch.output_transform(m, n0, n1, ty0, ty1, tw, bias, relu, y)
    return bad


def conv2d_backward_weight(g: np.ndarray, x: np.ndarray, padding: Pair, tile: int = 2
                           ) -> np.ndarray | None:
    """The weight gradient of :func:`conv2d_forward` for the upstream gradient ``g`` (N, F,
    Ho, Wo); ``None`` when an operand or the result is not finite."""
    both = _shared_backward(g, x, None, padding, False, True, None, tile)
    return None if both is None else both[1]


def conv2d_backward(g: np.ndarray, x: np.ndarray | None, w: np.ndarray, padding: Pair,
                    want_x: bool, want_w: bool, relu_out: np.ndarray | None = None,
                    tile: int = 2) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """Both gradients of :func:`conv2d_forward` (``None`` where not wanted), or ``None``
    when an operand or a result is not finite. With ``relu_out`` (the result of a ReLU
    after the convolution, of ``g``'s shape), ``g`` is that ReLU's upstream gradient:
    ReLU's rule (``g`` where ``relu_out > 0``, else 0) is applied as ``g`` is read.

    With ``x`` given, every gradient comes from one transformed ``g``
    (:func:`_shared_backward`); the input gradient alone (``x`` None) is the Winograd
    convolution of ``g`` with the flipped weights, padded by ``2 − padding``."""
    if x is not None and (want_x or want_w):
        return _shared_backward(g, x, w, padding, want_x, want_w, relu_out, tile)
    if x is None and (relu_out is not None or want_w):
        raise ValueError("the weight gradient and the ReLU rule need the input x")
    dx = dw = None
    if want_x:
        flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        dx = conv2d_forward(g, flipped, (2 - padding[0], 2 - padding[1]), tile=tile)
        if dx is None:
            return None
    return dx, dw


def _shared_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray | None, padding: Pair,
                     want_x: bool, want_w: bool, relu_out: np.ndarray | None, tile: int = 2
                     ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The wanted gradients from one gradient transform ``E = A g Aᵀ`` per block: the
    weight gradient ``dU[ξ] = Σ E[ξ] @ V[ξ]ᵀ`` (V the input transform of x) and the input
    gradient as the adjoint of the forward in the transformed domain, ``dV[ξ] = U[ξ]ᵀ @
    E[ξ]``, taken back to pixels by the adjoint of the input transform (``B dV Bᵀ`` added
    over the overlapping windows). ``None`` when an operand or a result is not finite."""
    n, c = x.shape[:2]
    f, ho, wo = g.shape[1:]
    ph, pw = padding
    sch = _scheme(tile)
    th, tw = -(-ho // tile), -(-wo // tile)
    if want_x and not finite.all_finite_1(w):
        return None
    ut = (np.ascontiguousarray(transform_weights(w, tile).transpose(0, 2, 1)) if want_x
          else None)
    dx = memory.empty(x.shape, x.dtype) if want_x else None
    masked = relu_out is not None
    r = relu_out if masked else g

    def work(blocks: _Queue) -> tuple[np.ndarray | None, float, list]:
        with np.errstate(all="ignore"):  # an overflow is seen below, and declined
            return _backward_blocks(sch, g, x, ut, dx, masked, r, blocks, ph, pw, tw, th,
                                    want_w)

    parts = _Queue(tile_blocks(n, th, tw + 1, sch.alpha ** 2 * (c + f) // 2)).run(work)
    if not np.isfinite(sum(b for _, b, _ in parts)):
        return None
    h = x.shape[2]
    for _, _, spills in parts:  # the rows two blocks of one image share
        for i, row, spill in spills:
            for k in range(2):
                if 0 <= row + k < h:
                    dx[i, :, row + k] += spill[:, k]
                    if not finite.all_finite_1(dx[i, :, row + k]):
                        return None
    dw = None
    if want_w:
        dw = weights_from_transformed(sum(a for a, _, _ in parts), x.dtype, tile)
        if not finite.all_finite_1(dw):
            return None
    return dx, dw


def _backward_blocks(sch: _Scheme, g: np.ndarray, x: np.ndarray, ut: np.ndarray | None,
                     dx: np.ndarray | None, masked: bool, r: np.ndarray, blocks: _Queue,
                     ph: int, pw: int, tw: int, th: int, want_w: bool
                     ) -> tuple[np.ndarray | None, float, list]:
    """The shared backward's blocks: the weight gradient in the transformed domain (float64
    between blocks; None when not wanted), 0 or NaN (see the transforms), and the rows of
    dx each block leaves to the caller, ``(image, row, values (C, 2, W))``."""
    c, f = x.shape[1], g.shape[1]
    a2 = sch.alpha ** 2
    acc = np.zeros((a2, f, c), dtype=np.float64) if want_w else None
    part = np.empty((a2, f, c), dtype=x.dtype)
    bad = 0.0
    spills = []
    most = max((n1 - n0) * (ty1 - ty0) for n0, n1, ty0, ty1 in blocks.blocks) * (tw + 1)
    v_buf = conv_fast.scratch("wino_v", (a2 * c * most,), x.dtype)
    e_buf = conv_fast.scratch("wino_m", (a2 * f * most,), x.dtype)
    no_spill = np.empty((c, 2, x.shape[3]), dtype=x.dtype)
    for n0, n1, ty0, ty1 in blocks:
        tiles = (n1 - n0) * (ty1 - ty0) * (tw + 1)
        v = v_buf[:a2 * c * tiles].reshape(a2, c, tiles)
        e = e_buf[:a2 * f * tiles].reshape(a2, f, tiles)
        bad += sch.gradient_transform(g, n0, n1, ty0, ty1, tw, masked, r, e)
        if acc is not None:
            bad += sch.input_transform(x, n0, n1, ty0, ty1, ph, pw, tw, v)
            np.matmul(e, v.transpose(0, 2, 1), out=part)
            _accumulate(acc.reshape(-1), part.reshape(-1))  # blocks summed in float64
        if dx is not None:
            np.matmul(ut, e, out=v)  # dV, in V's place
            last = ty1 == th
            spill = no_spill if last else np.empty_like(no_spill)
            bad += sch.input_adjoint(v, n0, n1, ty0, ty1, ph, pw, tw, last, dx, spill)
            if not last:
                spills.append((n0, sch.tile * ty1 - ph, spill))
    return acc, bad, spills
