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
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.graph.tensor import GraphBuilder, Tensor
from autodiff_lab.nn.module import Module, ModuleCall, trace_state

if TYPE_CHECKING:
    from autodiff_lab.graph.graph import Graph


@dataclass(frozen=True)
class LayerNode:
    """A box of the drawing: a module call, a loose op, the input or the output."""

    id: str
    kind: str          # "module", "op", "input" or "output"
    title: str         # the module path, the op name, "input" / "output"
    detail: str = ""   # the class and its short description, or the shape
    #: the parameters the box reads: (name, shape, graph node id or None)
    params: tuple[tuple[str, tuple[int, ...], int | None], ...] = ()


@dataclass(frozen=True)
class LayerEdge:
    """A value made by ``src`` and read by ``dst``."""

    src: str
    dst: str
    shape: tuple[int, ...]
    skip: bool = False
    #: the graph node of the value (:func:`trace_modules`; ``None`` from :func:`module_graph`)
    node: int | None = None


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
    """The class and its sizes in a few characters: ``Linear 784→64``, ``Conv2d 8→8 3×3``,
    ``BatchNorm2d 8``, else ``Class(extra)`` if short, else the class name."""
    name = type(module).__name__
    get = getattr
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{name} {get(module, 'in_features')}→{get(module, 'out_features')}"
    if hasattr(module, "in_channels") and hasattr(module, "kernel_size"):
        k = get(module, "kernel_size")
        k = "×".join(map(str, k)) if isinstance(k, tuple) else str(k)
        bias = "" if get(module, "bias", None) is not None else ", no bias"
        return f"{name} {get(module, 'in_channels')}→{get(module, 'out_channels')} {k}{bias}"
    if hasattr(module, "num_features"):
        return f"{name} {get(module, 'num_features')}"
    extra = module.extra_repr()
    if not extra:
        return name
    text = f"{name}({extra})"
    return text if len(text) <= limit else name


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
    _check_model(model, level)
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    dtype = np.dtype(model.dtype or np.float64).name
    builder = GraphBuilder(dtype)
    x = builder.input("x", shape, dtype)
    result = model(x)
    if not isinstance(result, Tensor):
        raise InputError(f"{type(model).__name__} returned {type(result).__name__}, not one "
                         "traced tensor; module_graph draws models with one output")
    return _layer_graph([model], builder, result, level, ("x",), None)


@dataclass
class ModuleTrace:
    """``loss(model(x), y)`` traced once: the graph an engine differentiates, its
    layer-level drawing (whose edges and parameters name that graph's nodes) and the values
    of the graph's inputs (the model's parameters and buffers, ``x``, ``y``)."""

    graph: Graph
    layers: LayerGraph
    values: dict[str, np.ndarray]


def trace_modules(model: Module, loss: Module, x: np.ndarray, y: np.ndarray,
                  level: int | None = None) -> ModuleTrace:
    """Trace ``loss(model(x), y)`` and draw it at layer level (see :func:`module_graph`).

    The loss is a box of its own (fed by the model's output and the target ``y``). The
    numbers of a drawing come from the caller: run an engine on ``result.graph`` with
    ``result.values`` (``keep_all=True`` gives every node's value and gradient) and hand
    them to :func:`autodiff_lab.render.layers.draw_layer_graph`; this function computes no
    gradient.
    """
    from autodiff_lab.graph.graph import Graph

    _check_model(model, level)
    if not isinstance(loss, Module):
        raise InputError(f"trace_modules needs the loss as a nn.Module (nn.MSELoss() ...), got "
                         f"{type(loss).__name__}")
    dtype = np.dtype(model.dtype or np.float64)
    x, y = np.asarray(x), np.asarray(y)
    x = x.astype(dtype) if x.dtype.kind == "f" else x
    y = y.astype(dtype) if y.dtype.kind == "f" else y
    builder = GraphBuilder(dtype.name)
    tx = builder.input("x", x.shape, x.dtype.name)
    ty = builder.input("y", y.shape, y.dtype.name)
    result = loss(model(tx), ty)
    if not isinstance(result, Tensor) or tuple(result.shape) != ():
        raise InputError("trace_modules needs loss(model(x), y) to be one scalar tensor")
    outputs = {"loss": result.node}
    outputs.update({k: v.node for k, v in builder.aux_outputs.items()})
    keep = set(outputs.values())
    for i in range(len(builder.nodes) - 1, -1, -1):
        if i in keep:
            keep.update(builder.nodes[i].inputs)
    keep.update(i for i, r in enumerate(builder.nodes) if r.role in ("input", "parameter"))
    ids = {old: new for new, old in enumerate(sorted(keep))}  # as Graph.from_records numbers
    graph = Graph.from_records(builder.nodes, outputs, auxiliary=builder.aux_outputs,
                               ignorable_inputs=builder.ignorable_inputs)
    state = dict(model.state_dict())
    state.update(loss.state_dict())
    values: dict[str, np.ndarray] = {"x": x, "y": y}
    values.update(model.dropout_masks(graph))
    for name in graph.inputs:
        if name not in values:
            if name not in state:
                raise InputError(f"trace_modules: the traced loss reads input {name!r}, which "
                                 "is neither a parameter nor a buffer of the model or the loss")
            values[name] = np.asarray(state[name])
    layers = _layer_graph([model, loss], builder, result, level, ("x", "y"), ids)
    return ModuleTrace(graph, layers, values)


