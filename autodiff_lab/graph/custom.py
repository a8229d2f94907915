"""Ops of your own, without editing the package: ``adl.define_op``.

``define_op`` builds an op-table entry from the rules you give, checks it like every
built-in entry (:func:`~autodiff_lab.graph.optable.validate_op`), registers it and returns a
function that records the op while tracing and evaluates it at once on arrays. Every engine
then reads it from the table like a built-in op, and refuses it with a clear message where
a form it needs is missing: the expanded symbolic mode without ``sympy``, the matrix mode
without ``matrix``, the complex step unless ``complex_safe=True``.

The rules you write are guarded, since they are the likeliest to be wrong: a forward whose
result does not have the shape the shape rule promises, or a VJP whose gradient does not
have its input's shape, is an :class:`~autodiff_lab.errors.OpDefinitionError` naming the op
and the rule; results are cast to the dtype of the inputs, so float32 graphs stay float32.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autodiff_lab.errors import OpDefinitionError, TraceError
from autodiff_lab.graph import optable
from autodiff_lab.graph.optable import OPS, Op, ShapeRuleError, broadcast_shapes, unbroadcast

#: the names of the ops defined with :func:`define_op` in this process
CUSTOM_OPS: set[str] = set()

Rule = Callable[..., Any]


def define_op(name: str, *, forward: Rule, vjp: Sequence[Rule | None], shape: Rule | str = "elementwise",
              sympy: Rule | None = None, matrix: Sequence[Rule | None] | None = None,
              label: str | None = None, kink: Rule | None = None, complex_safe: bool = False,
              batched: Rule | None = None, attrs: dict[str, Any] | None = None,
              vjp_uses: Sequence[str] = ("inputs", "ans"), doc: str = "") -> Callable[..., Any]:
    """Define a new primitive op and return the function that applies it.

    Args:
        name: the op's name in the op table, in graph files and in error messages (a Python
            identifier; the name of a built-in op is refused).
        forward: ``forward(*xs, **attrs)``, the numpy forward. It receives arrays of the
            graph's dtype and, for the complex step, complex arrays.
        vjp: one reverse-mode rule per input, ``vjp[i](g, ans, *xs, **attrs)``: the upstream
            gradient ``g`` (the output's shape), the forward result ``ans`` and the inputs
            give the gradient with respect to input ``i`` (its shape; a gradient of the
            broadcast shape is summed back). ``None`` marks an input the op is not
            differentiable in. The number of rules is the number of arguments.
        shape: the shape rule ``shape(*input_shapes, **attrs) -> output shape``, raising
            :class:`~autodiff_lab.graph.optable.ShapeRuleError` with a plain sentence when the
            operands do not fit; or ``"elementwise"`` (the default): numpy broadcasting of
            the inputs.
        sympy: the SymPy form for the expanded symbolic mode. For an element-wise op, a
            function of SymPy scalars (``lambda x: sp.log(1 + sp.exp(x))``), applied to each
            element; otherwise a function of numpy ``object`` arrays of SymPy expressions.
            Without it the expanded mode refuses the op.
        matrix: one matrix-level rule per input, ``matrix[i](M, g, ans, *xs, **attrs)``,
            written with the matrix-expression language ``M``
            (:mod:`autodiff_lab.engines.matrix_expr`: ``@``, ``M.T``, ``*`` as Hadamard
            product, ``M.exp``, ``M.sigmoid``, ``M.step``, ``M.sign``, ``M.apply`` ...). The
            symbolic engine's default matrix mode and ``adl.formula`` need it.
        label: how a drawing labels the node (default: ``name``).
        kink: ``kink(*xs, **attrs) -> bool``, True where the inputs sit on a
            non-differentiable point (engines warn there).
        complex_safe: the forward is real-analytic on complex numbers, so the complex step
            ``Im f(x + ih) / h`` is valid through it (default False: the complex step
            refuses the op).
        batched: ``batched(lead, *xs, **attrs)``, the forward on ``lead`` extra leading axes
            (many perturbed copies at once, for the numeric engine); ``None`` evaluates the
            copies one by one.
        attrs: the op's attributes and their defaults, e.g. ``{"beta": 1.0}``; the returned
            function takes them as keywords and every rule receives them all.
        vjp_uses: what the VJP rules read (``"inputs"``, ``"ans"``): the tape keeps only that.
        doc: one line of maths for the op (the returned function's docstring).

    Returns:
        A function ``f(*xs, **attrs)``: on traced tensors it records a node of the op, on
        numbers and arrays it evaluates the forward at once. ``f.op`` is the table entry.

    Raises:
        OpDefinitionError: a field of the wrong kind, rules that do not match the number of
            arguments, or ``name`` taken by a built-in op. Defining a custom op again (a
            notebook cell run twice) replaces it; programs compiled before keep the old rules.

    Graphs using the op serialise as usual (the JSON names it); loading such a graph where
    the op is not defined raises :class:`~autodiff_lab.errors.UnknownOpError` naming it.

    Examples:
        >>> import numpy as np, sympy as sp
        >>> import autodiff_lab as adl
        >>> softplus = adl.define_op(
        ...     "softplus_example",
        ...     forward=lambda x: np.logaddexp(0, x),
        ...     vjp=[lambda g, ans, x: g / (1 + np.exp(-x))],
        ...     sympy=lambda x: sp.log(1 + sp.exp(x)),
        ...     matrix=[lambda M, g, ans, x: g * M.sigmoid(x)])
        >>> g = adl.trace(lambda x: adl.sum(softplus(x)), x=(3,))
        >>> adl.gradient(g, {"x": np.zeros(3)}).grads["x"]
        array([0.5, 0.5, 0.5])
        >>> adl.graph.custom.remove_op("softplus_example")
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise OpDefinitionError(f"define_op: the name must be a Python identifier, got {name!r}")
    if name in OPS and name not in CUSTOM_OPS:
        raise OpDefinitionError(f"define_op: {name!r} is a built-in op of the table; a custom op "
                                "cannot replace it (choose another name)")
    if isinstance(vjp, (str, bytes)) or not isinstance(vjp, Sequence) or callable(vjp):
        raise OpDefinitionError(f"op {name!r}: field 'vjp' must be a list with one rule per "
                                f"input, got {type(vjp).__name__} (write vjp=[rule])")
    if matrix is not None and (isinstance(matrix, (str, bytes)) or callable(matrix)
                               or not isinstance(matrix, Sequence)):
        raise OpDefinitionError(f"op {name!r}: field 'matrix' must be a list with one rule per "
                                f"input, got {type(matrix).__name__} (write matrix=[rule])")
    vjp, n = list(vjp), len(vjp)
    if n == 0:
        raise OpDefinitionError(f"op {name!r}: field 'vjp' is empty; give one rule per input")
    if any(rule is not None and not callable(rule) for rule in vjp):
        raise OpDefinitionError(f"op {name!r}: field 'vjp' must hold functions "
                                "vjp[i](g, ans, *xs, **attrs) or None")
    defaults = dict(attrs or {})
    if not isinstance(vjp_uses, (list, tuple, set, frozenset)):
        raise OpDefinitionError(f"op {name!r}: field 'vjp_uses' must be a list of 'inputs' and "
                                f"'ans', got {vjp_uses!r}")
    elementwise = shape == "elementwise"
    if isinstance(shape, str) and not elementwise:
        raise OpDefinitionError(f"op {name!r}: field 'shape' must be a shape rule or "
                                f"'elementwise', got {shape!r}")
    shape_rule: Rule = _broadcast_rule if elementwise else shape
    for field_name, value in (("forward", forward), ("shape", shape_rule)):
        if not callable(value):
            raise OpDefinitionError(f"op {name!r}: field {field_name!r} must be a function, got "
                                    f"{type(value).__name__}")
    if sympy is not None and not callable(sympy):
        raise OpDefinitionError(f"op {name!r}: field 'sympy' must be a function or None, got "
                                f"{type(sympy).__name__}")
    op = Op(
        name=name,
        shape=_guard_attrs(name, shape_rule, defaults),
        forward=_checked_forward(name, forward, shape_rule, defaults),
        vjp=tuple(None if rule is None else _checked_vjp(name, i, rule, defaults)
                  for i, rule in enumerate(vjp)),
        sympy=None if sympy is None else (_elementwise_sympy(sympy, n) if elementwise else sympy),
        label=name if label is None else label,
        complex_safe=complex_safe,
        n_args=(n, n),
        attrs=defaults,
        kink=kink,
        batched=batched,
        vjp_uses=frozenset(vjp_uses),
        doc=doc or f"{name} (defined with adl.define_op)",
        matrix=None if matrix is None else tuple(matrix),
        elementwise=elementwise,
    )
    optable.validate_op(op)
    replacing = name in OPS
    OPS[name] = op
    CUSTOM_OPS.add(name)

    if replacing:
        _forget_compiled()
    return _function(op)


def remove_op(name: str) -> None:
    """Remove a custom op defined with :func:`define_op` from the op table (built-in ops
    cannot be removed). Graphs using it can no longer be built, loaded or compiled."""
    if name not in CUSTOM_OPS:
        raise OpDefinitionError(f"remove_op: {name!r} is not a custom op "
                                f"(custom ops: {', '.join(sorted(CUSTOM_OPS)) or 'none'})")
    CUSTOM_OPS.discard(name)
    OPS.pop(name, None)
    _forget_compiled()


def _forget_compiled() -> None:
    """Compiled symbolic programs are cached by graph content, which names ops but not their
    rules: after an op changes they must be compiled again."""
    symbolic = sys.modules.get("autodiff_lab.engines.symbolic")
    if symbolic is not None:
        symbolic.clear_cache()
    expanded = sys.modules.get("autodiff_lab.engines.symbolic_expanded")
    if expanded is not None:
        expanded._MEASURED.clear()  # the size guard's measurements of SymPy forms


def _broadcast_rule(*shapes: tuple[int, ...], **_: Any) -> tuple[int, ...]:
    return broadcast_shapes(*shapes)


def _guard_attrs(name: str, rule: Rule, defaults: dict[str, Any]) -> Rule:
    """The shape rule, called with every attribute (defaults filled in)."""
    def shape(*shapes: tuple[int, ...], **attrs: Any) -> tuple[int, ...]:
        try:
            out = rule(*shapes, **{**defaults, **attrs})
            return tuple(int(d) for d in out)
        except ShapeRuleError:
            raise
        except (TypeError, ValueError) as exc:
            raise ShapeRuleError(f"the shape rule of {name} failed: {exc}") from None
    return shape


def _float_dtype(xs: Sequence[np.ndarray]) -> np.dtype | None:
    """The dtype results should have: numpy's promotion of the float/complex inputs."""
    kinds = [x.dtype for x in xs if x.dtype.kind in "fc"]
    return np.result_type(*kinds) if kinds else None


def _checked_forward(name: str, forward: Rule, shape_rule: Rule, defaults: dict[str, Any]) -> Rule:
    def checked(*xs: Any, **attrs: Any) -> np.ndarray:
        full = {**defaults, **attrs}
        arrays = [np.asarray(x) for x in xs]
        out = np.asarray(forward(*arrays, **full))
        if arrays and all(a.dtype != object for a in arrays):
            expected = tuple(int(d) for d in shape_rule(*(a.shape for a in arrays), **full))
            if out.shape != expected:
                raise OpDefinitionError(
                    f"op {name!r}: forward returned shape {out.shape} for inputs of shapes "
                    f"{[a.shape for a in arrays]}, but the op's shape rule gives {expected}")
            dtype = _float_dtype(arrays)
            if dtype is not None and out.dtype != dtype:
                if out.dtype.kind == "c" and dtype.kind != "c":
                    raise OpDefinitionError(f"op {name!r}: forward returned complex values for "
                                            f"real inputs ({dtype})")
                out = out.astype(dtype)
        return out
    return checked


def _checked_vjp(name: str, i: int, rule: Rule, defaults: dict[str, Any]) -> Rule:
    def checked(g: Any, ans: Any, *xs: Any, **attrs: Any) -> np.ndarray:
        x = np.asarray(xs[i])
        out = np.asarray(rule(g, ans, *xs, **{**defaults, **attrs}))
        if out.shape != x.shape:
            try:
                out = unbroadcast(np.broadcast_to(out, np.broadcast_shapes(out.shape, x.shape)),
                                  x.shape)
            except ValueError:
                raise OpDefinitionError(
                    f"op {name!r}: vjp[{i}] returned a gradient of shape {out.shape} for "
                    f"input {i} of shape {x.shape}; it must have the input's shape") from None
        if x.dtype.kind in "fc" and out.dtype != x.dtype and out.dtype != object:
            out = out.astype(np.result_type(x.dtype, np.asarray(g).dtype))
        return out
    return checked


def _elementwise_sympy(fn: Rule, n: int) -> Rule:
    def apply(*xs: Any, **attrs: Any) -> np.ndarray:
        vec = np.frompyfunc(lambda *items: fn(*items, **attrs), n, 1)
        return np.asarray(vec(*xs), dtype=object)
    return apply


def _function(op: Op) -> Callable[..., Any]:
    from autodiff_lab.graph.tensor import apply

    def op_function(*args: Any, **attrs: Any) -> Any:
        unknown = sorted(set(attrs) - set(op.attrs))
        if unknown:
            raise TraceError(f"{op.name} has no attribute(s) {', '.join(unknown)}; it takes "
                             f"{', '.join(sorted(op.attrs)) or 'none'}")
        if len(args) != op.n_args[0]:
            raise TraceError(f"{op.name} takes {op.n_args[0]} argument(s), got {len(args)}")
        return apply(op.name, *args, **{**op.attrs, **attrs})

    op_function.__name__ = op_function.__qualname__ = op.name
    op_function.__doc__ = op.doc
    op_function.op = op  # type: ignore[attr-defined]
    return op_function


__all__ = ["CUSTOM_OPS", "define_op", "remove_op"]
