"""The functions of the ``adl`` namespace: one per primitive of the op table.

Each works on traced tensors (inside :func:`adl.trace`, it records a node of the graph) and
on numbers and numpy arrays (it evaluates the op's forward at once, so the same code runs
eagerly). The examples assume ``import numpy as np`` and ``import autodiff_lab as adl``.

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
    """a + b element-wise, with numpy broadcasting (``a + b`` on tensors is the same op).

    Args:
        a: a traced tensor, an array or a number.
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> print(adl.add(np.array([1.0, 2.0]), 1.0))
        [2. 3.]
    """
    return apply("add", a, b)


def sub(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a − b element-wise, with numpy broadcasting (``a - b`` on tensors).

    Args:
        a: a traced tensor, an array or a number.
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> print(adl.sub(np.array([1.0, 2.0]), np.array([0.5, 0.5])))
        [0.5 1.5]
    """
    return apply("sub", a, b)


def mul(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a · b element-wise (the Hadamard product), with numpy broadcasting (``a * b``).

    For h = f ⊙ g the Jacobian dh/df is diag(g); the VJP is ``g_upstream * b``.

    Args:
        a: a traced tensor, an array or a number.
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> print(adl.mul(np.array([1.0, 2.0]), np.array([3.0, 4.0])))
        [3. 8.]
    """
    return apply("mul", a, b)


def div(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """a / b element-wise, with numpy broadcasting (``a / b``).

    Args:
        a: a traced tensor, an array or a number.
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> print(adl.div(np.array([1.0, 3.0]), 2.0))
        [0.5 1.5]
    """
    return apply("div", a, b)


def neg(x: ArrayLike) -> ArrayLike:
    """−x element-wise (``-x``).

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> print(adl.neg(np.array([1.0, -2.0])))
        [-1.  2.]
    """
    return apply("neg", x)


def power(x: ArrayLike, exponent: float) -> ArrayLike:
    """x ** exponent for a constant exponent (``x ** 3`` on tensors); derivative
    exponent · x^(exponent − 1).

    Args:
        x: a traced tensor, an array or a number.
        exponent: a constant (a Python number, not a tensor).

    Examples:
        >>> print(adl.power(np.array([2.0, 3.0]), 2))
        [4. 9.]
    """
    return apply("pow", x, exponent=float(exponent))


def reciprocal(x: ArrayLike) -> ArrayLike:
    """1 / x element-wise; derivative −1/x².

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> print(adl.reciprocal(np.array([2.0, 4.0])))
        [0.5  0.25]
    """
    return apply("reciprocal", x)


def exp(x: ArrayLike) -> ArrayLike:
    """eˣ element-wise; the derivative reuses the result (d eˣ = eˣ).

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> print(adl.exp(np.array([0.0, 1.0])))
        [1.         2.71828183]
    """
    return apply("exp", x)


def log(x: ArrayLike) -> ArrayLike:
    """Natural logarithm element-wise; derivative 1/x.

    Args:
        x: a traced tensor, an array or a number (positive).

    Examples:
        >>> print(adl.log(np.array([1.0, np.e])))
        [0. 1.]
    """
    return apply("log", x)


def sqrt(x: ArrayLike) -> ArrayLike:
    """Square root element-wise; derivative 1/(2√x), infinite at 0 (engines warn there).

    Args:
        x: a traced tensor, an array or a number (non-negative).

    Examples:
        >>> print(adl.sqrt(np.array([4.0, 9.0])))
        [2. 3.]
    """
    return apply("sqrt", x)


def sin(x: ArrayLike) -> ArrayLike:
    """Sine element-wise; derivative cos x.

    Args:
        x: a traced tensor, an array or a number (radians).

    Examples:
        >>> print(adl.sin(np.array([0.0])))
        [0.]
    """
    return apply("sin", x)


def cos(x: ArrayLike) -> ArrayLike:
    """Cosine element-wise; derivative −sin x.

    Args:
        x: a traced tensor, an array or a number (radians).

    Examples:
        >>> print(adl.cos(np.array([0.0])))
        [1.]
    """
    return apply("cos", x)


def tanh(x: ArrayLike) -> ArrayLike:
    """Hyperbolic tangent element-wise; derivative 1 − tanh².

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> g = adl.trace(lambda x: adl.sum(adl.tanh(x)), x=(2,))
        >>> print(adl.gradient(g, {"x": np.zeros(2)}).grads["x"])
        [1. 1.]
    """
    return apply("tanh", x)


def sigmoid(x: ArrayLike) -> ArrayLike:
    """σ(x) = 1 / (1 + e⁻ˣ) element-wise, as one fused node; derivative σ(1 − σ).

    ``graph.expand("sigmoid")`` (or ``adl.render(..., primitive=True)``) writes it in
    primitives: neg, exp, +1, 1/x.

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> print(adl.sigmoid(np.array([0.0])))
        [0.5]
        >>> g = adl.trace(lambda z: adl.sigmoid(z), z=0.0)
        >>> print(adl.gradient(g, {"z": 0.0}).grads["z"])
        0.25
    """
    return apply("sigmoid", x)


def relu(x: ArrayLike) -> ArrayLike:
    """max(0, x) element-wise; relu′(x) = 1 for x > 0 and 0 otherwise, so relu′(0) = 0
    in every engine.

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> g = adl.trace(lambda x: adl.sum(adl.relu(x)), x=(3,))
        >>> print(adl.gradient(g, {"x": np.array([-1.0, 0.0, 2.0])}).grads["x"])
        [0. 0. 1.]
    """
    return apply("relu", x)


def leaky_relu(x: ArrayLike, alpha: float = 0.01) -> ArrayLike:
    """x for x > 0, alpha·x otherwise; derivative 1 or alpha (alpha at 0).

    Args:
        x: a traced tensor, an array or a number.
        alpha: the slope for x ≤ 0.

    Examples:
        >>> print(adl.leaky_relu(np.array([-2.0, 3.0]), alpha=0.1))
        [-0.2  3. ]
    """
    return apply("leaky_relu", x, alpha=float(alpha))


def abs(x: ArrayLike) -> ArrayLike:  # noqa: A001 - the name users expect
    """|x| element-wise; abs′(0) = 0. On complex numbers (the complex step) it acts on
    the real part, unlike numpy's modulus.

    Args:
        x: a traced tensor, an array or a number.

    Examples:
        >>> print(adl.abs(np.array([-2.0, 3.0])))
        [2. 3.]
    """
    return apply("abs", x)


def maximum(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Element-wise maximum, with numpy broadcasting; on ties each side gets half the
    gradient.

    Args:
        a: a traced tensor, an array or a number (``adl.maximum(x, 0)`` is a ReLU).
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> g = adl.trace(lambda a, b: adl.sum(adl.maximum(a, b)), a=(2,), b=(2,))
        >>> r = adl.gradient(g, {"a": np.array([1.0, 2.0]), "b": np.array([0.0, 2.0])})
        >>> print(r.grads["a"], r.grads["b"])
        [1.  0.5] [0.  0.5]
    """
    return apply("maximum", a, b)


def minimum(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Element-wise minimum, with numpy broadcasting; on ties each side gets half the
    gradient.

    Args:
        a: a traced tensor, an array or a number.
        b: likewise, broadcasting against ``a``.

    Examples:
        >>> print(adl.minimum(np.array([1.0, 5.0]), 2.0))
        [1. 2.]
    """
    return apply("minimum", a, b)


# --- reductions ---------------------------------------------------------------------------

def sum(x: ArrayLike, axis: int | Sequence[int] | None = None,  # noqa: A001
        keepdims: bool = False) -> ArrayLike:
    """Sum over ``axis`` (all axes by default); the gradient spreads back unchanged.

    Args:
        x: a traced tensor or an array.
        axis: an axis, a tuple of axes, or ``None`` for all.
        keepdims: keep the summed axes with size 1.

    Examples:
        >>> print(adl.sum(np.ones((2, 3)), axis=0))
        [2. 2. 2.]
    """
    return apply("sum", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


def mean(x: ArrayLike, axis: int | Sequence[int] | None = None,
         keepdims: bool = False) -> ArrayLike:
    """Mean over ``axis`` (all axes by default).

    Args:
        x: a traced tensor or an array.
        axis: an axis, a tuple of axes, or ``None`` for all.
        keepdims: keep the reduced axes with size 1.

    Examples:
        >>> print(adl.mean(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=1))
        [1.5 3.5]
    """
    return apply("mean", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


def max(x: ArrayLike, axis: int | Sequence[int] | None = None,  # noqa: A001
        keepdims: bool = False) -> ArrayLike:
    """Maximum over ``axis`` (all axes by default); tied maxima share the gradient
    evenly.

    Args:
        x: a traced tensor or an array.
        axis: an axis, a tuple of axes, or ``None`` for all.
        keepdims: keep the reduced axes with size 1.

    Examples:
        >>> g = adl.trace(lambda x: adl.max(x), x=(3,))
        >>> print(adl.gradient(g, {"x": np.array([1.0, 3.0, 3.0])}).grads["x"])
        [0.  0.5 0.5]
    """
    return apply("max", x, axes=_axes(axis, len(_shape_of(x))), keepdims=bool(keepdims))


# --- shape ----------------------------------------------------------------------------

def reshape(x: ArrayLike, shape: int | Sequence[int]) -> ArrayLike:
    """The same elements in a new shape (row-major order; one entry may be −1).

    Args:
        x: a traced tensor or an array.
        shape: the new shape (an int or a sequence of ints).

    Examples:
        >>> adl.reshape(np.arange(6.0), (2, -1)).shape
        (2, 3)
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if -1 in shape:
        size = int(np.prod(_shape_of(x), dtype=np.int64))
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if shape.count(-1) > 1 or known == 0 or size % known:
            raise TraceError(f"cannot reshape {_shape_of(x)} into {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    return apply("reshape", x, shape=shape)


def transpose(x: ArrayLike, axes: Sequence[int] | None = None) -> ArrayLike:
    """Permute the axes (reverse them by default; ``x.T`` for a matrix).

    Args:
        x: a traced tensor or an array.
        axes: the new order of the axes, or ``None`` to reverse them.

    Examples:
        >>> adl.transpose(np.zeros((2, 3, 4)), (2, 0, 1)).shape
        (4, 2, 3)
    """
    nd = len(_shape_of(x))
    axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) % nd for a in axes)
    return apply("transpose", x, axes=axes)


def broadcast_to(x: ArrayLike, shape: Sequence[int]) -> ArrayLike:
    """Repeat ``x`` along new or size-1 axes to ``shape``; the gradient is summed back.

    Args:
        x: a traced tensor or an array.
        shape: the target shape (numpy broadcasting rules).

    Examples:
        >>> adl.broadcast_to(np.ones(3), (2, 3)).shape
        (2, 3)
    """
    return apply("broadcast_to", x, shape=tuple(int(s) for s in shape))


def concatenate(xs: Sequence[ArrayLike], axis: int = 0) -> ArrayLike:
    """Join arrays along an existing axis; each gets its slice of the gradient back.

    Args:
        xs: a non-empty sequence of traced tensors or arrays (same shape but along ``axis``).
        axis: the axis to join along.

    Examples:
        >>> print(adl.concatenate([np.zeros(2), np.ones(1)]))
        [0. 0. 1.]
    """
    if not xs:
        raise TraceError("concatenate needs at least one array")
    nd = len(_shape_of(xs[0]))
    return apply("concatenate", *xs, axis=_axes(axis, nd)[0])


def flatten(x: ArrayLike) -> ArrayLike:
    """All elements in one axis (``reshape(x, (-1,))``).

    Args:
        x: a traced tensor or an array.

    Examples:
        >>> adl.flatten(np.zeros((2, 3))).shape
        (6,)
    """
    return reshape(x, (-1,))


# --- linear algebra -------------------------------------------------------------------

def matmul(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Matrix product ``a @ b`` with numpy's rules (1-D operands, batch broadcasting).

    For y = W g the Jacobian dy/dg is W (output × input); the gradients of a loss are
    ∂L/∂a = G bᵀ and ∂L/∂b = aᵀ G for the upstream gradient G.

    Args:
        a: a traced tensor or an array.
        b: a traced tensor or an array whose first (or only) axis matches ``a``'s last.

    Examples:
        >>> print(adl.matmul(np.array([[1.0, 2.0]]), np.array([3.0, 4.0])))
        [11.]
    """
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
    """2-D convolution (cross-correlation, as in PyTorch) of ``x`` with ``w``.

    Args:
        x: input (N, C, H, W).
        w: filters (F, C/groups, kh, kw).
        b: optional bias (F,).
        stride: int or pair.
        padding: int, pair, ``"same"`` (stride 1, odd effective kernel) or ``"valid"``.
        dilation: int or pair.
        groups: split the channels into this many independent groups.

    Returns:
        (N, F, H_out, W_out) with H_out = (H + 2·pad − dilation·(kh − 1) − 1) // stride + 1.

    Examples:
        >>> y = adl.conv2d(np.ones((1, 1, 5, 5)), np.ones((2, 1, 3, 3)), padding="same")
        >>> y.shape, float(y[0, 0, 2, 2])
        ((1, 2, 5, 5), 9.0)
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
    """Transpose convolution (the adjoint of :func:`conv2d`), PyTorch's layout.

    Args:
        x: input (N, C, H, W).
        w: filters (C, F/groups, kh, kw).
        b: optional bias (F,).
        stride: int or pair.
        padding: int or pair, removed from each side of the output.
        output_padding: int or pair, added to one side (to reach a wanted size).
        dilation: int or pair.
        groups: independent channel groups.

    Returns:
        (N, F, H_out, W_out) with H_out = (H − 1)·stride − 2·pad + dilation·(kh − 1)
        + output_padding + 1.

    Examples:
        >>> adl.conv_transpose2d(np.ones((1, 2, 4, 4)), np.ones((2, 3, 2, 2)), stride=2).shape
        (1, 3, 8, 8)
    """
    args = (x, w) if b is None else (x, w, b)
    return apply("conv_transpose2d", *args, stride=_pair(stride, "stride"),
                 padding=_pair(padding, "padding"),
                 output_padding=_pair(output_padding, "output_padding"),
                 dilation=_pair(dilation, "dilation"), groups=_int(groups))


def max_pool2d(x: ArrayLike, kernel: IntPair = 2, stride: IntPair | None = None,
               padding: IntPair = 0) -> ArrayLike:
    """Maximum over windows of ``x`` (N, C, H, W); a window's gradient goes to its first
    maximum.

    Args:
        x: input (N, C, H, W).
        kernel: window size, int or pair.
        stride: int or pair; defaults to the kernel size.
        padding: int or pair (padded with −∞).

    Examples:
        >>> print(adl.max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0])
        [[ 5.  7.]
         [13. 15.]]
    """
    k = _pair(kernel, "kernel")
    return apply("max_pool2d", x, kernel=k, stride=k if stride is None else _pair(stride, "stride"),
                 padding=_pair(padding, "padding"))


def avg_pool2d(x: ArrayLike, kernel: IntPair = 2, stride: IntPair | None = None,
               padding: IntPair = 0) -> ArrayLike:
    """Mean over windows of ``x`` (N, C, H, W); padded zeros count in the mean.

    Args:
        x: input (N, C, H, W).
        kernel: window size, int or pair.
        stride: int or pair; defaults to the kernel size.
        padding: int or pair.

    Examples:
        >>> print(adl.avg_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))[0, 0])
        [[ 2.5  4.5]
         [10.5 12.5]]
    """
    k = _pair(kernel, "kernel")
    return apply("avg_pool2d", x, kernel=k, stride=k if stride is None else _pair(stride, "stride"),
                 padding=_pair(padding, "padding"))


def upsample(x: ArrayLike, scale: IntPair = 2, mode: str = "nearest") -> ArrayLike:
    """Up-sampling of the last two axes by integer factors: ``mode="nearest"`` repeats each
    pixel (op ``upsample``), ``mode="bilinear"`` interpolates as PyTorch's
    ``interpolate(..., mode="bilinear", align_corners=False)`` (op ``upsample_bilinear``).

    Args:
        x: input (N, C, H, W).
        scale: int or pair of integer factors.
        mode: ``"nearest"`` (default) or ``"bilinear"``.

    Examples:
        >>> adl.upsample(np.ones((1, 1, 2, 3)), scale=2).shape
        (1, 1, 4, 6)
    """
    ops = {"nearest": "upsample", "bilinear": "upsample_bilinear"}
    if mode not in ops:
        raise TraceError(f"upsample mode must be 'nearest' or 'bilinear', got mode={mode!r}")
    return apply(ops[mode], x, scale=_pair(scale, "scale"))


def batch_norm(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
               running_mean: ArrayLike | None = None, running_var: ArrayLike | None = None,
               training: bool = True, eps: float = 1e-5) -> ArrayLike:
    """Batch normalisation per channel (axis 1) of ``x`` (N, C) or (N, C, H, W):
    γ · (x − μ) / √(σ² + eps) + β.

    Training mode normalises with the batch's mean and (biased) variance; evaluation mode
    (``training=False``) with the running statistics, which must then be given.
    (:class:`autodiff_lab.nn.BatchNorm2d` keeps and updates the running statistics.)

    Args:
        x: input (N, C) or (N, C, H, W).
        gamma: scale γ (C,).
        beta: shift β (C,).
        running_mean: (C,), needed with ``training=False``.
        running_var: (C,), needed with ``training=False``.
        training: batch statistics (True) or running statistics (False).
        eps: added to the variance.

    Examples:
        >>> y = adl.batch_norm(np.array([[1.0], [3.0]]), np.ones(1), np.zeros(1))
        >>> print(np.round(y.ravel(), 4))
        [-1.  1.]
    """
    args = (x, gamma, beta) if training else (x, gamma, beta, running_mean, running_var)
    if not training and (running_mean is None or running_var is None):
        raise TraceError("batch_norm(training=False) needs running_mean and running_var")
    return apply("batch_norm", *args, training=bool(training), eps=float(eps))


def batch_stats(x: ArrayLike) -> ArrayLike:
    """Per channel (axis 1) of ``x`` (N, C) or (N, C, H, W): its mean and unbiased variance
    over the other axes, stacked into shape (2, C) -- the batch statistics batch norm's
    running averages take, in one pass over ``x``.

    Examples:
        >>> print(adl.batch_stats(np.array([[1.0], [3.0]])).ravel())
        [2. 2.]
    """
    return apply("batch_stats", x)


def dropout(x: ArrayLike, mask: ArrayLike, p: float = 0.5) -> ArrayLike:
    """Inverted dropout with a given keep-mask: ``x · mask / (1 − p)``.

    ``mask`` holds integers, 1 = keep and 0 = drop (shape of ``x``, or broadcasting to it);
    it is data, like class labels, so the op is deterministic and not differentiable in it.
    Draw it with probability ``1 − p`` of a 1 per element, e.g.
    ``(rng.random(x.shape) >= p).astype(np.uint8)``; :class:`autodiff_lab.nn.Dropout`
    does so from its seeded generator.

    Args:
        x: a traced tensor or an array.
        mask: 0/1 integers (or booleans), broadcasting to ``x``.
        p: the drop probability the mask was drawn with.

    Examples:
        >>> print(adl.dropout(np.ones(4), np.array([1, 0, 1, 1]), p=0.25))
        [1.33333333 0.         1.33333333 1.33333333]
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
    """log softmax along ``axis``: x − log Σ eˣ, computed stably (max subtracted).

    Args:
        x: a traced tensor or an array.
        axis: the axis the probabilities are over.

    Examples:
        >>> print(np.round(np.exp(adl.log_softmax(np.array([0.0, np.log(3.0)]))), 4))
        [0.25 0.75]
    """
    return apply("log_softmax", x, axis=_axes(axis, len(_shape_of(x)))[0])


def softmax(x: ArrayLike, axis: int = -1) -> ArrayLike:
    """softmax along ``axis``: eˣ / Σ eˣ.

    Args:
        x: a traced tensor or an array.
        axis: the axis the probabilities are over.

    Examples:
        >>> print(adl.softmax(np.array([0.0, np.log(3.0)])))
        [0.25 0.75]
    """
    return apply("softmax", x, axis=_axes(axis, len(_shape_of(x)))[0])


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike,
                          reduction: str = "mean") -> ArrayLike:
    """Cross-entropy of softmax(logits) against integer class labels:
    −log softmax(logits)[label], averaged over the batch (``reduction="mean"``) or summed.

    The gradient with respect to the logits is (softmax − onehot(label)) / N; the labels are
    not differentiable (integers, checked against the number of classes).

    Args:
        logits: (…, K) scores.
        labels: (…) integers in 0 … K − 1.
        reduction: ``"mean"`` or ``"sum"``.

    Examples:
        >>> loss = adl.softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
        >>> print(round(float(loss), 4))        # log 4
        1.3863
    """
    return apply("softmax_cross_entropy", logits, labels, reduction=reduction)


def mse_loss(pred: ArrayLike, target: ArrayLike, reduction: str = "sum") -> ArrayLike:
    """½ Σ (pred − target)²: the loss L = ½‖y − ŷ‖², with dL/dŷ = ŷ − y
    (``reduction="mean"``: ½ mean over the elements).

    Args:
        pred: the prediction ŷ.
        target: the target y, of the same shape.
        reduction: ``"sum"`` (default) or ``"mean"``.

    Examples:
        >>> print(adl.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 0.0])))
        2.5
    """
    return apply("mse", pred, target, reduction=reduction)


def l1_loss(pred: ArrayLike, target: ArrayLike, reduction: str = "sum") -> ArrayLike:
    """Σ |pred − target| (``reduction="mean"``: the mean); derivative sign(ŷ − y), 0 at
    ties.

    Args:
        pred: the prediction ŷ.
        target: the target y, of the same shape.
        reduction: ``"sum"`` (default) or ``"mean"``.

    Examples:
        >>> print(adl.l1_loss(np.array([1.0, -2.0]), np.zeros(2)))
        3.0
    """
    return apply("l1", pred, target, reduction=reduction)
