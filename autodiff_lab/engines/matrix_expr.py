"""Matrix-level expressions: the small language the symbolic engine's matrix mode works in.

An :class:`MExpr` is one node of an expression DAG over whole tensors: matrix products,
transposes, Hadamard products, element-wise functions, sums, broadcasting, convolutions and
their adjoints. The op table's ``matrix`` rules are written in this language (they receive
this module as ``M``), so each derivative reads like the maths, e.g. for ``a @ b``::

    dL/da = G bᵀ        ->  lambda M, g, ans, a, b: g @ M.T(b)

The same DAG is

* generated as numpy source (:func:`generate_source`): one line per distinct node, so a
  value shared by several consumers is computed once (common subexpressions are merged by a
  structural key while generating);
* evaluated by that generated function, and
* printed as mathematics (``autodiff_lab.engines.matrix_display`` turns it into SymPy).

Constructors simplify as they build (``1·G = G``, ``(Xᵀ)ᵀ = X``, summing a gradient to the
shape it already has is a no-op ...), which is what makes the printed formulas short.

The runtime helpers at the bottom (``sum_to``, ``scatter``, the convolution adjoints ...)
are this module's own implementations, written from the textbook formulas (the input
gradient of a convolution is a full correlation with the rotated kernel, the weight
gradient a correlation of the input with the upstream gradient) rather than taken from the
op table's hand-written VJPs, so matrix mode is an independent check of the tape engine.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from autodiff_lab.graph.optable import OPS, broadcast_shapes, index_key

try:  # the fast forward convolution (Numba + BLAS) when it is there, the reference otherwise
    from autodiff_lab.kernels import dispatch as K
except ImportError:  # pragma: no cover
    from autodiff_lab.kernels import conv_reference as K

Shape = tuple[int, ...]


def _freeze(v: Any) -> Any:
    """A hashable version of an attribute value."""
    if isinstance(v, Mapping):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.generic):
        return v.item()
    return v


class _Key(tuple):
    """A structural key that computes its hash once. A key nests its arguments' keys, so a
    plain tuple would re-hash the whole expression *tree* at every dictionary lookup:
    exponential in the depth of a DAG whose values are shared (batch norm reads its input
    three times, a U-Net chains dozens of such layers)."""

    def __hash__(self) -> int:
        h = self.__dict__.get("hash")
        if h is None:
            h = self.__dict__["hash"] = tuple.__hash__(self)
        return h


class MExpr:
    """One node of a matrix-level expression DAG (op, arguments, attributes, shape).

    ``op`` is either the name of an op-table entry (its numpy forward computes the node) or
    one of the primitives of this module (``const``, ``leaf``, ``T``, ``step``, ``sum_to``
    ...). ``hint`` is a readable name for generated code and printing; it is not part of
    the node's identity.
    """

    __slots__ = ("op", "args", "attrs", "shape", "hint", "_key")
    __array_priority__ = 1000  # numpy scalars on the left defer to our operators

    def __init__(self, op: str, args: Sequence[MExpr], shape: Shape,
                 attrs: Mapping[str, Any] | None = None, hint: str | None = None) -> None:
        self.op = op
        self.args = tuple(args)
        self.attrs = dict(attrs or {})
        self.shape = tuple(int(d) for d in shape)
        self.hint = hint
        self._key: tuple | None = None

    # --- identity --------------------------------------------------------------------------
    @property
    def key(self) -> tuple:
        """Structural key: equal keys compute equal values (used to merge subexpressions)."""
        if self._key is None:
            # arguments first, without recursion (deep graphs), each key hashed as it is
            # made so that hashing a key never recurses either
            stack: list[MExpr] = [self]
            while stack:
                node = stack[-1]
                if node._key is not None:
                    stack.pop()
                    continue
                pending = [a for a in node.args if a._key is None]
                if pending:
                    stack.extend(pending)
                    continue
                node._key = _Key((node.op, tuple(a._key for a in node.args),
                                  _freeze(node.attrs)))
                hash(node._key)
                stack.pop()
        return self._key

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def is_const(self, value: float | None = None) -> bool:
        """Whether this is a constant (equal to ``value`` everywhere, when given)."""
        if self.op != "const":
            return False
        if value is None:
            return True
        v = np.asarray(self.attrs["value"])
        return bool(np.all(v == value))

    def __repr__(self) -> str:
        return f"MExpr({self.op}, shape={self.shape}{', ' + self.hint if self.hint else ''})"

    # --- operators: the maths reads as maths ------------------------------------------------
    def __add__(self, other: Any) -> MExpr:
        return add(self, other)

    def __radd__(self, other: Any) -> MExpr:
        return add(other, self)

    def __sub__(self, other: Any) -> MExpr:
        return sub(self, other)

    def __rsub__(self, other: Any) -> MExpr:
        return sub(other, self)

    def __mul__(self, other: Any) -> MExpr:
        return mul(self, other)

    def __rmul__(self, other: Any) -> MExpr:
        return mul(other, self)

    def __truediv__(self, other: Any) -> MExpr:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> MExpr:
        return div(other, self)

    def __neg__(self) -> MExpr:
        return neg(self)

    def __matmul__(self, other: Any) -> MExpr:
        return matmul(self, other)

    def __pow__(self, exponent: float) -> MExpr:
        return power(self, exponent)


# --------------------------------------------------------------------------------------
# leaves and constants
# --------------------------------------------------------------------------------------

def leaf(name: str, shape: Shape, node: int | None = None) -> MExpr:
    """A value given from outside (a graph input, a forward value, the seed)."""
    return MExpr("leaf", (), shape, {"name": name, "node": node}, hint=name)


def const(value: Any) -> MExpr:
    """A constant (Python number or small array)."""
    if isinstance(value, MExpr):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        v = arr.item()
        return MExpr("const", (), (), {"value": float(v) if not isinstance(v, bool) else float(v)})
    return MExpr("const", (), arr.shape, {"value": arr})


def _lift(x: Any) -> MExpr:
    return x if isinstance(x, MExpr) else const(x)


def _scalar_value(x: MExpr) -> float | None:
    if x.op == "const" and x.shape == ():
        return float(x.attrs["value"])
    return None


# --------------------------------------------------------------------------------------
# arithmetic (numpy broadcasting), with the simplifications that keep formulas short
# --------------------------------------------------------------------------------------

def apply(op: str, *args: Any, **attrs: Any) -> MExpr:
    """An op-table op applied to expressions (its numpy forward computes it)."""
    xs = [_lift(a) for a in args]
    entry = OPS[op]
    full = {**entry.attrs, **attrs}
    shape = entry.shape(*(x.shape for x in xs), **full)
    return MExpr(op, xs, shape, full)


def _folded(op: str, a: MExpr, b: MExpr) -> MExpr | None:
    va, vb = _scalar_value(a), _scalar_value(b)
    if va is not None and vb is not None:
        return const({"add": va + vb, "sub": va - vb, "mul": va * vb,
                      "div": va / vb if vb else math.nan}[op])
    return None


def add(a: Any, b: Any) -> MExpr:
    a, b = _lift(a), _lift(b)
    shape = broadcast_shapes(a.shape, b.shape)
    if (f := _folded("add", a, b)) is not None:
        return f
    if b.is_const(0) and a.shape == shape:
        return a
    if a.is_const(0) and b.shape == shape:
        return b
    if b.op == "neg":
        return sub(a, b.args[0])
    return MExpr("add", (a, b), shape)


def sub(a: Any, b: Any) -> MExpr:
    a, b = _lift(a), _lift(b)
    shape = broadcast_shapes(a.shape, b.shape)
    if (f := _folded("sub", a, b)) is not None:
        return f
    if b.is_const(0) and a.shape == shape:
        return a
    if a.is_const(0) and b.shape == shape:
        return neg(b)
    if b.op == "neg":
        return add(a, b.args[0])
    return MExpr("sub", (a, b), shape)


def mul(a: Any, b: Any) -> MExpr:
    """Element-wise (Hadamard) product, or scaling when one side is a scalar."""
    a, b = _lift(a), _lift(b)
    shape = broadcast_shapes(a.shape, b.shape)
    if (f := _folded("mul", a, b)) is not None:
        return f
    if b.is_const(1) and a.shape == shape:
        return a
    if a.is_const(1) and b.shape == shape:
        return b
    if b.is_const(-1) and a.shape == shape:
        return neg(a)
    if a.is_const(-1) and b.shape == shape:
        return neg(b)
    if a.op == "neg" and b.op == "neg":
        return mul(a.args[0], b.args[0])
    if a.op == "neg":
        return neg(mul(a.args[0], b))
    if b.op == "neg":
        return neg(mul(a, b.args[0]))
    if _scalar_value(b) is not None and _scalar_value(a) is None:
        a, b = b, a  # scalars first: 2·x, not x·2
    return MExpr("mul", (a, b), shape)


def div(a: Any, b: Any) -> MExpr:
    a, b = _lift(a), _lift(b)
    shape = broadcast_shapes(a.shape, b.shape)
    if (f := _folded("div", a, b)) is not None:
        return f
    if b.is_const(1) and a.shape == shape:
        return a
    if a.op == "neg":
        return neg(div(a.args[0], b))
    if (va := _scalar_value(a)) is not None and va < 0:
        return neg(div(-va, b))
    return MExpr("div", (a, b), shape)


def neg(a: Any) -> MExpr:
    a = _lift(a)
    if a.op == "neg":
        return a.args[0]
    if (v := _scalar_value(a)) is not None:
        return const(-v)
    if a.op == "mul" and (c := _scalar_value(a.args[0])) is not None:
        return mul(-c, a.args[1])
    return MExpr("neg", (a,), a.shape)


def power(x: Any, exponent: float) -> MExpr:
    """x ** p for a constant p."""
    x = _lift(x)
    if exponent == 1:
        return x
    if exponent == 0:
        return mul(0.0, x) if x.shape else const(1.0)
    return MExpr("pow", (x,), x.shape, {"exponent": float(exponent)})


def matmul(a: Any, b: Any) -> MExpr:
    """Matrix product with numpy's rules (1-D operands, batch broadcasting)."""
    a, b = _lift(a), _lift(b)
    return MExpr("matmul", (a, b), OPS["matmul"].shape(a.shape, b.shape))


