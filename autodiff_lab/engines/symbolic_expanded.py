"""Expanded mode of the symbolic engine: diff, cse, lambdify on scalar SymPy expressions.

Every tensor is written out element by element (the op table's ``sympy`` forms on numpy
``object`` arrays of real SymPy symbols), the output becomes one SymPy expression, and
``sympy.diff`` is applied for every wanted scalar. Those expressions are *trees*: a value
used twice is written out twice, so an MLP's loss grows like D³ and its gradient like D⁵
with the width D. :func:`estimate_expansion` measures that growth on our DAG in linear time
(tree size of a node = 1 + the tree sizes of its arguments, shared arguments counted each
time they are used) and the program refuses with :class:`SymbolicSizeError` before SymPy
starts. ``cse`` then finds the sharing again (7.9M operations shrink to ~10k at D = 16,
docs/symbolic.md), and ``lambdify`` turns the result into numpy code; with ``precision``
the same expressions are evaluated with mpmath (the high-precision reference).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from autodiff_lab.engines.base import GradientResult, Program, resolve_seed
from autodiff_lab.errors import NonFiniteError, NotDifferentiableError, SymbolicSizeError
from autodiff_lab.graph.evaluate import check_values, working_dtype
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS

# Calibration of the estimate, measured with SymPy 1.14 on the 2-layer sigmoid MLP
# (benchmarks/bench_symbolic.py): count_ops of the expanded gradient per (output tree node ×
# wanted scalar) was 1.3, 1.16, 1.08 at D = 2, 4, 8; expand + diff + cse + lambdify took
# about 1.4e-5 to 2e-5 s per gradient operation. SymPy shares equal subtrees in memory, so
# memory grows slower than the count: peak RSS rose by ~25 MB for 7.9M operations at D = 16
# (a plain SymPy script without that sharing needed 1.5 GB); 10 bytes per operation is safe.
GRADIENT_OPS_PER_TREE_NODE = 1.1
SECONDS_PER_GRADIENT_OP = 2e-5
BYTES_PER_GRADIENT_OP = 10.0

# --------------------------------------------------------------------------------------
# the guard: expanded tree sizes in linear time
# --------------------------------------------------------------------------------------

_UNARY_COST = {"neg": 2, "reciprocal": 2, "exp": 1, "log": 1, "sqrt": 2, "sin": 1, "cos": 1,
               "tanh": 1, "sigmoid": 6, "abs": 1, "pow": 2}
_STRUCTURAL = ("reshape", "transpose", "broadcast_to", "index", "concatenate", "upsample")
_MULTILINEAR = ("matmul", "conv2d", "conv_transpose2d")


def _sizes_of_op(op: str, xs: list[np.ndarray], attrs: Mapping[str, Any],
                 shape: tuple[int, ...]) -> np.ndarray:
    """Per-element tree sizes of an op's expanded SymPy form, from its arguments' sizes."""
    entry = OPS[op]
    if op in _UNARY_COST:
        return xs[0] + _UNARY_COST[op]
    if op == "relu":                      # Piecewise((x, x > 0), (0, True)) holds x twice
        return 2 * xs[0] + 6
    if op == "leaky_relu":
        return 3 * xs[0] + 8
    if op in ("add", "mul"):
        return xs[0] + xs[1] + 1
    if op in ("sub", "div"):
        return xs[0] + xs[1] + 3
    if op in ("maximum", "minimum"):      # (a + b ± |a − b|) / 2
        return 2 * (xs[0] + xs[1]) + 6
    if op in _STRUCTURAL:
        return np.asarray(entry.forward(*xs, **attrs), dtype=float)
    if op in ("sum", "mean"):
        return np.sum(xs[0], axis=attrs.get("axes", ()), keepdims=attrs.get("keepdims", False)) \
            + (1 if op == "sum" else 3)
    if op in _MULTILINEAR:                # Σ of products: 1 + terms + Σ sizes of both factors
        ones = [np.ones_like(x) for x in xs[:2]]
        kw = dict(attrs)
        terms = entry.forward(ones[0], ones[1], **kw)
        total = 1 + terms + entry.forward(xs[0], ones[1], **kw) + entry.forward(ones[0], xs[1], **kw)
        if len(xs) > 2:                   # bias
            total = total + 1 + xs[2].reshape((-1,) + (1,) * (len(shape) - 2))
        return np.asarray(total, dtype=float)
    if op == "upsample_bilinear":         # a·u + b·v per axis: up to 4 pixels, 7 operations
        return np.asarray(OPS["upsample"].forward(xs[0], **attrs), dtype=float) * 4 + 7
    if op == "avg_pool2d":
        k = math.prod(attrs.get("kernel", (2, 2)))
        return np.asarray(entry.forward(xs[0], **attrs), dtype=float) * k + 3
    if op in ("max", "max_pool2d"):       # nested pairwise maxima double at every level
        k = math.prod(attrs.get("kernel", (2, 2))) if op == "max_pool2d" else \
            math.prod(xs[0].shape[a] for a in attrs.get("axes", ()))
        mean = float(np.mean(xs[0])) if xs[0].size else 1.0
        with np.errstate(over="ignore"):
            return np.full(shape, (2.0 ** min(k, 1000)) * (mean + 3))
    if op == "batch_norm":                # mean, then variance of (x − mean): (n + 1)·S_c
        x = xs[0]
        axes = tuple(a for a in range(x.ndim) if a != 1)
        per_channel = np.sum(x, axis=axes, keepdims=True)
        n = x.size // x.shape[1]
        return x + (n + 2) * per_channel + 12
    if op in ("softmax", "log_softmax"):
        axis = attrs.get("axis", -1)
        return xs[0] + np.sum(xs[0], axis=axis, keepdims=True) + 2 * xs[0].shape[axis] + 4
    if entry.elementwise and entry.sympy is not None:   # an element-wise op not listed above
        occurrences, ops = _elementwise_cost(entry, attrs)
        return sum(k * x for k, x in zip(occurrences, xs)) + ops
    # losses and anything else: every output element depends on every input element
    total = sum(float(np.sum(x)) for x in xs) + 3 * max(x.size for x in xs)
    return np.full(shape, total)


_MEASURED: dict[tuple, tuple[tuple[int, ...], int]] = {}


def _elementwise_cost(entry: Any, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """How often each argument occurs in an element-wise op's SymPy form, and how many
    operations the form adds: measured once on symbols (per op and attributes)."""
    key = (entry.name, repr(sorted(attrs.items())))
    if key not in _MEASURED:
        n = entry.n_args[0]
        symbols = [sp.Symbol(f"a{i}", real=True) for i in range(n)]
        expr = sp.sympify(np.asarray(entry.sympy(*(np.asarray(s, dtype=object) for s in symbols),
                                                 **attrs), dtype=object).item())
        _MEASURED[key] = (tuple(max(int(expr.count(s)), 1) for s in symbols),
                          int(sp.count_ops(expr)))
    return _MEASURED[key]


def tree_sizes(graph: Graph, stop_above: float | None = None,
               relevant: set[int] | None = None) -> dict[int, np.ndarray]:
    """For every node, the tree size of each element's expanded expression (floats; inf
    when it overflows). Linear in the graph: one small numpy computation per node.

    With ``stop_above``, stop at the first node of ``relevant`` with an element whose tree
    is larger (every element of a node that reaches the output is part of the output's
    tree, so the output cannot be smaller): huge graphs are refused without finishing.
    """
    sizes: dict[int, np.ndarray] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for v in graph.order:
            if stop_above is not None and sizes and (relevant is None or v in relevant) and \
                    any(float(np.max(sizes[u], initial=0)) > stop_above for u in graph.operands(v)):
                break
            d = graph.node(v)
            if d["role"] != "op":
                sizes[v] = np.ones(d["shape"])
                continue
            xs = [sizes[u] for u in graph.operands(v)]
            for i in OPS[d["op"]].int_args:  # labels are numbers, not trees
                if i < len(xs):
                    xs[i] = np.zeros(xs[i].shape, dtype=np.intp)
            sizes[v] = np.asarray(_sizes_of_op(d["op"], xs, d["attrs"], d["shape"]), dtype=float)
    return sizes


# --------------------------------------------------------------------------------------
# the guard's second measure: expression depth (SymPy recurses once per level)
# --------------------------------------------------------------------------------------

# SymPy levels an op's expanded form adds above its deepest argument: an upper bound
# (SymPy's flattening of sums and products often makes it less). sigmoid is
# Pow(Add(1, exp(Mul(-1, x))), -1); maximum is Mul(1/2, Add(a, b, Abs(Add(a, Mul(-1, b)))))
_DEPTH_COST = {"neg": 1, "reciprocal": 1, "exp": 1, "log": 1, "sqrt": 1, "sin": 1, "cos": 1,
               "tanh": 1, "sigmoid": 4, "abs": 1, "pow": 1, "relu": 1, "leaky_relu": 3,
               "add": 1, "mul": 1, "sub": 2, "div": 2, "maximum": 5, "minimum": 5,
               "sum": 1, "mean": 2, "matmul": 2, "conv2d": 3, "conv_transpose2d": 3,
               "avg_pool2d": 2, "batch_norm": 14, "softmax": 4, "log_softmax": 5,
               "mse": 5, "l1": 4, "softmax_cross_entropy": 6}
_DEFAULT_DEPTH_COST = 8
# Python frames SymPy's diff spends per level of an expression (measured with SymPy 1.14 on
# tanh and sigmoid chains: about 7), and frames kept free for cse, lambdify and the caller
FRAMES_PER_LEVEL = 9
FRAMES_RESERVED = 120


def _depth_cost(graph: Graph, v: int) -> int:
    d = graph.node(v)
    op = d["op"]
    if op in _STRUCTURAL:
        return 0
    if op in ("max", "max_pool2d"):  # a chain of pairwise maxima, one per further item
        if op == "max_pool2d":
            k = math.prod(d["attrs"].get("kernel", (2, 2)))
        else:
            shape = graph.node(graph.operands(v)[0])["shape"]
            k = math.prod(shape[a] for a in d["attrs"].get("axes", ())) if shape else 1
        return _DEPTH_COST["maximum"] * max(k - 1, 1)
    return _DEPTH_COST.get(op, _DEFAULT_DEPTH_COST)


def expression_depth(graph: Graph, output: str) -> tuple[int, int | None]:
    """An upper bound of the depth of ``output``'s expanded SymPy expression, and the node
    where it is reached first. Linear in the graph and iterative (no recursion)."""
    out = graph.outputs[output]
    relevant = {out}
    for v in reversed(graph.order):
        if v in relevant:
            relevant.update(graph.operands(v))
    depth: dict[int, int] = {}
    for v in graph.order:
        if v not in relevant:
            continue
        if graph.node(v)["role"] != "op":
            depth[v] = 0
            continue
        depth[v] = max((depth[u] for u in graph.operands(v)), default=0) + _depth_cost(graph, v)
    return depth[out], out


def depth_limit() -> int:
    """The deepest expression SymPy can differentiate, simplify and print from here: what
    the interpreter's recursion limit leaves above the current stack, per SymPy level."""
    frame, used = sys._getframe(), 0
    while frame is not None:
        frame, used = frame.f_back, used + 1
    return max((sys.getrecursionlimit() - used - FRAMES_RESERVED) // FRAMES_PER_LEVEL, 0)


def check_sympy_forms(graph: Graph, output: str) -> None:
    """Refuse (:class:`NotDifferentiableError`) a graph with an op that has no SymPy form
    (a custom op defined without ``sympy=``) among the nodes ``output`` depends on."""
    relevant = {graph.outputs[output]}
    for v in reversed(graph.order):
        if v in relevant:
            relevant.update(graph.operands(v))
    for v in graph.order:
        d = graph.node(v)
        if v in relevant and d["role"] == "op" and OPS[d["op"]].sympy is None:
            raise NotDifferentiableError(
                f"expanded symbolic differentiation needs the SymPy form of every op; "
                f"{graph.describe(v)}: op {d['op']!r} has none (the 'sympy' field of its "
                "op-table entry). Use the matrix mode (adl.engine('symbolic', mode='matrix'), "
                "which needs its 'matrix' rule), the tape engine, or give the op a sympy form")


def check_expansion_depth(graph: Graph, output: str) -> int:
    """Refuse (:class:`SymbolicSizeError`) before SymPy starts when ``output``'s expression
    is deeper than SymPy's recursion can go; else return the depth."""
    depth, _ = expression_depth(graph, output)
    limit = depth_limit()
    if depth > limit:
        n_ops = sum(1 for v in graph.order if graph.node(v)["role"] == "op")
        raise SymbolicSizeError(
            f"expanded symbolic differentiation refused: output {output!r} "
            f"({graph.describe(graph.outputs[output])}) written out element by element is an "
            f"expression about {depth} levels deep ({n_ops} ops in the graph); SymPy "
            f"differentiates, simplifies and prints by recursion, and from here it can go "
            f"about {limit} levels deep (the interpreter's recursion limit "
            f"{sys.getrecursionlimit()}; raising it risks a crash). Use the matrix mode: "
            "adl.engine('symbolic', mode='matrix'), or reverse mode: "
            "adl.gradient(graph, values, engine='tape').")
    return depth


@dataclass
class ExpansionEstimate:
    """What expanding and differentiating a graph would cost, estimated before doing it."""

    output_tree_size: float
    scalars: int
    gradient_ops: float
    seconds: float
    bytes: float
    output_node: int
    swell_node: int | None = None
    seconds_measured: float = 0.0
    lower_bound: bool = False

    def message(self, graph: Graph, output: str, limit: float) -> str:
        """The refusal text: size, time and memory estimates, and what to do instead."""
        out = graph.outputs[output]
        d = graph.node(out)
        about = "at least" if self.lower_bound else "about"
        text = (f"expanded symbolic differentiation refused: output {output!r} "
                f"({graph.describe(out)}, shape {d['shape']}) written out element by element "
                f"is an expression tree of {'at least ' if self.lower_bound else ''}"
                f"{self.output_tree_size:.3g} nodes; its gradient with "
                f"respect to {self.scalars} scalars would have {about} {self.gradient_ops:.3g} "
                f"operations (limit max_tree_size={limit:.3g}), an estimated "
                f"{_duration(self.seconds)} and {_memory(self.bytes)} of memory to build.")
        if self.swell_node is not None:
            s = graph.node(self.swell_node)
            text += (f" The swell starts at {graph.describe(self.swell_node)} ({s['op']}, shape "
                     f"{s['shape']}, argument shapes "
                     f"{[graph.node(u)['shape'] for u in graph.operands(self.swell_node)]}).")
        return text + (" Use the matrix mode, which keeps the graph's sharing: "
                       "adl.engine('symbolic', mode='matrix'), or reverse mode: "
                       "adl.gradient(graph, values, engine='tape'); or raise max_tree_size "
                       "to wait for it.")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unbounded time"
    if seconds < 120:
        return f"{seconds:.2g} s"
    if seconds < 7200:
        return f"{seconds / 60:.2g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.2g} h"
    return f"{seconds / 86400:.2g} days"


def _memory(nbytes: float) -> str:
    if not math.isfinite(nbytes):
        return "unbounded"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2g} {unit}"
    return f"{nbytes / 1e3:.2g} kB"


