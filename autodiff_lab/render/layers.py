"""Drawing a layer-level graph (modules as boxes, tensor shapes on the edges) with Graphviz.

The graph comes from :func:`autodiff_lab.nn.diagram.module_graph`; this module only draws
it: any object with ``nodes`` (each with ``id``, ``kind`` in "module" / "op" / "input" /
"output", ``title``, ``detail``) and ``edges`` (each with ``src``, ``dst``, ``shape``,
``skip``) will do. The DOT text is built with the ``graphviz`` Python package and laid out
by the same ``dot`` program as ``adl.render`` (:mod:`autodiff_lab.render.backend`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.render.backend import run_dot
from autodiff_lab.render.fonts import FONT_FAMILY, min_node_width

#: fill colours by kind of node
COLOURS = {"module": "#dbe9f6", "op": "#fde2c8", "input": "#e3f1df", "output": "#e3f1df"}
SKIP_COLOUR = "#c0392b"
VALUE_COLOUR = "#15803d"   # green: forward values (as in adl.render)
GRAD_COLOUR = "#b91c1c"    # red: gradients
MUTED_COLOUR = "#475569"
FORMATS = (".svg", ".png")
#: font sizes (points): the title, box titles, box details and edge labels; at the PNG's
#: 150 dpi 12 pt is 25 px
SIZES = {"title": 18, "node": 14, "detail": 12, "edge": 12}
BOX_MARGIN_IN = 0.11


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def summary(x: Any, digits: int = 3) -> str:
    """A tensor in a few characters: a scalar's value, else ``mean ± std``."""
    from autodiff_lab.render.numbers import format_number

    a = np.asarray(x, dtype=np.float64)
    if a.size == 1:
        return format_number(float(a.reshape(-1)[0]), digits)
    return f"{format_number(float(a.mean()), digits)} ± {format_number(float(a.std()), 2)}"


def norm_text(x: Any) -> str:
    from autodiff_lab.render.numbers import format_number
    return format_number(float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel())), 2)


def _font(text: str, colour: str | None = None, size: int | None = None, bold: bool = False
          ) -> str:
    body = f"<b>{_escape(text)}</b>" if bold else _escape(text)
    attrs = (f" color='{colour}'" if colour else "") + (f" point-size='{size}'" if size else "")
    return f"<font{attrs}>{body}</font>" if attrs else body