def T(x: Any) -> MExpr:
    """Transpose of the last two axes (a vector is its own transpose)."""
    x = _lift(x)
    if x.ndim < 2:
        return x
    if x.op == "T":
        return x.args[0]
    return MExpr("T", (x,), x.shape[:-2] + (x.shape[-1], x.shape[-2]))


def _elementwise(name: str) -> Any:
    def fn(x: Any) -> MExpr:
        x = _lift(x)
        return MExpr(name, (x,), x.shape)
    fn.__name__ = name
    fn.__doc__ = f"element-wise {name}"
    return fn


exp = _elementwise("exp")
log = _elementwise("log")
sqrt = _elementwise("sqrt")
sin = _elementwise("sin")
cos = _elementwise("cos")
tanh = _elementwise("tanh")
sigmoid = _elementwise("sigmoid")
relu = _elementwise("relu")
#: 1[x > 0]: the derivative of relu (so relu'(0) = 0, the project's convention)
step = _elementwise("step")
#: sign(x), 0 at 0 (the derivative of |x|, so abs'(0) = 0)
sign = _elementwise("sign")


def equal(a: Any, b: Any) -> MExpr:
    """1 where a == b, else 0 (used to share a max among its ties)."""
    a, b = _lift(a), _lift(b)
    return MExpr("equal", (a, b), broadcast_shapes(a.shape, b.shape))


