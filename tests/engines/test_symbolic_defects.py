"""Regression tests of the symbolic engine's silent-wrong-result and crash classes, and the
property test that generates the graphs that found them: size-1 axes broadcast into
reductions, leading batch axes, constant exponents, scalar constants meeting indexing,
long and deep chains."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab.engines.symbolic_expanded import depth_limit, expression_depth
from autodiff_lab.graph.optable import OPS

MODES = ("matrix", "expanded")


def _flat(grads, names):
    return np.concatenate([np.ravel(grads[n]) for n in names]) if names else np.zeros(0)


def assert_close_to_tape(graph, values, mode="matrix", tol=1e-10, **options):
    """Value and whole gradient agree with the tape norm-wise (relative ``tol``)."""
    tape = adl.gradient(graph, values, engine="tape")
    sym = adl.engine("symbolic", mode=mode, cache=False, **options).compile(graph)(values)
    names = sorted(tape.grads)
    assert sorted(sym.grads) == names
    for n in names:
        assert sym.grads[n].shape == tape.grads[n].shape, n
        assert sym.grads[n].flags.writeable, n
    dv = np.linalg.norm(np.ravel(sym.value - tape.value))
    assert dv <= tol * np.linalg.norm(np.ravel(tape.value)) + 1e-14, (mode, sym.value, tape.value)
    want, got = _flat(tape.grads, names), _flat(sym.grads, names)
    assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want) + 1e-14, (mode, got, want)
    return sym


# --------------------------------------------------------------------------------------
# 1. broadcasting a size-1 axis, then reducing: the adjoint is summed back
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_size1_broadcast_into_reduction_sums_the_adjoint_back(mode):
    g = adl.trace(lambda v, b: adl.sum(v + b), v=(6,), b=(1,))
    vals = {"v": np.arange(6.0), "b": np.array([0.5])}
    r = adl.engine("symbolic", mode=mode, cache=False).compile(g)(vals)
    np.testing.assert_array_equal(r.grads["b"], [6.0])
    assert_close_to_tape(g, vals, mode)

    rng = np.random.default_rng(0)
    g = adl.trace(lambda W, x, b: adl.sum(adl.sum(W @ x + b, axis=1) ** 2),
                  W=(3, 4), x=(4, 5), b=(3, 1))
    vals = {"W": rng.standard_normal((3, 4)), "x": rng.standard_normal((4, 5)),
            "b": rng.standard_normal((3, 1))}
    assert_close_to_tape(g, vals, mode)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
@pytest.mark.parametrize("shapes", [((6,), (1,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)),
                                    ((), (3,)), ((2, 1, 3), (4, 1))])
def test_every_broadcasting_binary_rule_sums_back(op, shapes):
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "maximum": adl.maximum, "minimum": adl.minimum,
          "pow": lambda a, b: adl.power(a, 3.0) * adl.power(b, 0.5)}[op]
    rng = np.random.default_rng(len(shapes[0]))
    for sa, sb in (shapes, shapes[::-1]):
        g = adl.trace(lambda a, b: adl.sum(adl.mean(fn(a, b), axis=0) ** 2), a=sa, b=sb)
        vals = {"a": rng.uniform(0.5, 2, sa), "b": rng.uniform(0.5, 2, sb)}
        assert_close_to_tape(g, vals, "matrix")
        if np.prod(np.broadcast_shapes(sa, sb)) <= 12:
            assert_close_to_tape(g, vals, "expanded")


def test_batch_norm_and_conv_bias_parameters_sum_over_the_broadcast_axes():
    rng = np.random.default_rng(3)
    g = adl.trace(lambda x, w, b, gamma, beta: adl.sum(
        adl.batch_norm(adl.conv2d(x, w, b, padding=1), gamma, beta) ** 3),
        x=(2, 2, 3, 3), w=(3, 2, 3, 3), b=(3,), gamma=(3,), beta=(3,))
    vals = {k: rng.uniform(0.5, 1.5, s) for k, s in
            {"x": (2, 2, 3, 3), "w": (3, 2, 3, 3), "b": (3,), "gamma": (3,), "beta": (3,)}.items()}
    assert_close_to_tape(g, vals, "matrix", tol=1e-9)


# --------------------------------------------------------------------------------------
# 2. constant exponents: x⁰ = 1 and x¹ = x (value and gradient), both modes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [0.0, 1.0, 2.0, 0.5, -1.0, -2.0, 3.0])
def test_power_with_constant_exponents(mode, p):
    x = np.array([0.5, 1.5, 2.0])
    for fn in (lambda x: adl.sum(adl.power(x, p)),
               lambda x: adl.sum(adl.power(x, p) * x),
               lambda x: adl.power(x[1], p) * x[0] + adl.sum(adl.power(adl.sum(x), p))):
        g = adl.trace(fn, x=(3,))
        r = assert_close_to_tape(g, {"x": x}, mode)
    if p == 0:
        g = adl.trace(lambda x: adl.sum(adl.power(x, 0.0)), x=(3,))
        r = adl.engine("symbolic", mode=mode, cache=False).compile(g)({"x": x})
        assert float(r.value) == 3.0
        np.testing.assert_array_equal(r.grads["x"], 0.0)


def test_power_zero_is_one_at_zero_with_zero_gradient():
    g = adl.trace(lambda x: adl.sum(adl.power(x, 0.0) * x), x=(3,))
    vals = {"x": np.array([0.0, 1.0, -2.0])}
    for mode in MODES:
        r = adl.engine("symbolic", mode=mode, cache=False).compile(g)(vals)
        assert float(r.value) == -1.0
        np.testing.assert_array_equal(r.grads["x"], 1.0)


# --------------------------------------------------------------------------------------
# 10. residual chains: linear compile time, agreement with the tape
# --------------------------------------------------------------------------------------

def _residual(steps):
    def fn(x):
        for _ in range(steps):
            x = x + adl.tanh(x)  # x used twice per step
        return adl.sum(x * x)
    return adl.trace(fn, x=(3,))


def test_1000_residual_steps_compile_fast_and_agree_with_tape():
    g = _residual(1000)
    start = time.process_time()
    program = adl.engine("symbolic", mode="matrix", cache=False).compile(g)
    assert time.process_time() - start < 5
    vals = {"x": np.array([0.1, -0.2, 0.3])}
    assert_close_to_tape(g, vals, "matrix", tol=1e-12)
    # shared subexpressions are built once: the generated code grows linearly
    half = adl.engine("symbolic", mode="matrix", cache=False).compile(_residual(500))
    assert program.n_ops <= 2 * half.n_ops + 10
    assert program.n_ops < 10 * 1000


def test_100k_node_chain_is_refused_fast_by_both_modes():
    def fn(x):
        for _ in range(100_000):
            x = adl.tanh(x)
        return adl.sum(x)
    g = adl.trace(fn, x=(2,))
    assert len(g) > 100_000
    for mode, pieces in (("matrix", ["100001 op nodes", "max_nodes=50000", "engine='tape'"]),
                         ("expanded", ["100001 levels deep", "recursion", "mode='matrix'",
                                       "engine='tape'"])):
        start = time.process_time()  # CPU time: other processes' load does not count
        with pytest.raises(adl.SymbolicSizeError) as info:
            adl.engine("symbolic", mode=mode, cache=False).compile(g)
        assert time.process_time() - start < 1.0, mode
        for piece in pieces:
            assert piece in str(info.value), (mode, piece)


# --------------------------------------------------------------------------------------
# 11. scalar constants folded into Python numbers meet indexing and other ops
# --------------------------------------------------------------------------------------

SCALAR_CONSTANT_GRAPHS = {
    "index": lambda x: 2.0 * x[1] + x[0],
    "relu_of_index": lambda x: adl.relu(2.0 * x[1]) + adl.exp(x[0] * 0.5),
    "maximum_with_constant": lambda x: adl.maximum(x[1], 0.5) + adl.minimum(0.25, x[0]),
    "broadcast_reshape": lambda x: adl.sum(adl.broadcast_to(3.0 * x[1], (3,)))
    + adl.sum(adl.reshape(x[2] * 3.0, (1, 1))),
    "concatenate": lambda x: adl.sum(adl.concatenate([x[1:2] * 2.0, x], axis=0) ** 2),
    "indexed_twice": lambda x: adl.sum((2.0 * x)[1:] * 4.0) + x[0] * x[0],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SCALAR_CONSTANT_GRAPHS))
def test_scalar_constants_meeting_index_and_other_ops(mode, name):
    g = adl.trace(SCALAR_CONSTANT_GRAPHS[name], x=(3,))
    assert_close_to_tape(g, {"x": np.array([1.0, 2.0, 3.0])}, mode)
    x32 = {"x": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    r = adl.engine("symbolic", mode=mode, cache=False).compile(g.astype("float32"))(x32)
    assert r.grads["x"].dtype == np.float32


# --------------------------------------------------------------------------------------
# 14. deep graphs: no RecursionError, no crash; refusals name the depth and the limit
# --------------------------------------------------------------------------------------

def test_20k_node_chain_compiles_in_matrix_mode_and_is_refused_by_expanded():
    def fn(x):
        for _ in range(20_000):
            x = adl.tanh(x)
        return adl.sum(x)
    g = adl.trace(fn, x=(2,))
    vals = {"x": np.array([0.1, 0.2])}
    program = adl.engine("symbolic", mode="matrix", cache=False).compile(g)
    tape = adl.gradient(g, vals, engine="tape")
    np.testing.assert_allclose(program(vals).grads["x"], tape.grads["x"], rtol=1e-10)
    # straight-line code: one short assignment per node, no nested expressions
    assert max(len(line) for line in program.source.splitlines()) < 200
    start = time.process_time()
    with pytest.raises(adl.SymbolicSizeError) as info:
        adl.engine("symbolic", mode="expanded", cache=False).compile(g)
    assert time.process_time() - start < 1.0
    text = str(info.value)
    for piece in ("20001 levels deep", "it can go about", "recursion limit", "mode='matrix'",
                  "engine='tape'"):
        assert piece in text, piece


@pytest.mark.parametrize("unit", ["tanh", "sigmoid", "affine"])
def test_expanded_mode_either_works_or_refuses_around_the_depth_limit(unit):
    """The depth bound is an upper bound: what it lets through SymPy can do."""
    step = {"tanh": adl.tanh, "sigmoid": adl.sigmoid, "affine": lambda x: x * 1.0001 + 0.1}[unit]
    cost = {"tanh": 1, "sigmoid": 4, "affine": 2}[unit]
    limit = depth_limit()
    for n in (limit // cost - 2, limit // cost + 3):
        def fn(x, n=n):
            for _ in range(n):
                x = step(x)
            return adl.sum(x)
        g = adl.trace(fn, x=(1,))
        depth, _ = expression_depth(g, "out")
        if depth > depth_limit():
            with pytest.raises(adl.SymbolicSizeError, match="levels deep"):
                adl.engine("symbolic", mode="expanded", cache=False).compile(g)
        else:
            assert_close_to_tape(g, {"x": np.array([0.3])}, "expanded", tol=1e-9)


def test_deep_formula_is_refused_not_a_recursion_error():
    def fn(x, w):
        for _ in range(300):
            x = x * w + 0.1
        return adl.sum(x)
    g = adl.trace(fn, x=(2,), w=(2,))
    with pytest.raises(adl.SymbolicSizeError, match="formula"):
        adl.formula(g, wrt="w")

    def shallow(x, w):
        for _ in range(5):
            x = x * w + 0.1
        return adl.sum(x)
    assert "∂" in str(adl.formula(adl.trace(shallow, x=(2,), w=(2,)), wrt="w"))


# --------------------------------------------------------------------------------------
# the property: random graphs that broadcast size-1 axes into reductions, carry leading
# batch axes and use constant exponents, symbolic (both modes) against the tape
# --------------------------------------------------------------------------------------

EXPONENTS = [0.0, 1.0, 2.0, 0.5, -1.0]
STEP_KINDS = ["add", "sub", "mul", "div", "maximum", "minimum", "pow", "tanh", "reduce",
              "matmul"]
REDUCERS = {"sum": adl.sum, "mean": adl.mean, "max": adl.max}


@st.composite
def broadcast_graphs(draw):
    """A spec: input shapes (x full, b with size-1 axes and maybe fewer leading axes, c
    scalar-like), a list of steps over a pool of broadcast-compatible nodes, and the final
    reduction."""
    batch = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    core = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    full = tuple(batch + core)
    ones = draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full)))
    b_shape = tuple(1 if o else d for o, d in zip(ones, full))
    b_shape = b_shape[draw(st.integers(0, len(batch))):]  # drop some leading axes
    c_shape = draw(st.sampled_from([(), (1,), (1, 1)]))
    n_steps = draw(st.integers(1, 6))
    steps = []
    for _ in range(n_steps):
        kind = draw(st.sampled_from(STEP_KINDS))
        steps.append((kind, draw(st.integers(0, 99)), draw(st.integers(0, 99)),
                      draw(st.sampled_from(EXPONENTS)), draw(st.sampled_from(sorted(REDUCERS))),
                      draw(st.integers(0, 2 ** len(full) - 1))))
    final = (draw(st.sampled_from(sorted(REDUCERS))), draw(st.integers(0, 2 ** 4 - 1)),
             draw(st.booleans()), draw(st.sampled_from(EXPONENTS)))
    return full, b_shape, c_shape, steps, final


def _axes_from_mask(mask, ndim):
    return tuple(a for a in range(ndim) if mask >> a & 1)


def _build(full, steps, final):
    def fn(x, b, c, W):
        pool = [x, b, c]
        for kind, i, j, p, reducer, mask in steps:
            u, v = pool[i % len(pool)], pool[j % len(pool)]
            if kind in ("add", "sub", "mul"):
                y = {"add": u + v, "sub": u - v, "mul": u * v}[kind]
            elif kind == "div":
                y = u / (1.0 + v * v)
            elif kind in ("maximum", "minimum"):
                y = getattr(adl, kind)(u, v)
            elif kind == "pow":  # negative and fractional powers of a positive base
                y = adl.power(u if p >= 1 or p == 0 else u * u + 0.5, p)
            elif kind == "tanh":
                y = adl.tanh(u)
            elif kind == "reduce":  # keepdims: a size-1 axis that broadcasts again later
                y = REDUCERS[reducer](u, axis=_axes_from_mask(mask, len(u.shape)), keepdims=True)
            else:  # batched matmul over the leading axes (when the last axis fits)
                y = u @ W if u.shape and u.shape[-1] == full[-1] else adl.tanh(u)
            pool.append(y)
        reducer, mask, keepdims, p = final
        last = pool[-1]
        r = REDUCERS[reducer](last, axis=_axes_from_mask(mask, len(last.shape)),
                              keepdims=keepdims)
        base = r if p >= 1 or p == 0 else r * r + 0.5
        return adl.sum(adl.power(base, p) + r * r) + 0.5 * adl.sum(pool[-2])
    return fn


def _on_a_kink(graph, values):
    forward = graph.evaluate(values, all_nodes=True)
    for v in graph.order:
        op = graph.node(v).get("op")
        # max-reduction ties are split evenly by both engines: those stay in the test
        if op in OPS and op != "max" and OPS[op].kink is not None and \
                OPS[op].kink(*(forward[u] for u in graph.operands(v)), **graph.node(v)["attrs"]):
            return True
    return not all(np.all(np.abs(forward[v]) < 1e6) for v in graph.order
                   if np.asarray(forward[v]).dtype.kind == "f")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=broadcast_graphs(), seed=st.integers(0, 2 ** 16))
def test_random_broadcast_reduce_graphs_agree_with_tape(spec, seed):
    full, b_shape, c_shape, steps, final = spec
    graph = adl.trace(_build(full, steps, final), x=full, b=b_shape, c=c_shape,
                      W=(full[-1], full[-1]))
    rng = np.random.default_rng(seed)
    values = {"x": rng.uniform(-1, 1, full), "b": rng.uniform(-1, 1, b_shape),
              "c": rng.uniform(-1, 1, c_shape),
              "W": rng.uniform(-1, 1, (full[-1], full[-1])) / full[-1]}
    if _on_a_kink(graph, values):
        return
    assert_close_to_tape(graph, values, "matrix")
    if np.prod(full) <= 6 and len(steps) <= 4:
        assert_close_to_tape(graph, values, "expanded", tol=1e-9)
