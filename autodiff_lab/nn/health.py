"""Checks a training loop runs on its own steps: a cheap gradient check and a NaN diagnosis.

Both re-run the forward pass of the step's own compiled graph (same batch, same dropout
masks, batch norm in training mode with this batch's statistics) with the op table's
forward rules, so they check exactly the function the engine differentiated, and neither
changes the model, the optimiser or any random generator of the run.

* :func:`directional_check` -- the derivative of the loss along a random direction v over
  all trained parameters by central differences, (L(θ + tv) − L(θ − tv)) / 2t, two forward
  evaluations in float64, against ⟨∇L, v⟩ from the engine's gradient. Its relative error
  is ~1e-8 for a correct float64 gradient and ~1e-5 for float32; a wrong rule gives O(1).
  A kink (a ReLU's input crossing 0) between the two points is detected and the step
  shrunk, so piecewise-linear networks get clean numbers too.
* :func:`locate_nonfinite` -- which input, op node (with the layer it belongs to) and
  parameter gradient first hold a NaN or an Inf.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.graph.evaluate import run_forward
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS

_F64 = np.dtype(np.float64)
#: shrinkings of the step after a kink was crossed
RETRIES = 3


@dataclass
class DirectionalCheck:
    """One directional check: ``finite_difference`` and ``engine`` (⟨∇L, v⟩), their
    ``relative_error``, the step ``t``, the evaluations it took (2, plus 2 per retry after
    a kink was crossed) and whether the last pair still crossed a kink."""

    finite_difference: float
    engine: float
    relative_error: float
    t: float
    evaluations: int = 2
    kinks_crossed: bool = False


def directional_check(graph: Graph, values: Mapping[str, Any], grads: Mapping[str, np.ndarray],
                      names: Iterable[str], rng: np.random.Generator, *,
                      step_power: float | None = None, retries: int = RETRIES) -> DirectionalCheck:
    """Check ``grads`` (the engine's gradient of ``graph``'s output at ``values`` with respect
    to ``names``) along a random normal direction drawn from ``rng``; see the module
    docstring. ``values`` are not modified.

    The step t moves the largest coordinate by eps^p · max(|θ|, 1) (p = 1/3 for smooth
    graphs, the central difference's best step; 0.4 when the path holds kinks such as ReLU,
    fewer of which then lie within reach of the step).
    If some kink (ReLU, |x|, max ...) is crossed between θ − tv and θ + tv, the slope there
    is not the derivative at θ, so t is divided by 16 and the pair re-evaluated, up to
    ``retries`` times (``kinks_crossed`` says if the last pair still crossed one).
    """
    names = list(names)
    out = graph.outputs[next(iter(graph.main_outputs))]
    base = {k: _as_f64(v) for k, v in values.items() if k in graph.inputs}
    direction = {n: rng.standard_normal(np.shape(base[n])) for n in names}
    x_max = max((float(np.max(np.abs(base[n]), initial=0.0)) for n in names), default=0.0)
    v_max = max((float(np.max(np.abs(v), initial=0.0)) for v in direction.values()), default=0.0)
    if v_max == 0.0:
        return DirectionalCheck(0.0, 0.0, 0.0, 0.0, 0)
    kinks = _kink_nodes(graph, [graph.inputs[n] for n in names], out)
    if step_power is None:
        step_power = 0.4 if kinks else 1 / 3
    t = 2.0 ** round(math.log2(np.finfo(_F64).eps ** step_power * max(x_max, 1.0) / v_max))
    keep = [out] + sorted({u for v in kinks for u in graph.operands(v)})
    evaluations = 0
    for attempt in range(retries + 1):
        ends = []
        for sign in (1.0, -1.0):
            moved = dict(base)
            for n in names:
                moved[n] = base[n] + (sign * t) * direction[n]
            with np.errstate(all="ignore"):
                ends.append(run_forward(graph, moved, keep=keep, check_finite=False, dtype=_F64))
        evaluations += 2
        crossed = any(_crossed(graph, v, ends[0], ends[1]) for v in kinks)
        if not crossed or attempt == retries:
            break
        t /= 16
    fd = (float(ends[0][out]) - float(ends[1][out])) / (2 * t)
    ad = float(sum(np.vdot(np.asarray(grads[n], dtype=_F64), direction[n]) for n in names))
    scale = max(abs(fd), abs(ad))
    if not math.isfinite(fd) or not math.isfinite(ad):
        rel = math.inf
    else:
        rel = abs(fd - ad) / scale if scale > 0 else 0.0
    return DirectionalCheck(fd, ad, rel, t, evaluations, crossed)


def _kink_nodes(graph: Graph, sources: list[int], out: int) -> list[int]:
    """Ops with non-differentiable points (the op table's ``kink``) between the perturbed
    inputs and the output."""
    return [v for v in graph.path_nodes(sources, out)
            if graph.node(v)["role"] == "op" and OPS[graph.node(v)["op"]].kink is not None]


def _slope_pattern(graph: Graph, v: int, env: Mapping[int, np.ndarray]) -> np.ndarray | None:
    """Which piece of a kinked op each element is on: the sign of its input (ReLU, |x|,
    √x ...), of the difference of its two inputs (maximum, minimum, L1), or where the
    maxima are (max over axes, max pooling: the op's VJP of ones)."""
    d = graph.node(v)
    op = OPS[d["op"]]
    args = [env[u] for u in graph.operands(v)]
    if d["op"] in ("max", "max_pool2d"):
        ans = np.asarray(op.forward(*args, **d["attrs"]))
        return np.asarray(op.vjp[0](np.ones_like(ans), ans, *args, **d["attrs"]))
    if len(args) == 1:
        return np.sign(args[0])
    if len(args) == 2:
        return np.sign(args[0] - args[1])
    return None


def _crossed(graph: Graph, v: int, plus: Mapping[int, np.ndarray], minus: Mapping[int, np.ndarray]) -> bool:
    a, b = _slope_pattern(graph, v, plus), _slope_pattern(graph, v, minus)
    return a is not None and b is not None and not np.array_equal(a, b)


def _as_f64(v: Any) -> Any:
    a = np.asarray(v)
    return a.astype(_F64) if a.dtype.kind == "f" and a.dtype != _F64 else a


def _finite(a: Any) -> bool:
    a = np.asarray(a)
    return a.dtype.kind not in "fc" or bool(np.all(np.isfinite(a)))


@dataclass
class NonFiniteReport:
    """Where a NaN/Inf first shows: ``inputs`` (graph inputs holding one, e.g. the batch),
    ``node`` (the first op node whose value is not finite, described with its source
    line), ``node_layer`` (the module path of the layer that node belongs to), ``parameter``
    (the first parameter, in model order, whose gradient is not finite) and ``layer`` (the
    first non-finite layer: the node's layer, else the parameter's)."""

    inputs: list[str]
    node: str | None = None
    node_layer: str | None = None
    parameter: str | None = None
    layer: str | None = None

    def describe(self) -> str:
        """One sentence per finding, for an error message."""
        parts = []
        if self.inputs:
            parts.append(f"input(s) {', '.join(map(repr, self.inputs))} hold NaN or Inf")
        if self.node is not None:
            where = f" in {_layer_words(self.node_layer)}" if self.node_layer is not None else ""
            parts.append(f"the first non-finite value is {self.node}{where}")
        elif not self.inputs:
            parts.append("the forward values are finite (the NaN/Inf arose in the backward pass)")
        if self.parameter is not None:
            parts.append(f"the first parameter with a non-finite gradient is {self.parameter!r}")
        return "; ".join(parts)


def _layer_words(path: str | None) -> str:
    return "the model's own parameters" if path == "" else f"layer {path!r}"


def layer_of_parameter(name: str) -> str:
    """The module path of a parameter name: ``"fc1.weight"`` -> ``"fc1"``, ``"weight"`` -> ``""``."""
    return name.rpartition(".")[0]


def node_layer(graph: Graph, v: int, parameters: Iterable[str]) -> str | None:
    """The layer a node belongs to: that of the parameter input it depends on that was
    traced last (the nearest layer upstream), or ``None`` if it depends on no parameter."""
    wanted = set(parameters)
    upstream = {v}
    best = -1
    for u in reversed(graph.order[: graph.order.index(v) + 1]):
        if u not in upstream:
            continue
        d = graph.node(u)
        if d["role"] == "op":
            upstream.update(graph.operands(u))
        elif d.get("name") in wanted and u > best:
            best = u
    return None if best < 0 else layer_of_parameter(graph.node(best)["name"])


def locate_nonfinite(graph: Graph, values: Mapping[str, Any], parameters: Iterable[str],
                     grads: Mapping[str, np.ndarray] | None = None) -> NonFiniteReport:
    """Re-run ``graph`` at ``values`` keeping every node and report where NaN/Inf first
    appear; ``parameters`` are the trained parameters in model order, ``grads`` (if the
    step got that far) their gradients."""
    parameters = list(parameters)
    bad_inputs = [n for n in graph.inputs if n in values and not _finite(values[n])]
    report = NonFiniteReport(bad_inputs)
    bad_params = [n for n in parameters if n in bad_inputs]
    arrays = {k: np.asarray(v) for k, v in values.items() if k in graph.inputs}
    with np.errstate(all="ignore"):
        env = run_forward(graph, arrays, keep=graph.order, check_finite=False)
    for v in graph.order:
        if graph.node(v)["role"] == "op" and v in env and not _finite(env[v]):
            report.node = graph.describe(v)
            report.node_layer = node_layer(graph, v, parameters)
            break
    if grads is not None:
        for name in parameters:
            if name in grads and not _finite(grads[name]):
                report.parameter = name
                break
    if bad_params:  # an update overflowed: the parameter itself holds Inf/NaN
        report.layer = layer_of_parameter(bad_params[0])
    elif report.node_layer is not None:
        report.layer = report.node_layer
    elif report.parameter is not None:
        report.layer = layer_of_parameter(report.parameter)
    return report


__all__ = ["DirectionalCheck", "NonFiniteReport", "directional_check", "layer_of_parameter",
           "locate_nonfinite", "node_layer"]