# --------------------------------------------------------------------------------------
# reductions, broadcasting and shape
# --------------------------------------------------------------------------------------

def _norm_axes(axes: Iterable[int], ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in axes)) if ndim else ()


def sum(x: Any, axes: Iterable[int] | None = None, keepdims: bool = False) -> MExpr:  # noqa: A001
    """Σ over ``axes`` (all axes when None)."""
    x = _lift(x)
    ax = tuple(range(x.ndim)) if axes is None else _norm_axes(axes, x.ndim)
    if not ax:
        return x
    shape = tuple(1 if i in ax else d for i, d in enumerate(x.shape)) if keepdims else \
        tuple(d for i, d in enumerate(x.shape) if i not in ax)
    return MExpr("sum", (x,), shape, {"axes": ax, "keepdims": bool(keepdims)})


def mean(x: Any, axes: Iterable[int] | None = None, keepdims: bool = False) -> MExpr:
    """Mean over ``axes`` (all axes when None)."""
    x = _lift(x)
    ax = tuple(range(x.ndim)) if axes is None else _norm_axes(axes, x.ndim)
    count = math.prod(x.shape[a] for a in ax)
    return div(sum(x, ax, keepdims), float(count)) if count != 1 else sum(x, ax, keepdims)


def kept_shape(shape: Shape, axes: Iterable[int]) -> Shape:
    """``shape`` with the given axes set to 1 (the shape of a keepdims reduction)."""
    ax = _norm_axes(axes, len(shape))
    return tuple(1 if i in ax else d for i, d in enumerate(shape))


