"""Fast convolution, transpose convolution and pooling for real float32/float64 arrays.

Same maths and layout as :mod:`autodiff_lab.kernels.conv_reference` (PyTorch's: images
``(N, C, H, W)``, weights ``(F, C // groups, kh, kw)``), but built for speed:

* the patch matrix ("im2col") is gathered by a Numba kernel straight into the layout one
  matrix product wants, ``cols[(c, i, j), (n, oh, ow)]``, one block of the output at a
  time (a few images, or a few rows of one image: :data:`BLOCK_BYTES`), so the block is
  still in the core's cache when its products read it. The products run in OpenBLAS
  (sgemm/dgemm), which is what gets float32 convolution near PyTorch's oneDNN;
* the weight gradient is the same product the other way round, ``cols @ gᵀ``, summed over
  the blocks;
* with stride 1, the input gradient is itself a convolution of ``g`` with the flipped,
  channel-swapped weights, and one patch matrix of ``g`` gives both gradients
  (:func:`conv2d_backward`); other strides multiply ``Wᵀ @ g`` and scatter the patches back
  ("col2im") in parallel over (image, channel) planes, so no two threads add to the same
  pixel.

Only call these with C-contiguous real float arrays of one dtype (:mod:`.dispatch` checks).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import prange

from autodiff_lab.kernels import blas, finite, memory, threads
from autodiff_lab.kernels.conv_reference import conv_output_size
from autodiff_lab.kernels.numba_cache import cached_njit

#: parallel loops run only when :func:`.threads.many` allows (see :mod:`.threads`)
ONE_THREAD_FLAG = True

Pair = tuple[int, int]

_scratch = threading.local()


class _Slots(dict):
    """One thread's scratch buffers, slot → bytes: a dict that can be weakly referenced,
    hashed by identity (one per thread)."""

    __hash__ = object.__hash__


#: every live thread's scratch buffers, for :func:`clear_scratch` (a thread's go with it)
_scratch_pools: weakref.WeakSet[_Slots] = weakref.WeakSet()
_scratch_lock = threading.Lock()


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A reusable buffer for temporaries (patch matrices, transposed gradients).

    A DnCNN patch matrix is ~60 MB; a fresh one per call comes from ``mmap`` and pays a
    page fault per 4 KiB page, which cost more than the im2col itself. Buffers are per
    thread and per ``slot``, grow as needed and are reused; a function must be done with
    a slot's contents before it calls something that uses the same slot.
    """
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = _Slots()
        with _scratch_lock:
            _scratch_pools.add(pool)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # (np.prod costs ~8 µs a call)
    buf = pool.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = pool[slot] = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def scratch_bytes() -> int:
    """Bytes this thread keeps in reusable kernel buffers."""
    return sum(b.nbytes for b in getattr(_scratch, "pool", {}).values())


def clear_scratch() -> int:
    """Drop the reusable kernel buffers of every thread (the worker threads' too); returns
    the bytes released. A kernel still working in a buffer keeps it until it returns; the
    next call makes the buffers again. For memory measurements, and for long-lived
    processes done with big images."""
    with _scratch_lock:
        pools = list(_scratch_pools)
    released = sum(b.nbytes for pool in pools for b in pool.values())
    for pool in pools:
        pool.clear()
    return released


#: loops over at least this much work (elements or multiply-adds) run in parallel over
#: planes when Numba has more than one thread for the call; otherwise, and with one thread
#: (the default, :data:`.dispatch.kernel_threads`), a serial loop: a parallel launch of
#: Numba's ``workqueue`` layer was measured at 140-180 µs even on one thread (a serial
#: call: under 1 µs), more than many of these loops take.
PARALLEL_MIN = 1 << 18


def _loop(serial: Callable, parallel: Callable, work: int) -> Callable:
    """The serial or the parallel version of a kernel, for ``work`` (see :data:`PARALLEL_MIN`)."""
    return parallel if work >= PARALLEL_MIN and threads.many() else serial


# --------------------------------------------------------------------------------------
# patch matrices
# --------------------------------------------------------------------------------------

