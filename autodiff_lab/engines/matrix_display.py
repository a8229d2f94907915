"""Printing matrix-level expressions as the formulas of the lectures (SymPy objects).

:func:`node_names` gives graph nodes the names the lectures use (inputs by their names, the
loss ``L``, its prediction ``ŷ``, a lone sigmoid ``σ``, other values f, g, h ... in
topological order). :class:`Display` turns an :class:`~autodiff_lab.engines.matrix_expr.MExpr`
into SymPy: scalars become ordinary SymPy algebra (built unevaluated, printed with
``order="none"`` so ŷ − y stays ŷ − y), tensors become ``MatrixSymbol`` with SymPy's
``MatMul`` and ``Transpose``, plus the few display classes below for what SymPy has no
readable form of (Hadamard product ⊙, the indicator 1[x > 0], element-wise functions of a
matrix, sums over axes, convolution adjoints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr
from sympy.printing.precedence import PRECEDENCE

from autodiff_lab.engines.matrix_expr import MExpr
from autodiff_lab.graph.graph import Graph

LOSS_OPS = ("mse", "l1", "softmax_cross_entropy")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax", "abs",
               "max_pool2d", "avg_pool2d")
_LETTERS = "f g h u v z a b c d e k m n p q r s t".split()


def node_names(graph: Graph) -> dict[int, str]:
    """A readable name for every node: inputs keep theirs, the loss is L, its prediction
    ŷ (``yhat``), a lone sigmoid σ (``sigma``), other op nodes f, g, h ... in order."""
    names: dict[int, str] = {v: graph.node(v)["name"] for v in graph.inputs.values()}
    used = set(names.values())

    def take(v: int, name: str) -> None:
        if v not in names and name not in used:
            names[v] = name
            used.add(name)

    losses = [v for v in graph.order if graph.node(v)["role"] == "op"
              and graph.node(v)["op"] in LOSS_OPS]
    for k, v in enumerate(losses):
        take(v, "L" if k == 0 else f"L{k + 1}")
        pred = graph.operands(v)[0]
        if graph.node(pred)["role"] == "op":
            take(pred, "yhat" if k == 0 else f"yhat{k + 1}")
    sigmoids = [v for v in graph.order if graph.node(v).get("op") == "sigmoid"]
    if len(sigmoids) == 1:
        take(sigmoids[0], "sigma")
    letters = iter(_LETTERS)
    for v in graph.order:
        if v in names:
            continue
        if graph.node(v)["role"] == "constant":
            names[v] = f"c{v}"
            continue
        for letter in letters:
            if letter not in used:
                take(v, letter)
                break
        else:
            take(v, f"v{v}")
    return names


# --------------------------------------------------------------------------------------
# display classes (SymPy matrix expressions that print as the lectures write them)
# --------------------------------------------------------------------------------------

def _display_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1)
    return (math.prod(shape[:-1]), shape[-1])


class _Shown(MatrixExpr):
    """Base of the display classes: args are (label, rows, cols, *operands)."""

    precedence = PRECEDENCE["Atom"]

    def __new__(cls, label: str | sp.Symbol, *rest: Any) -> _Shown:
        if isinstance(label, str):        # Infix("+", (rows, cols), a, b)
            (rows, cols), operands = rest[0], rest[1:]
            label = sp.Symbol(label)
        else:                             # rebuilt by SymPy from its own args
            rows, cols, operands = rest[0], rest[1], rest[2:]
        return sp.Basic.__new__(cls, label, sp.Integer(rows), sp.Integer(cols), *operands)

    @property
    def label(self) -> str:
        return self.args[0].name

    @property
    def shape(self) -> tuple[Any, Any]:
        return (self.args[1], self.args[2])

    @property
    def operands(self) -> tuple[sp.Basic, ...]:
        return self.args[3:]

    def _entry(self, i, j, **kwargs):  # noqa: ANN001 - SymPy's signature
        raise NotImplementedError("display-only expression")


def _wrap(printer: Any, arg: sp.Basic, level: int, latex: bool) -> str:
    text = printer._print(arg)
    prec = getattr(arg, "precedence", None)
    if prec is None:
        from sympy.printing.precedence import precedence
        prec = precedence(arg)
    if prec < level:
        return rf"\left({text}\right)" if latex else f"({text})"
    return text


class Infix(_Shown):
    """a + b, a − b, a ⊙ b, a / b with broadcasting."""

    _SYMBOLS = {"+": ("+", "+"), "-": ("-", "-"), "odot": (r"\odot", "⊙"), "/": ("/", "/")}

    @property
    def precedence(self) -> int:  # type: ignore[override]
        return PRECEDENCE["Add"] if self.label in ("+", "-") else PRECEDENCE["Mul"]

    def _print_with(self, printer: Any, latex: bool) -> str:
        a, b = self.operands
        level = self.precedence
        sym = self._SYMBOLS[self.label][0 if latex else 1]
        right_level = level + 1 if self.label in ("-", "/") else level
        if self.label == "/" and latex:
            return rf"\frac{{{printer._print(a)}}}{{{printer._print(b)}}}"
        return f"{_wrap(printer, a, level, latex)} {sym} {_wrap(printer, b, right_level, latex)}"

    def _latex(self, printer: Any) -> str:
        return self._print_with(printer, True)

    def _sympystr(self, printer: Any) -> str:
        return self._print_with(printer, False)


class Call(_Shown):
    """A named function applied to matrices: σ(X), relu(X), 1[X > 0], Σ_axes X, conv ..."""

    _LATEX = {"sigmoid": r"\sigma", "step": r"\mathbb{1}", "sum": r"\Sigma", "exp": r"\exp",
              "log": r"\log", "sqrt": r"\sqrt", "sin": r"\sin", "cos": r"\cos", "tanh": r"\tanh",
              "sign": r"\operatorname{sign}"}
    _TEXT = {"sigmoid": "σ", "step": "1", "sum": "Σ"}

    def _print_with(self, printer: Any, latex: bool) -> str:
        label = self.label
        args = ", ".join(printer._print(a) for a in self.operands)
        if label.startswith("sum_"):  # a sum over some axes: Σ with the axes as subscript
            axes = label[4:].replace("_", ",")
            return rf"\Sigma_{{{axes}}}\left({args}\right)" if latex else f"Σ_{axes}({args})"
        if label == "step":
            return rf"\mathbb{{1}}\left[{args} > 0\right]" if latex else f"1[{args} > 0]"
        if latex:
            name = self._LATEX.get(label, rf"\operatorname{{{label}}}".replace("_", r"\_"))
            return rf"{name}\left({args}\right)"
        return f"{self._TEXT.get(label, label)}({args})"

    def _latex(self, printer: Any) -> str:
        return self._print_with(printer, True)

    def _sympystr(self, printer: Any) -> str:
        return self._print_with(printer, False)


class ScalarCall(sp.Function):
    """A named scalar function that SymPy does not know (relu, the indicator, σ ...)."""

    @classmethod
    def eval(cls, *args: Any) -> None:
        return None


def _scalar_fn(name: str) -> type:
    latex_name = {"sigmoid": r"\sigma", "relu": r"\operatorname{relu}"}.get(name)

    def _latex(self: Any, printer: Any, exp: Any = None) -> str:
        args = ", ".join(printer._print(a) for a in self.args)
        if name == "step":
            return rf"\mathbb{{1}}\left[{args} > 0\right]"
        head = latex_name or r"\operatorname{" + name.replace("_", r"\_") + "}"
        return rf"{head}\left({args}\right)"

    def _sympystr(self: Any, printer: Any) -> str:
        args = ", ".join(printer._print(a) for a in self.args)
        if name == "step":
            return f"1[{args} > 0]"
        return f"{'σ' if name == 'sigmoid' else name}({args})"

    return type(name, (ScalarCall,), {"_latex": _latex, "_sympystr": _sympystr})


_SCALAR_FNS: dict[str, type] = {}


def scalar_fn(name: str) -> type:
    """The SymPy function class used to show element-wise function ``name`` on scalars."""
    if name not in _SCALAR_FNS:
        _SCALAR_FNS[name] = _scalar_fn(name)
    return _SCALAR_FNS[name]


_SYMPY_SCALAR = {"exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "sin": sp.sin, "cos": sp.cos,
                 "tanh": sp.tanh, "sign": sp.sign}


# --------------------------------------------------------------------------------------
# MExpr -> SymPy
# --------------------------------------------------------------------------------------

def _number(v: Any) -> sp.Expr:
    f = float(v)
    if f.is_integer() and abs(f) < 1e15:
        return sp.Integer(int(f))
    frac = sp.Rational(f).limit_denominator(1000)
    if float(frac) == f:
        return frac
    return sp.Float(f)


def _flat_mul(*factors: sp.Expr) -> sp.Expr:
    flat: list[sp.Expr] = []
    for f in factors:
        flat.extend(f.args if isinstance(f, sp.Mul) else [f])
    return flat[0] if len(flat) == 1 else sp.Mul(*flat, evaluate=False)


def _flat_add(*terms: sp.Expr) -> sp.Expr:
    flat: list[sp.Expr] = []
    for t in terms:
        flat.extend(t.args if isinstance(t, sp.Add) else [t])
    return sp.Add(*flat, evaluate=False)


class Display:
    """Converts matrix expressions to SymPy, showing the values of ``shown`` graph nodes by
    their names and writing the others out (``forward`` maps value keys to graph nodes)."""

    def __init__(self, graph: Graph, names: Mapping[int, str], forward: Mapping[tuple, int],
                 shown: set[int]) -> None:
        self.graph, self.names, self.forward, self.shown = graph, names, forward, shown
        self._memo: dict[int, sp.Basic] = {}

    def symbol(self, v: int) -> sp.Basic:
        """The SymPy symbol of graph node ``v`` (a MatrixSymbol for tensors)."""
        shape = self.graph.node(v)["shape"]
        name = self.names[v]
        if shape == ():
            return sp.Symbol(name, real=True)
        return sp.MatrixSymbol(name, *_display_shape(shape))

    def __call__(self, e: MExpr) -> sp.Basic:
        # iterative post-order so deep graphs do not hit the recursion limit
        stack: list[tuple[MExpr, bool]] = [(e, False)]
        while stack:
            node, done = stack.pop()
            if node.key in self._memo:
                continue
            v = self.forward.get(node.key)
            if node.op == "leaf" or (v is not None and v in self.shown):
                self._memo[node.key] = self._leaf(node, v)
                continue
            if not done:
                stack.append((node, True))
                stack.extend((a, False) for a in node.args)
                continue
            self._memo[node.key] = self._convert(node, [self._memo[a.key] for a in node.args])
        return self._memo[e.key]

    def _leaf(self, e: MExpr, v: int | None) -> sp.Basic:
        node = e.attrs.get("node") if e.op == "leaf" else v
        if node is not None and node in self.names:
            d = self.graph.node(node)
            if d["role"] == "constant" and np.size(d["value"]) == 1:
                return _number(np.asarray(d["value"]).item())
            return self.symbol(node)
        name = e.attrs.get("name", "v")
        return sp.Symbol(name, real=True) if e.shape == () else \
            sp.MatrixSymbol(name, *_display_shape(e.shape))

    def _convert(self, e: MExpr, a: list[sp.Basic]) -> sp.Basic:
        op, shape = e.op, _display_shape(e.shape)
        scalar = e.shape == () and all(not getattr(x, "is_Matrix", False) for x in a)
        if op == "const":
            value = np.asarray(e.attrs["value"])
            return _number(value) if value.size == 1 and e.shape == () else \
                Call("const", shape, sp.Symbol(np.array2string(value, threshold=6)))
        if scalar:
            return self._scalar(e, a)
        if op == "index" and e.shape == () and isinstance(a[0], sp.MatrixSymbol):
            at = [item[1] for item in e.attrs["key"] if item[0] == "int"]
            return sp.Symbol(f"{a[0].name}_{'_'.join(map(str, at))}", real=True)
        if op == "scatter" and e.ndim == 1 and e.shape[0] <= 16 and not getattr(a[0], "is_Matrix", 0):
            key = e.attrs["key"]
            if len(key) == 1 and key[0][0] == "int":  # a vector with one non-zero entry
                column = [sp.Integer(0)] * e.shape[0]
                column[key[0][1]] = a[0]
                return sp.ImmutableMatrix(column)
        if op == "add" and all(isinstance(x, sp.ImmutableMatrix) for x in a):
            return a[0] + a[1]
        if op in ("add", "sub", "mul", "div"):
            x, y = a
            x_mat, y_mat = getattr(x, "is_Matrix", False), getattr(y, "is_Matrix", False)
            if op == "mul" and not (x_mat and y_mat):
                return sp.MatMul(x, y) if (x_mat or y_mat) else _flat_mul(x, y)
            if op == "div" and not y_mat:
                return Infix("/", shape, x, y)
            label = {"add": "+", "sub": "-", "mul": "odot", "div": "/"}[op]
            return Infix(label, shape, x, y)
        if op == "neg":
            return sp.MatMul(sp.Integer(-1), a[0])
        if op == "matmul":
            try:
                return sp.MatMul(a[0], a[1])
            except Exception:  # shapes SymPy cannot check (batched products)
                return Call("matmul", shape, *a)
        if op == "T":
            return sp.Transpose(a[0])
        if op == "pow":
            p = _number(e.attrs["exponent"])
            return Call(f"pow_{p}", shape, a[0])
        if op in ("sum", "sum_to"):
            src = e.args[0].shape
            if op == "sum":
                axes = tuple(e.attrs["axes"])
            else:  # the axes broadcasting added or stretched
                lead = len(src) - len(e.shape)
                axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(e.shape)
                                                  if d == 1 and src[lead + i] != 1)
            whole = len(axes) == len(src)
            return Call("sum" if whole else "sum_" + "_".join(map(str, axes)), shape, *a)
        if op in ("reshape", "broadcast_to", "transpose"):
            return a[0] if op != "transpose" else Call("transpose", shape, a[0])
        return Call(op, shape, *a)

    def _scalar(self, e: MExpr, a: list[sp.Expr]) -> sp.Expr:
        op = e.op
        if op == "add":
            return _flat_add(a[0], a[1])
        if op == "sub":
            return _flat_add(a[0], _flat_mul(sp.Integer(-1), a[1]))
        if op == "mul":
            return sp.Pow(a[0], 2, evaluate=False) if a[0] == a[1] else _flat_mul(a[0], a[1])
        if op == "div":  # one 1/(factor) per factor, so SymPy prints the denominator whole
            denominator = a[1].args if isinstance(a[1], sp.Mul) else (a[1],)
            numerator = [] if a[0] == 1 else [a[0]]
            return _flat_mul(*numerator, *(sp.Pow(f, -1, evaluate=False) for f in denominator))
        if op == "neg":
            return _flat_mul(sp.Integer(-1), a[0])
        if op == "pow":
            return sp.Pow(a[0], _number(e.attrs["exponent"]), evaluate=False)
        if op in _SYMPY_SCALAR:
            return _SYMPY_SCALAR[op](a[0], evaluate=False)
        if op in ("reshape", "broadcast_to", "sum", "sum_to", "index", "transpose"):
            return a[0] if len(a) == 1 else scalar_fn(op)(*a)
        return scalar_fn(op)(*a)