def reshape(x: Any, shape: Sequence[int]) -> MExpr:
    x = _lift(x)
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    if x.op == "reshape":
        return reshape(x.args[0], shape)
    return MExpr("reshape", (x,), shape, {"shape": shape})


def transpose(x: Any, axes: Sequence[int]) -> MExpr:
    x = _lift(x)
    axes = tuple(int(a) for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    if x.ndim == 2:
        return T(x)
    return MExpr("transpose", (x,), tuple(x.shape[a] for a in axes), {"axes": axes})


def broadcast_to(x: Any, shape: Sequence[int]) -> MExpr:
    x = _lift(x)
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    broadcast_shapes(x.shape, shape)
    return MExpr("broadcast_to", (x,), shape, {"shape": shape})


def sum_to(x: Any, shape: Sequence[int]) -> MExpr:
    """Sum ``x`` over the axes broadcasting added or stretched, back to ``shape``."""
    x = _lift(x)
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    if x.op == "broadcast_to" and x.args[0].shape == shape:
        return x.args[0]
    return MExpr("sum_to", (x,), shape, {"shape": shape})


def index(x: Any, key: tuple) -> MExpr:
    """Basic indexing ``x[key]`` (key in the op table's serialisable form)."""
    return apply("index", x, key=tuple(key))


def scatter(g: Any, key: tuple, shape: Sequence[int]) -> MExpr:
    """Zeros of ``shape`` with ``g`` placed at ``[key]`` (the adjoint of indexing)."""
    g = _lift(g)
    return MExpr("scatter", (g,), tuple(shape), {"key": tuple(key)})


def channel(v: Any, ndim: int) -> MExpr:
    """A per-channel vector (C,) shaped (1, C, 1, ...) to broadcast against (N, C, ...)."""
    v = _lift(v)
    return reshape(v, (1, v.shape[-1]) + (1,) * (ndim - 2))


def onehot(labels: Any, classes: int) -> MExpr:
    """One-hot rows of integer labels: shape labels.shape + (classes,)."""
    labels = _lift(labels)
    return MExpr("onehot", (labels,), labels.shape + (classes,), {"classes": int(classes)})


# --------------------------------------------------------------------------------------
# convolution, pooling: forward ops and adjoints as single nodes
# --------------------------------------------------------------------------------------

def conv2d(x: Any, w: Any, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) -> MExpr:
    """Cross-correlation (the op table's conv2d forward, no bias)."""
    return apply("conv2d", x, w, stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation), groups=groups)


def _conv_attrs(stride, padding, dilation, groups) -> dict[str, Any]:
    if groups != 1:
        raise NotImplementedError("matrix mode supports convolutions with groups=1 only")
    return {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation)}


def conv2d_input_grad(g: Any, w: Any, x_shape: Shape, stride=(1, 1), padding=(0, 0),
                      dilation=(1, 1), groups=1) -> MExpr:
    """∂L/∂X of Y = X ⋆ W given G = ∂L/∂Y: the full correlation of G with the rotated kernel."""
    g, w = _lift(g), _lift(w)
    return MExpr("conv2d_input_grad", (g, w), tuple(x_shape),
                 _conv_attrs(stride, padding, dilation, groups))


def conv2d_weight_grad(g: Any, x: Any, w_shape: Shape, stride=(1, 1), padding=(0, 0),
                       dilation=(1, 1), groups=1) -> MExpr:
    """∂L/∂W of Y = X ⋆ W given G = ∂L/∂Y: the correlation of X with G, per channel pair."""
    g, x = _lift(g), _lift(x)
    return MExpr("conv2d_weight_grad", (g, x), tuple(w_shape),
                 _conv_attrs(stride, padding, dilation, groups))