@cached_njit
def _im2col_plane(x, n, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """out[(c*kh + i)*kw + j, n, oh*wo + ow] = x_padded[n, c, oh*sh + i*dh, ow*sw + j*dw] for
    one (image, channel) plane. ``ph`` may exceed the padding (or be negative) to start at a
    later output row: a block of rows is the same call with ``ph − first_row·sh``."""
    # Plain 3-D indexing with the bounds test inside the loop: measured 4x faster than
    # taking row views and splitting the loop at the padding (LLVM vectorises this form).
    h, w = x.shape[2], x.shape[3]
    for i in range(kh):
        for j in range(kw):
            r = (c * kh + i) * kw + j
            off_w = j * dw - pw
            for oh in range(ho):
                ih = oh * sh + i * dh - ph
                base = oh * wo
                if ih < 0 or ih >= h:
                    for ow in range(wo):
                        out[r, n, base + ow] = 0
                else:
                    for ow in range(wo):
                        iw = ow * sw + off_w
                        if iw >= 0 and iw < w:
                            out[r, n, base + ow] = x[n, c, ih, iw]
                        else:
                            out[r, n, base + ow] = 0


@cached_njit(nogil=True)
def _im2col_rows_serial(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """The patch matrix of a whole batch, one (image, channel) plane after the other."""
    n_img, n_ch = x.shape[0], x.shape[1]
    for nc in range(n_img * n_ch):
        n = nc // n_ch
        _im2col_plane(x, n, nc - n * n_ch, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out)


@cached_njit(parallel=True)
def _im2col_rows_parallel(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """The patch matrix of a whole batch, in parallel over (image, channel) planes."""
    n_img, n_ch = x.shape[0], x.shape[1]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        _im2col_plane(x, n, nc - n * n_ch, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out)


@cached_njit(nogil=True)
def _im2col_block(x, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover - numba
    """The patch matrix of one block (a few images, or a few rows of one): serial, as a
    parallel launch costs more than such a block takes (measured 20-40 µs a call)."""
    n_img, n_ch = x.shape[0], x.shape[1]
    for n in range(n_img):
        for c in range(n_ch):
            _im2col_plane(x, n, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out)


@cached_njit(nogil=True)
def _col2im_plane(cols, n, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """Adjoint of ``_im2col_plane``: set plane (n, c) of ``out`` to the sum of the patch
    entries read from each of its pixels (0 for a pixel no window reads)."""
    h, w = out.shape[2], out.shape[3]
    plane = out[n, c]
    plane[:] = 0
    for i in range(kh):
        for j in range(kw):
            r = (c * kh + i) * kw + j
            off_w = j * dw - pw
            for oh in range(ho):
                ih = oh * sh + i * dh - ph
                if ih < 0 or ih >= h:
                    continue
                base = oh * wo
                for ow in range(wo):
                    iw = ow * sw + off_w
                    if iw >= 0 and iw < w:
                        plane[ih, iw] += cols[r, n, base + ow]


@cached_njit(nogil=True)
def _col2im_rows_serial(cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """Adjoint of ``_im2col_rows_serial``: every patch entry added back to its pixel."""
    n_img, n_ch = out.shape[0], out.shape[1]
    for nc in range(n_img * n_ch):
        n = nc // n_ch
        _col2im_plane(cols, n, nc - n * n_ch, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out)


@cached_njit(parallel=True)
def _col2im_rows_parallel(cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out):  # pragma: no cover
    """:func:`_col2im_rows_serial` in parallel over (image, channel) planes, so no two
    threads add to the same pixel."""
    n_img, n_ch = out.shape[0], out.shape[1]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        _col2im_plane(cols, n, nc - n * n_ch, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, out)


def im2col_rows(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair
                ) -> np.ndarray:
    """Patches of ``x`` (N, C, H, W) as a matrix (C·kh·kw, N·Ho·Wo) for one BLAS product."""
    n, c, h, w = x.shape
    kh, kw = kernel
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    out = scratch("cols", (c * kh * kw, n, ho * wo), x.dtype)
    run = _loop(_im2col_rows_serial, _im2col_rows_parallel, out.size)
    run(x, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        ho, wo, out)
    return out.reshape(c * kh * kw, n * ho * wo)


def col2im_rows(cols: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                padding: Pair, dilation: Pair, ho: int, wo: int) -> np.ndarray:
    """Adjoint of :func:`im2col_rows`: an image of ``x_shape`` from a patch matrix."""
    n, c, h, w = x_shape
    out = memory.empty(tuple(x_shape), cols.dtype)  # each plane is zeroed by its kernel
    run = _loop(_col2im_rows_serial, _col2im_rows_parallel, cols.size)
    run(np.ascontiguousarray(cols).reshape(-1, n, ho * wo), kernel[0], kernel[1], stride[0],
        stride[1], padding[0], padding[1], dilation[0], dilation[1], ho, wo, out)
    return out


#: patch-matrix bytes per block: small enough for the block to stay in the core's cache
#: between im2col and the products that read it, big enough for efficient products.
#: Measured on a DnCNN-lite 32 -> 32 layer (float32, 16×40×40, one thread): forward 8.6 ms
#: with 7 MB chunks of whole images, 6.4 ms with blocks of 20 or 10 rows (0.9 / 0.5 MB).
BLOCK_BYTES = 1 << 20


Block = tuple[int, int, int, int]


def _blocks(n: int, ho: int, bytes_per_row: int, limit: int | None = None) -> list[Block]:
    """Blocks ``(n0, n1, r0, r1)`` of the output -- images n0..n1, rows r0..r1 -- whose patch
    matrix fits ``limit`` bytes (default :data:`BLOCK_BYTES`): several whole images when one
    is small, else rows of one image in blocks of about equal size (at least one row)."""
    limit = BLOCK_BYTES if limit is None else limit
    per_image = max(bytes_per_row, 1) * ho
    if per_image <= limit:
        step = max(1, limit // per_image)
        return [(n0, min(n, n0 + step), 0, ho) for n0 in range(0, n, step)]
    count = -(-per_image // limit)
    rows = -(-ho // count)
    return [(i, i + 1, r0, min(ho, r0 + rows)) for i in range(n) for r0 in range(0, ho, rows)]


#: Python threads that share a convolution's blocks (None: as many as numpy's BLAS has
#: threads). Each runs its products on one BLAS thread, so the two cores work on different
#: blocks instead of splitting every small product (see :mod:`.blas`).
BLOCK_WORKERS: int | None = None

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _workers(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            _pool = ThreadPoolExecutor(count, thread_name_prefix="adl-conv")
            _pool_size = count
        return _pool


def _run_blocks(work: Callable[[list[Block]], object], blocks: list[Block]) -> list:
    """``work`` on the blocks, split over :data:`BLOCK_WORKERS` threads (this one included)
    with numpy's BLAS on one thread meanwhile; in this thread alone when there is one worker
    or one block. Returns each part's result. ``work`` must only call serial (``nogil``)
    kernels and numpy, and write to disjoint parts of its outputs."""
    count = BLOCK_WORKERS if BLOCK_WORKERS is not None else blas.threads()
    count = max(1, min(int(count), len(blocks)))
    if count == 1:
        return [work(blocks)]
    parts = [blocks[i::count] for i in range(count)]
    errors = np.geterr()  # numpy's error state is per thread: the workers take the caller's

    def in_worker(part: list[Block]) -> object:
        with np.errstate(**errors):
            return work(part)

    with blas.single_threaded():
        pool = _workers(count - 1)
        futures = [pool.submit(in_worker, part) for part in parts[1:]]
        try:
            first = work(parts[0])
        finally:
            rest = [f.result() for f in futures]
    return [first] + rest


def _patch_blocks(x: np.ndarray, blocks: list[Block], kernel: Pair, stride: Pair,
                  padding: Pair, dilation: Pair, wo: int):
    """Each block with its patch matrix (C·kh·kw, images, rows·wo), built in one reused
    scratch buffer: a block's matrix is valid until the next one is made."""
    kh, kw = kernel
    k = x.shape[1] * kh * kw
    biggest = max((n1 - n0) * (r1 - r0) for n0, n1, r0, r1 in blocks)
    buf = scratch("cols", (k * biggest * wo,), x.dtype)
    for block in blocks:
        n0, n1, r0, r1 = block
        out = buf[:k * (n1 - n0) * (r1 - r0) * wo].reshape(k, n1 - n0, (r1 - r0) * wo)
        _im2col_block(x[n0:n1], kh, kw, stride[0], stride[1], padding[0] - r0 * stride[0],
                      padding[1], dilation[0], dilation[1], r1 - r0, wo, out)
        yield block, out


def _to_fnp(a: np.ndarray) -> np.ndarray:
    """(N, F, H, W) -> (F, N·H·W): the channel-major matrix the products use."""
    n, f = a.shape[:2]
    out = scratch("fnp", (f, n, a[0, 0].size), a.dtype)
    np.copyto(out, a.reshape(n, f, -1).transpose(1, 0, 2))
    return out.reshape(f, -1)


# --------------------------------------------------------------------------------------
# convolution and its two adjoints
# --------------------------------------------------------------------------------------

@cached_njit(nogil=True)
def _direct_conv_plane(nf, x, w, sh, sw, ph, pw, dh, dw, acc, out):  # pragma: no cover - numba
    """out[n, f] = Σ_c,i,j w[f, c, i, j] · x_padded[n, c, oh·sh + i·dh, ow·sw + j·dw] for
    the plane nf = n·F + f, accumulated in ``acc`` (Ho, Wo)."""
    n_ch, h, wd = x.shape[1], x.shape[2], x.shape[3]
    n_f, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    n = nf // n_f
    f = nf - n * n_f
    acc[:] = 0
    for c in range(n_ch):
        for i in range(kh):
            for j in range(kw):
                wv = w[f, c, i, j]
                for oh in range(ho):
                    ih = oh * sh + i * dh - ph
                    if ih < 0 or ih >= h:
                        continue
                    for ow in range(wo):
                        iw = ow * sw + j * dw - pw
                        if iw >= 0 and iw < wd:
                            acc[oh, ow] += wv * x[n, c, ih, iw]
    for oh in range(ho):
        for ow in range(wo):
            out[n, f, oh, ow] = acc[oh, ow]


@cached_njit(nogil=True)
def _direct_conv_serial(x, w, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - numba
    acc = np.empty((out.shape[2], out.shape[3]), dtype=out.dtype)
    for nf in range(out.shape[0] * out.shape[1]):
        _direct_conv_plane(nf, x, w, sh, sw, ph, pw, dh, dw, acc, out)


@cached_njit(parallel=True)
def _direct_conv_parallel(x, w, sh, sw, ph, pw, dh, dw, out):  # pragma: no cover - numba
    for nf in prange(out.shape[0] * out.shape[1]):
        acc = np.empty((out.shape[2], out.shape[3]), dtype=out.dtype)
        _direct_conv_plane(nf, x, w, sh, sw, ph, pw, dh, dw, acc, out)


# reassociation lets LLVM vectorise the sum; no "nnan"/"ninf" (fastmath=True), which would
# let it assume x holds no NaN or Inf
@cached_njit(nogil=True, fastmath={"reassoc", "contract"})
def _direct_conv_weight_grad_plane(fc, g, x, kh, kw, sh, sw, ph, pw, dh, dw, out
                                   ):  # pragma: no cover - numba
    """out[f, c, i, j] = Σ_n,oh,ow g[n, f, oh, ow] · x_padded[n, c, oh·sh + i·dh, ow·sw + j·dw]
    for the pair fc = f·C + c."""
    n_img, n_ch, h, wd = x.shape
    ho, wo = g.shape[2], g.shape[3]
    f = fc // n_ch
    c = fc - f * n_ch
    for i in range(kh):
        for j in range(kw):
            acc = 0.0  # float64 only (see conv2d_backward_weight); x may be empty
            for n in range(n_img):
                for oh in range(ho):
                    ih = oh * sh + i * dh - ph
                    if ih < 0 or ih >= h:
                        continue
                    for ow in range(wo):
                        iw = ow * sw + j * dw - pw
                        if iw >= 0 and iw < wd:
                            acc += g[n, f, oh, ow] * x[n, c, ih, iw]
            out[f, c, i, j] = acc


@cached_njit(nogil=True)
def _direct_conv_weight_grad_serial(g, x, kh, kw, sh, sw, ph, pw, dh, dw, out
                                    ):  # pragma: no cover - numba
    for fc in range(g.shape[1] * x.shape[1]):
        _direct_conv_weight_grad_plane(fc, g, x, kh, kw, sh, sw, ph, pw, dh, dw, out)


@cached_njit(parallel=True)
def _direct_conv_weight_grad_parallel(g, x, kh, kw, sh, sw, ph, pw, dh, dw, out
                                      ):  # pragma: no cover - numba
    for fc in prange(g.shape[1] * x.shape[1]):
        _direct_conv_weight_grad_plane(fc, g, x, kh, kw, sh, sw, ph, pw, dh, dw, out)


#: a convolution with at most this many output channels runs as a direct loop: its matrix
#: product would be a matrix-vector product, bound by writing and reading the patch matrix
#: (kh·kw times the image), while the direct loop reads the image once. Measured on the last
#: DnCNN layer (32 -> 1 channel): forward 1.1 ms direct against 1.5 (float32) and 2.4 ms
#: (float64) through im2col. (Few *input* channels are better served by im2col: the patch
#: matrix is then small.)
THIN_CHANNELS = 4


def _thin(f: int, cg: int, groups: int) -> bool:
    return groups == 1 and f <= THIN_CHANNELS


# NaN and Inf: the im2col products multiply the zeros of the padding too (0 · Inf = NaN),
# as the reference kernels do; the direct loops skip the padding, so they run only when the
# operand multiplied by those zeros (the weights, or g for the weight gradient) is finite.
# The stride-1 input gradient is a convolution of g padded with zeros; the reference (and
# the col2im path) never multiply by those zeros, so it too needs finite weights.


#: 1×1 convolutions with stride 1, no padding and one group as plain matrix products per
#: image (no patch matrix, which would be a copy of the input); False: the general paths
POINTWISE = True


def _pointwise(w_shape: tuple[int, ...], stride: Pair, padding: Pair, groups: int) -> bool:
    """Whether a convolution is a matrix product over channels at each pixel: 1×1 kernel,
    stride 1, no padding, one group (dilation does not matter for a 1×1 kernel). Its sums
    have exactly the reference's terms (there is no padding to multiply), so NaN and Inf
    land where the reference puts them."""
    return (tuple(w_shape[2:]) == (1, 1) and tuple(stride) == (1, 1)
            and tuple(padding) == (0, 0) and groups == 1)


def _pointwise_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """out[n] = W (F, C) @ x[n] (C, H·W)."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    out = memory.empty((n, f, h * wd), x.dtype)
    with blas.single_threaded():  # small products: OpenBLAS's hand-over costs more (see .blas)
        np.matmul(w.reshape(f, c), x.reshape(n, c, h * wd), out=out)
    return out.reshape(n, f, h, wd)


def _pointwise_backward(g: np.ndarray, x: np.ndarray | None, w: np.ndarray | None,
                        want_x: bool, want_w: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The gradients of :func:`_pointwise_forward`: dx[n] = Wᵀ @ g[n] and
    dW = Σ_n g[n] @ x[n]ᵀ (as (x[n] @ g[n]ᵀ)ᵀ: the long sum is the inner dimension of a
    product whose result is small, the orientation OpenBLAS runs fast)."""
    n, f, h, wd = g.shape
    g3 = g.reshape(n, f, h * wd)
    dx = dw = None
    with blas.single_threaded():
        if want_x:
            c = w.shape[1]
            dx = memory.empty((n, c, h * wd), g.dtype)
            np.matmul(w.reshape(f, c).T, g3, out=dx)
            dx = dx.reshape(n, c, h, wd)
        if want_w:
            c = x.shape[1]
            x3 = x.reshape(n, c, h * wd)
            acc = np.empty((c, f), dtype=g.dtype)
            np.matmul(x3[0], g3[0].T, out=acc)
            for i in range(1, n):
                acc += x3[i] @ g3[i].T
            dw = np.ascontiguousarray(acc.T).reshape(f, c, 1, 1)
    return dx, dw


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair, dilation: Pair,
                   groups: int = 1) -> np.ndarray:
    """Cross-correlation of ``x`` (N, C, H, W) with ``w`` (F, C/groups, kh, kw)."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    if POINTWISE and _pointwise(w.shape, stride, padding, groups):
        return _pointwise_forward(x, w)
    if _thin(f, cg, groups) and finite.all_finite_1(w):
        out = memory.empty((n, f, ho, wo), x.dtype)
        run = _loop(_direct_conv_serial, _direct_conv_parallel, out.size * c * kh * kw)
        run(x, w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], out)
        return out
    # block by block, so each patch matrix is still in cache for its products, which write
    # straight into (N, F, Ho·Wo): one per image and group
    w2 = w.reshape(f, cg * kh * kw)
    fg, kg = f // groups, cg * kh * kw
    result = memory.empty((n, f, ho * wo), x.dtype)

    def work(blocks: list[Block]) -> None:
        for (n0, n1, r0, r1), cols in _patch_blocks(x, blocks, (kh, kw), stride, padding,
                                                    dilation, wo):
            per_image = cols.transpose(1, 0, 2)
            for gi in range(groups):
                np.matmul(w2[gi * fg:(gi + 1) * fg], per_image[:, gi * kg:(gi + 1) * kg],
                          out=result[n0:n1, gi * fg:(gi + 1) * fg, r0 * wo:r1 * wo])

    _run_blocks(work, _blocks(n, ho, c * kh * kw * wo * x.itemsize))
    return result.reshape(n, f, ho, wo)


def flipped_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """Weights of the convolution that is the input-adjoint of a stride-1 convolution:
    spatially flipped, input and output channels swapped within each group."""
    f, cg, kh, kw = w.shape
    fg = f // groups
    swapped = w.reshape(groups, fg, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(swapped.reshape(groups * cg, fg, kh, kw)[:, :, ::-1, ::-1])


def conv2d_backward_input(g: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                          padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """Gradient of :func:`conv2d_forward` with respect to its input."""
    if POINTWISE and _pointwise(w.shape, stride, padding, groups):
        return _pointwise_backward(g, None, w, True, False)[0]
    n, c, h, wd = x_shape
    f, cg, kh, kw = w.shape
    ho, wo = g.shape[2:]
    pad_flip = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    if stride == (1, 1) and min(pad_flip) >= 0 and finite.all_finite_1(w):
        out = conv2d_forward(g, flipped_weight(w, groups), (1, 1), pad_flip, dilation, groups)
        if out.shape[2:] == (h, wd):
            return out
    g2 = _to_fnp(g)
    w2 = w.reshape(f, cg * kh * kw)
    dcols = scratch("cols", (c * kh * kw, g2.shape[1]), g.dtype)
    with blas.single_threaded():  # thin products: two BLAS threads cost more than they save
        if groups == 1:
            np.matmul(w2.T, g2, out=dcols)
        else:
            fg, kg = f // groups, cg * kh * kw
            for gi in range(groups):
                np.matmul(w2[gi * fg:(gi + 1) * fg].T, g2[gi * fg:(gi + 1) * fg],
                          out=dcols[gi * kg:(gi + 1) * kg])
    return col2im_rows(dcols, tuple(x_shape), (kh, kw), stride, padding, dilation, ho, wo)


def conv2d_backward_weight(g: np.ndarray, x: np.ndarray, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """Gradient of :func:`conv2d_forward` with respect to the weights."""
    if POINTWISE and _pointwise(tuple(w_shape), stride, padding, groups):
        return _pointwise_backward(g, x, None, False, True)[1]
    f, cg, kh, kw = w_shape
    # direct only in float64: measured on the last DnCNN layer, 2.6 ms direct against 11 ms
    # through im2col in float64, but 2.4 against 1.5 ms in float32 (sgemv is fast enough)
    if _thin(f, cg, groups) and g.dtype == np.float64 and finite.all_finite_1(g):
        out = np.empty(tuple(w_shape), dtype=g.dtype)
        run = _loop(_direct_conv_weight_grad_serial, _direct_conv_weight_grad_parallel,
                    g.size * x.shape[1] * kh * kw)
        run(g, x, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0],
            dilation[1], out)
        return out
    # Σ over blocks of cols (C·k, rows·Wo) @ g (F, rows·Wo)ᵀ per image and group, as
    # (cols @ g2ᵀ)ᵀ: OpenBLAS's threaded gemm was measured up to 50x slower on the other
    # orientation of this skinny product (M = F small, K = N·Ho·Wo huge)
    n, c = x.shape[:2]
    ho, wo = g.shape[2], g.shape[3]
    fg, kg = f // groups, cg * kh * kw
    g3 = g.reshape(n, f, ho * wo)

    def work(blocks: list[Block]) -> np.ndarray:
        acc = np.zeros((groups, kg, fg), dtype=g.dtype)
        for (n0, n1, r0, r1), cols in _patch_blocks(x, blocks, (kh, kw), stride, padding,
                                                    dilation, wo):
            for i in range(n1 - n0):
                gi_rows = g3[n0 + i, :, r0 * wo:r1 * wo]
                for gi in range(groups):
                    acc[gi] += (cols[gi * kg:(gi + 1) * kg, i]
                                @ gi_rows[gi * fg:(gi + 1) * fg].T)
        return acc

    acc, *rest = _run_blocks(work, _blocks(n, ho, c * kh * kw * wo * x.itemsize))
    for part in rest:
        acc += part
    return np.ascontiguousarray(acc.transpose(0, 2, 1)).reshape(w_shape)


def _shares_patches(g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair,
                    padding: Pair, dilation: Pair) -> bool:
    """Whether both gradients can come from one patch matrix of ``g`` (see
    :func:`conv2d_backward`): stride 1, padding within the kernel's reach, finite weights
    (the padding zeros of ``g`` are multiplied by them) and, with dilation, a finite ``g``
    (a dilated window can fall wholly in the padding; its ``g`` then meets no pixel, and
    only the check can see a NaN or Inf there)."""
    kh, kw = w.shape[2:]
    if stride != (1, 1) or dilation[0] * (kh - 1) < padding[0] or \
            dilation[1] * (kw - 1) < padding[1]:
        return False
    if not finite.all_finite_1(w):
        return False
    return dilation == (1, 1) or finite.all_finite_1(g)


def conv2d_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                    dilation: Pair, groups: int, want_x: bool, want_w: bool
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The gradients of :func:`conv2d_forward` with respect to the input and the weights
    (``None`` where not wanted), from one patch matrix of ``g`` where possible.

    With stride 1 the input gradient is the convolution of ``g`` (padded by
    ``d·(k−1) − p``) with the flipped weights: a product with the patch matrix of ``g``,
    ``cols_g[(f, i', j'), (n, h, w)] = g_pad[n, f, h + i'·d − p', w + j'·d − p']``. The
    weight gradient ``Σ_n,oh,ow g[n, f, oh, ow]·x_pad[n, c, oh + i·d − p, ow + j·d − p]`` is
    the same sum written over the pixels of ``x``: ``Σ_n,h,w x[n, c, h, w]·cols_g[(f, k−1−i,
    k−1−j), (n, h, w)]``, so ``cols_g @ xᵀ`` per image gives it, flipped, without a patch
    matrix of ``x`` or a transposed copy of ``g``.

    NaN and Inf: the two sums have the same products except those with a padding zero (of
    ``x`` in the definition, of ``g`` here). They agree when ``x`` and ``g`` are finite, and
    otherwise this weight gradient is not finite either (every pixel of ``x`` meets some
    entry of ``cols_g``; every ``g`` meets a pixel, see :func:`_shares_patches`): the weight
    gradient is then computed again the reference's way.
    """
    if POINTWISE and _pointwise(w.shape, stride, padding, groups):
        return _pointwise_backward(g, x, w, want_x, want_w)
    if not (want_x and want_w and _shares_patches(g, x, w, stride, padding, dilation)):
        return (conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups)
                if want_x else None,
                conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups)
                if want_w else None)
    dx, dw = _shared_backward(g, x, w, padding, dilation, groups)
    if not finite.all_finite_1(dw):  # a NaN or Inf came in: the reference's NaN and Inf pattern
        dw = conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups)
    return dx, dw


def _shared_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, padding: Pair,
                     dilation: Pair, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Both gradients of a stride-1 convolution from one patch matrix of ``g``, block by
    block (see :func:`conv2d_backward`)."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    fg = f // groups
    k = kh * kw
    hw = h * wd
    pad_flip = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    wf = flipped_weight(w, groups).reshape(c, fg * k)
    x3 = x.reshape(n, c, hw)
    dx = memory.empty((n, c, hw), x.dtype)

    # block by block (rows of x, whose pixels are the flipped convolution's outputs), so
    # the patch matrix of g is still in cache for both of its products
    def work(blocks: list[Block]) -> np.ndarray:
        acc = np.zeros((f * k, cg), dtype=x.dtype)  # rows (f, i', j'): the flipped kernel
        for (n0, n1, r0, r1), cols in _patch_blocks(g, blocks, (kh, kw), (1, 1), pad_flip,
                                                    dilation, wd):
            px = slice(r0 * wd, r1 * wd)
            per_image = cols.transpose(1, 0, 2)
            for gi in range(groups):
                rows = slice(gi * fg * k, (gi + 1) * fg * k)
                chans = slice(gi * cg, (gi + 1) * cg)
                # input gradient: flipped weights (C, F·k) @ cols_g (F·k, pixels), per image
                np.matmul(wf[chans], per_image[:, rows], out=dx[n0:n1, chans, px])
                # weight gradient: cols_g (F·k, pixels) @ x (C, pixels)ᵀ, per image, summed
                for i in range(n1 - n0):
                    acc[rows] += per_image[i, rows] @ x3[n0 + i, chans, px].T
        return acc

    acc, *rest = _run_blocks(work, _blocks(n, h, f * k * wd * x.itemsize))
    for part in rest:
        acc += part
    dw = np.ascontiguousarray(acc.reshape(f, kh, kw, cg)[:, ::-1, ::-1].transpose(0, 3, 1, 2))
    return dx.reshape(x.shape), dw


# --------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------

@cached_njit(nogil=True)
def _max_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    n_img, n_ch, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    n = nc // n_ch
    c = nc - n * n_ch
    for oh in range(ho):
        for ow in range(wo):
            best = -np.inf
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw + j - pw
                    if iw >= 0 and iw < w:
                        v = x[n, c, ih, iw]
                        # a NaN is the maximum (numpy's max and PyTorch propagate it)
                        if v > best or (v != v and best == best):
                            best = v
            out[n, c, oh, ow] = best


@cached_njit(nogil=True)
def _max_pool_forward_serial(x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in range(x.shape[0] * x.shape[1]):
        _max_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(parallel=True)
def _max_pool_forward_parallel(x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in prange(x.shape[0] * x.shape[1]):
        _max_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(nogil=True)
def _max_pool_backward_plane(nc, g, x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    n_img, n_ch, h, w = x.shape
    ho, wo = g.shape[2], g.shape[3]
    n = nc // n_ch
    c = nc - n * n_ch
    for oh in range(ho):
        for ow in range(wo):
            best = -np.inf
            bi = -1
            bj = -1
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw + j - pw
                    if iw < 0 or iw >= w:
                        continue
                    v = x[n, c, ih, iw]
                    # strict '>' keeps the first maximum (PyTorch's convention at ties);
                    # the first NaN is the maximum, and no later value replaces it
                    if bi < 0 or v > best or (v != v and best == best):
                        best = v
                        bi = ih
                        bj = iw
            if bi >= 0:
                out[n, c, bi, bj] += g[n, c, oh, ow]


@cached_njit(nogil=True)
def _max_pool_backward_serial(g, x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in range(x.shape[0] * x.shape[1]):
        _max_pool_backward_plane(nc, g, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(parallel=True)
def _max_pool_backward_parallel(g, x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in prange(x.shape[0] * x.shape[1]):
        _max_pool_backward_plane(nc, g, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(nogil=True)
def _avg_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    n_img, n_ch, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    inv = 1.0 / (kh * kw)
    n = nc // n_ch
    c = nc - n * n_ch
    for oh in range(ho):
        for ow in range(wo):
            acc = 0.0  # not x[..] * 0, which is NaN when that pixel is NaN or ±Inf
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw + j - pw
                    if iw >= 0 and iw < w:
                        acc += x[n, c, ih, iw]
            out[n, c, oh, ow] = acc * inv


@cached_njit(nogil=True)
def _avg_pool_forward_serial(x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in range(x.shape[0] * x.shape[1]):
        _avg_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(parallel=True)
def _avg_pool_forward_parallel(x, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in prange(x.shape[0] * x.shape[1]):
        _avg_pool_forward_plane(nc, x, kh, kw, sh, sw, ph, pw, out)


@cached_njit(nogil=True)
def _avg_pool_backward_plane(nc, g, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    n_img, n_ch, h, w = out.shape
    ho, wo = g.shape[2], g.shape[3]
    inv = 1.0 / (kh * kw)
    n = nc // n_ch
    c = nc - n * n_ch
    for oh in range(ho):
        for ow in range(wo):
            share = g[n, c, oh, ow] * inv
            for i in range(kh):
                ih = oh * sh + i - ph
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw + j - pw
                    if iw >= 0 and iw < w:
                        out[n, c, ih, iw] += share


@cached_njit(nogil=True)
def _avg_pool_backward_serial(g, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in range(out.shape[0] * out.shape[1]):
        _avg_pool_backward_plane(nc, g, kh, kw, sh, sw, ph, pw, out)


@cached_njit(parallel=True)
def _avg_pool_backward_parallel(g, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - numba
    for nc in prange(out.shape[0] * out.shape[1]):
        _avg_pool_backward_plane(nc, g, kh, kw, sh, sw, ph, pw, out)


def _pool_out(x_shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair
              ) -> tuple[int, int]:
    return (conv_output_size(x_shape[2], kernel[0], stride[0], padding[0], 1),
            conv_output_size(x_shape[3], kernel[1], stride[1], padding[1], 1))


def _pool_args(kernel: Pair, stride: Pair, padding: Pair) -> tuple[int, ...]:
    return (kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1])


def max_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Maximum over each window (padding counts as -inf; a NaN in the window gives NaN)."""
    ho, wo = _pool_out(x.shape, kernel, stride, padding)
    out = memory.empty(x.shape[:2] + (ho, wo), x.dtype)
    run = _loop(_max_pool_forward_serial, _max_pool_forward_parallel,
                out.size * kernel[0] * kernel[1])
    run(x, *_pool_args(kernel, stride, padding), out)
    return out


def max_pool2d_backward(g: np.ndarray, x: np.ndarray, kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """Each window's gradient goes to its first maximum (its first NaN, if it has one)."""
    out = memory.zeros(x.shape, g.dtype)
    run = _loop(_max_pool_backward_serial, _max_pool_backward_parallel,
                g.size * kernel[0] * kernel[1])
    run(g, x, *_pool_args(kernel, stride, padding), out)
    return out


def avg_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Mean over each window (padded zeros count: ``count_include_pad=True``)."""
    ho, wo = _pool_out(x.shape, kernel, stride, padding)
    out = memory.empty(x.shape[:2] + (ho, wo), x.dtype)
    run = _loop(_avg_pool_forward_serial, _avg_pool_forward_parallel,
                out.size * kernel[0] * kernel[1])
    run(x, *_pool_args(kernel, stride, padding), out)
    return out


def avg_pool2d_backward(g: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """Spread each window's gradient evenly over the window."""
    out = memory.zeros(tuple(x_shape), g.dtype)
    run = _loop(_avg_pool_backward_serial, _avg_pool_backward_parallel,
                g.size * kernel[0] * kernel[1])
    run(g, *_pool_args(kernel, stride, padding), out)
    return out
