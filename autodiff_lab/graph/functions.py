"""The functions of the ``adl`` namespace: one per primitive of the op table.

Each normalises its arguments (axes to negative numbers, pairs for strides and paddings)
and calls :func:`~autodiff_lab.graph.tensor.apply`, which records a node when tracing and
evaluates at once on plain arrays. The maths lives in the op table, not here.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import numpy as np

from autodiff_lab.errors import TraceError
from autodiff_lab.graph.tensor import Tensor, apply

ArrayLike = Any  # a Tensor while tracing, or anything numpy accepts
IntPair = int | tuple[int, int]

def _shape_of(x: ArrayLike) -> tuple[int, ...]:
    return x.shape if isinstance(x, Tensor) else np.shape(x)


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Axes as sorted negative numbers (so extra leading axes never shift them)."""
    if axis is None:
        return tuple(range(-ndim, 0))
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in items:
        a = int(a)
        if not -ndim <= a < ndim:
            raise TraceError(f"axis {a} is out of range for an array with {ndim} axes")
        out.append(a - ndim if a >= 0 else a)
    if len(set(out)) != len(out):
        raise TraceError(f"repeated axis in {axis}")
    return tuple(sorted(out))


def _pair(v: IntPair, name: str) -> tuple[int, int] | Any:
    """An int attribute as a pair ``(v, v)``; a pair stays a pair (numpy integers become ints).

    Anything else (a bool, a float, a string, a triple) is passed on unchanged: the op's
    shape rule refuses it with a ShapeError naming the attribute, the same error a graph
    loaded from JSON gets. Nothing is rounded: ``stride=1.5`` is an error, not stride 1.
    """
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)):
        return tuple(int(x) if isinstance(x, np.integer) else x for x in v)
    return v


def _int(v: Any) -> Any:
    """A numpy integer as an int; anything else unchanged (the shape rule checks it)."""
    return int(v) if isinstance(v, np.integer) else v


def normalize_index(key: Any, shape: tuple[int, ...]) -> tuple:
    """A basic numpy index as a serialisable tuple of ('int', i) / ('slice', a, b, c) / ('newaxis',)."""
    if not isinstance(key, tuple):
        key = (key,)
    n_ellipsis = builtins.sum(1 for k in key if k is Ellipsis)
    if n_ellipsis > 1:
        raise TraceError("an index can only have one ellipsis (...)")
    used = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    out: list[tuple] = []
    for k in key:
        if k is Ellipsis:
            out.extend(("slice", None, None, None) for _ in range(len(shape) - used))
        elif k is None:
            out.append(("newaxis",))
        elif isinstance(k, slice):
            parts = [None if p is None else int(p) for p in (k.start, k.stop, k.step)]
            if parts[2] == 0:
                raise TraceError("slice step cannot be zero")
            out.append(("slice", *parts))
        elif isinstance(k, (int, np.integer)):
            out.append(("int", int(k)))
        else:
            raise TraceError(f"only integers, slices, None and ... can index a traced tensor, "
                             f"got {type(k).__name__}; use adl.concatenate to gather pieces")
    return tuple(out)


# --- element-wise ------------------------------------------------------------------------

