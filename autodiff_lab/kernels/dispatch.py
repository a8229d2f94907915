"""Pick the kernel for the arrays at hand: Numba/BLAS for real floats, the reference otherwise.

The op table calls the functions here. Each one sends C-contiguous-able ``float32`` or
``float64`` arrays of one dtype to the fast kernels (:mod:`.conv_fast`, :mod:`.elementwise`,
:mod:`.batch_norm_fast`, :mod:`.softmax_ce_fast`) and everything else -- complex numbers for
the complex step, ``object`` arrays of SymPy expressions, integer arrays -- to
:mod:`.conv_reference` or returns ``None`` so the op table's own numpy rule runs. So the op
table keeps saying *what* each op computes, once, and speed is a detail of this module.

The fast modules are imported on first use: importing autodiff_lab does not pay for Numba.
While a dtype's kernels are neither compiled nor in Numba's cache, :func:`real_float` says
no and the reference runs, as :mod:`.tiered` explains (a background process compiles them).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from types import ModuleType
from typing import Any

import numpy as np

from autodiff_lab.errors import ShapeError
from autodiff_lab.kernels import conv_reference as ref
from autodiff_lab.kernels import memory, tiered
from autodiff_lab.kernels import threads as _threads
from autodiff_lab.kernels.conv_reference import (  # noqa: F401 - re-exported for the op table
    col2im,
    conv_output_size,
    conv_transpose2d_output_size,
    im2col,
    max_pool2d_ties,
    pad_image,
)

Pair = tuple[int, int]
_REAL = (np.dtype(np.float32), np.dtype(np.float64))
#: below this many elements numpy's element-wise rules are as fast as a Numba call.
#: Measured (float32, one thread, µs per call, numpy's rule against the kernel): relu
#: forward 2.0 / 3.7 at 1,024 elements, 5.9 / 4.8 at 4,096; relu backward (numpy's
#: ``heaviside`` is a scalar loop, ~6 ns per element) 10.4 / 6.3 at 1,024 and 99.5 / 6.6
#: at 16,384 -- the 784-256-784 MLP's hidden layer, 5-8 % of its gradient when it was left
#: to numpy; leaky ReLU 7.1 / 7.6 (forward) and 18.6 / 7.9 (backward) at 1,024
ELEMENTWISE_MIN_SIZE = 1 << 11

#: the kernel modules imported so far, each behind its thread wrapper (:func:`_fast`)
_modules: dict[str, _Threads] = {}
#: set to False to run every op with the reference kernels (tests compare the two)
enabled = True
#: threads the parallel Numba kernels use (None: Numba's setting, all cores). 1 by default:
#: our kernels are memory-bound and run between OpenBLAS products, whose worker threads keep
#: spinning on the other core for a while after each product. On the 2-core machine the
#: DnCNN gradient took the same time with 1 or 2 threads when the machine was idle, and
#: 53 ms (float32) with 1 thread against 115-150 ms with 2 when another process was busy.
kernel_threads: int | None = 1


#: held while a parallel kernel runs: Numba's ``workqueue`` threading layer (the one we
#: prefer, see :func:`~autodiff_lab.kernels.numba_cache.prefer_workqueue`) aborts the whole
#: process when two Python threads launch parallel kernels at once. Only the kernel calls are
#: serialised; numpy, BLAS and the rest of a program keep running in parallel.
_launch_lock = threading.Lock()
_lock_needed: bool | None = None  # known after the first kernel started Numba's threads


def _needs_lock() -> bool:
    """Whether parallel kernel launches must be serialised: yes for ``workqueue`` (and
    while Numba has not chosen its layer yet), no for the thread-safe ``tbb`` and ``omp``."""
    global _lock_needed
    if _lock_needed is None:
        import numba
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return True
        _lock_needed = layer not in ("tbb", "omp")
    return _lock_needed


class _Threads:
    """Run a kernel with ``kernel_threads`` Numba threads, restoring the caller's count, and
    one kernel launch at a time where the threading layer needs it.

    One thread, for a module that reads the flag of :mod:`.threads` (``ONE_THREAD_FLAG``),
    is asked for through that flag: it starts no parallel loop then, so neither Numba's
    thread count (~7 µs to set and put back) nor the launch lock is needed."""

    def __init__(self, mod: ModuleType) -> None:
        self.mod = mod
        self.flagged = bool(getattr(mod, "ONE_THREAD_FLAG", False))

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.mod, name)
        flagged = self.flagged

        def call(*args: Any, **kwargs: Any) -> Any:
            threads = kernel_threads
            if threads == 1 and flagged:
                previous = _threads.set_one_thread(True)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _threads.set_one_thread(previous)
            if threads is None and not _needs_lock():
                return fn(*args, **kwargs)
            with _launch_lock if _needs_lock() else contextlib.nullcontext():
                if threads is None:
                    return fn(*args, **kwargs)
                import numba
                before = numba.get_num_threads()
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                try:
                    return fn(*args, **kwargs)
                finally:
                    numba.set_num_threads(before)
        return call


def _fast(name: str) -> _Threads:
    """The kernel module ``name``, imported at its first use, behind its :class:`_Threads`."""
    wrapper = _modules.get(name)
    if wrapper is None:
        module = importlib.import_module(f"autodiff_lab.kernels.{name}")
        wrapper = _modules[name] = _Threads(module)
    return wrapper


def real_float(*arrays: Any) -> bool:
    """Whether every array is a real float32/float64 ndarray, all of one dtype."""
    if not enabled:
        return False
    dtype = None
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.dtype not in _REAL:
            return False
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return False
    # tiers: the reference path while the kernels of this dtype are not compiled yet
    return dtype is None or dtype in tiered.ready_dtypes or tiered.ready(dtype)


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


# --- recycled results of numpy rules, matrix products -------------------------------------

def recycled_like(x: Any) -> np.ndarray | None:
    """A recycled array (:func:`.memory.empty`) of ``x``'s shape and dtype for a numpy
    result (``out=``) when ``x`` is a real float array big enough to be mapped afresh by
    malloc, else ``None`` (numpy then allocates as usual; the size test here spares small
    arrays the pool's Python call)."""
    if type(x) is np.ndarray and x.dtype in _REAL and x.nbytes >= memory.POOL_MIN_BYTES:
        return memory.empty(x.shape, x.dtype)
    return None


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``; for two matrices of one real float dtype, into a recycled array
    (:func:`.memory.empty`). A fresh result above glibc's mmap threshold costs a page fault
    per 4 KiB on every call: measured on the inpainting MLP in float64 (two 784×256 weight
    gradients, 1.6 MB each), 1,340 faults and 4.3 ms per gradient against 1.1 ms without.
    A result below the pool's size (:data:`.memory.POOL_MIN_BYTES`) is left to numpy: the
    pool would hand out a fresh array anyway, and its Python call cost a product of small
    matrices (16-8-16 MLP) 2-3 µs on top of numpy's 1.7 µs."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.shape[0] * b.shape[1] * a.itemsize >= memory.POOL_MIN_BYTES
            and a.dtype == b.dtype and a.dtype in _REAL and a.shape[1] == b.shape[0]):
        return np.matmul(a, b, out=memory.empty((a.shape[0], b.shape[1]), a.dtype))
    return np.matmul(a, b)


