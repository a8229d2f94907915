"""Matrix mode of the symbolic engine: differentiate on the shared DAG, whole tensors at a time.

Each graph node's value becomes a matrix expression (``autodiff_lab.engines.matrix_expr``);
then, walking the nodes in reverse topological order, each node's adjoint ∂L/∂v is built
from its consumers' adjoints with the op table's ``matrix`` rules and summed where the value
fans out. Every adjoint is one shared expression node, so nothing is expanded into a tree:
symbolic differentiation that keeps the sharing of the DAG *is* reverse-mode
differentiation, and its generated code does what the tape engine does, with the
difference that the code is visible (``program.source``) and printable as formulas.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.engines import matrix_expr as M
from autodiff_lab.engines.base import GradientResult, Program
from autodiff_lab.engines.matrix_display import node_names
from autodiff_lab.engines.matrix_expr import MExpr, SourceBuilder
from autodiff_lab.errors import NonFiniteError, NotDifferentiableError
from autodiff_lab.graph.evaluate import check_values, constant_value, working_dtype
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS

_ARITHMETIC = {"add": M.add, "sub": M.sub, "mul": M.mul, "div": M.div, "matmul": M.matmul}
_UNARY = {"neg": M.neg, "exp": M.exp, "log": M.log, "sqrt": M.sqrt, "sin": M.sin, "cos": M.cos,
          "tanh": M.tanh, "sigmoid": M.sigmoid, "relu": M.relu}


def forward_expression(op: str, args: list[MExpr], attrs: Mapping[str, Any]) -> MExpr:
    """The value of one graph op as a matrix expression (arithmetic stays arithmetic)."""
    if op in _ARITHMETIC:
        return _ARITHMETIC[op](*args)
    if op in _UNARY:
        return _UNARY[op](args[0])
    if op == "pow":
        return M.power(args[0], attrs.get("exponent", 2.0))
    if op == "reciprocal":
        return M.div(1.0, args[0])
    if op == "sum":
        return M.sum(args[0], attrs.get("axes", ()), attrs.get("keepdims", False))
    if op == "reshape":
        return M.reshape(args[0], attrs["shape"])
    if op == "transpose":
        return M.transpose(args[0], attrs["axes"])
    if op == "broadcast_to":
        return M.broadcast_to(args[0], attrs["shape"])
    return M.apply(op, *args, **attrs)


@dataclass
class Derivation:
    """Forward values and adjoints of a graph as matrix expressions."""

    graph: Graph
    wrt: list[str]
    output: str
    names: dict[int, str]
    values: dict[int, MExpr]          # forward value of every node
    adjoints: dict[int, MExpr]        # ∂(output)/∂(node) for nodes between wrt and output
    grads: dict[str, MExpr]           # ∂(output)/∂(input) by input name
    seed: MExpr
    forward_of: dict[int, int]        # value key -> graph node (for printing by name)


def derive(graph: Graph, wrt: list[str], output: str, seed_leaf: bool = False) -> Derivation:
    """Build the forward expressions and, in reverse order, the adjoints (see module doc)."""
    names = node_names(graph)
    values: dict[int, MExpr] = {}
    forward_of: dict[int, int] = {}
    for v in graph.order:
        d = graph.node(v)
        if d["role"] in ("input", "parameter"):
            e = M.leaf(d["name"], d["shape"], node=v)
        elif d["role"] == "constant":
            value = np.asarray(d["value"])
            e = M.const(value.item()) if value.ndim == 0 and value.dtype.kind == "f" \
                else M.leaf(names[v], d["shape"], node=v)
        else:
            e = forward_expression(d["op"], [values[u] for u in graph.operands(v)], d["attrs"])
            if e.hint is None:
                e.hint = names[v]
        values[v] = e
        forward_of.setdefault(e.key, v)
    out_node = graph.outputs[output]
    out_shape = graph.node(out_node)["shape"]
    seed = M.leaf("seed", out_shape) if seed_leaf or out_shape != () else M.const(1.0)
    wanted = {graph.inputs[n] for n in wrt}
    depends: set[int] = set()
    for v in graph.order:
        if v in wanted or any(u in depends for u in graph.operands(v)):
            depends.add(v)
    adjoints: dict[int, MExpr] = {out_node: seed} if out_node in depends else {}
    for v in reversed(graph.order):
        d = graph.node(v)
        if d["role"] != "op" or v not in adjoints:
            continue
        op = OPS[d["op"]]
        args = graph.operands(v)
        xs = [values[u] for u in args]
        for i, u in enumerate(args):
            if u not in depends:
                continue
            rule = op.matrix_for(i)
            if rule is None:
                raise NotDifferentiableError(
                    f"{graph.describe(v)} has no matrix-level derivative for argument {i} "
                    f"(shapes {[x.shape for x in xs]}); use the tape engine")
            try:
                contribution = rule(M, adjoints[v], values[v], *xs, **d["attrs"])
            except NotImplementedError as exc:
                raise NotDifferentiableError(f"{graph.describe(v)}: {exc}; use the tape "
                                             "engine") from None
            adjoints[u] = adjoints[u] + contribution if u in adjoints else contribution
        if v in adjoints and adjoints[v].hint is None:
            adjoints[v].hint = "d_" + names[v]
    grads: dict[str, MExpr] = {}
    for n in wrt:
        g = adjoints.get(graph.inputs[n], M.const(0.0))
        grads[n] = g
    return Derivation(graph, wrt, output, names, values, adjoints, grads, seed, forward_of)


class MatrixProgram(Program):
    """Generated numpy code for the value and gradients (``self.source`` shows it)."""

    def __init__(self, graph: Graph, wrt: list[str], output: str, *,
                 check_finite: bool = True) -> None:
        start = time.perf_counter()
        self.graph, self.wrt, self.output = graph, wrt, output
        self.check_finite = check_finite
        out_shape = graph.node(graph.outputs[output])["shape"]
        self.scalar_output = out_shape == ()
        self.derivation = derive(graph, wrt, output)
        dv = self.derivation
        self.constant_leaves = [v for v in graph.order if graph.node(v)["role"] == "constant"
                                and dv.values[v].op == "leaf"]
        params = [dv.values[v] for v in graph.inputs.values()]
        params += [dv.values[v] for v in self.constant_leaves]
        if not self.scalar_output:
            params.append(dv.seed)
        builder = SourceBuilder(params)
        builder.comment("forward: one line per node of the graph")
        value_var = builder.emit(dv.values[graph.outputs[output]])
        builder.comment("backward: each adjoint is built once and shared (reverse mode)")
        grad_vars = [builder.emit(dv.grads[n], hint="grad_" + n) for n in wrt]
        self.n_ops = builder.n_ops
        returns = f"{value_var}, ({', '.join(grad_vars)}{',' if len(grad_vars) == 1 else ''})"
        self.source = builder.source("value_and_gradient", returns)
        self.param_names = builder.params
        namespace = dict(builder.namespace)
        exec(compile(self.source, f"<autodiff_lab matrix program {graph.fingerprint()}>",
                     "exec"), namespace)
        self._fn = namespace["value_and_gradient"]
        self.compile_seconds = time.perf_counter() - start

    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        from autodiff_lab.engines.base import resolve_seed
        g = self.graph
        arrays = check_values(g, values, check_finite=self.check_finite)
        dtype = working_dtype(g, arrays)
        args = [arrays[n] for n in g.inputs]
        args += [constant_value(g, v, dtype) for v in self.constant_leaves]
        seed_arr = resolve_seed(g, self.output, seed, dtype)
        if not self.scalar_output:
            args.append(seed_arr)
        start = time.perf_counter()
        with np.errstate(all="ignore"):
            value, grads = self._fn(*args)
        seconds = time.perf_counter() - start
        value = np.asarray(value, dtype=dtype)
        if self.check_finite and not np.all(np.isfinite(value)):
            raise NonFiniteError(f"output {self.output!r} is not finite ({value!r}); "
                                 "check the inputs (e.g. log of a negative number)")
        result: dict[str, np.ndarray] = {}
        for n, gr in zip(self.wrt, grads):
            shape = g.node(g.inputs[n])["shape"]
            arr = np.asarray(gr, dtype=dtype)
            if arr.shape != shape:
                arr = np.broadcast_to(arr, shape).copy()
            if self.scalar_output and seed is not None:
                arr = arr * seed_arr
            result[n] = arr
        return GradientResult(value=value, grads=result, engine="symbolic", output=self.output,
                              info={"mode": "matrix", "compile_seconds": self.compile_seconds,
                                    "eval_seconds": seconds, "ops": self.n_ops})
