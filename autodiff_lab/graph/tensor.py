"""The symbolic tensor that tracing records, and the one function that records an op.

A :class:`Tensor` is a placeholder for a value that does not exist yet: it knows its shape,
dtype and the node that will produce it. Python operators and the functions of the ``adl``
namespace call :func:`apply`, which checks the op's shape rule, adds a node to the graph
being built and returns a new Tensor. Called with plain numbers or numpy arrays instead,
:func:`apply` simply evaluates the op (eager mode), so ``adl.sigmoid(0.5)`` works too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.errors import LabelError, ShapeError, TraceError, with_node
from autodiff_lab.graph.optable import Op, ShapeRuleError, get_op

# the tracing machinery and numpy (whose functions hand our tensors back to us): frames in
# there are never "where the user wrote the op"
_SKIPPED_DIRS = tuple(os.path.join(os.path.dirname(os.path.abspath(f)), "")
                      for f in (__file__, np.__file__))


def user_location() -> str:
    """``file:line`` of the first caller outside the tracing machinery and numpy (where the op
    was written: the user's code, or a model in the package such as ``examples.py``)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not os.path.abspath(path).startswith(_SKIPPED_DIRS):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


@dataclass
class NodeRecord:
    """One node as the builder records it (becomes a networkx node's attributes)."""

    op: str  # op name, or "input" / "parameter" / "constant"
    shape: tuple[int, ...]
    dtype: str
    role: str  # "input", "parameter", "constant" or "op"
    inputs: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    value: np.ndarray | None = None
    loc: str = ""


def describe(node_id: int, op: str, loc: str = "", name: str | None = None) -> str:
    """How an error message names a node: ``node 7 'matmul' (at model.py:12)``."""
    text = f"node {node_id} {op!r}"
    if name:
        text += f" ({name!r})"
    if loc:
        text += f" (at {loc})"
    return text


def _fmt_shapes(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(str(tuple(s)) for s in shapes)


def check_shape(op: Op, in_shapes: list[tuple[int, ...]], attrs: dict[str, Any],
                where: str) -> tuple[int, ...]:
    """Run ``op``'s shape rule; errors become :class:`ShapeError` naming node, op and shapes."""
    lo, hi = op.n_args
    if len(in_shapes) < lo or (hi is not None and len(in_shapes) > hi):
        wanted = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number of'}"
        raise ShapeError(f"{where}: {op.name} takes {wanted} arguments, got {len(in_shapes)} "
                         f"(shapes {_fmt_shapes(in_shapes)})")
    try:
        return tuple(int(d) for d in op.shape(*in_shapes, **attrs))
    except ShapeRuleError as exc:
        raise ShapeError(f"{where}: {exc} (input shapes {_fmt_shapes(in_shapes)})") from None
    except TypeError as exc:
        raise ShapeError(f"{where}: bad attributes {attrs} for {op.name}: {exc}") from None


def check_int_values(op: Op, i: int, value: Any, in_shapes: list[tuple[int, ...]],
                     attrs: dict[str, Any], where: str) -> None:
    """Check the values of integer argument ``i`` (class labels) with the op's ``check_ints``;
    a :class:`LabelError` naming the node, the value and the allowed range otherwise."""
    if op.check_ints is None:
        return
    try:
        op.check_ints(i, value, *in_shapes, **attrs)
    except LabelError as exc:
        raise with_node(exc, where) from None


def result_dtype(op: Op, dtypes: list[str]) -> str:
    """dtype of an op's result: numpy promotion of its non-label inputs, float for float ops."""
    used = [np.dtype(d) for i, d in enumerate(dtypes) if i not in op.int_args]
    out = np.result_type(*used) if used else np.dtype(np.float64)
    if op.float_result and not np.issubdtype(out, np.inexact):
        out = np.dtype(np.float64)
    return out.name


class GraphBuilder:
    """Collects nodes while a function is traced; :class:`~autodiff_lab.graph.graph.Graph` wraps it."""

    def __init__(self, float_dtype: str = "float64") -> None:
        self.nodes: list[NodeRecord] = []
        self.float_dtype = float_dtype
        #: extra named results layers register while tracing (a batch-norm layer's batch
        #: statistics): :func:`~autodiff_lab.graph.graph.trace` adds them to the graph as
        #: auxiliary outputs, computed by every engine but never differentiated
        self.aux_outputs: dict[str, Tensor] = {}
        #: names a caller may give values for although the graph does not read them (the
        #: state of traced modules that this trace did not use, e.g. running statistics in
        #: training mode), so ``{**model.state_dict(), "x": X}`` is valid input
        self.ignorable_inputs: set[str] = set()

    def _add(self, record: NodeRecord) -> Tensor:
        self.nodes.append(record)
        return Tensor(self, len(self.nodes) - 1)

    def input(self, name: str, shape: tuple[int, ...], dtype: str, role: str = "input") -> Tensor:
        return self._add(NodeRecord(op=role, shape=tuple(shape), dtype=dtype, role=role,
                                    name=name))

    def constant(self, value: Any, like_dtype: str | None = None) -> Tensor:
        arr = np.asarray(value)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == np.bool_):
            raise TraceError(f"cannot use {type(value).__name__} {value!r} as a constant in a "
                             f"traced function (at {user_location()})")
        if not np.issubdtype(arr.dtype, np.inexact) or arr.ndim == 0:
            # Python numbers and integer arrays take the float dtype of the computation
            arr = arr.astype(like_dtype or self.float_dtype)
        return self._add(NodeRecord(op="constant", shape=arr.shape, dtype=arr.dtype.name,
                                    role="constant", value=arr, loc=user_location()))

    def op(self, name: str, args: list[Tensor], attrs: dict[str, Any]) -> Tensor:
        op = get_op(name)
        loc = user_location()
        node_id = len(self.nodes)
        shape = check_shape(op, [a.shape for a in args], attrs, describe(node_id, name, loc))
        dtypes = [a.dtype for a in args]
        for i in op.int_args:
            if i < len(args) and not np.issubdtype(np.dtype(dtypes[i]), np.integer):
                raise TraceError(f"{describe(node_id, name, loc)}: argument {i} must be integer "
                                 f"(class labels), got {dtypes[i]}")
            if i < len(args) and args[i].record.role == "constant":  # labels written in the code
                check_int_values(op, i, args[i].record.value, [a.shape for a in args], attrs,
                                 describe(node_id, name, loc))
        return self._add(NodeRecord(op=name, shape=shape, dtype=result_dtype(op, dtypes),
                                    role="op", inputs=tuple(a.node for a in args),
                                    attrs=dict(attrs), loc=loc))


def _as_tensor(builder: GraphBuilder, value: Any, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        if value.builder is not builder:
            raise TraceError("tensors from two different traces cannot be combined "
                             f"(at {user_location()})")
        return value
    return builder.constant(value, like.dtype if like is not None else None)


def apply(name: str, *args: Any, **attrs: Any) -> Any:
    """Record op ``name`` on ``args`` (or evaluate it at once when no argument is a Tensor)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors:
        return _eager(name, args, attrs)
    builder = tensors[0].builder
    like = next((t for t in tensors if np.issubdtype(np.dtype(t.dtype), np.inexact)), None)
    op = get_op(name)
    converted = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor) or i not in op.int_args:
            converted.append(_as_tensor(builder, a, like))
        else:  # integer labels given as a constant
            arr = np.asarray(a)
            converted.append(builder._add(NodeRecord(
                op="constant", shape=arr.shape, dtype=arr.dtype.name, role="constant",
                value=arr, loc=user_location())))
    return builder.op(name, converted, attrs)


def _eager(name: str, args: tuple, attrs: dict[str, Any]) -> np.ndarray:
    op = get_op(name)
    arrays = [np.asarray(a) if i in op.int_args else np.asarray(a, dtype=np.result_type(a, 0.0))
              for i, a in enumerate(args)]
    where = f"{name} (eager)"
    check_shape(op, [a.shape for a in arrays], attrs, where)
    for i in op.int_args:
        if i < len(arrays):
            check_int_values(op, i, arrays[i], [a.shape for a in arrays], attrs, where)
    return op.forward(*arrays, **attrs)


class Tensor:
    """A traced value: shape and dtype are known, the numbers come when the graph is run.

    Supports ``+ - * / @ **``, unary minus, indexing and slicing, numpy-style broadcasting
    and arithmetic with Python and numpy constants. Comparisons and truth tests raise a
    :class:`TraceError`: a graph cannot branch on values it does not have yet.
    """

    __array_priority__ = 1000  # numpy defers to our operators: array * Tensor -> Tensor

    def __init__(self, builder: GraphBuilder, node: int) -> None:
        self.builder = builder
        self.node = node

    # --- what is known at trace time ---------------------------------------------------
    @property
    def record(self) -> NodeRecord:
        return self.builder.nodes[self.node]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.record.shape

    @property
    def dtype(self) -> str:
        return self.record.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TraceError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        rec = self.record
        what = rec.name or rec.op
        return f"Tensor({what}, shape={rec.shape}, dtype={rec.dtype}, node={self.node})"

    # --- arithmetic ---------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return apply("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return apply("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return apply("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return apply("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return apply("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return apply("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return apply("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return apply("div", other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return apply("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return apply("matmul", other, self)

    def __neg__(self) -> Tensor:
        return apply("neg", self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return apply("abs", self)

    def __pow__(self, exponent: Any) -> Tensor:
        if isinstance(exponent, Tensor):
            raise TraceError("x ** y with a traced exponent is not a primitive; write "
                             f"adl.exp(y * adl.log(x)) (at {user_location()})")
        exponent = float(np.asarray(exponent))
        if exponent == -1.0:
            return apply("reciprocal", self)
        return apply("pow", self, exponent=exponent)

    def __rpow__(self, base: Any) -> Tensor:
        base = float(np.asarray(base))
        return apply("exp", self * float(np.log(base)))

    # --- shape ----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Tensor:
        from autodiff_lab.graph.functions import normalize_index
        return apply("index", self, key=normalize_index(key, self.shape))

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TraceError("traced tensors are immutable; build a new one with adl.concatenate "
                         f"or arithmetic (at {user_location()})")

    def reshape(self, *shape: Any) -> Tensor:
        from autodiff_lab.graph import functions as F
        return F.reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> Tensor:
        from autodiff_lab.graph import functions as F
        return F.transpose(self, axes[0] if len(axes) == 1 else (axes or None))

    @property
    def T(self) -> Tensor:  # noqa: N802 - numpy's name
        from autodiff_lab.graph import functions as F
        return F.transpose(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        from autodiff_lab.graph import functions as F
        return F.sum(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        from autodiff_lab.graph import functions as F
        return F.mean(self, axis, keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        from autodiff_lab.graph import functions as F
        return F.max(self, axis, keepdims)

    def flatten(self) -> Tensor:
        return self.reshape((self.size,))

    # --- what cannot be traced ------------------------------------------------------------
    def _no_compare(self, *_: Any) -> Any:
        raise TraceError("comparisons of traced tensors are not differentiable and cannot be "
                         "recorded; use adl.relu, adl.maximum or adl.minimum "
                         f"(at {user_location()})")

    __lt__ = __le__ = __gt__ = __ge__ = _no_compare

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        self._no_compare()

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        self._no_compare()

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TraceError("the truth value of a traced tensor is unknown while tracing: "
                         "data-dependent `if`/`while` cannot be recorded "
                         f"(at {user_location()})")

    def __float__(self) -> float:
        raise TraceError(f"float() of a traced tensor: its value is unknown while tracing "
                         f"(at {user_location()})")

    def __array__(self, *_: Any, **__: Any) -> np.ndarray:
        raise TraceError("a traced tensor cannot become a numpy array while tracing; use the "
                         f"adl functions (adl.exp, adl.sum, ...) instead of numpy's "
                         f"(at {user_location()})")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # np.exp(t) records exp; numpy ufuncs without an op raise a TraceError at the user's line
        from autodiff_lab.graph.numpy_interop import array_ufunc
        return array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        # np.sum(t), np.reshape(t, ...) record their op; other numpy functions raise a TraceError
        from autodiff_lab.graph.numpy_interop import array_function
        return array_function(func, args, kwargs)