def estimate_expansion(graph: Graph, wrt: list[str], output: str,
                       limit: float | None = None) -> ExpansionEstimate:
    """Estimate the expanded gradient's size, time and memory from the tree sizes.

    With a ``limit``, the measurement stops as soon as the output is known to exceed it a
    thousandfold (the estimate is then a lower bound, marked ``lower_bound``).
    """
    start = time.perf_counter()
    out = graph.outputs[output]
    scalars = sum(int(np.prod(graph.node(graph.inputs[n])["shape"], dtype=np.int64)) for n in wrt)
    relevant = {out}
    for v in reversed(graph.order):
        if v in relevant:
            relevant.update(graph.operands(v))
    stop = None if limit is None else 1000 * limit / (GRADIENT_OPS_PER_TREE_NODE * max(scalars, 1))
    sizes = tree_sizes(graph, stop, relevant)
    lower_bound = out not in sizes
    tree = float(np.sum(sizes[out])) if not lower_bound else \
        max(float(np.max(sizes[v], initial=0)) for v in sizes if v in relevant)
    ops = GRADIENT_OPS_PER_TREE_NODE * tree * max(scalars, 1)
    # where the swell comes from: the op whose elements grow most over its arguments'
    swell, best = None, 1.0
    for v in graph.order:
        if v not in sizes or graph.node(v)["role"] != "op" or not sizes[v].size:
            continue
        before = max((float(np.max(sizes[u], initial=1)) for u in graph.operands(v)), default=1)
        ratio = float(np.max(sizes[v])) / max(before, 1.0)
        if ratio > best:
            swell, best = v, ratio
    return ExpansionEstimate(tree, scalars, ops, ops * SECONDS_PER_GRADIENT_OP,
                             ops * BYTES_PER_GRADIENT_OP, out, swell,
                             seconds_measured=time.perf_counter() - start,
                             lower_bound=lower_bound)


