"""Derivatives as formulas people read: ``adl.formula`` and ``adl.explain``.

``formula(g, wrt=...)`` differentiates the graph at matrix level (the symbolic engine's
matrix mode, the op table's ``matrix`` rules) and prints the result with the names
textbooks use: for the 2-layer MLP ``∂L/∂W2 = (ŷ − y) gᵀ`` and
``∂L/∂W1 = ((W2ᵀ(ŷ − y)) ⊙ 1[W1 x > 0]) xᵀ``, where the activations (g), the prediction (ŷ)
and a lone sigmoid (σ) are shown by name and defined underneath, and everything linear is
written out.

``explain(g, values, wrt=...)`` shows the chain rule on a scalar graph factor by factor,
along every path from the input to the output: for f = w1·x, g = max(0, f), ŷ = w2·g,
L = ½(ŷ − y)² it prints ∂L/∂w1 = ∂f/∂w1 · ∂g/∂f · ∂ŷ/∂g · ∂L/∂ŷ, each local derivative as a
formula and with its value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from autodiff_lab._lazy import lazy_module
from autodiff_lab.engines import matrix_expr as M
from autodiff_lab.engines.base import resolve_output, resolve_wrt
from autodiff_lab.engines.matrix_expr import SourceBuilder
from autodiff_lab.engines.symbolic import DEFAULT_MAX_NODES
from autodiff_lab.errors import InputError, NotDifferentiableError, SymbolicSizeError
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS

# SymPy and the modules built on it are imported at the first formula, not with the package
sp = lazy_module("sympy")
_display = lazy_module("autodiff_lab.engines.matrix_display")
_symbolic_matrix = lazy_module("autodiff_lab.engines.symbolic_matrix")

_PRETTY_NAMES = {"yhat": "ŷ", "sigma": "σ"}


def _text(expr: Any) -> str:
    """Unicode text of a SymPy expression (ŷ, σ, ᵀ, ·), keeping the order it was built in."""
    text = sp.sstr(expr, order="none")
    text = text.replace("**", "^").replace("*", "·").replace(".T", "ᵀ").replace(" - ", " − ")
    for name, pretty in _PRETTY_NAMES.items():
        text = _replace_word(text, name, pretty)
    return text


def _replace_word(text: str, word: str, new: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith(word, i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) \
                and not (i + len(word) < len(text) and (text[i + len(word)].isalnum()
                                                        or text[i + len(word)] == "_")):
            out.append(new)
            i += len(word)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _latex(expr: Any) -> str:
    return sp.latex(expr, order="none")


def _pretty(name: str) -> str:
    return _PRETTY_NAMES.get(name, name)


@dataclass
class Formula:
    """∂output/∂input for each input in ``wrt``, as SymPy expressions.

    ``exprs[name]`` is the derivative with respect to ``name``; ``expr`` is that expression
    when there is one input (a dict otherwise). ``definitions`` gives the named
    intermediate values (ŷ, g, σ ...) in terms of the inputs. ``latex`` and ``str()`` print
    everything; in Jupyter the formula renders itself.
    """

    output_name: str
    exprs: dict[str, sp.Basic]
    definitions: dict[sp.Basic, sp.Basic] = field(default_factory=dict)

    @property
    def expr(self) -> sp.Basic | dict[str, sp.Basic]:
        if len(self.exprs) == 1:
            return next(iter(self.exprs.values()))
        return dict(self.exprs)

    def __getitem__(self, name: str) -> sp.Basic:
        return self.exprs[name]

    def lines(self) -> list[tuple[str, str]]:
        """(text, latex) of every line: the derivatives, then the definitions."""
        try:
            return self._lines()
        except RecursionError:  # formulas are measured before they are built; the backstop
            raise SymbolicSizeError("the formula is too deep for SymPy's printers; read the "
                                    "generated code instead: "
                                    "adl.engine('symbolic').compile(graph).source") from None

    def _lines(self) -> list[tuple[str, str]]:
        out = []
        lhs = sp.Symbol(self.output_name, real=True)
        for name, e in self.exprs.items():
            var = sp.Symbol(name, real=True)
            out.append((f"∂{_pretty(self.output_name)}/∂{_pretty(name)} = {_text(e)}",
                        rf"\frac{{\partial {sp.latex(lhs)}}}{{\partial {sp.latex(var)}}} = {_latex(e)}"))
        for sym, definition in self.definitions.items():
            out.append((f"{_text(sym)} = {_text(definition)}",
                        f"{sp.latex(sym)} = {_latex(definition)}"))
        return out

    @property
    def latex(self) -> str:
        """All lines as LaTeX (an ``aligned``-free list joined by ``\\\\``)."""
        return " \\\\\n".join(latex for _, latex in self.lines())

    @property
    def text(self) -> str:
        return "\n".join(text for text, _ in self.lines())

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Formula(\n{self.text}\n)"

    def _repr_latex_(self) -> str:
        return "$\\begin{gathered}" + self.latex + "\\end{gathered}$"


def _shown_nodes(graph: Graph, names: Mapping[int, str]) -> set[int]:
    """Nodes printed by name: inputs, activations, the loss prediction ŷ and a sigmoid σ."""
    shown = set(graph.inputs.values())
    for v in graph.order:
        d = graph.node(v)
        if d["role"] == "op" and (d["op"] in _display.ACTIVATIONS or names[v].startswith(("yhat", "sigma"))):
            shown.add(v)
    return shown


def formula(graph: Graph, wrt: Iterable[str] | str | None = None, output: str | None = None,
            *, expand: bool = False) -> Formula:
    """The derivative of ``output`` with respect to ``wrt`` as a readable formula.

    Derived at matrix level (the symbolic engine's matrix mode, the op table's ``matrix``
    rules) and printed with the names textbooks use: the inputs by name, the loss L, its
    prediction ŷ, a lone sigmoid σ, activations by letters (f, g, h …), each named value
    defined underneath. Graphs too large or deep to print are refused up front
    (:class:`~autodiff_lab.errors.SymbolicSizeError`).

    Args:
        graph: the traced graph.
        wrt: an input name or several (default: every float input).
        output: the output when there are several.
        expand: write every intermediate value out in terms of the inputs instead of
            naming the activations and the prediction.

    Returns:
        A :class:`Formula`: ``str()`` is Unicode text, ``.latex`` LaTeX, ``.exprs[name]``
        the SymPy expressions; Jupyter renders it as mathematics.

    Examples:
        >>> from autodiff_lab import examples
        >>> print(adl.formula(examples.mlp(bias=False).graph, wrt=["W1", "W2"]))
        ∂L/∂W1 = (W2ᵀ·(ŷ − y) ⊙ 1[W1·x > 0])·xᵀ
        ∂L/∂W2 = (ŷ − y)·gᵀ
        ŷ = W2·g
        g = relu(W1·x)
    """
    output = resolve_output(graph, output)
    names_wrt = resolve_wrt(graph, wrt)
    _symbolic_matrix.check_matrix_size(graph, output, DEFAULT_MAX_NODES)
    dv = _symbolic_matrix.derive(graph, names_wrt, output)
    shown = set(graph.inputs.values()) if expand else _shown_nodes(graph, dv.names)
    display = _display.Display(graph, dv.names, dv.forward_of, shown)
    exprs = {n: display(dv.grads[n]) for n in names_wrt}
    definitions: dict[sp.Basic, sp.Basic] = {}
    symbol_of = {display.symbol(v): v for v in shown if graph.node(v)["role"] == "op"}
    pending = [e for e in exprs.values()]
    while pending:
        e = pending.pop()
        for sym in sorted(_symbols_in(e), key=str):
            v = symbol_of.get(sym)
            if v is None or sym in definitions:
                continue
            value = dv.values[v]
            definition = display._convert(value, [display(a) for a in value.args])
            definitions[sym] = definition
            pending.append(definition)
    ordered = dict(sorted(definitions.items(), key=lambda kv: -graph.order.index(symbol_of[kv[0]])))
    return Formula(dv.names[graph.outputs[output]], exprs, ordered)


def _symbols_in(e: sp.Basic) -> set[sp.Basic]:
    return {a for a in sp.preorder_traversal(e) if isinstance(a, (sp.Symbol, sp.MatrixSymbol))}


# --------------------------------------------------------------------------------------
# explain: the chain rule factor by factor on a scalar graph
# --------------------------------------------------------------------------------------

@dataclass
class Factor:
    """One local derivative ∂(node)/∂(argument) on a path, as a formula and a number."""

    numerator: str
    denominator: str
    expr: sp.Basic
    value: float

    @property
    def label(self) -> str:
        return f"∂{_pretty(self.numerator)}/∂{_pretty(self.denominator)}"


@dataclass
class Explanation:
    """The chain rule for ∂output/∂input: the factors of every path, their products, sum."""

    output_name: str
    input_name: str
    paths: list[list[Factor]]
    value: float
    node_values: dict[str, float]

    @property
    def factors(self) -> list[Factor]:
        """The factors of the (first) path."""
        return self.paths[0] if self.paths else []

    def __str__(self) -> str:
        head = f"∂{_pretty(self.output_name)}/∂{_pretty(self.input_name)}"
        if not self.paths:
            return f"{head} = 0 (no path from {self.input_name} to {self.output_name})"
        lines = []
        labels = [" · ".join(f.label for f in p) for p in self.paths]
        formulas = [" · ".join(_paren(_text(f.expr)) for f in p) for p in self.paths]
        numbers = [" · ".join(_paren(_num(f.value)) for f in p) for p in self.paths]
        pad = " " * len(head)
        lines.append(f"{head} = " + "  +  ".join(labels))
        lines.append(f"{pad} = " + "  +  ".join(formulas))
        lines.append(f"{pad} = " + "  +  ".join(numbers) + f" = {_num(self.value)}")
        lines.append("where")
        seen = set()
        for path in self.paths:
            for f in path:
                if f.label in seen:
                    continue
                seen.add(f.label)
                formula_text = _text(f.expr)
                value_text = _num(f.value)
                lines.append(f"  {f.label} = {formula_text}"
                             + ("" if formula_text == value_text else f" = {value_text}"))
        lines.append("at " + ", ".join(f"{_pretty(k)} = {_num(v)}" for k, v in self.node_values.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    @property
    def latex(self) -> str:
        def frac(f: Factor) -> str:
            return (rf"\frac{{\partial {sp.latex(sp.Symbol(f.numerator))}}}"
                    rf"{{\partial {sp.latex(sp.Symbol(f.denominator))}}}")
        lhs = (rf"\frac{{\partial {sp.latex(sp.Symbol(self.output_name))}}}"
               rf"{{\partial {sp.latex(sp.Symbol(self.input_name))}}}")
        labels = " + ".join(r" \cdot ".join(frac(f) for f in p) for p in self.paths)
        forms = " + ".join(r" \cdot ".join(rf"\left({_latex(f.expr)}\right)" for f in p)
                           for p in self.paths)
        return f"{lhs} = {labels} = {forms} = {_num(self.value)}"


def _num(v: float) -> str:
    return f"{v:.6g}"


def _paren(text: str) -> str:
    return f"({text})" if any(c in text for c in " +-−") and not text.startswith("(") else text


def explain(graph: Graph, values: Mapping[str, Any], wrt: str, output: str | None = None,
            max_paths: int = 16) -> Explanation:
    """The chain rule for ∂output/∂wrt on a scalar graph, factor by factor with values.

    Every path from the input to the output is a product of local derivatives, each shown
    as a formula and as its number at ``values``; the paths are summed where a value fans
    out.

    Args:
        graph: a graph whose values are all scalars.
        values: ``{input name: number}``.
        wrt: the input to differentiate with respect to.
        output: the output when there are several.
        max_paths: refuse graphs with more paths than this (they multiply with fan-out).

    Returns:
        An :class:`Explanation`; ``str()`` prints it, ``.paths`` holds the factors.

    Examples:
        >>> from autodiff_lab.examples import scalar_chain
        >>> chain = scalar_chain()      # f = w1·x, g = max(0, f), ŷ = w2·g, L = ½(ŷ − y)²
        >>> print(str(adl.explain(chain.graph, chain.values, wrt="w1")).splitlines()[0])
        ∂L/∂w1 = ∂f/∂w1 · ∂g/∂f · ∂ŷ/∂g · ∂L/∂ŷ
    """
    output = resolve_output(graph, output)
    (name,) = resolve_wrt(graph, [wrt])
    src, dst = graph.inputs[name], graph.outputs[output]
    for v in graph.order:
        if graph.node(v)["shape"] != () and nx.has_path(graph.nx, src, v) and \
                nx.has_path(graph.nx, v, dst):
            raise InputError(f"explain works on scalar graphs; {graph.describe(v)} on the way "
                             f"from {name!r} to {output!r} has shape {graph.node(v)['shape']}. "
                             "Use adl.formula for tensors.")
    dv = _symbolic_matrix.derive(graph, [name], output)
    node_vals = graph.evaluate(values, all_nodes=True)
    numeric = _evaluator(graph, dv)
    paths = []
    for k, nodes in enumerate(nx.all_simple_paths(graph.nx, src, dst)):
        if k >= max_paths:
            break
        factors = []
        for u, v in zip(nodes, nodes[1:]):
            op = OPS[graph.node(v)["op"]]
            args = graph.operands(v)
            local = None
            for i, a in enumerate(args):
                if a != u:
                    continue
                rule = op.matrix_for(i)
                if rule is None:
                    raise NotDifferentiableError(f"{graph.describe(v)} is not differentiable in "
                                                 f"argument {i}")
                term = rule(M, M.const(1.0), dv.values[v], *(dv.values[x] for x in args),
                            **graph.node(v)["attrs"])
                local = term if local is None else local + term
            display = _display.Display(graph, dv.names, dv.forward_of, set(graph.order))
            factors.append(Factor(dv.names[v], dv.names[u], display(local),
                                  numeric(local, node_vals)))
        paths.append(factors)
    if not paths and src == dst:
        paths = [[]]
    total = float(sum(math.prod(f.value for f in p) for p in paths))
    shown_values = {dv.names[v]: float(node_vals[v]) for v in graph.order
                    if graph.node(v)["role"] != "constant" and np.ndim(node_vals[v]) == 0
                    and np.asarray(node_vals[v]).dtype.kind == "f"}
    return Explanation(dv.names[dst], name, paths, total, shown_values)


def _evaluator(graph: Graph, dv: Any) -> Any:
    """Evaluate a matrix expression over the graph's node values (generated numpy code)."""
    def evaluate(expr: M.MExpr, node_vals: Mapping[int, np.ndarray]) -> float:
        params = [dv.values[v] for v in graph.order if dv.values[v].op != "const"]
        nodes = [v for v in graph.order if dv.values[v].op != "const"]
        builder = SourceBuilder(params)
        result = builder.emit(expr)
        namespace = dict(builder.namespace)
        exec(builder.source("local_derivative", result), namespace)
        return float(namespace["local_derivative"](*(node_vals[v] for v in nodes)))
    return evaluate
