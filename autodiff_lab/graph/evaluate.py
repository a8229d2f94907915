"""The reference interpreter: run a graph with the op table's numpy forwards.

Two jobs live here because every engine needs them:

* :func:`check_values` turns the user's ``{name: value}`` into arrays, with an
  :class:`~autodiff_lab.errors.InputError` (or ``NonFiniteError``) that names the input
  when something is missing, unknown, mis-shaped, of the wrong dtype or not finite;
* :func:`run_forward` walks the nodes in order. With ``lead > 0`` every value carries that
  many extra leading axes (copies of the computation, e.g. perturbed inputs for finite
  differences); ops with a ``batched`` rule handle them in one call, the others are looped.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, NonFiniteError, with_node
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS
from autodiff_lab.graph.tensor import check_int_values


def _first_bad(a: np.ndarray) -> str:
    bad = ~np.isfinite(a)
    idx = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
    return f"{'NaN' if np.isnan(a[idx]) else 'Inf'} at index {idx}" if a.ndim else \
        ("NaN" if np.isnan(a) else "Inf")


class DtypeCastWarning(UserWarning):
    """Values given for an input were cast to the input's dtype and lost precision (float64
    numbers given to a float32 graph, say)."""


def working_dtype(graph: Graph, arrays: Mapping[str, np.ndarray]) -> np.dtype:
    """The float dtype a run computes in: that of the graph's float inputs (the values were
    cast to them by :func:`check_values`); numpy's promotion of them if they differ."""
    floats = {a.dtype for n, a in arrays.items() if np.issubdtype(a.dtype, np.inexact)
              and not np.issubdtype(np.dtype(graph.node(graph.inputs[n])["dtype"]), np.integer)}
    if not floats:
        return np.dtype(graph.node(graph.output)["dtype"]) if len(graph.main_outputs) == 1 else \
            np.dtype(np.float64)
    return np.result_type(*floats)


def _cast(arr: np.ndarray, target: np.dtype, where: str, warn: bool, check_finite: bool
          ) -> np.ndarray:
    """``arr`` in the input's float dtype ``target``: exact widening silently; a narrowing
    that changes a value warns (:class:`DtypeCastWarning`) when ``warn``."""
    if arr.dtype == target:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(target)
    if np.can_cast(arr.dtype, target, "safe"):
        return cast
    if check_finite and not np.all(np.isfinite(cast)):
        raise NonFiniteError(f"{where}: {arr.dtype} values too large for the graph's "
                             f"{target} (largest magnitude {np.max(np.abs(arr)):.4g})")
    if warn and not np.array_equal(cast, arr, equal_nan=True):
        warnings.warn(f"{where} is {target} in the graph; the {arr.dtype} values given were "
                      f"rounded to {target} (trace with {arr.dtype} inputs to compute in "
                      f"{arr.dtype}, or cast the values yourself to silence this)",
                      DtypeCastWarning, stacklevel=3)
    return cast


