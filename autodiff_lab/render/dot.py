"""The DOT text of a graph drawn like the textbook (CS231n's computational graphs).

Inputs on the left, the output on the right; one node per value, labelled with its op
(scalar constants folded into it: ``+1``, ``×2``, ``1/x``) and, for tensors, its shape.
The numbers sit on the edges as in the textbook drawings: the forward value of the source in
green above the line, the gradient flowing back along that edge in red below it. Where a
value fans out, each edge carries its own share of the gradient (from the consumer's VJP
rule) and the node shows the total (``Σ``). With ``numbers="nodes"`` the value and gradient
are written inside each node instead, which keeps large tensor graphs compact.

The text depends only on the graph and the numbers -- node names are the graph's ids, every
loop follows the graph's topological order -- so the same input gives byte-identical DOT.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS
from autodiff_lab.render.annotate import Annotations
from autodiff_lab.render.fonts import FONT_FAMILY, min_node_width
from autodiff_lab.render.numbers import (
    MINUS,
    format_number,
    format_shape,
    format_value,
    is_summarised,
)

#: fill colour of each role; "output" marks the op node that produces a named output
ROLE_COLOURS = {
    "input": "#dbeafe",      # light blue
    "parameter": "#fde68a",  # amber: what training changes
    "constant": "#e5e7eb",   # grey
    "op": "#f8fafc",         # near white
    "output": "#fbcfe8",     # pink
}
VALUE_COLOUR = "#15803d"     # green: forward values
GRAD_COLOUR = "#b91c1c"      # red: gradients
MUTED_COLOUR = "#475569"     # shapes and attributes
#: the font named and measured (see :mod:`autodiff_lab.render.fonts`)
FONT = FONT_FAMILY
#: the nodes' horizontal margin (inches) and Graphviz's default minimum width
NODE_MARGIN_IN = 0.06
DEFAULT_WIDTH_IN = 0.75
NUMBER_MODES = ("edges", "nodes")

# binary ops whose scalar-constant operand is folded into the label, and how it reads
_FOLD_SYMBOLS = {"add": "+", "sub": MINUS, "mul": "×", "div": "÷"}
_SUPERSCRIPT = str.maketrans("0123456789" + MINUS, "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


@dataclass(frozen=True)
class DrawOptions:
    """How to draw: where the numbers go, digits, legend, title and layout direction."""

    numbers: str = "edges"
    digits: int = 4
    legend: bool = True
    title: str | None = None
    rankdir: str = "LR"


def build_dot(notes: Annotations, options: DrawOptions = DrawOptions()) -> str:
    """The DOT source for ``notes.graph`` with its values and gradients (if any)."""
    return _DotWriter(notes, options).write()


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

def is_scalar_constant(graph: Graph, v: int) -> bool:
    """A constant of shape () -- drawn inside the label of the op that uses it."""
    d = graph.node(v)
    return d["role"] == "constant" and tuple(d["shape"]) == ()


def op_label(graph: Graph, v: int, digits: int = 4) -> tuple[str, tuple[int, ...]]:
    """The label of op node ``v`` and the argument positions folded into it.

    ``add(x, 1)`` reads ``+1``, ``mul(x, 2)`` ``×2``, ``sub(x, 3)`` ``−3``, ``div(1, x)``
    ``1/x``, ``pow(x, exponent=2)`` ``x²``; every other op reads its op-table label.
    """
    d = graph.node(v)
    name, args = d["op"], graph.operands(v)
    if name == "pow":
        return _power_label(d["attrs"].get("exponent", OPS["pow"].attrs["exponent"]), digits), ()
    if name == "index":
        return _index_label(d["attrs"].get("key", ())), ()
    consts = [i for i, u in enumerate(args) if is_scalar_constant(graph, u)]
    if name in _FOLD_SYMBOLS and len(args) == 2 and len(consts) == 1:
        pos = consts[0]
        c = float(np.real(np.asarray(graph.node(args[pos])["value"])))
        return _folded(name, pos, c, digits), (pos,)
    if name in ("maximum", "minimum") and len(args) == 2 and len(consts) == 1:
        c = format_number(graph.node(args[consts[0]])["value"], digits)
        return f"{OPS[name].label}(·, {c})", (consts[0],)
    return OPS[name].label, ()


def _folded(name: str, pos: int, c: float, digits: int) -> str:
    text, magnitude = format_number(c, digits), format_number(abs(c), digits)
    if name == "add":
        return (MINUS if c < 0 else "+") + magnitude
    if name == "mul":
        return f"×({text})" if c < 0 else f"×{text}"
    if name == "sub":
        return ("+" if c < 0 else MINUS) + magnitude if pos == 1 else f"{text}{MINUS}x"
    # div
    if pos == 1:
        return f"÷({text})" if c < 0 else f"÷{text}"
    return f"{text}/x"


def _power_label(exponent: Any, digits: int) -> str:
    text = format_number(exponent, digits)
    if all(ch.isdigit() or ch == MINUS for ch in text):
        return "x" + text.translate(_SUPERSCRIPT)
    return f"x^{text}"


def _index_label(key: Sequence[Any]) -> str:
    """``x[0]`` reads ``[0]``, ``x[1:3, ::2]`` reads ``[1:3, ::2]``."""
    parts = []
    for item in key:
        if item[0] == "int":
            parts.append(format_number(item[1]))
        elif item[0] == "slice":
            start, stop, step = (("" if x is None else format_number(x)) for x in item[1:4])
            parts.append(f"{start}:{stop}" + (f":{step}" if step else ""))
        else:
            parts.append("None")
    return "[" + ", ".join(parts) + "]"


# attributes shown by the label itself
_IN_LABEL = {("pow", "exponent"), ("index", "key")}


def attribute_text(graph: Graph, v: int) -> str:
    """The op's attributes that differ from the op table's defaults, e.g. ``padding=(1, 1)``."""
    d = graph.node(v)
    if d["role"] != "op":
        return ""
    defaults = OPS[d["op"]].attrs
    parts = []
    for key in sorted(d["attrs"]):
        value = d["attrs"][key]
        if key in defaults and _same(value, defaults[key]):
            continue
        if (d["op"], key) in _IN_LABEL:
            continue
        parts.append(f"{key}={_attr_text(value)}")
    return ", ".join(parts)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    except (TypeError, ValueError):
        return a == b


def _attr_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_attr_text(x) for x in value) + ")"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _font(text: str, colour: str | None = None, size: int | None = None, bold: bool = False) -> str:
    body = _escape(text)
    if bold:
        body = f"<b>{body}</b>"
    attrs = ""
    if colour:
        attrs += f' color="{colour}"'
    if size:
        attrs += f' point-size="{size}"'
    return f"<font{attrs}>{body}</font>" if attrs else body


def _html(lines: Sequence[str]) -> str:
    return "<" + "<br/>".join(lines) + ">"


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------

class _DotWriter:
    """Builds the DOT text line by line, in the graph's order."""

    def __init__(self, notes: Annotations, options: DrawOptions) -> None:
        if options.numbers not in NUMBER_MODES:
            from autodiff_lab.errors import InputError
            raise InputError(f"numbers must be one of {', '.join(NUMBER_MODES)}, "
                             f"got {options.numbers!r}")
        self.g, self.notes, self.opt = notes.graph, notes, options
        self.values = notes.values or {}
        self.grads = notes.grads or {}
        self.output_nodes = set(self.g.outputs.values())
        # auxiliary outputs (batch statistics of batch norm) and what only they need are
        # bookkeeping, not part of the computation the picture explains: not drawn
        main = set(self.g.main_outputs.values())
        for v in reversed(self.g.order):
            if v in main:
                main.update(self.g.operands(v))
        self.hidden = {v for v in self.g.order if v not in main
                       and self.g.node(v)["role"] in ("op", "constant")}
        self.labels: dict[int, str] = {}
        self._uses: dict[int, int] = {}
        self.folded: set[tuple[int, int]] = set()   # (constant, consumer) edges not drawn
        for v in self.g.order:
            if self.g.node(v)["role"] == "op":
                label, positions = op_label(self.g, v, options.digits)
                self.labels[v] = label
                self.folded.update((self.g.operands(v)[p], v) for p in positions)

    # --- numbers -----------------------------------------------------------------------------
    def _fmt(self, x: Any) -> str:
        return format_value(x, self.opt.digits)

    def uses(self, u: int) -> int:
        """How many times the value of ``u`` is used: argument slots plus named outputs."""
        if u not in self._uses:
            slots = sum(len(data.get("args", ()))
                        for _, _, data in self.g.nx.out_edges(u, data=True))
            self._uses[u] = slots + sum(1 for v in self.g.outputs.values() if v == u)
        return self._uses[u]

    def edge_gradient(self, u: int, v: int, positions: Sequence[int]) -> np.ndarray | None:
        """The gradient flowing back from ``v`` to ``u`` (its share when ``u`` fans out)."""
        if self.uses(u) == 1:
            return self.grads.get(u)
        if v not in self.grads or any(w not in self.values for w in (*self.g.operands(v), v)):
            return None
        d = self.g.node(v)
        op = OPS[d["op"]]
        xs = [self.values[w] for w in self.g.operands(v)]
        share = None
        for pos in positions:
            rule = op.vjp_for(pos)
            if rule is None:
                return None
            part = np.asarray(rule(self.grads[v], self.values[v], *xs, **d["attrs"]))
            share = part if share is None else share + part
        return share

    def output_gradient(self, name: str, u: int) -> np.ndarray | None:
        if self.uses(u) == 1:
            return self.grads.get(u)
        if name == self.notes.differentiated and u in self.grads:
            return np.ones(self.g.node(u)["shape"])
        return None

    def number_lines(self, value: Any, grad: Any) -> list[str]:
        lines = []
        if value is not None:
            lines.append(_font(self._fmt(value), VALUE_COLOUR))
        if grad is not None:
            lines.append(_font(self._fmt(grad), GRAD_COLOUR))
        return lines

    # --- nodes -------------------------------------------------------------------------------
    def node_line(self, v: int) -> str:
        d = self.g.node(v)
        role = d["role"]
        shape = tuple(d["shape"])
        if role in ("input", "parameter"):
            lines = [_font(d["name"], bold=True)]
            attrs = {"shape": "box", "style": "rounded,filled"}
        elif role == "constant":
            text = self._fmt(d["value"]) if not shape else "const"
            lines = [_font(text)]
            attrs = {"shape": "box", "style": "filled"}
        else:
            lines = [_font(self.labels[v], size=14)]
            attrs = {"shape": "circle" if len(self.labels[v]) <= 3 and not shape else "ellipse",
                     "style": "filled"}
            extra = attribute_text(self.g, v)
            if extra:
                lines.append(_font(extra, MUTED_COLOUR, size=9))
        if shape:
            lines.append(_font(format_shape(shape), MUTED_COLOUR, size=9))
        if self.opt.numbers == "nodes":
            lines += self.number_lines(self.values.get(v), self.grads.get(v))
        elif self.uses(v) > 1 and v in self.grads:
            lines.append(_font("Σ " + self._fmt(self.grads[v]), GRAD_COLOUR, size=10))
        label = _html(lines)
        width = min_node_width(label, 11, NODE_MARGIN_IN, attrs["shape"])
        if width > DEFAULT_WIDTH_IN:  # the text's real width, not the layout program's guess
            attrs["width"] = f"{width:.2f}"
        colour = "output" if v in self.output_nodes else role
        attrs["fillcolor"] = ROLE_COLOURS[colour]
        if v in self.output_nodes:
            attrs["penwidth"] = "2"
        attrs["tooltip"] = self._tooltip(v)
        return f"  n{v} [label={label}, {_attributes(attrs)}];"

    def _tooltip(self, v: int) -> str:
        d = self.g.node(v)
        what = d.get("name") or d["op"]
        return f"node {v}: {what} {format_shape(tuple(d['shape']))} {d['dtype']}"

    def drawn(self, v: int) -> bool:
        """Scalar constants folded into every consumer are not drawn, nor what only
        auxiliary outputs need."""
        if v in self.hidden:
            return False
        if self.g.node(v)["role"] != "constant":
            return True
        consumers = list(self.g.nx.successors(v))
        unfolded = any((v, w) not in self.folded for w in consumers)
        return not consumers or unfolded or v in self.output_nodes

    # --- edges -------------------------------------------------------------------------------
    def edge_lines(self, v: int) -> list[str]:
        """The edges into ``v`` in argument order (an operand used twice: one edge)."""
        lines, seen = [], set()
        for u in self.g.operands(v):
            if u in seen or (u, v) in self.folded:
                continue
            seen.add(u)
            positions = self.g.nx.edges[u, v]["args"]
            attrs: dict[str, str] = {}
            if self.opt.numbers == "edges":
                numbers = self.number_lines(self.values.get(u),
                                            self.edge_gradient(u, v, positions))
                if numbers:
                    attrs["label"] = _html(numbers)
            if len(positions) > 1:
                attrs["penwidth"] = "2"
                attrs["tooltip"] = f"used as arguments {', '.join(map(str, positions))}"
            lines.append(f"  n{u} -> n{v}" + (f" [{_attributes(attrs)}]" if attrs else "") + ";")
        return lines

    def output_lines(self) -> list[str]:
        lines = []
        for i, (name, u) in enumerate(self.g.outputs.items()):
            if name in self.g.auxiliary:
                continue
            lines.append(f"  o{i} [label={_html([_font(name, bold=True)])}, shape=plaintext];")
            attrs: dict[str, str] = {}
            if self.opt.numbers == "edges":
                numbers = self.number_lines(self.values.get(u), self.output_gradient(name, u))
                if numbers:
                    attrs["label"] = _html(numbers)
            lines.append(f"  n{u} -> o{i}" + (f" [{_attributes(attrs)}]" if attrs else "") + ";")
        return lines

    # --- legend and the whole text -------------------------------------------------------------
    def legend_label(self) -> str | None:
        rows = []
        if self.opt.title:
            rows.append(f"<tr><td>{_font(self.opt.title, size=13)}</td></tr>")
        if self.opt.legend:
            roles = [r for r in ("input", "parameter", "constant", "op")
                     if any(self.g.node(v)["role"] == r and self.drawn(v) for v in self.g.order)]
            cells = [f'<td bgcolor="{ROLE_COLOURS[r]}" border="1">{r}</td>' for r in roles]
            cells.append(f'<td bgcolor="{ROLE_COLOURS["output"]}" border="1">output</td>')
            if self.notes.values is not None:
                cells.append(f"<td>{_font('forward value', VALUE_COLOUR)}</td>")
            if self.notes.grads is not None:
                cells.append(f"<td>{_font('gradient ∂L/∂·', GRAD_COLOUR)}</td>")
            if (self.notes.values is not None or self.notes.grads is not None) and any(
                    is_summarised(self.g.node(v)["shape"]) for v in self.g.order):
                cells.append(f"<td>{_font('tensors: mean [min, max]', MUTED_COLOUR)}</td>")
            rows.append('<tr><td><table border="0" cellspacing="4" cellpadding="2"><tr>'
                        + "".join(cells) + "</tr></table></td></tr>")
        if not rows:
            return None
        return '<<table border="0" cellspacing="0">' + "".join(rows) + "</table>>"

    def write(self) -> str:
        opt = self.opt
        out = [f"// autodiff_lab graph {self.g.fingerprint()}",
               "digraph autodiff_lab {",
               f'  graph [rankdir={opt.rankdir}, fontname="{FONT}", fontsize=11, nodesep=0.3, '
               f'ranksep=0.45, bgcolor="white", labelloc=b, labeljust=l, ordering=in];',
               f'  node [fontname="{FONT}", fontsize=11, color="#334155", margin="{NODE_MARGIN_IN},0.03"];',
               f'  edge [fontname="{FONT}", fontsize=10, color="#334155", arrowsize=0.7];']
        legend = self.legend_label()
        if legend:
            out.append(f"  label={legend};")
        for v in self.g.order:
            if self.drawn(v):
                out.append(self.node_line(v))
        out += self.output_lines()
        for v in self.g.order:
            if self.g.node(v)["role"] == "op" and v not in self.hidden:
                out += self.edge_lines(v)
        out.append("}")
        return "\n".join(out) + "\n"


def _attributes(attrs: dict[str, str]) -> str:
    parts = []
    for key, value in attrs.items():
        if value.startswith("<") and value.endswith(">"):
            parts.append(f"{key}={value}")
        else:
            parts.append(f'{key}="{_quote(value)}"')
    return ", ".join(parts)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
