"""The symbolic engine against the tape engine, its guard, formulas, explain, mpmath reference."""

from __future__ import annotations

import time

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab import examples
from autodiff_lab.engines.symbolic import clear_cache, reference_gradient
from autodiff_lab.engines.symbolic_expanded import estimate_expansion, sigmoid_mlp_example
from autodiff_lab.graph.optable import OPS

RTOL = 1e-12


def assert_agrees_with_tape(graph, values, wrt=None, seed=None, **options):
    tape = adl.gradient(graph, values, engine="tape", wrt=wrt, seed=seed)
    sym = adl.engine("symbolic", cache=False, **options).compile(graph, wrt=wrt)(values, seed=seed)
    # a value that cancels exactly (u − u, u reached by two evaluation orders) may come out
    # as ±1e-16 in one engine and 0 in the other: absolute agreement at the inputs' scale
    inputs = [float(np.max(np.abs(v), initial=0)) for v in values.values()]
    np.testing.assert_allclose(sym.value, tape.value, rtol=RTOL,
                               atol=RTOL * max([1.0, *inputs]))
    assert set(sym.grads) == set(tape.grads)
    # agreement is norm-wise over the whole gradient: an input whose gradient is exactly 0
    # (contributions that cancel, e.g. the two halves of a tie) may come out as ±1e-16
    scale = max((float(np.max(np.abs(g), initial=0)) for g in tape.grads.values()), default=0.0)
    for name, expected in tape.grads.items():
        got = sym.grads[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * max(scale, 1e-300),
                                   err_msg=name)
    return sym


# --------------------------------------------------------------------------------------
# the case studies, both modes
# --------------------------------------------------------------------------------------