def _chunks(graph: Any, wrap: int | None) -> list[list[str]]:
    """The boxes in columns of at most ``wrap`` (a chain drawn as a snake of columns);
    one column when ``wrap`` is None or the graph has skip connections."""
    # the main line only: a second data input (the target) sits beside its reader
    ids = [n.id for k, n in enumerate(graph.nodes) if n.kind != "input" or k == 0]
    if not wrap or wrap < 2 or len(ids) <= wrap or any(e.skip for e in graph.edges):
        return [ids]
    count = -(-len(ids) // wrap)
    size = -(-len(ids) // count)  # columns of even length
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def layer_dot(graph: Any, rankdir: str = "TB", title: str | None = None,
              align_skips: bool = False, values: Mapping[int, Any] | None = None,
              grads: Mapping[int, Any] | None = None, wrap: int | None = None,
              legend: bool = True) -> str:
    """The DOT source of the layer-level drawing.

    ``align_skips`` puts the two ends of each skip connection side by side (same rank),
    which draws a U-Net as a U. ``values`` / ``grads`` (by graph node id, for the edges'
    ``node`` and the boxes' ``params``, as :func:`autodiff_lab.nn.trace_modules` names
    them) add each edge's forward value (mean ± std) and gradient, and each parameter's
    gradient norm in its box; they are data, nothing here computes them. ``wrap`` (with
    ``rankdir="TB"``) cuts a long chain into columns of at most that many boxes, so the
    drawing fits a slide instead of a tall strip.
    """
    import graphviz

    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise InputError(f"rankdir must be 'TB', 'LR', 'BT' or 'RL', got {rankdir!r}")
    values = values or {}
    grads = grads or {}
    numbers = bool(values or grads)
    rows = []
    if title:
        rows.append(f"<tr><td>{_font(title, size=SIZES['title'], bold=True)}</td></tr>")
    if legend and numbers:
        cells = []
        if values:
            cells.append(f"<td>{_font('forward value: mean ± std', VALUE_COLOUR)}</td>")
        if grads:
            cells.append(f"<td>{_font('gradient ∂L/∂·: mean ± std', GRAD_COLOUR)}</td>")
            cells.append(f"<td>{_font('‖∂L/∂θ‖ of each parameter θ in its box', GRAD_COLOUR)}</td>")
        rows.append("<tr><td><table border='0' cellspacing='6'><tr>" + "".join(cells)
                    + "</tr></table></td></tr>")
    label = ("<<table border='0' cellspacing='2'>" + "".join(rows) + "</table>>") if rows else ""
    dot = graphviz.Digraph("layers", graph_attr={
        "rankdir": rankdir, "fontname": FONT_FAMILY, "fontsize": str(SIZES["node"]),
        "nodesep": "0.5" if numbers else "0.3", "ranksep": "0.25" if numbers else "0.32",
        "labelloc": "t", "label": label, "newrank": "true"},
        node_attr={"fontname": FONT_FAMILY, "fontsize": str(SIZES["node"]),
                   "style": "filled,rounded", "shape": "box", "color": "#4a4a4a",
                   "penwidth": "1.2", "margin": f"{BOX_MARGIN_IN},0.055"},
        edge_attr={"fontname": FONT_FAMILY, "fontsize": str(SIZES["edge"]), "color": "#4a4a4a",
                   "arrowsize": "0.8"})

    def node(node_id: str, text: str, shape: str, **attrs: str) -> None:
        width = min_node_width(text, SIZES["node"], BOX_MARGIN_IN, shape)
        if width > 0.75:  # the text's real width, not the layout program's guess
            attrs["width"] = f"{width:.2f}"
        dot.node(node_id, text, shape=shape, **attrs)

    for n in graph.nodes:
        fill = COLOURS.get(n.kind, "#ffffff")
        if n.kind == "op":
            node(n.id, f"<<b>{_escape(n.title)}</b>>", "ellipse", style="filled",
                 fillcolor=fill, margin="0.04,0.02")
        elif n.kind in ("input", "output"):
            lines = [_font(n.title, bold=True), _font(n.detail, size=SIZES["detail"])]
            node(n.id, "<" + "<br/>".join(lines) + ">", "box", style="filled", fillcolor=fill)
        else:
            # the layer and its sizes in bold, where it sits in the model below
            lines = [_font(n.detail or n.title, bold=True)]
            if n.detail and n.title and not n.detail.startswith(n.title):
                lines.append(_font(n.title, MUTED_COLOUR, SIZES["detail"]))
            for name, shape, gid in getattr(n, "params", ()):
                if gid is not None and gid in grads:
                    short = name.rsplit(".", 1)[-1]
                    lines.append(_font(f"‖∂L/∂{short}‖ {norm_text(grads[gid])}  ({_shape(shape)})",
                                       GRAD_COLOUR, SIZES["detail"]))
            node(n.id, "<" + "<br/>".join(lines) + ">", "box", fillcolor=fill)
    for e in graph.edges:
        parts = [_font(_shape(e.shape), MUTED_COLOUR)]
        gid = getattr(e, "node", None)
        if gid is not None and gid in values:
            parts.append(_font(summary(values[gid]), VALUE_COLOUR))
        if gid is not None and gid in grads:
            parts.append(_font(summary(grads[gid]), GRAD_COLOUR))
        text = "<" + "<br/>".join(parts) + ">" if numbers else f" {_shape(e.shape)}"
        if e.skip:
            dot.edge(e.src, e.dst, label=text, style="dashed", color=SKIP_COLOUR,
                     fontcolor=SKIP_COLOUR, penwidth="1.6")
        else:
            dot.edge(e.src, e.dst, label=text)
    chunks = _chunks(graph, wrap if rankdir == "TB" else None)
    if len(chunks) > 1:
        # each column starts at the top: the column heads share a rank; the edge into a
        # head comes from the foot of the column before and does not push it down
        with dot.subgraph() as same:
            same.attr(rank="same")
            for chunk in chunks:
                same.node(chunk[0])
        heads = {c[0] for c in chunks[1:]}
        body = dot.body
        for k, line in enumerate(body):
            for head in heads:
                if f"-> {head} " in line or line.rstrip().endswith(f"-> {head}"):
                    body[k] = line.replace("[", "[constraint=false ", 1) if "[" in line \
                        else line.rstrip() + " [constraint=false]\n"
        for a, b in zip(chunks, chunks[1:]):  # columns left to right
            dot.edge(a[0], b[0], style="invis")
    if align_skips:
        for e in graph.edges:
            if e.skip:
                with dot.subgraph() as same:
                    same.attr(rank="same")
                    same.node(e.src)
                    same.node(e.dst)
    return dot.source


def draw_layer_graph(graph: Any, path: str | Path | None = None, rankdir: str = "TB",
                     title: str | None = None, align_skips: bool = False,
                     values: Mapping[int, Any] | None = None,
                     grads: Mapping[int, Any] | None = None, wrap: int | None = None) -> str:
    """Write the drawing to ``path`` (``.svg``, ``.png``, or no suffix for both) and
    return its DOT source (``path=None``: the source only); see :func:`layer_dot`."""
    source = layer_dot(graph, rankdir, title, align_skips, values, grads, wrap)
    if path is None:
        return source
    p = Path(path)
    if p.suffix and p.suffix.lower() not in FORMATS:
        raise InputError(f"layer drawings are written as SVG or PNG: give a path ending in .svg, "
                         f".png or nothing (both), got {str(p)!r}")
    targets = [p] if p.suffix else [p.with_name(p.name + s) for s in FORMATS]
    for target in targets:
        data, _ = run_dot(source, target.suffix.lower()[1:])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return source


__all__ = ["draw_layer_graph", "layer_dot", "summary"]