def maxpool_grad(g: Any, x: Any, kernel, stride, padding) -> MExpr:
    """Each window's gradient sent to the window's first maximum."""
    g, x = _lift(g), _lift(x)
    return MExpr("maxpool_grad", (g, x), x.shape,
                 {"kernel": tuple(kernel), "stride": tuple(stride), "padding": tuple(padding)})


def avgpool_grad(g: Any, x_shape: Shape, kernel, stride, padding) -> MExpr:
    """Each window's gradient spread evenly over the window."""
    g = _lift(g)
    return MExpr("avgpool_grad", (g,), tuple(x_shape),
                 {"kernel": tuple(kernel), "stride": tuple(stride), "padding": tuple(padding)})


# --------------------------------------------------------------------------------------
# runtime helpers the generated code calls (this module's own implementations)
# --------------------------------------------------------------------------------------

def rt_sum_to(x: np.ndarray, shape: Shape) -> np.ndarray:
    """Sum over leading axes broadcasting added and axes it stretched from 1."""
    lead = x.ndim - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape)
                                if d == 1 and x.shape[lead + i] != 1]
    out = np.sum(x, axis=tuple(axes), keepdims=True) if axes else x
    return out.reshape(shape)


def rt_step(x: Any) -> np.ndarray:
    """1[x > 0] in x's float dtype (0 at 0: relu'(0) = 0)."""
    x = np.asarray(x)
    return (x > 0).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def rt_scatter(g: np.ndarray, key: tuple, shape: Shape) -> np.ndarray:
    out = np.zeros(shape, dtype=g.dtype)
    out[index_key(key)] = g
    return out


def rt_onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    return (np.asarray(labels)[..., None] == np.arange(classes)).astype(np.float64)


def _pad_or_crop(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pad (positive) or crop (negative) the last two axes."""
    x = x[..., max(-top, 0): x.shape[-2] - max(-bottom, 0), max(-left, 0): x.shape[-1] - max(-right, 0)]
    pads = [(0, 0)] * (x.ndim - 2) + [(max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))]
    return np.pad(x, pads) if any(p for pair in pads for p in pair) else x


def _dilate(g: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """Insert stride−1 zeros between neighbouring pixels (undoes a strided sampling)."""
    sh, sw = stride
    if sh == 1 and sw == 1:
        return g
    n, c, h, w = g.shape
    out = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), dtype=g.dtype)
    out[:, :, ::sh, ::sw] = g
    return out


def rt_conv2d_input_grad(g: np.ndarray, w: np.ndarray, x_shape: Shape, stride, padding,
                         dilation) -> np.ndarray:
    """dX = dilate(G, stride) ⋆ rot180(W) with full padding, then cropped to X's size."""
    kh, kw = w.shape[2:]
    dh, dw = dilation
    gd = _dilate(g, stride)
    # pad by the kernel's reach, less the forward padding (which the result drops again);
    # the far side also gets the rows and columns a strided forward never reached
    top, left = dh * (kh - 1) - padding[0], dw * (kw - 1) - padding[1]
    bottom = x_shape[2] + padding[0] - gd.shape[2]
    right = x_shape[3] + padding[1] - gd.shape[3]
    gp = _pad_or_crop(gd, top, bottom, left, right)
    rotated = np.ascontiguousarray(np.swapaxes(w[:, :, ::-1, ::-1], 0, 1))  # (C, F, kh, kw)
    return K.conv2d_forward(np.ascontiguousarray(gp), rotated, (1, 1), (0, 0), dilation, 1)


def rt_conv2d_weight_grad(g: np.ndarray, x: np.ndarray, w_shape: Shape, stride, padding,
                          dilation) -> np.ndarray:
    """dW[f, c] = X_c ⋆ G_f summed over the batch: a correlation with G as the kernel."""
    kh, kw = w_shape[2:]
    xp = _pad_or_crop(x, padding[0], padding[0], padding[1], padding[1])
    xs = np.ascontiguousarray(np.swapaxes(xp, 0, 1))  # (C, N, H, W): channels as the batch
    gs = np.ascontiguousarray(np.swapaxes(g, 0, 1))   # (F, N, Ho, Wo): the gradient as F kernels
    out = K.conv2d_forward(xs, gs, dilation, (0, 0), stride, 1)  # stride and dilation swap roles
    return np.ascontiguousarray(np.swapaxes(out[:, :, :kh, :kw], 0, 1))


def rt_maxpool_grad(g: np.ndarray, x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    n, c, h, w = x.shape
    kh, kw = kernel
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    ho, wo = g.shape[2:]
    best = np.full(g.shape, -np.inf)
    where = np.zeros(g.shape + (2,), dtype=np.intp)
    for i in range(kh):          # scan the window in row-major order; strict > keeps the first
        for j in range(kw):
            v = xp[:, :, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw]
            better = v > best
            best = np.where(better, v, best)
            where[..., 0] = np.where(better, i, where[..., 0])
            where[..., 1] = np.where(better, j, where[..., 1])
    out = np.zeros(xp.shape, dtype=g.dtype)
    nn, cc, oh, ow = np.indices(g.shape)
    np.add.at(out, (nn, cc, oh * sh + where[..., 0], ow * sw + where[..., 1]), g)
    return out[:, :, ph: ph + h, pw: pw + w]


def rt_avgpool_grad(g: np.ndarray, x_shape: Shape, kernel, stride, padding) -> np.ndarray:
    kh, kw = kernel
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    ho, wo = g.shape[2:]
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=g.dtype)
    share = g / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw] += share
    return out[:, :, ph: ph + h, pw: pw + w]