# --- convolution ------------------------------------------------------------------------

#: Winograd (:mod:`.winograd`, tiles of :func:`winograd_tile`) for float32 3×3 convolutions
#: with stride 1, no dilation, one group, padding 0..2, at least
#: :data:`WINOGRAD_MIN_CHANNELS` input and output channels and :data:`WINOGRAD_MIN_TILES`
#: 2×2 output tiles; False: always im2col.
#: float64 never takes it (its sums stay exact products of the inputs).
WINOGRAD = True
#: measured (float32, one thread, forward and both gradients against im2col, 16×40×40):
#: 8 → 8 channels 3.1 ms against 2.3, 16 → 16 7.3 against 8.3, 32 → 32 19 against 27;
#: with fewer channels the transforms cost more than the products save
WINOGRAD_MIN_CHANNELS = 16
#: 32 → 32 channels on 2×9×9 images (60 tiles) took 0.5 ms against 0.2 through im2col,
#: on 4×32×32 (1024 tiles) 9.5 against 11.5: below this the fixed costs dominate
WINOGRAD_MIN_TILES = 512


def _winograd_ok(dtype: np.dtype, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                 stride: Pair, padding: Pair, dilation: Pair, groups: int) -> bool:
    """Whether the Winograd kernels apply to the convolution of an input of ``x_shape``
    with weights of ``w_shape`` in ``dtype`` -- and so to both of its gradients: the input
    gradient's convolution (padding ``2 − p``, channels swapped) meets the same tests."""
    if not (WINOGRAD and dtype == np.float32 and len(x_shape) == 4 and len(w_shape) == 4
            and tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and w_shape[1] == x_shape[1]
            and min(x_shape[1], w_shape[0]) >= WINOGRAD_MIN_CHANNELS
            and all(0 <= p <= 2 for p in padding)):
        return False
    ho, wo = x_shape[2] + 2 * padding[0] - 2, x_shape[3] + 2 * padding[1] - 2
    return ho >= 1 and wo >= 1 and x_shape[0] * -(-ho // 2) * -(-wo // 2) >= WINOGRAD_MIN_TILES


#: the Winograd algorithm: 2 for F(2×2, 3×3) (16 products per 4 outputs), 4 for F(4×4, 3×3)
#: (:mod:`.winograd4`, 36 per 16), None to let :func:`winograd_tile` decide by the output's
#: size. 2 by default: measured on this project's 2-core machine (float32, one thread, CPU
#: time, forward + both gradients), F(4×4) took 44 % less time in its matrix products but
#: more in its transforms, and came out even overall -- 16×32→32 channels 40×40: 12.7 ms
#: against 12.3; 16×64→64 40×40: 38.1 against 39.3; the DnCNN-lite float32 gradient with
#: batch norm 1.01× the time of F(2×2).
WINOGRAD_TILE: int | None = 2


def winograd_tile(x_shape: tuple[int, ...], padding: Pair) -> int:
    """The output tile of the Winograd algorithm for an input of ``x_shape`` (that of the
    forward convolution, whichever of its three products is computed): :data:`WINOGRAD_TILE`
    when set, else 4 -- unless 4×4 tiles would compute over a quarter more outputs than the
    image has (small or odd-sized outputs), where the 2×2 tiles waste less."""
    if WINOGRAD_TILE is not None:
        return WINOGRAD_TILE
    ho, wo = x_shape[2] + 2 * padding[0] - 2, x_shape[3] + 2 * padding[1] - 2
    return 4 if -(-ho // 4) * -(-wo // 4) * 16 <= 1.25 * ho * wo else 2


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair, dilation: Pair,
                   groups: int = 1) -> np.ndarray:
    """See :func:`conv_reference.conv2d_forward`."""
    if real_float(x, w) and _winograd_ok(x.dtype, x.shape, w.shape, stride, padding, dilation,
                                         groups):
        out = _fast("winograd").conv2d_forward(_c(x), _c(w), tuple(padding),
                                               tile=winograd_tile(x.shape, padding))
        if out is not None:  # None: a NaN or Inf, whose pattern im2col reproduces
            return out
    if real_float(x, w) and w.shape[0] == 1 and _direct_ok(x.shape, w.shape, stride, padding,
                                                          dilation, groups):
        out = _fast("conv_direct").conv2d_forward_to_one(_c(x), _c(w), tuple(padding))
        if out is not None:  # None: a NaN or Inf (im2col reproduces the reference's)
            return out
    if real_float(x, w):
        return _fast("conv_fast").conv2d_forward(_c(x), _c(w), tuple(stride), tuple(padding),
                                                 tuple(dilation), groups)
    return ref.conv2d_forward(x, w, stride, padding, dilation, groups)


def _check_conv_gradient(g_shape: tuple[int, ...], x_shape: tuple[int, ...], f: int,
                         kernel: tuple[int, int], stride: Pair, padding: Pair, dilation: Pair
                         ) -> None:
    """The upstream gradient of a convolution must have the convolution's output shape: a
    caller passing another (the transpose convolution once did) gets an error, not numbers
    computed from misread memory or a result of the wrong shape."""
    want = (x_shape[0], f, conv_output_size(x_shape[2], kernel[0], stride[0], padding[0],
                                            dilation[0]),
            conv_output_size(x_shape[3], kernel[1], stride[1], padding[1], dilation[1]))
    if tuple(g_shape) != want:
        raise ShapeError(f"convolution gradient kernel: upstream gradient of shape "
                         f"{tuple(g_shape)} for an input {tuple(x_shape)}, whose convolution "
                         f"has shape {want}")


def conv2d_backward_input(g: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                          padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """See :func:`conv_reference.conv2d_backward_input`."""
    _check_conv_gradient(g.shape, x_shape, w.shape[0], w.shape[2:], stride, padding, dilation)
    if real_float(g, w) and _winograd_ok(g.dtype, tuple(x_shape), w.shape, stride, padding,
                                         dilation, groups):
        out = _fast("winograd").conv2d_backward(_c(g), None, _c(w), tuple(padding), True,
                                                False, tile=winograd_tile(x_shape, padding))
        if out is not None:
            return out[0]
    if real_float(g, w):
        return _fast("conv_fast").conv2d_backward_input(
            _c(g), _c(w), tuple(x_shape), tuple(stride), tuple(padding), tuple(dilation), groups)
    return ref.conv2d_backward_input(g, w, x_shape, stride, padding, dilation, groups)


def conv2d_backward_weight(g: np.ndarray, x: np.ndarray, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """See :func:`conv_reference.conv2d_backward_weight`."""
    _check_conv_gradient(g.shape, x.shape, w_shape[0], w_shape[2:], stride, padding, dilation)
    if real_float(g, x) and _winograd_ok(x.dtype, x.shape, tuple(w_shape), stride, padding,
                                         dilation, groups):
        out = _fast("winograd").conv2d_backward_weight(_c(g), _c(x), tuple(padding),
                                                       tile=winograd_tile(x.shape, padding))
        if out is not None:
            return out
    if real_float(g, x):
        return _fast("conv_fast").conv2d_backward_weight(
            _c(g), _c(x), tuple(w_shape), tuple(stride), tuple(padding), tuple(dilation), groups)
    return ref.conv2d_backward_weight(g, x, w_shape, stride, padding, dilation, groups)


def conv2d_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                    dilation: Pair, groups: int, wanted: tuple[bool, bool]
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The gradients with respect to the input and the weights (``None`` where not
    ``wanted``) in one call: real floats share one patch matrix of ``g`` where they can
    (:func:`conv_fast.conv2d_backward`), anything else takes the reference's two adjoints."""
    want_x, want_w = (bool(v) for v in wanted)
    _check_conv_gradient(g.shape, x.shape, w.shape[0], w.shape[2:], stride, padding, dilation)
    if real_float(g, x, w) and _winograd_ok(x.dtype, x.shape, w.shape, stride, padding,
                                            dilation, groups):
        out = _fast("winograd").conv2d_backward(_c(g), _c(x), _c(w), tuple(padding), want_x,
                                                want_w, tile=winograd_tile(x.shape, padding))
        if out is not None:
            return out
    if real_float(g, x, w):
        return _fast("conv_fast").conv2d_backward(_c(g), _c(x), _c(w), tuple(stride),
                                                  tuple(padding), tuple(dilation), groups,
                                                  want_x, want_w)
    return (ref.conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups)
            if want_x else None,
            ref.conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups)
            if want_w else None)


#: the direct kernels (:mod:`.conv_direct`) for conv+ReLU of a one-channel input and for a
#: convolution to one channel; False: im2col (then the bias and the ReLU)
CONV_DIRECT = True


def _direct_ok(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Pair,
               padding: Pair, dilation: Pair, groups: int) -> bool:
    """Whether :mod:`.conv_direct` takes the convolution: one input channel or one output
    channel, 3×3 kernels, stride 1, no dilation, padding 0..2, at least one output pixel."""
    return (CONV_DIRECT and len(x_shape) == 4 and len(w_shape) == 4
            and (x_shape[1] == 1 or w_shape[0] == 1) and w_shape[1] == x_shape[1]
            and tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1
            and all(0 <= p <= 2 for p in padding)
            and x_shape[2] + 2 * padding[0] >= 3 and x_shape[3] + 2 * padding[1] >= 3)


def conv2d_relu_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair,
                        padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray | None:
    """``relu(conv2d(x, w) + b)`` in one pass where the Winograd kernels take the
    convolution (bias and ReLU in their output transform), or the direct kernel of a
    one-channel input (:mod:`.conv_direct`); ``None`` elsewhere, or for a NaN or Inf: the
    caller then runs the two ops' own forwards."""
    if real_float(x, w) and (b is None or real_float(x, b)) and _winograd_ok(
            x.dtype, x.shape, w.shape, stride, padding, dilation, groups):
        return _fast("winograd").conv2d_forward(_c(x), _c(w), tuple(padding),
                                                None if b is None else _c(b), True,
                                                tile=winograd_tile(x.shape, padding))
    if real_float(x, w) and (b is None or real_float(x, b)) and x.shape[1] == 1 and _direct_ok(
            x.shape, w.shape, stride, padding, dilation, groups):
        return _fast("conv_direct").conv2d_forward(_c(x), _c(w), tuple(padding),
                                                   None if b is None else _c(b), True)
    return None


def conv2d_relu_backward(g: np.ndarray, r: np.ndarray, x: np.ndarray, w: np.ndarray,
                         stride: Pair, padding: Pair, dilation: Pair, groups: int,
                         wanted: tuple[bool, bool]
                         ) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The input and weight gradients of ``r = relu(conv2d(x, w) + b)`` from the gradient
    ``g`` of ``r``, ReLU's rule applied as the Winograd kernels read ``g``; ``None`` where
    they do not apply, or for a NaN or Inf: the caller then composes the two ops' rules."""
    _check_conv_gradient(g.shape, x.shape, w.shape[0], w.shape[2:], stride, padding, dilation)
    if tuple(r.shape) != tuple(g.shape):
        raise ShapeError(f"convolution+relu gradient kernel: result of shape {tuple(r.shape)} "
                         f"for an upstream gradient of shape {tuple(g.shape)}")
    if real_float(g, r, x, w) and _winograd_ok(x.dtype, x.shape, w.shape, stride, padding,
                                               dilation, groups):
        return _fast("winograd").conv2d_backward(_c(g), _c(x), _c(w), tuple(padding),
                                                 bool(wanted[0]), bool(wanted[1]), _c(r),
                                                 tile=winograd_tile(x.shape, padding))
    return None


# --- pooling ----------------------------------------------------------------------------

def max_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """See :func:`conv_reference.max_pool2d_forward`."""
    if real_float(x):
        return _fast("conv_fast").max_pool2d_forward(_c(x), kernel, stride, padding)
    return ref.max_pool2d_forward(x, kernel, stride, padding)


def max_pool2d_backward(g: np.ndarray, x: np.ndarray, kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """See :func:`conv_reference.max_pool2d_backward`."""
    if real_float(g, x):
        return _fast("conv_fast").max_pool2d_backward(_c(g), _c(x), kernel, stride, padding)
    return ref.max_pool2d_backward(g, x, kernel, stride, padding)


def avg_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """See :func:`conv_reference.avg_pool2d_forward`."""
    if real_float(x):
        return _fast("conv_fast").avg_pool2d_forward(_c(x), kernel, stride, padding)
    return ref.avg_pool2d_forward(x, kernel, stride, padding)


def avg_pool2d_backward(g: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """See :func:`conv_reference.avg_pool2d_backward`."""
    if real_float(g):
        return _fast("conv_fast").avg_pool2d_backward(_c(g), x_shape, kernel, stride, padding)
    return ref.avg_pool2d_backward(g, x_shape, kernel, stride, padding)


# --- up-sampling: None means "use the numpy rule" -----------------------------------------

def _bilinear_fast_ok(a: np.ndarray, scale: Any) -> bool:
    return (a.ndim >= 2 and a.size > 0 and real_float(a)
            and all(s in (1, 2) for s in scale) and tuple(scale) != (1, 1))


def upsample_bilinear_forward(x: np.ndarray, scale: Pair) -> np.ndarray | None:
    """Bilinear up-sampling by 1 or 2 per axis in one pass for real arrays, else ``None``."""
    if _bilinear_fast_ok(x, scale):
        return _fast("upsample_fast").upsample_bilinear2d(x, tuple(scale))
    return None


def upsample_bilinear_backward(g: np.ndarray, x_shape: tuple[int, ...], scale: Pair
                               ) -> np.ndarray | None:
    """Its adjoint for real arrays (scales 1 or 2), else ``None``."""
    if (_bilinear_fast_ok(g, scale) and len(x_shape) == g.ndim
            and tuple(g.shape) == tuple(x_shape[:-2]) + (x_shape[-2] * scale[0],
                                                         x_shape[-1] * scale[1])):
        return _fast("upsample_fast").upsample_bilinear2d_backward(g, tuple(x_shape),
                                                                   tuple(scale))
    return None


#: the largest factor along the last axis whose block sums numpy adds left to right (its
#: pairwise summation unrolls from 8 terms on)
NEAREST_MAX_SW = 7


def _c_ordered(a: np.ndarray) -> bool:
    """Whether ``a``'s last axis is contiguous and its strides decrease (C order, gaps
    allowed): numpy's reductions then visit it as they visit a C-contiguous copy."""
    if a.flags.c_contiguous:
        return True
    strides = [st for st, n in zip(a.strides, a.shape) if n > 1]
    return (a.strides[-1] == a.itemsize and all(st > 0 for st in strides)
            and all(p > q for p, q in zip(strides, strides[1:])))


def upsample_nearest_forward(x: np.ndarray, scale: Pair) -> np.ndarray | None:
    """Nearest-neighbour up-sampling in one pass for real arrays, else ``None``."""
    if x.ndim >= 2 and x.size > 0 and real_float(x) and tuple(scale) != (1, 1):
        return _fast("upsample_fast").upsample_nearest2d(x, tuple(scale))
    return None


def upsample_nearest_backward(g: np.ndarray, x_shape: tuple[int, ...], scale: Pair
                              ) -> np.ndarray | None:
    """Its adjoint (the sum over each block) for real gradients laid out in C order (rows
    contiguous, strides positive and decreasing: C-contiguous arrays and slices of them),
    with W ≥ 2 and a factor from 2 to :data:`NEAREST_MAX_SW` along W -- where numpy's sum
    adds in the order the kernel follows -- else ``None``."""
    if (g.ndim >= 2 and g.size > 0 and real_float(g) and _c_ordered(g)
            and len(x_shape) == g.ndim and x_shape[-1] >= 2 and 2 <= scale[1] <= NEAREST_MAX_SW
            and tuple(g.shape) == tuple(x_shape[:-2]) + (x_shape[-2] * scale[0],
                                                         x_shape[-1] * scale[1])):
        return _fast("upsample_fast").upsample_nearest2d_backward(g, tuple(x_shape),
                                                                  tuple(scale))
    return None


# --- element-wise, batch norm, softmax cross-entropy: None means "use the numpy rule" ----

def relu_forward(x: np.ndarray) -> np.ndarray | None:
    """max(x, 0) with one parallel pass for big real arrays, else ``None``."""
    if x.size >= ELEMENTWISE_MIN_SIZE and real_float(x):
        return _fast("elementwise").relu_forward(_c(x))
    return None


def difference_squares(pred: np.ndarray, target: np.ndarray
                       ) -> tuple[np.ndarray, float] | None:
    """``(pred − target, Σ (pred − target)²)`` in one pass for big real arrays of one shape
    and dtype (:func:`.elementwise.difference_squares`), else ``None``."""
    if (pred.size >= ELEMENTWISE_MIN_SIZE and pred.shape == target.shape
            and real_float(pred, target)):
        return _fast("elementwise").difference_squares(pred, target)
    return None


def relu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    """g·relu'(x) fused (NaN where x is NaN), for big real arrays of one shape, else ``None``."""
    if x.size >= ELEMENTWISE_MIN_SIZE and g.shape == x.shape and real_float(g, x):
        return _fast("elementwise").relu_backward(g, _c(x))
    return None


def leaky_relu_forward(x: np.ndarray, alpha: float) -> np.ndarray | None:
    """x where x > 0, else alpha·x, in one pass for big real arrays (NaN stays NaN), else
    ``None``."""
    if x.size >= ELEMENTWISE_MIN_SIZE and real_float(x):
        return _fast("elementwise").leaky_relu_forward(x, alpha)
    return None


def leaky_relu_backward(g: np.ndarray, x: np.ndarray, alpha: float) -> np.ndarray | None:
    """g·(1 if x > 0 else alpha) fused (NaN where x is NaN), for big real arrays, else ``None``."""
    if x.size >= ELEMENTWISE_MIN_SIZE and g.shape == x.shape and real_float(g, x):
        return _fast("elementwise").leaky_relu_backward(g, _c(x), alpha)
    return None


def _bn_ok(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: Any, var: Any) -> bool:
    extra = () if mean is None else (mean, var)
    return x.ndim in (2, 4) and real_float(x, gamma, beta, *extra)


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: Any, var: Any,
                       training: bool, eps: float) -> np.ndarray | None:
    """Batch norm forward for real arrays, else ``None``."""
    if _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_forward(x, gamma, beta, mean, var, training, eps)
    return None


def batch_stats(x: np.ndarray) -> np.ndarray | None:
    """Per-channel [mean; unbiased variance] for real (N, C[, H, W]) arrays, else ``None``."""
    if x.ndim in (2, 4) and real_float(x):
        return _fast("batch_norm_fast").batch_stats(x)
    return None


def batch_norm_forward_saving(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: Any,
                              var: Any, training: bool, eps: float) -> tuple[np.ndarray, Any] | None:
    """Batch norm forward and its batch statistics (for :func:`batch_norm_backward_all`) for
    real arrays, else ``None``."""
    if _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_forward_saving(x, gamma, beta, mean, var,
                                                                  training, eps)
    return None


def batch_norm_backward(g: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                        mean: Any, var: Any, training: bool, eps: float, wanted: str
                        ) -> np.ndarray | None:
    """Batch norm gradient with respect to x, gamma or beta for real arrays, else ``None``."""
    if g.shape == x.shape and real_float(g) and _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_backward(g, x, gamma, mean, var, training,
                                                            eps, wanted)
    return None


def batch_norm_backward_all(g: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                            mean: Any, var: Any, training: bool, eps: float,
                            wanted: tuple[bool, bool, bool], stats: Any = None
                            ) -> tuple[np.ndarray | None, ...] | None:
    """The gradients with respect to x, gamma and beta (``None`` where not ``wanted``) in one
    pass, reusing the forward's ``stats`` if given, for real arrays; else ``None``."""
    if g.shape == x.shape and real_float(g) and _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gamma, mean, var, training, eps, tuple(bool(w) for w in wanted), stats)
    return None


def batch_norm_relu_forward_saving(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                   mean: Any, var: Any, training: bool, eps: float
                                   ) -> tuple[np.ndarray, Any] | None:
    """relu(batch_norm(x)) in one pass, and the batch statistics, for real arrays; else
    ``None``."""
    if _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_forward_saving(x, gamma, beta, mean, var,
                                                                  training, eps, "relu")
    return None


def batch_norm_relu_backward_all(g: np.ndarray, ans: np.ndarray, x: np.ndarray,
                                 gamma: np.ndarray, beta: np.ndarray, mean: Any, var: Any,
                                 training: bool, eps: float, wanted: tuple[bool, bool, bool],
                                 stats: Any = None) -> tuple[np.ndarray | None, ...] | None:
    """The gradients of relu(batch_norm(x)) (result ``ans``, upstream gradient ``g``) with
    respect to x, gamma and beta in one pass, for real arrays; else ``None``."""
    if (g.shape == x.shape == ans.shape and real_float(g, ans)
            and _bn_ok(x, gamma, beta, mean, var)):
        return _fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gamma, mean, var, training, eps, tuple(bool(w) for w in wanted), stats,
            "relu", ans)
    return None