CASES = {
    "neuron": examples.sigmoid_neuron,
    "neuron_primitive": lambda: examples.sigmoid_neuron(primitive=True),
    "neuron_vector": examples.sigmoid_neuron_vector,
    "chain": examples.scalar_chain,
    "mlp": lambda: examples.mlp(d_in=12, hidden=5, batch=3),
    "mlp_nobias": lambda: examples.mlp(d_in=12, hidden=5, batch=3, bias=False),
    "dncnn": lambda: examples.dncnn(batch=2, size=6, channels=3, depth=4),
    "dncnn_nobn": lambda: examples.dncnn(batch=2, size=5, channels=2, depth=3, batch_norm=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matrix_mode_agrees_with_tape(case):
    ex = CASES[case]()
    assert_agrees_with_tape(ex.graph, ex.values, mode="matrix")


@pytest.mark.parametrize("case", ["neuron", "neuron_primitive", "neuron_vector", "chain"])
def test_expanded_mode_agrees_with_tape(case):
    ex = CASES[case]()
    assert_agrees_with_tape(ex.graph, ex.values, mode="expanded")


def test_expanded_mode_on_small_mlp_and_dncnn():
    mlp = examples.mlp(d_in=3, hidden=2, batch=2)
    assert_agrees_with_tape(mlp.graph, mlp.values, mode="expanded")
    dn = examples.dncnn(batch=1, size=3, channels=1, depth=3, batch_norm=False)
    assert_agrees_with_tape(dn.graph, dn.values, wrt=["w0", "b0", "w1", "w2"], mode="expanded")


def test_sigmoid_mlp_expanded_agrees_and_cse_shrinks():
    graph, values = sigmoid_mlp_example(3)
    sym = assert_agrees_with_tape(graph, values, wrt=["W1", "W2"], mode="expanded")
    program = adl.engine("symbolic", mode="expanded").compile(graph, wrt=["W1", "W2"])
    counts = program.op_counts()
    assert counts["after_cse"] < counts["before_cse"] / 10
    assert set(sym.info["timings"]) >= {"guard", "expand", "diff", "cse", "lambdify"}


def test_float32_stays_float32_in_matrix_mode():
    ex = examples.mlp(d_in=8, hidden=4, batch=2, dtype="float32")
    r = adl.gradient(ex.graph, ex.values, engine="symbolic")
    assert all(g.dtype == np.float32 for g in r.grads.values())
    t = adl.gradient(ex.graph, ex.values, engine="tape")
    for k in t.grads:
        np.testing.assert_allclose(r.grads[k], t.grads[k], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# every op's matrix rule (and sympy form) against the tape
# --------------------------------------------------------------------------------------

def _r(*shape, seed=0, low=-1.0, high=1.0):
    return np.random.default_rng(seed + sum(shape)).uniform(low, high, shape)


OP_GRAPHS = {
    "div_reciprocal_log_sqrt": (lambda a, b: adl.sum(adl.log(a) / b + adl.sqrt(a) + 1 / b),
                                {"a": _r(3, 2, low=0.5, high=2), "b": _r(2, low=1, high=2)}),
    "trig_tanh_exp_pow": (lambda a: adl.sum(adl.sin(a) * adl.cos(a) + adl.tanh(a) * adl.exp(a)
                                            + adl.power(a, 3.0) - adl.power(a, 0.5)),
                          {"a": _r(4, low=0.2)}),
    "maximum_minimum_abs_leaky": (lambda a, b: adl.sum(adl.maximum(a, b) * adl.minimum(a, b)
                                                       + adl.abs(a) + adl.leaky_relu(b, 0.1)),
                                  {"a": _r(2, 3), "b": _r(3, seed=1)}),
    "reductions": (lambda a: adl.sum(adl.mean(a, axis=0)[:3] * adl.max(a, axis=1))
                   + adl.max(a), {"a": _r(3, 4)}),
    "shape_ops": (lambda a, b: adl.sum(adl.concatenate([adl.reshape(a, (3, 2)),
                                                        adl.transpose(b)], axis=0)
                                       * adl.broadcast_to(adl.sum(b, axis=1), (5, 2))[:, :1]),
                  {"a": _r(2, 3), "b": _r(2, 2)}),
    "matmul_vectors": (lambda A, v, u: adl.sum((v @ A) * (A @ u)) + (v @ (A @ u)),
                       {"A": _r(3, 3), "v": _r(3, seed=2), "u": _r(3, seed=3)}),
    "softmax_family": (lambda z: adl.sum(adl.softmax(z) * adl.log_softmax(z, axis=0)),
                       {"z": _r(3, 4)}),
    "losses": (lambda p, t: adl.mse_loss(p, t, reduction="mean") + adl.l1_loss(p, t)
               + adl.mse_loss(p, t), {"p": _r(2, 3), "t": _r(2, 3, seed=5)}),
    "conv_strided_dilated": (lambda x, w, b: adl.sum(adl.conv2d(x, w, b, stride=2, padding=1,
                                                              dilation=2) ** 2),
                             {"x": _r(2, 2, 7, 6), "w": _r(3, 2, 2, 3), "b": _r(3)}),
    "conv_transpose": (lambda x, w, b: adl.sum(adl.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                                   output_padding=1) ** 2),
                       {"x": _r(1, 2, 3, 3), "w": _r(2, 3, 3, 3), "b": _r(3)}),
    "pooling_upsample": (lambda x: adl.sum(adl.max_pool2d(x, 2) * adl.avg_pool2d(x, 2))
                         + adl.sum(adl.upsample(x, 2) ** 2), {"x": _r(1, 2, 4, 4)}),
    "upsample_bilinear": (lambda x: adl.sum(adl.upsample(x, (2, 3), mode="bilinear") ** 3),
                          {"x": _r(1, 2, 3, 4)}),
    "batch_norm_eval": (lambda x, g, b, m, v: adl.sum(adl.batch_norm(x, g, b, m, v,
                                                                     training=False) ** 2),
                        {"x": _r(4, 3), "g": _r(3), "b": _r(3), "m": _r(3, seed=4),
                         "v": _r(3, low=0.5, high=1.5)}),
    "batch_norm_train_2d": (lambda x, g, b: adl.sum(adl.batch_norm(x, g, b) ** 3),
                            {"x": _r(5, 3), "g": _r(3), "b": _r(3)}),
}


@pytest.mark.parametrize("name", sorted(OP_GRAPHS))
def test_every_op_matrix_rule_agrees_with_tape(name):
    fn, values = OP_GRAPHS[name]
    graph = adl.trace(fn, **values)
    assert_agrees_with_tape(graph, values, mode="matrix")


def test_cross_entropy_matrix_rule():
    logits, labels = _r(4, 3), np.array([0, 2, 1, 2])
    graph = adl.trace(lambda z, k: adl.softmax_cross_entropy(z, k), z=logits, k=labels)
    assert_agrees_with_tape(graph, {"z": logits, "k": labels}, mode="matrix")


def test_every_op_has_a_matrix_rule():
    assert [name for name, op in OPS.items() if op.matrix is None] == []


def test_non_scalar_output_with_seed_both_modes():
    graph = adl.trace(lambda x: adl.tanh(x) * x, x=(3,))
    values, seed = {"x": np.array([0.3, -1.2, 2.0])}, np.array([1.0, -2.0, 0.5])
    for mode in ("matrix", "expanded"):
        assert_agrees_with_tape(graph, values, seed=seed, mode=mode)


# --------------------------------------------------------------------------------------
# random scalar graphs
# --------------------------------------------------------------------------------------

UNARY = ["sin", "cos", "tanh", "sigmoid", "relu", "abs", "neg", "square", "exp_tanh"]
BINARY = ["add", "sub", "mul", "div_safe", "maximum", "minimum"]


def _unary(name, x):
    if name == "square":
        return x * x
    if name == "exp_tanh":
        return adl.exp(adl.tanh(x))
    if name == "neg":
        return -x
    return getattr(adl, name)(x)


def _binary(name, a, b):
    if name == "div_safe":
        return a / (1.0 + b * b)
    return {"add": a + b, "sub": a - b, "mul": a * b}.get(name) if name in ("add", "sub", "mul") \
        else getattr(adl, name)(a, b)


steps = st.lists(st.tuples(st.sampled_from(UNARY + BINARY), st.integers(0, 50),
                           st.integers(0, 50)), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, inputs=st.lists(st.floats(-2, 2).filter(lambda v: abs(v) > 1e-3),
                                    min_size=3, max_size=3))
@example(steps=[("add", 8, 32), ("maximum", 0, 3), ("relu", 4, 0), ("sin", 0, 0), ("sin", 0, 0),
                ("sin", 0, 0), ("sin", 0, 0), ("sin", 0, 0), ("add", 3, 16), ("sub", 3, 35)],
         inputs=[1.0, 1.0, 0.88])  # the value cancels to 0 in the tape, 1.1e-16 in SymPy
def test_random_scalar_graphs_agree_with_tape(steps, inputs):
    def fn(a, b, c):
        nodes = [a, b, c]
        for op, i, j in steps:
            x, y = nodes[i % len(nodes)], nodes[j % len(nodes)]
            nodes.append(_unary(op, x) if op in UNARY else _binary(op, x, y))
        return nodes[-1] + 0.5 * nodes[-2]  # at least two uses of the late values

    values = {k: np.asarray(v) for k, v in zip("abc", inputs)}
    graph = adl.trace(fn, a=(), b=(), c=())
    try:
        forward = graph.evaluate(values, all_nodes=True)
    except adl.NonFiniteError:  # e.g. squaring ten times overflows: nothing to compare
        return
    if max(abs(float(x)) for x in forward.values()) > 1e100:
        return
    for v in graph.order:  # skip points on or next to a kink (relu/abs at 0, max ties):
        op = graph.node(v).get("op")  # two programs may round a near-tie to opposite sides
        args = [float(forward[u]) for u in graph.operands(v)]
        if op in OPS and OPS[op].kink is not None and \
                OPS[op].kink(*(np.asarray(a) for a in args), **graph.node(v)["attrs"]):
            return
        if op in ("maximum", "minimum") and abs(args[0] - args[1]) <= 1e-9 * (1 + abs(args[0])):
            return
        if op in ("relu", "abs") and abs(args[0]) <= 1e-9:
            return
    for mode in ("matrix", "expanded"):
        assert_agrees_with_tape(graph, values, mode=mode)


# --------------------------------------------------------------------------------------
# the project's conventions at kinks, through SymPy
# --------------------------------------------------------------------------------------

def test_relu_derivative_at_zero_is_zero_through_sympy():
    x = sp.Symbol("x", real=True)
    relu = OPS["relu"].sympy(np.array(x, dtype=object)).item()
    d = sp.diff(relu, x)
    assert not d.has(sp.Heaviside)
    assert d.subs(x, 0) == 0 and d.subs(x, 1) == 1
    graph = adl.trace(lambda x: adl.relu(x) + adl.abs(x), x=())
    for mode in ("expanded", "matrix"):
        r = adl.gradient(graph, {"x": 0.0}, engine="symbolic", mode=mode)
        assert float(r.grads["x"]) == 0.0


def test_maximum_tie_splits_evenly_in_both_modes():
    graph = adl.trace(lambda a, b: adl.maximum(a, b) + 2 * adl.minimum(a, b), a=(), b=())
    for mode in ("expanded", "matrix"):
        r = adl.gradient(graph, {"a": 1.0, "b": 1.0}, engine="symbolic", mode=mode)
        assert float(r.grads["a"]) == 1.5 and float(r.grads["b"]) == 1.5


# --------------------------------------------------------------------------------------
# the guard
# --------------------------------------------------------------------------------------

def test_guard_refuses_d32_fast_with_the_numbers():
    graph, _ = sigmoid_mlp_example(32)
    start = time.perf_counter()
    with pytest.raises(adl.SymbolicSizeError) as info:
        adl.engine("symbolic", mode="expanded", cache=False).compile(graph, wrt=["W1", "W2"])
    assert time.perf_counter() - start < 0.5
    text = str(info.value)
    for piece in ("2048 scalars", "operations", "limit max_tree_size", "memory", "node 8",
                  "'mse'", "mode='matrix'", "engine='tape'"):
        assert piece in text, piece


def test_guard_limit_is_a_parameter_and_estimate_tracks_the_real_size():
    graph, _ = sigmoid_mlp_example(2)
    with pytest.raises(adl.SymbolicSizeError):
        adl.engine("symbolic", mode="expanded", max_tree_size=100, cache=False).compile(
            graph, wrt=["W1", "W2"])
    program = adl.engine("symbolic", mode="expanded", max_tree_size=None, cache=False).compile(
        graph, wrt=["W1", "W2"])
    actual = program.op_counts()["before_cse"]
    estimate = estimate_expansion(graph, ["W1", "W2"], "out").gradient_ops
    assert actual / 3 < estimate < actual * 3


# --------------------------------------------------------------------------------------
# compile once, report compile time, cache, show the code
# --------------------------------------------------------------------------------------

def test_compile_time_reported_and_cached_by_fingerprint():
    clear_cache()
    ex = examples.scalar_chain()
    engine = adl.engine("symbolic", mode="matrix")
    p1 = engine.compile(ex.graph)
    p2 = engine.compile(examples.scalar_chain().graph)  # same content, new object
    assert p1 is p2 and p1.compile_seconds > 0
    r = p1(ex.values)
    assert r.info["compile_seconds"] == p1.compile_seconds and "eval_seconds" in r.info
    assert "def value_and_gradient(w1, w2, x, y" in p1.source and "(f > 0)" in p1.source


# --------------------------------------------------------------------------------------
# formulas and explain
# --------------------------------------------------------------------------------------

def test_formula_sigmoid_neuron():
    f = adl.formula(examples.sigmoid_neuron().graph, wrt="w0")
    assert isinstance(f.expr, sp.Basic)
    assert "∂σ/∂w0 = σ·(1 − σ)·x0" in str(f)
    assert "σ = σ(w0·x0 + w1·x1 + w2)" in str(f)
    assert r"\sigma \left(1 - \sigma\right) x_{0}" in f.latex
    sigma, x0 = sp.Symbol("sigma", real=True), sp.Symbol("x0", real=True)
    assert sp.simplify(f.expr - sigma * (1 - sigma) * x0) == 0


def test_formula_mlp():
    f = adl.formula(examples.mlp(d_in=6, hidden=4, batch=3, bias=False).graph, wrt=["W1", "W2"])
    text = str(f)
    assert "∂L/∂W2 = (ŷ − y)·gᵀ" in text
    assert "∂L/∂W1 = (W2ᵀ·(ŷ − y) ⊙ 1[W1·x > 0])·xᵀ" in text
    assert "g = relu(W1·x)" in text and "ŷ = W2·g" in text
    assert r"\left(\hat{y} - y\right) g^{T}" in f.latex
    assert r"\odot \mathbb{1}\left[W_{1} x > 0\right]" in f.latex
    assert isinstance(f["W1"], sp.MatMul)


def test_explain_scalar_chain_factor_by_factor():
    ex = examples.scalar_chain()
    e = adl.explain(ex.graph, ex.values, wrt="w1")
    assert [f.label for f in e.factors] == ["∂f/∂w1", "∂g/∂f", "∂ŷ/∂g", "∂L/∂ŷ"]
    assert [f.value for f in e.factors] == [2.0, 1.0, -1.5, -2.5]
    tape = adl.gradient(ex.graph, ex.values)
    assert e.value == pytest.approx(float(tape.grads["w1"]), rel=1e-15)
    text = str(e)
    assert "∂L/∂w1 = ∂f/∂w1 · ∂g/∂f · ∂ŷ/∂g · ∂L/∂ŷ" in text
    assert "∂g/∂f = 1[f > 0] = 1" in text and "∂L/∂ŷ = ŷ − y = -2.5" in text
    e2 = adl.explain(ex.graph, ex.values, wrt="w2")  # dL/dw2 reuses dL/dŷ
    assert [f.label for f in e2.factors] == ["∂ŷ/∂w2", "∂L/∂ŷ"]


def test_explain_sums_over_paths_and_refuses_tensors():
    graph = adl.trace(lambda x: adl.sin(x) * x, x=())
    e = adl.explain(graph, {"x": 0.7}, wrt="x")
    assert len(e.paths) == 2
    assert e.value == pytest.approx(np.cos(0.7) * 0.7 + np.sin(0.7), rel=1e-15)
    with pytest.raises(adl.InputError):
        ex = examples.mlp(d_in=4, hidden=2, batch=2)
        adl.explain(ex.graph, ex.values, wrt="W1")


# --------------------------------------------------------------------------------------
# the high-precision reference
# --------------------------------------------------------------------------------------

def test_mpmath_reference_gradient_sigmoid_neuron():
    ex = examples.sigmoid_neuron()
    ref = reference_gradient(ex.graph, ex.values, digits=50)
    with mpmath.workdps(60):
        z = mpmath.mpf(2) * -1 + mpmath.mpf(-3) * -2 + mpmath.mpf(-3)
        s = 1 / (1 + mpmath.exp(-z))
        exact = s * (1 - s) * mpmath.mpf(-1)
        got = mpmath.mpf(str(ref.info["mp_grads"]["w0"].item()))
        assert abs(got - exact) < mpmath.mpf(10) ** -45
    tape = adl.gradient(ex.graph, ex.values)
    for k in tape.grads:
        assert float(ref.grads[k]) == pytest.approx(float(tape.grads[k]), rel=1e-15, abs=1e-17)
    same = adl.gradient(ex.graph, ex.values, engine="symbolic", precision=50)
    assert same.info["precision"] == 50


def test_product_of_two_relu_masks_is_a_float_in_generated_code():
    # relu(relu(a)) differentiates to 1[relu(a) > 0] ⊙ 1[a > 0]; negating it (through sub)
    # once failed because the product of two boolean masks stayed boolean
    graph = adl.trace(lambda a, b: adl.sin(b) - adl.relu(adl.relu(a)), a=(), b=())
    values = {"a": np.array(1.0), "b": np.array(0.5)}
    assert_agrees_with_tape(graph, values, mode="matrix")


def test_cancelling_contributions_at_a_tie_agree_norm_wise():
    # found by hypothesis: maximum of two equal values splits the gradient in halves that
    # cancel downstream; one engine gives -0, the other 1.1e-16
    graph = adl.trace(lambda a, b, c: adl.maximum(a, b) * adl.sin(c) - adl.sin(c) * (a + b) / 2,
                      a=(), b=(), c=())
    values = {"a": np.array(1.0), "b": np.array(1.0), "c": np.array(2.0)}
    for mode in ("matrix", "expanded"):
        assert_agrees_with_tape(graph, values, mode=mode)


def test_matrix_mode_compiles_deep_networks_in_linear_time():
    """Adjoints of a deep network share their arguments: code generation must visit each
    shared expression once (it once revisited them once per path: 10 s at depth 8)."""
    ex = examples.dncnn(batch=1, size=4, channels=2, depth=24)
    wrt = list(ex.graph.parameters)
    t0 = time.perf_counter()
    program = adl.engine("symbolic", mode="matrix", cache=False).compile(ex.graph, wrt=wrt)
    assert time.perf_counter() - t0 < 3.0
    got, want = program(ex.values).grads, adl.gradient(ex.graph, ex.values, wrt=wrt).grads
    assert all(np.allclose(got[k], want[k], rtol=1e-10, atol=1e-13) for k in wrt)


def test_matrix_mode_compiles_deep_shared_dags_in_linear_time():
    # every layer reads its input three times (as batch norm does): the expression *tree*
    # has ~3^depth nodes, the DAG ~depth; keys and code generation must follow the DAG
    def deep(x):
        for _ in range(60):
            x = adl.tanh(x * x + x - adl.sum(x) * 0.01)
        return adl.sum(x)
    graph = adl.trace(deep, x=(3,))
    values = {"x": _r(3, low=-0.5, high=0.5)}
    start = time.perf_counter()
    assert_agrees_with_tape(graph, values, mode="matrix")
    assert time.perf_counter() - start < 10
