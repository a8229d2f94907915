"""Layer-level drawings of a model: one box per module, the tensors that flow between them.

:func:`module_graph` traces the model once on an input of the given shape and reads, from
the calls :class:`~autodiff_lab.nn.module.Module` records while tracing, which module made
each node of the graph. Modules at the chosen level become boxes; the few ops a model's own
``forward`` applies between its layers (the concatenation of a U-Net's skip connection,
the addition of a residual block) become small nodes of their own; an edge joins two of
them when a value one makes is read by the other, labelled with that value's shape. A
branch that leaves a node and rejoins the main path later, beside a longer path (a U-Net's
skip connection, a residual block's shortcut), is a *skip* connection and is drawn dashed.
:func:`render_modules` hands the result to :func:`autodiff_lab.render.layers.draw_layer_graph`,
which writes SVG / PNG with the same Graphviz ``dot`` program as ``adl.render``.

The op-level drawing of the same model is ``adl.render(adl.trace(...))``; this one is
for reading the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.graph.tensor import GraphBuilder, Tensor
from autodiff_lab.nn.module import Module, ModuleCall, trace_state


@dataclass(frozen=True)
class LayerNode:
    """A box of the drawing: a module call, a loose op, the input or the output."""

    id: str
    kind: str          # "module", "op", "input" or "output"
    title: str         # the module path, the op name, "input" / "output"
    detail: str = ""   # the class and its short description, or the shape


@dataclass(frozen=True)
class LayerEdge:
    """A value made by ``src`` and read by ``dst``."""

    src: str
    dst: str
    shape: tuple[int, ...]
    skip: bool = False


@dataclass
class LayerGraph:
    """Boxes and edges of a layer-level drawing, in the order the model runs them."""

    nodes: list[LayerNode] = field(default_factory=list)
    edges: list[LayerEdge] = field(default_factory=list)

    def node(self, node_id: str) -> LayerNode:
        return next(n for n in self.nodes if n.id == node_id)

    def successors(self, node_id: str) -> list[str]:
        return [e.dst for e in self.edges if e.src == node_id]

    @property
    def skips(self) -> list[LayerEdge]:
        """The skip connections (edges with a longer path beside them)."""
        return [e for e in self.edges if e.skip]


def _short_repr(module: Module, limit: int = 28) -> str:
    extra = module.extra_repr()
    text = f"{type(module).__name__}({extra})"
    return text if len(text) <= limit else type(module).__name__


def _drawn_calls(calls: list[ModuleCall], level: int | None) -> list[ModuleCall]:
    """The calls drawn as boxes: leaf modules (``level=None``), or modules ``level`` deep in
    the call tree plus leaves above that depth."""
    if level is None:
        return [c for c in calls if c.is_leaf]
    return [c for c in calls if c.depth == level or (c.is_leaf and 0 < c.depth < level)
            or (c.depth == 0 and level == 0)]


def module_graph(model: Module, input_shape: tuple[int, ...], level: int | None = None
                 ) -> LayerGraph:
    """The layer-level graph of ``model`` applied to an input of ``input_shape``.

    ``level``: ``None`` draws every leaf layer (Conv2d, BatchNorm2d, ReLU ...); ``1`` the
    model's direct children (a U-Net's blocks), ``2`` their children, and so on (a leaf
    above that level is drawn as it is).
    """
    if not isinstance(model, Module):
        raise InputError(f"module_graph needs a nn.Module, got {type(model).__name__}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 0):
        raise InputError(f"level must be None (every leaf layer) or an int >= 0, got {level!r}")
    dtype = np.dtype(model.dtype or np.float64).name
    builder = GraphBuilder(dtype)
    x = builder.input("x", shape, dtype)
    result = model(x)
    if not isinstance(result, Tensor):
        raise InputError(f"{type(model).__name__} returned {type(result).__name__}, not one "
                         "traced tensor; module_graph draws models with one output")
    calls = trace_state(builder).module_calls
    modules = {m.path: m for m in model.modules()}
    drawn = _drawn_calls(calls, level)
    # the innermost drawn call that recorded each node (calls are stored innermost first)
    owner: dict[int, str] = {}
    graph = LayerGraph()
    call_ids: dict[int, str] = {}
    for k, call in enumerate(sorted(drawn, key=lambda c: (c.stop - c.start, c.start))):
        cid = f"m{k}"
        claimed = [i for i in range(call.start, call.stop)
                   if i not in owner and builder.nodes[i].role == "op"]
        if not claimed:
            continue  # an Identity: it made nothing, its input flows past it
        for i in claimed:
            owner[i] = cid
        call_ids[id(call)] = cid
    graph.nodes.append(LayerNode("input", "input", "input", _shape_text(shape)))
    order: list[tuple[int, str]] = []
    for call in drawn:
        cid = call_ids.get(id(call))
        if cid is None:
            continue
        module = modules.get(call.path)
        detail = _short_repr(module) if module is not None else call.kind
        order.append((min(i for i, o in owner.items() if o == cid),
                      cid + "\x00" + (call.path or call.kind) + "\x00" + detail))
    for i, rec in enumerate(builder.nodes):  # ops no drawn module made: small nodes
        if rec.role == "op" and i not in owner:
            owner[i] = f"op{i}"
            order.append((i, f"op{i}\x00{rec.op}\x00"))
    for _, text in sorted(order):
        nid, title, detail = text.split("\x00")
        graph.nodes.append(LayerNode(nid, "module" if nid.startswith("m") else "op", title, detail))
    seen: set[tuple[str, str, int]] = set()
    for i, rec in enumerate(builder.nodes):
        if rec.role != "op":
            continue
        dst = owner[i]
        for j in rec.inputs:
            src_rec = builder.nodes[j]
            if src_rec.role == "op":
                src = owner[j]
            elif src_rec.role == "input" and src_rec.name == "x":
                src = "input"
            else:
                continue  # parameters, buffers and constants live inside their box
            if src != dst and (src, dst, j) not in seen:
                seen.add((src, dst, j))
                graph.edges.append(LayerEdge(src, dst, tuple(builder.nodes[j].shape)))
    graph.nodes.append(LayerNode("output", "output", "output", _shape_text(result.shape)))
    src = owner.get(result.node, "input")
    graph.edges.append(LayerEdge(src, "output", tuple(result.shape)))
    _mark_skips(graph)
    return graph


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def _mark_skips(graph: LayerGraph) -> None:
    """Mark the skip connections: a branch that leaves a node u, passes only through
    nodes with one input and one output (none, or a U-Net's 1×1 skip projection, a
    residual block's projection shortcut) and rejoins at v, with a longer path from u to
    v beside it."""
    g = nx.MultiDiGraph()
    g.add_nodes_from(n.id for n in graph.nodes)
    for k, e in enumerate(graph.edges):
        g.add_edge(e.src, e.dst, key=k)
    ends = {"input", "output"}
    for u in list(g.nodes):
        if g.out_degree(u) < 2:
            continue
        for _, first, k0 in list(g.out_edges(u, keys=True)):
            chain, x = [(u, first, k0)], first
            while x not in ends and g.in_degree(x) == 1 and g.out_degree(x) == 1:
                _, nxt, k = next(iter(g.out_edges(x, keys=True)))
                chain.append((x, nxt, k))
                x = nxt
            inner = [a for a, _, _ in chain[1:]]
            rest = g.copy()
            rest.remove_edges_from(chain)
            rest.remove_nodes_from(inner)
            if x == u or not nx.has_path(rest, u, x):
                continue
            if len(chain) < nx.shortest_path_length(rest, u, x):
                for *_, k in chain:
                    e = graph.edges[k]
                    graph.edges[k] = LayerEdge(e.src, e.dst, e.shape, skip=True)


def render_modules(model: Module, input_shape: tuple[int, ...], path: str | Path | None = None,
                   level: int | None = None, rankdir: str = "TB",
                   title: str | None = None, align_skips: bool = False) -> str:
    """Draw ``model`` at layer level (see :func:`module_graph`) and return the DOT source.

    ``path`` ending in ``.svg`` or ``.png`` writes that file; a path without a suffix
    writes both; ``None`` writes nothing. ``rankdir`` is Graphviz's direction ("TB", "LR");
    ``align_skips`` draws the two ends of each skip connection side by side (a U-Net as a U).
    """
    from autodiff_lab.render.layers import draw_layer_graph
    graph = module_graph(model, input_shape, level)
    label = title if title is not None else f"{type(model).__name__}, input {_shape_text(tuple(input_shape))}"
    return draw_layer_graph(graph, path, rankdir=rankdir, title=label, align_skips=align_skips)


__all__ = ["LayerEdge", "LayerGraph", "LayerNode", "module_graph", "render_modules"]