def _check_model(model: Any, level: Any) -> None:
    if not isinstance(model, Module):
        raise InputError(f"module_graph needs a nn.Module, got {type(model).__name__}")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 0):
        raise InputError(f"level must be None (every leaf layer) or an int >= 0, got {level!r}")


#: how the data inputs are drawn: (box id, title)
_DATA_INPUTS = {"x": ("input", "input"), "y": ("target", "target")}


def _layer_graph(roots: list[Module], builder: GraphBuilder, result: Tensor, level: int | None,
                 data: tuple[str, ...], ids: dict[int, int] | None) -> LayerGraph:
    """Boxes and edges from the module calls ``builder`` recorded; ``ids`` maps record
    indices to the node ids of the traced Graph (``None``: no graph)."""
    def gid(i: int) -> int | None:
        return None if ids is None else ids.get(i)

    calls = trace_state(builder).module_calls
    modules = {(m.path, type(m).__name__): m for root in roots for m in root.modules()}
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
    inputs = {rec.name: i for i, rec in enumerate(builder.nodes)
              if rec.role == "input" and rec.name in data}
    order: list[tuple[float, LayerNode]] = []
    for name in data:
        box, title = _DATA_INPUTS.get(name, (f"in_{name}", name))
        i = inputs[name]
        if box == "target" and np.dtype(builder.nodes[i].dtype).kind in "iu":
            title = "labels"
        first_use = min((k for k, r in enumerate(builder.nodes) if i in r.inputs), default=i)
        # the input first, any other data input just before its first reader
        order.append((-1.0 if name == data[0] else first_use - 0.5,
                      LayerNode(box, "input", title, _shape_text(tuple(builder.nodes[i].shape)))))
    for call in drawn:
        cid = call_ids.get(id(call))
        if cid is None:
            continue
        module = modules.get((call.path, call.kind))
        detail = _short_repr(module) if module is not None else call.kind
        mine = sorted(i for i, o in owner.items() if o == cid)
        params: list[tuple[str, tuple[int, ...], int | None]] = []
        for i in mine:
            for j in builder.nodes[i].inputs:
                rec = builder.nodes[j]
                if rec.role == "parameter" and all(p[0] != rec.name for p in params):
                    params.append((rec.name, tuple(rec.shape), gid(j)))
        title = call.path or call.kind
        order.append((mine[0], LayerNode(cid, "module", title, detail, tuple(params))))
    for i, rec in enumerate(builder.nodes):  # ops no drawn module made: small nodes
        if rec.role == "op" and i not in owner:
            owner[i] = f"op{i}"
            order.append((i, LayerNode(f"op{i}", "op", rec.op)))
    graph.nodes.extend(n for _, n in sorted(order, key=lambda t: t[0]))
    boxes = {i: _DATA_INPUTS.get(name, (f"in_{name}", name))[0] for name, i in inputs.items()}
    seen: set[tuple[str, str, int]] = set()
    for i, rec in enumerate(builder.nodes):
        if rec.role != "op":
            continue
        dst = owner[i]
        for j in rec.inputs:
            src_rec = builder.nodes[j]
            if src_rec.role == "op":
                src = owner[j]
            elif j in boxes:
                src = boxes[j]
            else:
                continue  # parameters, buffers and constants live inside their box
            if src != dst and (src, dst, j) not in seen:
                seen.add((src, dst, j))
                graph.edges.append(LayerEdge(src, dst, tuple(builder.nodes[j].shape),
                                             node=gid(j)))
    graph.nodes.append(LayerNode("output", "output", "loss" if len(data) > 1 else "output",
                                 _shape_text(result.shape)))
    src = owner.get(result.node, "input")
    graph.edges.append(LayerEdge(src, "output", tuple(result.shape), node=gid(result.node)))
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
                    graph.edges[k] = LayerEdge(e.src, e.dst, e.shape, skip=True, node=e.node)


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


__all__ = ["LayerEdge", "LayerGraph", "LayerNode", "ModuleTrace", "module_graph",
           "render_modules", "trace_modules"]