# --------------------------------------------------------------------------------------
# code generation
# --------------------------------------------------------------------------------------

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
_NUMPY_UNARY = {"exp": "np.exp", "log": "np.log", "sqrt": "np.sqrt", "sin": "np.sin",
                "cos": "np.cos", "tanh": "np.tanh", "sign": "np.sign"}
_RUNTIME = {"step": rt_step, "sum_to": rt_sum_to, "scatter": rt_scatter, "onehot": rt_onehot,
            "conv2d_input_grad": rt_conv2d_input_grad,
            "conv2d_weight_grad": rt_conv2d_weight_grad,
            "maxpool_grad": rt_maxpool_grad, "avgpool_grad": rt_avgpool_grad}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _literal(v: float) -> str:
    text = repr(float(v))
    if text in ("inf", "-inf", "nan"):
        return f"float({text!r})"
    return f"({text})" if v < 0 else text


def _sanitize(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    if not out or out[0].isdigit():
        out = "v_" + out
    return out


def _inlined(e: MExpr) -> bool:
    """Nodes written inside the expression that uses them instead of on a line of their own."""
    return (e.op == "T" and e.ndim == 2) or e.op == "step"


class SourceBuilder:
    """Turns a set of named result expressions into the source of one numpy function."""

    def __init__(self, params: Sequence[MExpr]) -> None:
        self.namespace: dict[str, Any] = {"np": np, "sigmoid": _sigmoid}
        self.namespace.update({f"rt_{k}": v for k, v in _RUNTIME.items()})
        self.lines: list[str] = []
        self.var_of: dict[tuple, str] = {}
        self.used: set[str] = set(self.namespace) | set(keyword.kwlist) | {"seed"}
        self.params: list[str] = []
        for p in params:
            name = self._fresh(p.hint or "arg")
            self.params.append(name)
            self.var_of[p.key] = name
        self.n_ops = 0

    def _fresh(self, hint: str) -> str:
        base = _sanitize(hint)
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def _function(self, op: str) -> str:
        name = f"op_{op}"
        self.namespace.setdefault(name, OPS[op].forward)
        return name

    def comment(self, text: str) -> None:
        self.lines.append(f"# {text}")

    def emit(self, expr: MExpr, hint: str | None = None) -> str:
        """The variable (or literal) holding ``expr``, emitting the lines it needs."""
        order: list[MExpr] = []
        seen: set[tuple] = set()
        expanded: set[tuple] = set()
        stack: list[tuple[MExpr, bool]] = [(expr, False)]
        while stack:  # iterative post-order: deep graphs do not hit the recursion limit
            node, done = stack.pop()
            if node.key in self.var_of or node.op == "const" and node.shape == ():
                continue
            if done:
                if node.key not in seen:
                    seen.add(node.key)
                    order.append(node)
                continue
            if node.key in expanded:  # a shared value: its arguments are already on the way
                continue
            expanded.add(node.key)
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args))
        for node in order:
            if node.key in self.var_of or _inlined(node):
                continue
            name = self._fresh(hint if node is expr and hint else node.hint or "t")
            self.lines.append(f"{name} = {self._code(node)}")
            self.var_of[node.key] = name
        return self._ref(expr)

    def _ref(self, e: MExpr) -> str:
        if e.op == "const" and e.shape == ():
            return _literal(e.attrs["value"])
        if e.key not in self.var_of and _inlined(e):  # Wᵀ and 1[x > 0] read best in place
            inner = self._ref(e.args[0])
            return f"{inner}.T" if e.op == "T" else f"rt_step({inner})"
        return self.var_of[e.key]

    def _code(self, e: MExpr) -> str:
        a = [self._ref(x) for x in e.args]
        op, at = e.op, e.attrs
        self.n_ops += 1
        if op == "mul" and [x.op for x in e.args].count("step") == 1:
            # G ⊙ 1[x > 0]: numpy multiplies a float G by the boolean mask directly (with two
            # masks the product would stay boolean, so those keep rt_step's float form)
            a = [f"({self._ref(x.args[0])} > 0)" if x.op == "step" and x.key not in self.var_of
                 else r for x, r in zip(e.args, a)]
        if op == "leaf":
            raise KeyError(f"the value of leaf {at['name']!r} was not given to the program")
        if op == "const":
            name = self._fresh("c")
            self.namespace[name] = np.asarray(at["value"])
            return name
        if op in _INFIX:
            return f"{a[0]} {_INFIX[op]} {a[1]}"
        if op == "neg":
            return f"-{a[0]}"
        if op == "pow":
            p = at["exponent"]
            return f"{a[0]} * {a[0]}" if p == 2 else f"{a[0]} ** {_literal(p)}"
        if op == "T":
            return f"{a[0]}.T" if e.ndim == 2 else f"np.swapaxes({a[0]}, -1, -2)"
        if op in _NUMPY_UNARY:
            return f"{_NUMPY_UNARY[op]}({a[0]})"
        if op == "sigmoid":
            return f"sigmoid({a[0]})"
        if op == "relu":
            return f"np.maximum({a[0]}, 0)"
        if op == "step":
            return f"rt_step({a[0]})"
        if op == "equal":
            return f"({a[0]} == {a[1]})"
        if op == "sum":
            return f"np.sum({a[0]}, axis={at['axes']}, keepdims={at['keepdims']})"
        if op == "reshape":
            return f"np.reshape({a[0]}, {at['shape']})"
        if op == "transpose":
            return f"np.transpose({a[0]}, {at['axes']})"
        if op == "broadcast_to":
            return f"np.broadcast_to({a[0]}, {at['shape']})"
        if op in ("sum_to", "scatter", "onehot"):
            extra = {"sum_to": [repr(at.get("shape"))], "scatter": [repr(at.get("key")),
                                                                    repr(e.shape)],
                     "onehot": [repr(at.get("classes"))]}[op]
            return f"rt_{op}({', '.join(a + extra)})"
        if op in ("conv2d_input_grad", "conv2d_weight_grad"):
            return (f"rt_{op}({a[0]}, {a[1]}, {e.shape}, {at['stride']}, {at['padding']}, "
                    f"{at['dilation']})")
        if op == "maxpool_grad":
            return f"rt_maxpool_grad({a[0]}, {a[1]}, {at['kernel']}, {at['stride']}, {at['padding']})"
        if op == "avgpool_grad":
            return f"rt_avgpool_grad({a[0]}, {e.shape}, {at['kernel']}, {at['stride']}, {at['padding']})"
        if op in OPS:
            kwargs = "".join(f", {k}={v!r}" for k, v in at.items())
            return f"{self._function(op)}({', '.join(a)}{kwargs})"
        raise KeyError(f"no code generation for matrix-expression op {op!r}")

    def source(self, name: str, returns: str) -> str:
        body = "\n".join("    " + line for line in self.lines)
        return f"def {name}({', '.join(self.params)}, seed=1.0):\n{body}\n    return {returns}\n"


def count_nodes(exprs: Iterable[MExpr]) -> int:
    """Distinct operation nodes (leaves and scalar constants not counted) reachable."""
    seen: set[tuple] = set()
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if e.key in seen or e.op in ("leaf", "const"):
            continue
        seen.add(e.key)
        stack.extend(e.args)
    return len(seen)