def check_values(graph: Graph, values: Mapping[str, Any], *, allow_complex: bool = False,
                 check_finite: bool = True, required: Iterable[str] | None = None
                 ) -> dict[str, np.ndarray]:
    """Validate and convert input values; every problem is an error naming the input.

    Every engine reads its values through here, so they all follow one rule: a float input
    computes in the dtype the graph gives it. Values of another float dtype are cast to it
    -- float32 values for a float64 input exactly and silently; float64 arrays for a float32
    input with a :class:`DtypeCastWarning` when that rounds a value (Python numbers and
    lists are simply converted) -- so results always have the graph's dtypes.

    Values for the graph's ``ignorable_inputs`` (state of traced modules the graph does not
    read) are dropped; any other name the graph does not have is an error.
    """
    if not isinstance(values, Mapping):
        raise InputError(f"values must be a dict {{input name: array}}, got {type(values).__name__}")
    unknown = [n for n in values if n not in graph.inputs]
    if unknown and graph.ignorable_inputs:
        ignorable = graph.ignorable_inputs
        values = {n: v for n, v in values.items() if n not in ignorable}
        unknown = [n for n in unknown if n not in ignorable]
    if unknown:
        raise InputError(f"value(s) given for {', '.join(map(repr, unknown))}, which the graph "
                         f"does not have; its inputs are: {', '.join(graph.inputs) or 'none'}")
    needed = list(graph.inputs) if required is None else list(required)
    missing = [n for n in needed if n not in values]
    if missing:
        shapes = ", ".join(f"{n} {graph.node(graph.inputs[n])['shape']}" for n in missing)
        raise InputError(f"missing value(s) for input(s): {shapes}")
    out: dict[str, np.ndarray] = {}
    for name, value in values.items():
        d = graph.node(graph.inputs[name])
        target = np.dtype(d["dtype"])
        want_int = np.issubdtype(target, np.integer)
        numpy_value = isinstance(value, (np.ndarray, np.generic))
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if not isinstance(value, np.ndarray) and not want_int and arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)  # Python numbers and lists of ints are fine for floats
        where = f"input {name!r} (node {graph.inputs[name]})"
        if arr.shape != d["shape"]:
            raise InputError(f"{where} expects shape {d['shape']}, got {arr.shape}")
        kind = arr.dtype.kind
        if want_int:
            if kind not in "iu":
                raise InputError(f"{where} holds integer labels ({d['dtype']}); got {arr.dtype}")
            check_label_input(graph, graph.inputs[name], arr, where)
        elif kind == "c":
            if not allow_complex:
                raise InputError(f"{where} got complex values; only the numeric engine's complex "
                                 "step uses complex numbers")
        elif kind != "f":
            raise InputError(f"{where} expects floating values ({d['dtype']}); got {arr.dtype}. "
                             "Convert with .astype(float); integer arrays cannot be differentiated")
        if check_finite and kind in "fc" and not np.all(np.isfinite(arr)):
            raise NonFiniteError(f"{where}: value has {_first_bad(arr)}")
        if kind == "f" and target.kind == "f":
            arr = _cast(arr, target, where, numpy_value, check_finite)
        out[name] = arr
    return out


def check_label_input(graph: Graph, v: int, value: np.ndarray, where: str) -> None:
    """Check an integer input's values against every op that indexes with it (class labels
    against the number of classes), so every engine refuses out-of-range labels before it
    runs, with a :class:`~autodiff_lab.errors.LabelError` naming the input and the node."""
    for w in graph.nx.successors(v):
        d = graph.node(w)
        op = OPS[d["op"]]
        for i in graph.nx.edges[v, w]["args"]:
            if i in op.int_args:
                shapes = [graph.node(u)["shape"] for u in graph.operands(w)]
                check_int_values(op, i, value, shapes, d["attrs"],
                                 f"{where}, argument {i} of {graph.describe(w)}")


def constant_value(graph: Graph, v: int, dtype: np.dtype) -> np.ndarray:
    """A constant node's value, in the run's float dtype when it is a float constant."""
    value = graph.node(v)["value"]
    if np.issubdtype(value.dtype, np.floating) and value.dtype != dtype and dtype.kind == "f":
        return value.astype(dtype)
    return value


def run_forward(graph: Graph, arrays: Mapping[str, np.ndarray], *, lead: int = 0,
                check_finite: bool = True, keep: Iterable[int] | None = None,
                dtype: np.dtype | None = None,
                observe: Mapping[int, Callable[[list[np.ndarray], int], None]] | None = None
                ) -> dict[int, np.ndarray]:
    """Values of the nodes in ``keep`` (default: the outputs), running every node in order.

    ``arrays`` are already checked input values; with ``lead > 0`` each may carry ``lead``
    extra leading axes (size 1 or the batch size) and so does every result.
    ``observe`` maps op nodes to callbacks ``fn(args, lead)`` that see the node's operand
    values just before it runs (the numeric engine reads the inputs of kinked ops this way,
    without keeping them alive for the whole run).
    """
    dtype = dtype or working_dtype(graph, {n: a for n, a in arrays.items()})
    keep_set = set(graph.outputs.values()) if keep is None else set(keep)
    last_use: dict[int, int] = {}
    for v in graph.order:
        for u in graph.operands(v):
            last_use[u] = v
    env: dict[int, np.ndarray] = {}
    result: dict[int, np.ndarray] = {}
    # with the finiteness check on, our error names the op: numpy's warning would only repeat it
    quiet = np.errstate(invalid="ignore", divide="ignore", over="ignore") if check_finite \
        else contextlib.nullcontext()
    with quiet:
        _run(graph, env, result, arrays, lead, check_finite, keep_set, dtype, last_use,
             observe or {})
    return result