def sigmoid_mlp_example(d: int) -> tuple[Graph, dict[str, np.ndarray]]:
    """The classic swell example: L = ½‖σ(W2 σ(W1 x)) − y‖², D inputs = hidden = outputs."""
    from autodiff_lab.graph import functions as F
    from autodiff_lab.graph.graph import param, trace

    graph = trace(lambda W1, W2, x, y: F.mse_loss(F.sigmoid(W2 @ F.sigmoid(W1 @ x)), y),
                  W1=param((d, d)), W2=param((d, d)), x=(d,), y=(d,))
    rng = np.random.default_rng(d)
    values = {"W1": rng.standard_normal((d, d)) / np.sqrt(d),
              "W2": rng.standard_normal((d, d)) / np.sqrt(d),
              "x": rng.standard_normal(d), "y": rng.random(d)}
    return graph, values


# --------------------------------------------------------------------------------------
# expansion, diff, cse, lambdify
# --------------------------------------------------------------------------------------

def _symbols(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Real SymPy symbols for an input, ``W1_0_1`` for W1[0, 1] (``w1`` for a scalar)."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        label = name if not shape else name + "_" + "_".join(str(i) for i in idx)
        out[idx] = sp.Symbol(label, real=True)
    return out


def _sympy_constant(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    out = np.empty(arr.shape, dtype=object)
    for idx in np.ndindex(arr.shape):
        v = arr[idx].item()
        out[idx] = sp.Integer(int(v)) if float(v).is_integer() and abs(v) < 2 ** 53 else sp.Float(v)
    return out


def expand_graph(graph: Graph, output: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Input symbols by name, and the output as an object array of SymPy expressions."""
    symbols: dict[str, np.ndarray] = {}
    env: dict[int, np.ndarray] = {}
    for v in graph.order:
        d = graph.node(v)
        if d["role"] in ("input", "parameter"):
            if np.issubdtype(np.dtype(d["dtype"]), np.integer):
                env[v] = None  # type: ignore[assignment]  # labels: bound at evaluation
                symbols[d["name"]] = None  # type: ignore[assignment]
                continue
            symbols[d["name"]] = env[v] = _symbols(d["name"], d["shape"])
        elif d["role"] == "constant":
            value = np.asarray(d["value"])
            # integer constants (class labels baked into the graph) stay numbers: ops such as
            # softmax_cross_entropy index with them
            env[v] = value if np.issubdtype(value.dtype, np.integer) and value.ndim else \
                _sympy_constant(value)
        else:
            op = OPS[d["op"]]
            args = [env[u] for u in graph.operands(v)]
            env[v] = np.asarray(op.sympy(*args, **d["attrs"]), dtype=object)
    return symbols, env[graph.outputs[output]]


class ExpandedProgram(Program):
    """diff + cse + lambdify of the expanded output (see the module docstring)."""

    def __init__(self, graph: Graph, wrt: list[str], output: str, *,
                 max_tree_size: float | None, precision: int | None = None,
                 check_finite: bool = True) -> None:
        start = time.perf_counter()
        self.graph, self.wrt, self.output = graph, wrt, output
        self.precision, self.check_finite = precision, check_finite
        labels = [n for n, v in graph.inputs.items()
                  if np.issubdtype(np.dtype(graph.node(v)["dtype"]), np.integer)]
        if labels:
            raise SymbolicSizeError(f"expanded mode needs numeric values for integer inputs "
                                    f"{labels} at compile time; use mode='matrix'")
        check_sympy_forms(graph, output)
        self.depth = check_expansion_depth(graph, output)
        self.estimate = estimate_expansion(graph, wrt, output, max_tree_size)
        if max_tree_size is not None and self.estimate.gradient_ops > max_tree_size:
            raise SymbolicSizeError(self.estimate.message(graph, output, max_tree_size))
        t = {"guard": time.perf_counter() - start}
        try:
            self._build(graph, wrt, output, precision, t)
        except RecursionError:  # the depth bound is conservative; this is the backstop
            raise SymbolicSizeError(
                f"expanded symbolic differentiation refused: SymPy ran out of recursion on "
                f"output {output!r} (an expression about {self.depth} levels deep, limit "
                f"estimated at {depth_limit()}). Use the matrix mode: "
                "adl.engine('symbolic', mode='matrix'), or reverse mode: "
                "adl.gradient(graph, values, engine='tape').") from None
        self.timings = t
        self.compile_seconds = time.perf_counter() - start

    def _build(self, graph: Graph, wrt: list[str], output: str, precision: int | None,
               t: dict[str, float]) -> None:
        """expand, diff, cse, lambdify (recording the time of each in ``t``)."""
        tic = time.perf_counter()
        symbols, out = expand_graph(graph, output)
        out_shape = out.shape
        self.seed_symbols = _symbols("seed", out_shape) if out_shape else None
        loss = out.item() if not out_shape else sp.Add(*(out * self.seed_symbols).ravel())
        self.args = [s for n in graph.inputs for s in symbols[n].ravel()]
        if self.seed_symbols is not None:
            self.args += list(self.seed_symbols.ravel())
        wanted = [s for n in wrt for s in symbols[n].ravel()]
        t["expand"] = time.perf_counter() - tic

        tic = time.perf_counter()
        self.value_expr = out.item() if not out_shape else out
        self.gradient_exprs = [sp.diff(loss, s) for s in wanted]
        t["diff"] = time.perf_counter() - tic

        tic = time.perf_counter()
        values = [self.value_expr] if not out_shape else list(out.ravel())
        self.n_values = len(values)
        self.replacements, self.reduced = sp.cse(values + self.gradient_exprs)
        t["cse"] = time.perf_counter() - tic

        tic = time.perf_counter()
        precomputed = (self.replacements, self.reduced)
        # SymPy functions of the op table (relu ...) carry their numeric form in ``_imp_``
        functions = {type(f).__name__: type(f)._imp_
                     for e in [rhs for _, rhs in self.replacements] + list(self.reduced)
                     for f in e.atoms(sp.Function) if hasattr(type(f), "_imp_")}
        modules = [functions, "mpmath" if precision else "numpy"]
        self._fn = sp.lambdify([self.args], self.reduced, modules=modules,
                               cse=lambda exprs: precomputed, docstring_limit=1000)
        t["lambdify"] = time.perf_counter() - tic

    def op_counts(self) -> dict[str, int]:
        """Operations (``sympy.count_ops``) of the gradient before and after ``cse``."""
        before = int(sum(sp.count_ops(e) for e in self.gradient_exprs))
        after = int(sum(sp.count_ops(rhs) for _, rhs in self.replacements)
                    + sum(sp.count_ops(e) for e in self.reduced[self.n_values:]))
        return {"before_cse": before, "after_cse": after}

    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        g = self.graph
        arrays = check_values(g, values, check_finite=self.check_finite)
        dtype = working_dtype(g, arrays)
        flat = [x for n in g.inputs for x in np.asarray(arrays[n], dtype=np.float64).ravel()]
        out_shape = g.node(g.outputs[self.output])["shape"]
        seed_arr = resolve_seed(g, self.output, seed, dtype)
        if self.seed_symbols is not None:
            flat += list(np.asarray(seed_arr, dtype=np.float64).ravel())
        start = time.perf_counter()
        if self.precision:
            import mpmath
            with mpmath.workdps(self.precision):
                results = self._fn([mpmath.mpf(float(x)) for x in flat])
        else:
            with np.errstate(all="ignore"):
                results = self._fn([float(x) for x in flat])
        seconds = time.perf_counter() - start
        value_items, grad_items = results[: self.n_values], results[self.n_values:]
        value = np.array([float(x) for x in value_items], dtype=dtype).reshape(out_shape)
        if self.check_finite and not np.all(np.isfinite(value)):
            raise NonFiniteError(f"output {self.output!r} is not finite ({value!r})")
        grads: dict[str, np.ndarray] = {}
        mp_grads: dict[str, np.ndarray] = {}
        pos = 0
        for n in self.wrt:
            shape = g.node(g.inputs[n])["shape"]
            size = int(np.prod(shape, dtype=np.int64))
            items = grad_items[pos: pos + size]
            pos += size
            arr = np.array([float(x) for x in items], dtype=dtype).reshape(shape)
            if not out_shape and seed is not None:
                arr = arr * seed_arr
            grads[n] = arr
            if self.precision:  # SymPy Floats keep (and print) all the digits
                mp_grads[n] = np.array([sp.Float(x, self.precision) for x in items],
                                       dtype=object).reshape(shape)
        outputs = {self.output: value}
        others = [n for n in g.outputs if n != self.output]
        if others:  # not differentiated: the reference interpreter gives their values
            from autodiff_lab.graph.evaluate import run_forward
            env = run_forward(g, arrays, keep=[g.outputs[n] for n in others],
                              check_finite=self.check_finite)
            outputs.update({n: env[g.outputs[n]] for n in others})
        info: dict[str, Any] = {"mode": "expanded", "compile_seconds": self.compile_seconds,
                                "eval_seconds": seconds, "timings": dict(self.timings),
                                "estimated_gradient_ops": self.estimate.gradient_ops}
        if self.precision:
            info.update(precision=self.precision, mp_grads=mp_grads,
                        mp_value=np.array([sp.Float(x, self.precision) for x in value_items],
                                          dtype=object).reshape(out_shape))
        return GradientResult(value=value, grads=grads, engine="symbolic", output=self.output,
                              info=info, outputs=outputs)