def add(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a + b, with numpy broadcasting."""
    return apply("add", a, b)


def sub(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a − b, with numpy broadcasting."""
    return apply("sub", a, b)


def mul(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a · b element-wise (Hadamard product), with numpy broadcasting."""
    return apply("mul", a, b)


def div(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a / b element-wise, with numpy broadcasting."""
    return apply("div", a, b)


def neg(x: ArrayLike) -> ArrayLike:
    """−x."""
    return apply("neg", x)


def power(x: ArrayLike, exponent: float) -> ArrayLike:
    """x ** exponent for a constant exponent."""
    return apply("pow", x, exponent=float(exponent))


def reciprocal(x: ArrayLike) -> ArrayLike:
    """1 / x (derivative −1/x²)."""
    return apply("reciprocal", x)


def exp(x: ArrayLike) -> ArrayLike:
    """eˣ element-wise."""
    return apply("exp", x)


def log(x: ArrayLike) -> ArrayLike:
    """Natural logarithm element-wise."""
    return apply("log", x)


def sqrt(x: ArrayLike) -> ArrayLike:
    """Square root element-wise."""
    return apply("sqrt", x)


def sin(x: ArrayLike) -> ArrayLike:
    """Sine element-wise."""
    return apply("sin", x)


def cos(x: ArrayLike) -> ArrayLike:
    """Cosine element-wise."""
    return apply("cos", x)


def tanh(x: ArrayLike) -> ArrayLike:
    """Hyperbolic tangent element-wise."""
    return apply("tanh", x)


def sigmoid(x: ArrayLike) -> ArrayLike:
    """σ(x) = 1 / (1 + e⁻ˣ) element-wise; one fused node (derivative σ(1 − σ))."""
    return apply("sigmoid", x)


def relu(x: ArrayLike) -> ArrayLike:
    """max(0, x) element-wise; relu'(0) = 0."""
    return apply("relu", x)


def leaky_relu(x: ArrayLike, alpha: float = 0.01) -> ArrayLike:
    """x for x > 0, alpha·x otherwise."""
    return apply("leaky_relu", x, alpha=float(alpha))


def abs(x: ArrayLike) -> ArrayLike:  # noqa: A001 - the name users expect
    """|x| element-wise; abs'(0) = 0."""
    return apply("abs", x)


def maximum(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Element-wise maximum; on ties each side gets half the gradient."""
    return apply("maximum", a, b)


def minimum(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Element-wise minimum; on ties each side gets half the gradient."""
    return apply("minimum", a, b)


# --- reductions ---------------------------------------------------------------------------

def sum(x: ArrayLike, axis: int | Sequence[int] | None = None,  # noqa: A001
        keepdims: bool = False) -> ArrayLike:
    """Sum over ``axis`` (all axes by default)."""
    return apply("sum", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


def mean(x: ArrayLike, axis: int | Sequence[int] | None = None,
         keepdims: bool = False) -> ArrayLike:
    """Mean over ``axis`` (all axes by default)."""
    return apply("mean", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


def max(x: ArrayLike, axis: int | Sequence[int] | None = None,  # noqa: A001
        keepdims: bool = False) -> ArrayLike:
    """Maximum over ``axis`` (all axes by default); ties share the gradient evenly."""
    return apply("max", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


# --- shape ----------------------------------------------------------------------------

def reshape(x: ArrayLike, shape: int | Sequence[int]) -> ArrayLike:
    """Same elements in a new shape (one entry may be −1)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if -1 in shape:
        size = int(np.prod(_shape_of(x), dtype=np.int64))
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if shape.count(-1) > 1 or known == 0 or size % known:
            raise TraceError(f"cannot reshape {_shape_of(x)} into {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    return apply("reshape", x, shape=shape)


def transpose(x: ArrayLike, axes: Sequence[int] | None = None) -> ArrayLike:
    """Permute axes (reverse them by default; ``x.T`` for a matrix)."""
    nd = len(_shape_of(x))
    axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % nd for a in axes)
    return apply("transpose", x, axes=axes)


def broadcast_to(x: ArrayLike, shape: Sequence[int]) -> ArrayLike:
    """Repeat ``x`` along new or size-1 axes to ``shape``."""
    return apply("broadcast_to", x, shape=tuple(int(s) for s in shape))


def concatenate(xs: Sequence[ArrayLike], axis: int = 0) -> ArrayLike:
    """Join arrays along an existing axis."""
    if not xs:
        raise TraceError("concatenate needs at least one array")
    nd = len(_shape_of(xs[0]))
    return apply("concatenate", *xs, axis=_axes(axis, nd)[0])


def flatten(x: ArrayLike) -> ArrayLike:
    """All elements in one axis."""
    return reshape(x, (-1,))


# --- linear algebra -------------------------------------------------------------------

def matmul(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Matrix product ``a @ b`` with numpy's rules (1-D operands, batch broadcasting)."""
    return apply("matmul", a, b)


# --- convolution and pooling ----------------------------------------------------------

def _padding(padding: IntPair | str, kernel: tuple[int, int], dilation: Any,
             stride: Any) -> Any:
    if padding == "same":
        if stride != (1, 1):
            raise TraceError(f"padding='same' needs stride 1, got stride={stride!r}")
        valid = isinstance(dilation, tuple) and len(dilation) == 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilation)
        if not valid:
            return (0, 0)  # the shape rule names the bad dilation
        if any((d * (k - 1)) % 2 for k, d in zip(kernel, dilation)):
            raise TraceError("padding='same' needs an odd effective kernel size "
                             f"(kernel {kernel[0]}×{kernel[1]}, dilation {dilation})")
        return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    if padding == "valid":
        return (0, 0)
    return _pair(padding, "padding")  # type: ignore[arg-type]


def conv2d(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, stride: IntPair = 1,
           padding: IntPair | str = 0, dilation: IntPair = 1, groups: int = 1) -> ArrayLike:
    """2-D convolution (cross-correlation) of ``x`` (N, C, H, W) with ``w`` (F, C/groups, kh, kw).

    ``padding`` is an int, a pair, ``"same"`` or ``"valid"``; ``b`` an optional bias (F,).
    """
    ws = _shape_of(w)
    stride_, dilation_ = _pair(stride, "stride"), _pair(dilation, "dilation")
    kernel = (ws[2], ws[3]) if len(ws) == 4 else (1, 1)
    args = (x, w) if b is None else (x, w, b)
    return apply("conv2d", *args, stride=stride_, dilation=dilation_, groups=_int(groups),
                 padding=_padding(padding, kernel, dilation_, stride_))


def conv_transpose2d(x: ArrayLike, w: ArrayLike, b: ArrayLike | None = None, stride: IntPair = 1,
                     padding: IntPair = 0, output_padding: IntPair = 0, dilation: IntPair = 1,
                     groups: int = 1) -> ArrayLike:
    """Transpose convolution of ``x`` (N, C, H, W) with ``w`` (C, F/groups, kh, kw) (PyTorch layout)."""
    args = (x, w) if b is None else (x, w, b)
    return apply("conv_transpose2d", *args, stride=_pair(stride, "stride"),
                 padding=_pair(padding, "padding"),
                 output_padding=_pair(output_padding, "output_padding"),
                 dilation=_pair(dilation, "dilation"), groups=_int(groups))


def max_pool2d(x: ArrayLike, kernel: IntPair = 2, stride: IntPair | None = None,
               padding: IntPair = 0) -> ArrayLike:
    """Maximum over windows of ``x`` (N, C, H, W); stride defaults to the kernel size."""
    k = _pair(kernel, "kernel")
    return apply("max_pool2d", x, kernel=k, stride=k if stride is None else _pair(stride, "stride"),
                 padding=_pair(padding, "padding"))


def avg_pool2d(x: ArrayLike, kernel: IntPair = 2, stride: IntPair | None = None,
               padding: IntPair = 0) -> ArrayLike:
    """Mean over windows of ``x`` (N, C, H, W); stride defaults to the kernel size."""
    k = _pair(kernel, "kernel")
    return apply("avg_pool2d", x, kernel=k, stride=k if stride is None else _pair(stride, "stride"),
                 padding=_pair(padding, "padding"))


def upsample(x: ArrayLike, scale: IntPair = 2, mode: str = "nearest") -> ArrayLike:
    """Up-sampling of the last two axes by integer factors: ``mode="nearest"`` repeats each
    pixel (op ``upsample``), ``mode="bilinear"`` interpolates as PyTorch's
    ``interpolate(..., mode="bilinear", align_corners=False)`` (op ``upsample_bilinear``)."""
    ops = {"nearest": "upsample", "bilinear": "upsample_bilinear"}
    if mode not in ops:
        raise TraceError(f"upsample mode must be 'nearest' or 'bilinear', got mode={mode!r}")
    return apply(ops[mode], x, scale=_pair(scale, "scale"))


def batch_norm(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
               running_mean: ArrayLike | None = None, running_var: ArrayLike | None = None,
               training: bool = True, eps: float = 1e-5) -> ArrayLike:
    """Batch normalisation per channel (axis 1) of ``x`` (N, C) or (N, C, H, W).

    Training mode normalises with the batch's mean and (biased) variance; evaluation mode
    (``training=False``) with the running statistics, which must then be given.
    """
    args = (x, gamma, beta) if training else (x, gamma, beta, running_mean, running_var)
    if not training and (running_mean is None or running_var is None):
        raise TraceError("batch_norm(training=False) needs running_mean and running_var")
    return apply("batch_norm", *args, training=bool(training), eps=float(eps))


def dropout(x: ArrayLike, mask: ArrayLike, p: float = 0.5) -> ArrayLike:
    """Inverted dropout with a given keep-mask: ``x · mask / (1 − p)``.

    ``mask`` holds integers, 1 = keep and 0 = drop (shape of ``x``, or broadcasting to it);
    it is data, like class labels, so the op is deterministic and not differentiable in it.
    Draw it with probability ``1 − p`` of a 1 per element, e.g.
    ``(rng.random(x.shape) >= p).astype(np.uint8)``; :class:`autodiff_lab.nn.Dropout`
    does so from its seeded generator.
    """
    if not isinstance(mask, Tensor):
        mask = np.asarray(mask)
        if mask.dtype == np.bool_:
            mask = mask.astype(np.uint8)
        elif mask.dtype.kind not in "iu":
            raise TraceError(f"the dropout mask must hold integers 0/1 (1 = keep), got {mask.dtype}")
    return apply("dropout", x, mask, p=float(p))


# --- softmax and losses -----------------------------------------------------------------

def log_softmax(x: ArrayLike, axis: int = -1) -> ArrayLike:
    """log softmax along ``axis`` (numerically stable)."""
    return apply("log_softmax", x, axis=_axes(axis, len(_shape_of(x)))[0])


def softmax(x: ArrayLike, axis: int = -1) -> ArrayLike:
    """softmax along ``axis``."""
    return apply("softmax", x, axis=_axes(axis, len(_shape_of(x)))[0])


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike,
                          reduction: str = "mean") -> ArrayLike:
    """Cross-entropy of softmax(logits) (…, K) against integer class labels (…)."""
    return apply("softmax_cross_entropy", logits, labels, reduction=reduction)


def mse_loss(pred: ArrayLike, target: ArrayLike, reduction: str = "sum") -> ArrayLike:
    """½ Σ (pred − target)² (``reduction="mean"``: ½ mean); the BRIEF's L = ½‖y − ŷ‖²."""
    return apply("mse", pred, target, reduction=reduction)


def l1_loss(pred: ArrayLike, target: ArrayLike, reduction: str = "sum") -> ArrayLike:
    """Σ |pred − target| (``reduction="mean"``: the mean)."""
    return apply("l1", pred, target, reduction=reduction)
