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
    """An engine by name: ``"tape"`` (reverse mode), ``"numeric"`` (finite differences),
    ``"symbolic"`` (SymPy); ``options`` go to its constructor (e.g. ``method="central"``)."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def gradient(graph: Graph, values: Mapping[str, Any], engine: str = "tape",
             wrt: Iterable[str] | None = None, output: str | None = None, seed: Any = None,
             **options: Any) -> GradientResult:
    """Compile ``graph`` with the named engine and run it once at ``values``."""
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
