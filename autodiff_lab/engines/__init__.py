"""The gradient engines, one per file, all behind one interface.

``adl.engine(name, **options)`` returns an engine; ``adl.gradient(graph, values, ...)``
compiles and runs one in a single call. Engines are imported on first use, so importing
autodiff_lab does not pay for Numba or SymPy code generation.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from autodiff_lab.engines.base import Engine, GradientResult, Program
from autodiff_lab.errors import InputError, TraceError
from autodiff_lab.graph.graph import Graph

ENGINES = {
    "tape": "autodiff_lab.engines.tape:TapeEngine",
    "numeric": "autodiff_lab.engines.numeric:NumericEngine",
    "symbolic": "autodiff_lab.engines.symbolic:SymbolicEngine",
}


def engine(name: str, **options: Any) -> Engine:
    """An engine by name, to compile a graph once and run it many times.

    Args:
        name: ``"tape"``, ``"numeric"`` or ``"symbolic"``.
        **options: the engine's options (below), passed to its constructor.

    Returns:
        An :class:`~autodiff_lab.engines.base.Engine`; ``engine.compile(graph, wrt=[...],
        output=None)`` returns a program, ``program(values, seed=None)`` a
        :class:`GradientResult`.

    Options: ``"tape"``: ``anomaly``, ``keep_all``; ``"numeric"``: ``method``, ``step``,
    ``estimate_error``, ``batch_size``, ``max_evaluations``, ``progress``; ``"symbolic"``:
    ``mode``, ``max_tree_size``, ``precision``, ``max_nodes``, ``check_finite``, ``cache``
    (what each means: :func:`gradient`).

    Examples:
        >>> g = adl.trace(lambda w, x: adl.sum((x @ w) ** 2), w=(3,), x=(4, 3))
        >>> step = adl.engine("numeric", method="central").compile(g, wrt=["w"])
        >>> r = step({"w": np.ones(3), "x": np.eye(4, 3)})      # compile once, call many times
        >>> print(np.round(r.grads["w"], 6))
        [2. 2. 2.]
    """
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def gradient(graph: Graph, values: Mapping[str, Any], engine: str = "tape",
             wrt: Iterable[str] | None = None, output: str | None = None, seed: Any = None,
             **options: Any) -> GradientResult:
    """The value of ``graph``'s output and its gradients at ``values``, in one call.

    Compiles the graph with the named engine and runs it once (to run many times, compile
    once with :func:`engine`). The gradient of each input has that input's shape (and the
    graph's dtype); inputs not in ``wrt`` get none.

    Args:
        graph: a graph from :func:`adl.trace` (or :func:`adl.load`).
        values: ``{input name: array or number}`` for every input; values are cast to the
            dtypes the graph gives its inputs.
        engine: ``"tape"`` (default), ``"numeric"`` or ``"symbolic"``.
        wrt: input names to differentiate with respect to (default: every float input).
        output: the output to differentiate when the graph has several.
        seed: the upstream gradient for a non-scalar output (a vector-Jacobian product
            vᵀJ); see :func:`adl.jacobian` for the whole Jacobian.
        **options: the engine's options (below).

    Returns:
        A :class:`GradientResult`: ``.value``, ``.grads[name]``, ``.evaluations``, ``.info``
        and, for finite differences, ``.error_estimate``. In Jupyter it shows a table and,
        for small graphs, the graph drawn with its values and gradients.

    Engines and their options:

    * ``"tape"`` -- reverse mode (backpropagation) on a tape of Numba/BLAS kernels; the
      default and the fastest. ``anomaly=True``: check each call's value, outputs and
      gradients for NaN/Inf and name the input or the first op that made one (``False``
      skips the checks, a few per cent of a call);
      ``keep_all=False``: ``True`` keeps every node's value and gradient
      (``result.node_values``, ``result.node_grads``, what drawings use);
      ``generate=True``: small array graphs run as one generated function of the op
      table's rules from a program's second call (``False``: always the general loop).
    * ``"numeric"`` -- finite differences (forward rules only). ``method="central"``:
      ``"forward"``, ``"backward"``, ``"central"``, ``"five_point"``, ``"richardson"`` or
      ``"complex"`` (the complex step, exact to machine precision where every op is
      complex-safe); ``step=None``: the rule's step per method and dtype, or a number, an
      array per element, or a dict per input; ``estimate_error=True``: also return
      ``result.error_estimate``; ``batch_size=None``: perturbed copies per forward call;
      ``max_evaluations=100_000``: refuse bigger gradients up front; ``progress=None``: a
      tqdm bar from 5,000 evaluations on; ``kinks=True``: detect stencils that straddle a
      kink (relu, abs, max ...) and recompute those components one-sided, so the error
      estimate still bounds the error (``False``: the plain formulas).
    * ``"symbolic"`` -- SymPy. ``mode="matrix"`` (default: differentiate the graph at matrix
      level and generate numpy code, ``program.source``) or ``"expanded"`` (element by
      element: ``diff``, ``cse``, ``lambdify``); ``max_tree_size=2e6``: the expanded mode's
      size guard; ``precision=None``: digits for an mpmath evaluation (implies expanded);
      ``max_nodes=50_000``: the matrix mode's size guard; ``check_finite=True``;
      ``cache=True``: reuse programs compiled for the same graph.

    Examples:
        >>> g = adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]),
        ...               w=adl.param((3,)), x=(2,))
        >>> vals = {"w": np.array([2.0, -3.0, -3.0]), "x": np.array([-1.0, -2.0])}
        >>> for name in ("tape", "numeric", "symbolic"):
        ...     print(name, np.round(adl.gradient(g, vals, engine=name).grads["w"], 4))
        tape [-0.1966 -0.3932  0.1966]
        numeric [-0.1966 -0.3932  0.1966]
        symbolic [-0.1966 -0.3932  0.1966]
        >>> r = adl.gradient(g, vals, engine="numeric", method="complex")    # the complex step
        >>> bool(abs(r.grads["w"][0] - adl.gradient(g, vals).grads["w"][0]) < 1e-16)
        True
    """
    if not isinstance(graph, Graph):
        raise TraceError(_not_a_graph(graph))
    program = globals()["engine"](engine, **options).compile(graph, wrt=wrt, output=output)
    result = program(values, seed=seed)
    result.graph, result.inputs = graph, dict(values)
    return result


def _not_a_graph(obj: Any) -> str:
    if callable(obj):
        name = getattr(obj, "__name__", type(obj).__name__)
        return (f"adl.gradient needs a traced graph, got the function {name!r}: trace it first "
                "(g = adl.trace(f, x=X_example); adl.gradient(g, {'x': X})) or differentiate the "
                "function directly with adl.grad(f)(X) / adl.value_and_grad(f)(X)")
    return f"adl.gradient needs a traced graph (adl.trace(f, ...)), got {type(obj).__name__}"


__all__ = ["ENGINES", "Engine", "GradientResult", "Program", "engine", "gradient"]
