"""Drawing a layer-level graph (modules as boxes, tensor shapes on the edges) with Graphviz.

The graph comes from :func:`autodiff_lab.nn.diagram.module_graph`; this module only draws
it: any object with ``nodes`` (each with ``id``, ``kind`` in "module" / "op" / "input" /
"output", ``title``, ``detail``) and ``edges`` (each with ``src``, ``dst``, ``shape``,
``skip``) will do. The DOT text is built with the ``graphviz`` Python package and laid out
by the same ``dot`` program as ``adl.render`` (:mod:`autodiff_lab.render.backend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autodiff_lab.errors import InputError
from autodiff_lab.render.backend import run_dot

#: fill colours by kind of node
COLOURS = {"module": "#dbe9f6", "op": "#fde2c8", "input": "#e3f1df", "output": "#e3f1df"}
SKIP_COLOUR = "#c0392b"
FORMATS = (".svg", ".png")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def layer_dot(graph: Any, rankdir: str = "TB", title: str | None = None,
              align_skips: bool = False) -> str:
    """The DOT source of the layer-level drawing. ``align_skips`` puts the two ends of each
    skip connection side by side (same rank), which draws a U-Net as a U."""
    import graphviz

    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise InputError(f"rankdir must be 'TB', 'LR', 'BT' or 'RL', got {rankdir!r}")
    dot = graphviz.Digraph("layers", graph_attr={
        "rankdir": rankdir, "fontname": "DejaVu Sans", "fontsize": "16", "nodesep": "0.3",
        "ranksep": "0.32", "labelloc": "t", "label": _escape(title) if title else ""},
        node_attr={"fontname": "DejaVu Sans", "fontsize": "12", "style": "filled,rounded",
                   "shape": "box", "color": "#4a4a4a", "penwidth": "1.2"},
        edge_attr={"fontname": "DejaVu Sans", "fontsize": "10", "color": "#4a4a4a",
                   "arrowsize": "0.7"})
    for n in graph.nodes:
        fill = COLOURS.get(n.kind, "#ffffff")
        if n.kind == "op":
            label = f"<<b>{_escape(n.title)}</b>>"
            dot.node(n.id, label, shape="ellipse", style="filled", fillcolor=fill,
                     fontsize="11", margin="0.04,0.02")
        elif n.kind in ("input", "output"):
            label = f"<<b>{_escape(n.title)}</b><br/>{_escape(n.detail)}>"
            dot.node(n.id, label, shape="box", style="filled", fillcolor=fill)
        else:
            detail = f"<br/><font point-size='10'>{_escape(n.detail)}</font>" if n.detail else ""
            dot.node(n.id, f"<<b>{_escape(n.title)}</b>{detail}>", fillcolor=fill)
    for e in graph.edges:
        shape = "×".join(str(d) for d in e.shape)
        if e.skip:
            dot.edge(e.src, e.dst, label=f" {shape}", style="dashed", color=SKIP_COLOUR,
                     fontcolor=SKIP_COLOUR, penwidth="1.6")
        else:
            dot.edge(e.src, e.dst, label=f" {shape}")
    if align_skips:
        for e in graph.edges:
            if e.skip:
                with dot.subgraph() as same:
                    same.attr(rank="same")
                    same.node(e.src)
                    same.node(e.dst)
    return dot.source


def draw_layer_graph(graph: Any, path: str | Path | None = None, rankdir: str = "TB",
                     title: str | None = None, align_skips: bool = False) -> str:
    """Write the drawing to ``path`` (``.svg``, ``.png``, or no suffix for both) and
    return its DOT source (``path=None``: the source only)."""
    source = layer_dot(graph, rankdir, title, align_skips)
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


__all__ = ["draw_layer_graph", "layer_dot"]