def _run(graph: Graph, env: dict[int, np.ndarray], result: dict[int, np.ndarray],
         arrays: Mapping[str, np.ndarray], lead: int, check_finite: bool, keep_set: set[int],
         dtype: np.dtype, last_use: dict[int, int],
         observe: Mapping[int, Callable[[list[np.ndarray], int], None]]) -> None:
    for v in graph.order:
        d = graph.node(v)
        role = d["role"]
        if role in ("input", "parameter"):
            value = arrays.get(d["name"])
            if value is None:
                continue  # not needed by the caller (e.g. a label of an unused branch)
            if lead and value.ndim == len(d["shape"]):
                value = value.reshape((1,) * lead + value.shape)
        elif role == "constant":
            value = constant_value(graph, v, dtype)
            if lead:
                value = value.reshape((1,) * lead + value.shape)
        else:
            op = OPS[d["op"]]
            args = [env[u] for u in graph.operands(v)]
            if v in observe:
                observe[v](args, lead)
            try:
                value = _apply(op, args, d["attrs"], lead, graph, v)
            except InputError as exc:  # a rule refused the values (labels): name the node
                raise with_node(exc, graph.describe(v)) from None
            if check_finite and value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
                raise NonFiniteError(nonfinite_message(graph, v, args, value))
        env[v] = value
        if v in keep_set:
            result[v] = value
        for u in graph.operands(v):  # free what no later node reads
            if last_use.get(u) == v and u not in keep_set:
                env.pop(u, None)


def _apply(op: Any, args: list[np.ndarray], attrs: dict[str, Any], lead: int, graph: Graph,
           v: int) -> np.ndarray:
    if not lead:
        return np.asarray(op.forward(*args, **attrs))
    if op.batched is not None:
        try:
            return np.asarray(op.batched(lead, *args, **attrs))
        except NotImplementedError:
            pass
    # loop over the copies: the op has no batched rule for these operands
    batch = np.broadcast_shapes(*(a.shape[:lead] for a in args))
    outs = []
    for idx in np.ndindex(batch):
        picked = [a[tuple(i if s > 1 else 0 for i, s in zip(idx, a.shape[:lead]))] for a in args]
        outs.append(np.asarray(op.forward(*picked, **attrs)))
    return np.stack(outs).reshape(batch + outs[0].shape)


def nonfinite_message(graph: Graph, v: int, args: list[np.ndarray], value: np.ndarray) -> str:
    """Error text for a non-finite result: the node, its arguments and their values there."""
    d = graph.node(v)
    arg_info = ", ".join(f"{graph.describe(u)} shape {a.shape}"
                         for u, a in zip(graph.operands(v), args))
    text = f"{graph.describe(v)} produced {_first_bad(value)} (output shape {value.shape}"
    text += f"; arguments: {arg_info})" if arg_info else ")"
    if value.ndim and all(a.shape == value.shape for a in args):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        text += "; argument values there: " + ", ".join(repr(a[idx].item()) for a in args)
    elif all(a.ndim == 0 for a in args):
        text += "; argument values: " + ", ".join(repr(a.item()) for a in args)
    return text + f". Check the inputs of {d['op']} (e.g. log or sqrt of a negative number)."


def evaluate(graph: Graph, values: Mapping[str, Any], *, all_nodes: bool = False,
             check_finite: bool = True) -> dict[Any, np.ndarray]:
    """Outputs by name (or every node's value by id with ``all_nodes=True``)."""
    arrays = check_values(graph, values, check_finite=check_finite)
    keep = graph.order if all_nodes else None
    env = run_forward(graph, arrays, check_finite=check_finite, keep=keep)
    if all_nodes:
        return env
    return {name: env[v] for name, v in graph.outputs.items()}
