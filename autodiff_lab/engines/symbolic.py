"""Symbolic differentiation (level 2 of the three), in two modes.

* ``mode="expanded"`` -- the classic way: every tensor written out element by element as
  SymPy expressions of real scalar symbols (the op table's ``sympy`` forms), ``diff`` with
  respect to every wanted scalar, ``cse``, ``lambdify``. Exact and printable, but the
  expressions swell (an MLP's loss grows like D⁵ with the width), so a guard measures the
  expanded tree size on the graph first, in linear time, and refuses with the numbers
  (:class:`~autodiff_lab.errors.SymbolicSizeError`). ``precision=50`` evaluates the same
  expressions with mpmath at 50 digits: the reference "truth" for accuracy comparisons.
* ``mode="matrix"`` (default) -- differentiate on the shared DAG with matrix-level
  expressions and the op table's ``matrix`` rules; nothing is expanded, the generated
  numpy code (``program.source``) is fast enough to train with, and the formulas print as
  textbooks write them (``adl.formula``).

Compiled programs are cached by graph fingerprint, output, ``wrt`` and options;
``program.compile_seconds`` and ``result.info["compile_seconds"]`` report the compile
time apart from the evaluation time (``result.info["eval_seconds"]``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from autodiff_lab.engines.base import Engine, GradientResult, Program, resolve_output, resolve_wrt
from autodiff_lab.errors import InputError
from autodiff_lab.graph.graph import Graph

MODES = ("matrix", "expanded")
DEFAULT_MAX_TREE_SIZE = 2_000_000
#: the largest graph (op nodes reaching the output) the matrix mode compiles by default
DEFAULT_MAX_NODES = 50_000
_CACHE: OrderedDict[tuple, Program] = OrderedDict()
_CACHE_SIZE = 32


class SymbolicEngine(Engine):
    """SymPy-based differentiation.

    ``mode``: ``"matrix"`` (default) or ``"expanded"``. ``max_tree_size``: the expanded
    mode's guard (estimated operations of the expanded gradient; ``None`` disables it).
    ``precision``: digits for an mpmath evaluation of the expanded gradient (implies
    ``mode="expanded"``). ``check_finite``: refuse NaN/Inf inputs. ``cache``: reuse
    compiled programs for the same graph. ``max_nodes``: the matrix mode's guard (op nodes
    reaching the output; ``None`` disables it).

    Both modes refuse what they cannot do (:class:`~autodiff_lab.errors.SymbolicSizeError`)
    before doing any work: the expanded mode a graph whose expression is deeper than
    SymPy's recursion can go, or larger than ``max_tree_size``; the matrix mode a graph of
    more than ``max_nodes`` ops.
    """

    name = "symbolic"

    def __init__(self, mode: str | None = None, max_tree_size: float | None = DEFAULT_MAX_TREE_SIZE,
                 precision: int | None = None, check_finite: bool = True,
                 cache: bool = True, max_nodes: int | None = DEFAULT_MAX_NODES) -> None:
        if mode is None:
            mode = "expanded" if precision else "matrix"
        if mode not in MODES:
            raise InputError(f"symbolic mode must be one of {', '.join(MODES)}; got {mode!r}")
        if precision is not None and mode != "expanded":
            raise InputError("precision=... evaluates the expanded expressions with mpmath; "
                             "use mode='expanded'")
        self.mode = mode
        self.max_tree_size = max_tree_size
        self.precision = precision
        self.check_finite = check_finite
        self.cache = cache
        self.max_nodes = max_nodes

    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> Program:
        """A program for ∂output/∂wrt (cached by graph fingerprint, output, wrt, options)."""
        output = resolve_output(graph, output)
        names = resolve_wrt(graph, wrt)
        # the cheap refusals first (linear, no SymPy): before even fingerprinting the graph
        if self.mode == "matrix":
            from autodiff_lab.engines.symbolic_matrix import check_matrix_size
            check_matrix_size(graph, output, self.max_nodes)
        else:
            from autodiff_lab.engines.symbolic_expanded import check_expansion_depth, check_sympy_forms
            check_sympy_forms(graph, output)
            check_expansion_depth(graph, output)
        key = (graph.fingerprint(), output, tuple(names), self.mode, self.precision,
               self.check_finite, self.max_tree_size, self.max_nodes)
        if self.cache and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        if self.mode == "matrix":
            from autodiff_lab.engines.symbolic_matrix import MatrixProgram
            program: Program = MatrixProgram(graph, names, output, check_finite=self.check_finite,
                                             max_nodes=self.max_nodes)
        else:
            from autodiff_lab.engines.symbolic_expanded import ExpandedProgram
            program = ExpandedProgram(graph, names, output, max_tree_size=self.max_tree_size,
                                      precision=self.precision, check_finite=self.check_finite)
        if self.cache:
            _CACHE[key] = program
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return program


def reference_gradient(graph: Graph, values: Mapping[str, Any], wrt: Iterable[str] | None = None,
                       output: str | None = None, digits: int = 50,
                       max_tree_size: float | None = DEFAULT_MAX_TREE_SIZE) -> GradientResult:
    """The gradient evaluated exactly-then-rounded: the expanded SymPy derivative computed
    with mpmath at ``digits`` significant digits (inputs taken as their exact binary values).

    ``result.grads`` are float64 (correctly rounded from the high-precision values);
    ``result.info["mp_grads"]`` / ``["mp_value"]`` keep the mpmath numbers.
    """
    engine = SymbolicEngine(mode="expanded", precision=digits, max_tree_size=max_tree_size)
    return engine.compile(graph, wrt=wrt, output=output)(values)


def clear_cache() -> None:
    """Forget every compiled symbolic program."""
    _CACHE.clear()


__all__ = ["MODES", "SymbolicEngine", "clear_cache", "reference_gradient", "np"]
