"""numpy functions called on traced tensors: those with an op record it, the rest refuse.

numpy hands a call such as ``np.sum(t, axis=0)`` or ``np.exp(t)`` to the tensor's
``__array_function__`` / ``__array_ufunc__``, which look the function up here. A function
with a matching op (``np.sum`` → ``sum``, ``np.exp`` → ``exp``, ``np.reshape`` →
``reshape`` ...) records that op through the ``adl`` function of the same meaning; numpy
arguments the op cannot honour (``out=``, ``dtype=``, ``where=`` ...) and every other numpy
function raise a :class:`~autodiff_lab.errors.TraceError` that names the function and the
line of user code that called it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from autodiff_lab.errors import TraceError
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.tensor import Tensor, apply, user_location

#: numpy ufuncs (by name) a traced tensor accepts, and the op each one records
NUMPY_UFUNCS = {
    "add": "add", "subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div",
    "negative": "neg", "reciprocal": "reciprocal", "exp": "exp", "log": "log", "sqrt": "sqrt",
    "sin": "sin", "cos": "cos", "tanh": "tanh", "absolute": "abs", "maximum": "maximum",
    "minimum": "minimum", "matmul": "matmul",
}

_NO_VALUE = getattr(np, "_NoValue", object())


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "numpy"
    module = "numpy" if module.startswith("numpy._core") or module == "numpy.core" else module
    return f"{module}.{getattr(fn, '__name__', repr(fn))}"


def _refuse_arguments(name: str, **given: Any) -> None:
    """A TraceError for the numpy keyword arguments a traced op cannot honour."""
    bad = [k for k, v in given.items() if v is not None and v is not _NO_VALUE]
    if bad:
        raise TraceError(f"{name}: argument(s) {', '.join(f'{k}=' for k in bad)} cannot be "
                         f"recorded on a traced tensor (at {user_location()})")


def _reduction(adl_fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def handler(a: Any, axis: Any = None, dtype: Any = None, out: Any = None,
                keepdims: Any = False, **rest: Any) -> Any:
        _refuse_arguments(name, dtype=dtype, out=out, **rest)
        return adl_fn(a, axis, bool(keepdims) if keepdims is not _NO_VALUE else False)
    return handler


def _max(a: Any, axis: Any = None, out: Any = None, keepdims: Any = False, **rest: Any) -> Any:
    _refuse_arguments("numpy.max", out=out, **rest)
    return F.max(a, axis, bool(keepdims) if keepdims is not _NO_VALUE else False)


def _reshape(a: Any, shape: Any = None, order: str = "C", *, newshape: Any = None,
             copy: Any = None) -> Any:
    if order != "C":
        raise TraceError(f"numpy.reshape: only order='C' can be recorded, got {order!r} "
                         f"(at {user_location()})")
    _refuse_arguments("numpy.reshape", copy=copy)
    return F.reshape(a, shape if shape is not None else newshape)


def _transpose(a: Any, axes: Any = None) -> Any:
    return F.transpose(a, axes)


def _ravel(a: Any, order: str = "C") -> Any:
    if order != "C":
        raise TraceError(f"numpy.ravel: only order='C' can be recorded (at {user_location()})")
    return F.flatten(a)


def _squeeze(a: Any, axis: Any = None) -> Any:
    shape = F._shape_of(a)
    drop = {i for i, s in enumerate(shape) if s == 1} if axis is None else \
        {a_ % len(shape) for a_ in F._axes(axis, len(shape))}
    if any(shape[i] != 1 for i in drop):
        raise TraceError(f"numpy.squeeze: axis {axis} of shape {shape} is not of size 1 "
                         f"(at {user_location()})")
    return F.reshape(a, tuple(s for i, s in enumerate(shape) if i not in drop))


def _expand_dims(a: Any, axis: Any) -> Any:
    shape = list(F._shape_of(a))
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    n = len(shape) + len(items)
    for ax in sorted(int(x) % n for x in items):
        shape.insert(ax, 1)
    return F.reshape(a, tuple(shape))


def _concatenate(arrays: Any, axis: Any = 0, out: Any = None, **rest: Any) -> Any:
    _refuse_arguments("numpy.concatenate", out=out, **rest)
    if axis is None:
        raise TraceError("numpy.concatenate with axis=None (flattening) cannot be recorded; "
                         f"flatten each array first (at {user_location()})")
    return F.concatenate(list(arrays), axis)


def _broadcast_to(array: Any, shape: Any, subok: bool = False) -> Any:
    return F.broadcast_to(array, (shape,) if isinstance(shape, (int, np.integer)) else shape)


def _dot(a: Any, b: Any, out: Any = None) -> Any:
    _refuse_arguments("numpy.dot", out=out)
    if len(F._shape_of(a)) > 2 or len(F._shape_of(b)) > 2:
        raise TraceError("numpy.dot of arrays with more than 2 axes is not a matrix product "
                         f"that can be recorded; use adl.matmul (@) (at {user_location()})")
    return F.matmul(a, b)


#: numpy functions (the objects) a traced tensor accepts, and how each is recorded
NUMPY_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    np.sum: _reduction(F.sum, "numpy.sum"),
    np.mean: _reduction(F.mean, "numpy.mean"),
    np.max: _max,
    np.reshape: _reshape,
    np.transpose: _transpose,
    np.ravel: _ravel,
    np.squeeze: _squeeze,
    np.expand_dims: _expand_dims,
    np.concatenate: _concatenate,
    np.broadcast_to: _broadcast_to,
    np.dot: _dot,
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
}
if hasattr(np, "amax"):
    NUMPY_FUNCTIONS[np.amax] = _max


def supported_names() -> list[str]:
    """The numpy functions and ufuncs that record an op, for error messages and docs."""
    names = {_name(f).removeprefix("numpy.") for f in NUMPY_FUNCTIONS}
    names.update(NUMPY_UFUNCS, {"square", "power", "positive"})
    return sorted(names)


def array_function(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """What ``Tensor.__array_function__`` does: record the op or refuse."""
    handler = NUMPY_FUNCTIONS.get(func)
    if handler is None:
        raise TraceError(
            f"{_name(func)} cannot be applied to a traced tensor: it has no op in autodiff_lab, "
            "and a traced tensor has no numpy array to give it while tracing. numpy functions "
            f"with an op are recorded ({', '.join(supported_names())}); otherwise use the adl "
            f"functions (at {user_location()})")
    return handler(*args, **kwargs)


def array_ufunc(ufunc: Any, method: str, inputs: tuple, kwargs: dict[str, Any]) -> Any:
    """What ``Tensor.__array_ufunc__`` does: record the op or refuse."""
    name = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    if method != "__call__":
        raise TraceError(f"{name} cannot be recorded on a traced tensor; use the adl "
                         f"functions (adl.sum, adl.max, ...) (at {user_location()})")
    _refuse_arguments(name, **kwargs)
    if ufunc.__name__ == "positive":
        return inputs[0]
    if ufunc.__name__ in ("square", "power"):
        base, exponent = (inputs[0], 2.0) if ufunc.__name__ == "square" else inputs
        if isinstance(exponent, Tensor) or not isinstance(base, Tensor):
            raise TraceError(f"{name} with a traced exponent is not a primitive; write "
                             f"adl.exp(y * adl.log(x)) (at {user_location()})")
        return base ** exponent
    op = NUMPY_UFUNCS.get(ufunc.__name__)
    if op is None:
        raise TraceError(f"{name} cannot be applied to a traced tensor: it has no op in "
                         f"autodiff_lab. numpy functions with an op are recorded "
                         f"({', '.join(supported_names())}); otherwise use the adl functions "
                         f"(at {user_location()})")
    return apply(op, *inputs)
