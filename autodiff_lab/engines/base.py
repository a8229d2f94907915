"""What every engine shares: the result type, the program interface and argument checks.

An engine turns a graph into a *program* once (``engine.compile(graph, wrt=[...])``);
the program maps input values to the output value and the gradients, as many times as
asked. All engines return a :class:`GradientResult`, so a comparison is a loop over engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, NotDifferentiableError
from autodiff_lab.graph.graph import Graph

#: a result of a graph with at most this many nodes draws its graph in Jupyter
INLINE_DRAWING_NODES = 60


@dataclass
class GradientResult:
    """Output value and gradients (keyed by input name, each of that input's shape).

    Every engine returns one; ``value`` has the output's shape and dtype, ``grads[name]``
    the shape and dtype of input ``name``. In Jupyter a result shows a table of its value
    and gradients and, when it knows its graph (results of :func:`adl.gradient
    <autodiff_lab.engines.gradient>`) and the graph is small, the annotated drawing.

    Examples:
        >>> import numpy as np, autodiff_lab as adl
        >>> g = adl.trace(lambda x: adl.sum(x * x), x=(2,))
        >>> r = adl.gradient(g, {"x": np.array([1.0, 2.0])})
        >>> r.value, r.grads["x"]
        (array(5.), array([2., 4.]))
    """

    value: np.ndarray
    grads: dict[str, np.ndarray]
    engine: str
    output: str = "out"
    #: forward evaluations the gradient took (1 for tape/symbolic; counts for numeric)
    evaluations: int = 1
    #: per-input error estimates where the engine has them (numeric methods)
    error_estimate: dict[str, np.ndarray] | None = None
    #: every node's forward value / gradient, when the program was asked to keep them
    node_values: dict[int, np.ndarray] | None = None
    node_grads: dict[int, np.ndarray] | None = None
    #: engine-specific extras (timings, method, step ...)
    info: dict[str, Any] = field(default_factory=dict)
    #: the value of every named output of the graph at these inputs, the differentiated one
    #: included (so auxiliary outputs, e.g. batch statistics of batch norm, come back too)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: the graph and the input values the result was computed from, when known (set by
    #: ``adl.gradient``): what the drawing in Jupyter needs
    graph: Graph | None = field(default=None, repr=False, compare=False)
    inputs: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        grads = ", ".join(f"{k}: shape {np.shape(v)}" for k, v in self.grads.items())
        return (f"GradientResult(engine={self.engine!r}, value={_short(self.value)}, "
                f"grads={{{grads}}}, evaluations={self.evaluations})")

    def table_html(self) -> str:
        """The value and every gradient as an HTML table (shape, dtype, numbers)."""
        from autodiff_lab.render.numbers import format_shape, format_value

        def row(name: str, a: Any) -> str:
            a = np.asarray(a)
            cells = (f"<code>{_escape(name)}</code>", format_shape(a.shape), str(a.dtype),
                     _escape(format_value(a, 6)))
            return "<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>"

        rows = [row(f"value ({self.output})", self.value)]
        rows += [row(f"∂{self.output}/∂{name}", g) for name, g in self.grads.items()]
        extra = f", {self.evaluations} forward evaluations" if self.evaluations != 1 else ""
        return (f"<table><caption>GradientResult, engine <b>{_escape(self.engine)}</b>{extra}"
                "</caption><tr><th></th><th style='text-align:left'>shape</th>"
                "<th style='text-align:left'>dtype</th><th style='text-align:left'>numbers</th></tr>"
                + "".join(rows) + "</table>")

    def drawing_svg(self) -> str | None:
        """The graph drawn with its values and this result's gradients (SVG), or ``None``
        when the result does not know its graph or the graph is too big to show inline."""
        if self.graph is None or self.inputs is None or len(self.graph) > INLINE_DRAWING_NODES:
            return None
        from autodiff_lab.errors import AutodiffError
        from autodiff_lab.render import to_svg
        # inner nodes' gradients: kept by the program, or (same numbers) the tape's own run
        grads: Any = self if self.node_grads is not None or self.engine != "tape" else True
        try:
            svg = to_svg(self.graph, values=self.inputs, grads=grads, output=self.output,
                         legend=False)
            return svg[svg.find("<svg"):]  # inline in HTML: no XML declaration or doctype
        except AutodiffError:
            return None  # e.g. no Graphviz, or a seeded (non-scalar) output: the table says it

    def _repr_html_(self) -> str:
        svg = self.drawing_svg()
        return (f"<div>{svg}</div>" if svg else "") + self.table_html()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(a: Any) -> str:
    a = np.asarray(a)
    return repr(a.item()) if a.ndim == 0 else f"array{a.shape}"


class Program(ABC):
    """A compiled gradient program: call it with ``{input name: value}``."""

    graph: Graph
    wrt: list[str]
    output: str

    @abstractmethod
    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        """Value of the output and its gradients with respect to ``wrt`` at ``values``."""


class Engine(ABC):
    """A way of computing gradients; ``compile`` once, call the program many times."""

    name: str = "?"

    @abstractmethod
    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> Program:
        """Prepare a program computing the gradient of ``output`` with respect to ``wrt``."""


def resolve_output(graph: Graph, output: str | None) -> str:
    """The output to differentiate: the given name, or the only main (not auxiliary) output."""
    if output is None:
        main = graph.main_outputs
        if len(main) != 1:
            raise InputError(f"the graph has outputs {', '.join(main)}; pass output=...")
        return next(iter(main))
    if output not in graph.outputs:
        raise InputError(f"no output named {output!r}; outputs are {', '.join(graph.outputs)}")
    return output


def resolve_wrt(graph: Graph, wrt: Iterable[str] | str | None) -> list[str]:
    """Names to differentiate with respect to (default: every floating-point input)."""
    if wrt is None:
        return [n for n, v in graph.inputs.items()
                if not np.issubdtype(np.dtype(graph.node(v)["dtype"]), np.integer)]
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    for n in names:
        if n not in graph.inputs:
            raise InputError(f"cannot differentiate with respect to {n!r}: not an input of the "
                             f"graph (inputs: {', '.join(graph.inputs)})")
        if np.issubdtype(np.dtype(graph.node(graph.inputs[n])["dtype"]), np.integer):
            raise NotDifferentiableError(f"input {n!r} is integer "
                                         f"({graph.node(graph.inputs[n])['dtype']}); integer "
                                         "inputs cannot be differentiated")
    if len(set(names)) != len(names):
        raise InputError(f"wrt lists a name twice: {names}")
    return names


def resolve_seed(graph: Graph, output: str, seed: Any, dtype: np.dtype) -> np.ndarray:
    """The upstream gradient dL/d(output): 1 for a scalar output, else the seed given."""
    shape = graph.node(graph.outputs[output])["shape"]
    if seed is None:
        if shape != ():
            raise NotDifferentiableError(
                f"output {output!r} has shape {shape}; a gradient needs a scalar output or a "
                "seed vector of that shape (seed=...), or use adl.jacobian")
        return np.ones((), dtype=dtype)
    seed = np.asarray(seed, dtype=dtype)
    if seed.shape != shape:
        raise InputError(f"seed has shape {seed.shape}; output {output!r} has shape {shape}")
    return seed
