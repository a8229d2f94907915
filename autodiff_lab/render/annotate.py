"""Which numbers a drawing shows: every node's forward value and gradient, by node id.

``render`` accepts values and gradients in the forms users have at hand -- the input values
by name, a :class:`GradientResult`, gradients by input name or by node id, or ``True`` for
"compute them" -- and this module turns each into ``{node id: array}`` for the graph drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.engines.base import GradientResult
from autodiff_lab.errors import InputError
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS


@dataclass
class Annotations:
    """The graph to draw with its numbers (either may be ``None``: draw without them)."""

    graph: Graph
    values: dict[int, np.ndarray] | None
    grads: dict[int, np.ndarray] | None
    #: the output the gradients are of (its edge to the output label carries dL/dL = 1)
    differentiated: str | None


def composite_ops(graph: Graph) -> tuple[str, ...]:
    """The ops of ``graph`` that the op table can write in primitives (``decompose``), sorted."""
    return tuple(sorted({d["op"] for _, d in graph.nx.nodes(data=True)
                         if d["role"] == "op" and OPS[d["op"]].decompose is not None}))


def annotate(graph: Graph, values: Any = None, grads: Any = None, *, primitive: bool = False,
             output: str | None = None) -> Annotations:
    """Resolve ``values`` and ``grads`` (any accepted form) for ``graph``.

    With ``primitive=True`` the graph is first expanded (σ → neg, exp, +1, 1/x); values and
    gradients are then recomputed on the expanded graph from the input values, since node ids
    of the original graph do not carry over.
    """
    if output is not None and output not in graph.outputs:
        raise InputError(f"no output named {output!r}; outputs are {', '.join(graph.outputs)}")
    if grads is True and values is None:
        raise InputError("grads=True computes the gradients, which needs values for the inputs")
    if primitive:
        expanded = composite_ops(graph)
        if expanded:
            wanted = None if grads is None or grads is False else True
            if wanted and values is None:
                raise InputError("drawing at primitive level recomputes the gradients on the "
                                 "expanded graph, which needs the input values; pass values=...")
            inputs = input_values(graph, values)
            new_graph = graph.expand(expanded)
            return annotate(new_graph, inputs, wanted, output=output)
    node_values = _node_values(graph, values)
    node_grads = _node_grads(graph, grads, values, output)
    differentiated = None
    if node_grads is not None:
        if isinstance(grads, GradientResult):
            differentiated = grads.output
        elif output is not None or len(graph.main_outputs) == 1:
            differentiated = output or next(iter(graph.main_outputs))
    return Annotations(graph, node_values, node_grads, differentiated)


def input_values(graph: Graph, values: Any) -> dict[str, np.ndarray] | None:
    """The input values by name, from any accepted form of ``values`` (``None`` if none)."""
    if values is None:
        return None
    if isinstance(values, GradientResult):
        if values.node_values is None:
            raise InputError("this GradientResult has no node values; compile the engine with "
                             "keep_all=True, or pass the input values by name")
        values = values.node_values
    if not isinstance(values, Mapping):
        raise InputError(f"values must be a dict by input name or node id, got "
                         f"{type(values).__name__}")
    kind = _key_kind(values, "values")
    if kind == "name":
        return dict(values)
    missing = [n for n, v in graph.inputs.items() if v not in values]
    if missing:
        raise InputError(f"values by node id lack the input(s) {', '.join(missing)} "
                         f"(node ids {[graph.inputs[n] for n in missing]})")
    return {n: values[v] for n, v in graph.inputs.items()}


def _node_values(graph: Graph, values: Any) -> dict[int, np.ndarray] | None:
    if values is None:
        return None
    if isinstance(values, GradientResult) and values.node_values is not None:
        values = values.node_values
    if isinstance(values, Mapping) and values and _key_kind(values, "values") == "id":
        given = {int(k): np.asarray(v) for k, v in values.items()}
        if all(v in given for v in graph.inputs.values()) and len(given) < len(graph):
            filled = graph.evaluate(input_values(graph, given), all_nodes=True)
            filled.update(given)
            return {v: np.asarray(filled[v]) for v in graph.order if v in filled}
        return {v: given[v] for v in graph.order if v in given}
    by_name = input_values(graph, values)
    evaluated = graph.evaluate(by_name, all_nodes=True)
    return {v: np.asarray(evaluated[v]) for v in graph.order if v in evaluated}


def _node_grads(graph: Graph, grads: Any, values: Any, output: str | None
                ) -> dict[int, np.ndarray] | None:
    if grads is None or grads is False:
        return None
    if grads is True:
        from autodiff_lab.engines import engine
        program = engine("tape", keep_all=True).compile(graph, output=output)
        result = program(input_values(graph, values))
        return {v: np.asarray(result.node_grads[v]) for v in graph.order if v in result.node_grads}
    if isinstance(grads, GradientResult):
        if grads.node_grads is not None:
            return {v: np.asarray(grads.node_grads[v]) for v in graph.order if v in grads.node_grads}
        grads = grads.grads
    if not isinstance(grads, Mapping):
        raise InputError(f"grads must be True, a GradientResult or a dict by input name or node "
                         f"id, got {type(grads).__name__}")
    if not grads:
        return {}
    if _key_kind(grads, "grads") == "id":
        unknown = [k for k in grads if int(k) not in graph.nx]
        if unknown:
            raise InputError(f"grads name node ids {unknown} that the graph does not have")
        given = {int(k): np.asarray(v) for k, v in grads.items()}
        return {v: given[v] for v in graph.order if v in given}
    unknown = [k for k in grads if k not in graph.inputs]
    if unknown:
        raise InputError(f"grads name {', '.join(map(repr, unknown))}, which are not inputs of the "
                         f"graph (inputs: {', '.join(graph.inputs)})")
    return {graph.inputs[n]: np.asarray(g) for n, g in grads.items()}


def _key_kind(mapping: Mapping[Any, Any], what: str) -> str:
    """``"name"`` when every key is a string, ``"id"`` when every key is an integer."""
    if all(isinstance(k, str) for k in mapping):
        return "name"
    if all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in mapping):
        return "id"
    raise InputError(f"{what} must be keyed all by input name or all by node id, got keys "
                     f"{sorted(map(repr, mapping))}")
