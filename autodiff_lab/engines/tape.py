"""Reverse-mode automatic differentiation on a tape (level 3 of the three).

``compile`` turns the graph into a flat list of steps in topological order, each with the
slot numbers of its arguments; the forward pass stores what the backward pass needs;
the backward pass starts from dL/dL = 1 and walks the list in reverse, multiplying the
upstream gradient by each op's local derivative (the op table's VJP rules) and adding
(``+=``) where a value fans out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.engines.base import (
    Engine,
    GradientResult,
    Program,
    resolve_output,
    resolve_seed,
    resolve_wrt,
)
from autodiff_lab.errors import NonFiniteError
from autodiff_lab.graph.evaluate import check_values, constant_value, working_dtype
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS, Op


@dataclass(frozen=True)
class Step:
    """One op on the tape: where its arguments are and whether backward must visit it."""

    node: int
    op: Op
    args: tuple[int, ...]
    attrs: dict[str, Any]
    needs_grad: tuple[bool, ...]  # per argument: does a wanted input depend on it?


class TapeProgram(Program):
    """A compiled reverse-mode program (see the module docstring)."""

    def __init__(self, graph: Graph, wrt: list[str], output: str, *, anomaly: bool,
                 keep_all: bool) -> None:
        self.graph, self.wrt, self.output = graph, wrt, output
        self.anomaly, self.keep_all = anomaly, keep_all
        out_node = graph.outputs[output]
        wanted = {graph.inputs[n] for n in wrt}
        # nodes on a path from a wanted input to the output: the only ones backward visits
        depends: set[int] = set()
        for v in graph.order:
            if v in wanted or any(u in depends for u in graph.operands(v)):
                depends.add(v)
        self.steps = [
            Step(v, OPS[graph.node(v)["op"]], graph.operands(v), graph.node(v)["attrs"],
                 tuple(u in depends for u in graph.operands(v)))
            for v in graph.order if graph.node(v)["role"] == "op"
        ]
        self.out_node = out_node
        self.backward_steps = [s for s in reversed(self.steps) if any(s.needs_grad)]

    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        g = self.graph
        arrays = check_values(g, values, check_finite=self.anomaly)
        dtype = working_dtype(g, arrays)
        env: dict[int, np.ndarray] = {}
        for v in g.order:
            d = g.node(v)
            if d["role"] in ("input", "parameter"):
                env[v] = arrays[d["name"]]
            elif d["role"] == "constant":
                env[v] = constant_value(g, v, dtype)
        for s in self.steps:
            out = np.asarray(s.op.forward(*(env[u] for u in s.args), **s.attrs))
            if self.anomaly and out.dtype.kind == "f" and not np.all(np.isfinite(out)):
                raise NonFiniteError(f"{g.describe(s.node)} produced a non-finite value in the "
                                     f"forward pass (argument shapes "
                                     f"{[env[u].shape for u in s.args]})")
            env[s.node] = out
        grads: dict[int, np.ndarray] = {self.out_node: resolve_seed(g, self.output, seed, dtype)}
        for s in self.backward_steps:
            g_out = grads.get(s.node)
            if g_out is None:
                continue
            xs = [env[u] for u in s.args]
            for i, u in enumerate(s.args):
                if not s.needs_grad[i]:
                    continue
                contribution = s.op.vjp_for(i)(g_out, env[s.node], *xs, **s.attrs)
                grads[u] = grads[u] + contribution if u in grads else contribution
        result = {n: np.asarray(grads.get(g.inputs[n], np.zeros(g.node(g.inputs[n])["shape"],
                                                                 dtype=dtype)), dtype=dtype)
                  for n in self.wrt}
        return GradientResult(value=env[self.out_node], grads=result, engine="tape",
                              output=self.output,
                              node_values=env if self.keep_all else None,
                              node_grads=grads if self.keep_all else None)


class TapeEngine(Engine):
    """Reverse-mode AD. ``anomaly=True`` checks every forward value for NaN/Inf;
    ``keep_all=True`` returns every node's value and gradient (for drawing)."""

    name = "tape"

    def __init__(self, anomaly: bool = True, keep_all: bool = False) -> None:
        self.anomaly = anomaly
        self.keep_all = keep_all

    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> TapeProgram:
        output = resolve_output(graph, output)
        return TapeProgram(graph, resolve_wrt(graph, wrt), output, anomaly=self.anomaly,
                           keep_all=self.keep_all)