def batch_norm_leaky_relu_forward_saving(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                         mean: Any, var: Any, training: bool, eps: float,
                                         alpha: float) -> tuple[np.ndarray, Any] | None:
    """leaky_relu(batch_norm(x), alpha) in one pass, and the batch statistics, for real
    arrays; else ``None``."""
    if _bn_ok(x, gamma, beta, mean, var):
        return _fast("batch_norm_fast").batch_norm_forward_saving(
            x, gamma, beta, mean, var, training, eps, "leaky_relu", alpha)
    return None


def _slope_read_from_result(alpha: float, dtype: np.dtype) -> bool:
    """Whether leaky_relu's rule can be read from its result: a slope positive and finite
    in the dtype keeps r > 0 exactly where y > 0 and r NaN exactly where y is NaN."""
    with np.errstate(over="ignore"):
        a = dtype.type(alpha)
    return bool(0 < a < np.inf)


def batch_norm_leaky_relu_backward_all(g: np.ndarray, ans: np.ndarray, x: np.ndarray,
                                       gamma: np.ndarray, beta: np.ndarray, mean: Any,
                                       var: Any, training: bool, eps: float, alpha: float,
                                       wanted: tuple[bool, bool, bool], stats: Any = None
                                       ) -> tuple[np.ndarray | None, ...] | None:
    """The gradients of leaky_relu(batch_norm(x), alpha) (result ``ans``, upstream gradient
    ``g``) with respect to x, gamma and beta in one pass, for real arrays and a slope
    positive and finite in their dtype; else ``None``."""
    if (g.shape == x.shape == ans.shape and real_float(g, ans)
            and _bn_ok(x, gamma, beta, mean, var) and _slope_read_from_result(alpha, x.dtype)):
        return _fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gamma, mean, var, training, eps, tuple(bool(w) for w in wanted), stats,
            "leaky_relu", ans, alpha)
    return None


def softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray, reduction: str
                                  ) -> np.ndarray | None:
    """Softmax cross-entropy for real logits, else ``None``."""
    labels = np.asarray(labels)
    if real_float(logits) and labels.dtype.kind in "iu" and labels.shape == logits.shape[:-1]:
        return _fast("softmax_ce_fast").softmax_cross_entropy_forward(logits, labels, reduction)
    return None


def softmax_cross_entropy_backward(g: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                                   reduction: str) -> np.ndarray | None:
    """Its gradient with respect to the logits for real arrays, else ``None``."""
    labels = np.asarray(labels)
    if (real_float(logits) and np.ndim(g) == 0 and labels.dtype.kind in "iu"
            and labels.shape == logits.shape[:-1]):
        return _fast("softmax_ce_fast").softmax_cross_entropy_backward(g, logits, labels,
                                                                       reduction)
    return None
