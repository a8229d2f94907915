"""The finite-difference engine: accuracy bounds, error estimates, cost, bad input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab.engines.numeric import (
    EvaluationLimitError,
    KinkWarning,
    NonFiniteStepWarning,
    jacobian,
)
from autodiff_lab.engines.numeric_steps import METHODS
from autodiff_lab.examples import mlp, sigmoid_neuron, sigmoid_neuron_vector
from autodiff_lab.graph.optable import OPS

EPS = np.finfo(np.float64).eps
SQUIRE_TRAPP_DERIVATIVE = 4.053427893898620658
SQUIRE_TRAPP_BOUNDS = {"forward": 1e-7, "backward": 1e-7, "central": 5e-10, "five_point": 5e-11,
                       "richardson": 1e-11, "complex": 1e-15}


def squire_trapp() -> adl.Graph:
    return adl.trace(lambda x: adl.exp(x) / adl.sqrt(adl.sin(x) ** 3 + adl.cos(x) ** 3), x=())


def numeric(graph, values, **options):
    return adl.gradient(graph, values, engine="numeric", **options)


# --- accuracy -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_squire_trapp_bounds_with_default_steps(method):
    r = numeric(squire_trapp(), {"x": 1.5}, method=method)
    rel = abs(float(r.grads["x"]) - SQUIRE_TRAPP_DERIVATIVE) / SQUIRE_TRAPP_DERIVATIVE
    assert rel <= SQUIRE_TRAPP_BOUNDS[method]
    # the method's own estimate covers its real error
    assert abs(float(r.grads["x"]) - SQUIRE_TRAPP_DERIVATIVE) <= float(r.error_estimate["x"])


def _within_own_estimate(example, method):
    tape = adl.gradient(example.graph, example.values, engine="tape")
    r = numeric(example.graph, example.values, method=method)
    for name, g in tape.grads.items():
        slack = 4 * EPS * max(1.0, float(np.max(np.abs(g))))  # the tape's own round-off
        excess = np.abs(r.grads[name] - g) - r.error_estimate[name] - slack
        assert np.all(excess <= 0), (method, name, float(np.max(excess)))
        assert r.grads[name].shape == g.shape and r.error_estimate[name].shape == g.shape


@pytest.mark.parametrize("method", METHODS)
def test_every_method_agrees_with_tape_on_sigmoid_neuron(method):
    _within_own_estimate(sigmoid_neuron(), method)
    _within_own_estimate(sigmoid_neuron(primitive=True), method)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_agrees_with_tape_on_small_mlp(method):
    _within_own_estimate(mlp(d_in=6, hidden=4, batch=3), method)


@settings(max_examples=25, deadline=None)
@given(x=st.floats(-3.0, 3.0), method=st.sampled_from(METHODS))
def test_estimate_covers_the_error_on_a_smooth_function(x, method):
    g = adl.trace(lambda x: adl.exp(adl.sin(x)) * adl.tanh(x) + x ** 3, x=())
    exact = np.exp(np.sin(x)) * (np.cos(x) * np.tanh(x) + 1 - np.tanh(x) ** 2) + 3 * x ** 2
    r = numeric(g, {"x": np.float64(x)}, method=method)
    assert abs(float(r.grads["x"]) - exact) <= float(r.error_estimate["x"]) + 4 * EPS * abs(exact)


def test_float32_inputs_use_float32_steps_and_estimates():
    e = sigmoid_neuron_vector()
    values = {k: v.astype(np.float32) for k, v in e.values.items()}
    tape = adl.gradient(e.graph, e.values, engine="tape")
    r = numeric(e.graph.astype("float32"), values, method="central")
    assert r.grads["w"].dtype == np.float32
    assert r.info["steps"]["w"][0] > 1e-3  # eps32^(1/3) ≈ 5e-3, not float64's 6e-6
    assert np.all(np.abs(r.grads["w"] - tape.grads["w"]) <= r.error_estimate["w"] + 1e-6)


def test_fixed_user_step_is_made_exact():
    r = numeric(squire_trapp(), {"x": 1.5}, method="central", step=1e-3)
    h = float(r.info["steps"]["x"][0])
    assert (1.5 + h) - 1.5 == h and abs(h - 1e-3) < 1e-15
    with pytest.raises(adl.InputError, match="below the spacing"):
        numeric(squire_trapp(), {"x": 1.5}, method="central", step=1e-17)


def test_unknown_method_is_refused():
    with pytest.raises(adl.InputError, match="five_point"):
        adl.engine("numeric", method="sixth")


# --- cost: evaluations and batching -----------------------------------------------------------

@pytest.mark.parametrize("method, estimate, per_coordinate", [
    ("forward", False, 1), ("forward", True, 2), ("backward", False, 1),
    ("central", False, 2), ("central", True, 4), ("five_point", False, 4),
    ("five_point", True, 6), ("richardson", False, 8), ("complex", False, 1), ("complex", True, 2),
])
def test_evaluation_counts(method, estimate, per_coordinate):
    e = sigmoid_neuron_vector()
    r = numeric(e.graph, e.values, method=method, estimate_error=estimate)
    assert r.evaluations == 1 + 5 * per_coordinate  # 5 scalars in w and x, plus the base point
    assert (r.error_estimate is not None) == (estimate or method == "richardson")


def test_batching_gives_the_same_numbers_with_far_fewer_calls():
    e = mlp(d_in=8, hidden=6, batch=3)
    batched = numeric(e.graph, e.values, method="central")
    looped = numeric(e.graph, e.values, method="central", batch_size=1)
    n = sum(v.size for k, v in e.values.items() if k in batched.grads)
    assert batched.evaluations == looped.evaluations == 1 + 4 * n
    assert looped.info["forward_calls"] == looped.evaluations
    assert batched.info["forward_calls"] <= 1 + len(batched.grads)  # one call per input
    for name in batched.grads:
        np.testing.assert_allclose(batched.grads[name], looped.grads[name], rtol=1e-9, atol=1e-12)
    s = sigmoid_neuron_vector()
    a = numeric(s.graph, s.values, method="five_point")
    b = numeric(s.graph, s.values, method="five_point", batch_size=1)
    assert all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


def test_small_batch_size_chunks_the_copies():
    e = sigmoid_neuron_vector()
    r = numeric(e.graph, e.values, method="central", estimate_error=False, batch_size=2)
    # w: 3 coordinates × 2 points = 6 copies → 3 calls; x: 4 copies → 2 calls; + base
    assert r.info["forward_calls"] == 6
    ref = numeric(e.graph, e.values, method="central", estimate_error=False)
    assert all(np.array_equal(r.grads[k], ref.grads[k]) for k in r.grads)


def test_progress_bar_option_runs():
    e = sigmoid_neuron_vector()
    r = numeric(e.graph, e.values, progress=True)
    assert r.grads["w"].shape == (3,)


def test_evaluation_limit_stops_early_and_says_how_many():
    e = mlp(d_in=6, hidden=4, batch=3)
    n = sum(v.size for v in e.values.values())  # every input is float: W1, b1, W2, b2, x, y
    needed = 1 + 4 * n
    with pytest.raises(EvaluationLimitError, match=f"needs {needed:,} forward evaluations"):
        numeric(e.graph, e.values, method="central", max_evaluations=100)
    r = numeric(e.graph, e.values, method="central", max_evaluations=needed)
    assert r.evaluations == needed


# --- cheap checks --------------------------------------------------------------------------

def test_directional_derivative_in_two_evaluations():
    e = mlp(d_in=6, hidden=4, batch=3)
    program = adl.engine("numeric").compile(e.graph)
    rng = np.random.default_rng(1)
    v = {name: rng.standard_normal(e.values[name].shape) for name in ("W1", "W2")}
    tape = adl.gradient(e.graph, e.values, engine="tape")
    exact = sum(float(np.sum(tape.grads[k] * v[k])) for k in v)
    got = program.directional(e.values, v)
    assert program.last_directional["evaluations"] == 3  # 2 + x itself, for the kink check
    assert abs(got - exact) <= 1e-7 * max(1.0, abs(exact))
    plain = adl.engine("numeric", kinks=False).compile(e.graph)
    assert plain.directional(e.values, v) == got
    assert plain.last_directional["evaluations"] == 2
    got, err = program.directional(e.values, v, method="complex", return_error=True)
    assert abs(got - exact) <= err + 1e-13 * abs(exact)
    assert program.directional(e.values, {"W1": np.zeros((4, 6))}) == 0.0
    with pytest.raises(adl.InputError, match="not an input"):
        program.directional(e.values, {"nope": np.ones(3)})


def test_random_subset_check_against_tape():
    e = mlp(d_in=6, hidden=4, batch=3)
    program = adl.engine("numeric", method="five_point").compile(e.graph, wrt=["W1", "W2"])
    tape = adl.gradient(e.graph, e.values, engine="tape")
    check = program.check_subset(e.values, n=10, reference=tape, rng=3)
    assert len(check.entries) == 10 and check.passed
    assert check.evaluations == 1 + 10 * 6
    assert "W" in check.report()
    assert program.check_subset(e.values, n=4, reference=tape, method="complex").passed
    wrong = {k: g + 1e-3 for k, g in tape.grads.items()}
    assert not program.check_subset(e.values, n=5, reference=wrong).passed


# --- Jacobians -------------------------------------------------------------------------------

def test_jacobian_layout_is_output_by_input():
    g = adl.trace(lambda W, x: W @ x, W=(3, 4), x=(4,))
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((3, 4)), rng.standard_normal(4)
    j = jacobian(g, {"W": W, "x": x}, method="complex")
    np.testing.assert_allclose(j.grads["x"], W, atol=1e-14)  # dy/dx = W (M × N)
    assert j.grads["W"].shape == (3, 3, 4)
    expected = np.einsum("ij,k->ijk", np.eye(3), x)            # dy_i/dW_jk = δ_ij x_k
    np.testing.assert_allclose(j.grads["W"], expected, atol=1e-14)
    h = adl.trace(lambda f, g: f * g, f=(3,), g=(3,))
    f_val, g_val = np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5, 4.0])
    jh = adl.engine("numeric").compile(h).jacobian({"f": f_val, "g": g_val})
    np.testing.assert_allclose(jh.grads["f"], np.diag(g_val), atol=1e-9)  # dh/df = diag(g)
    assert jh.error_estimate["f"].shape == (3, 3)


def test_vector_output_gradient_is_seed_times_jacobian():
    g = adl.trace(lambda x: adl.sin(x) * 2.0, x=(3,))
    x = np.array([0.1, 0.2, 0.3])
    seed = np.array([1.0, -2.0, 0.5])
    r = numeric(g, {"x": x}, method="richardson", seed=seed)
    np.testing.assert_allclose(r.grads["x"], seed * 2 * np.cos(x), rtol=1e-12)
    with pytest.raises(adl.NotDifferentiableError):
        numeric(g, {"x": x})


# --- the complex step and the op table's complex-safety ----------------------------------------

@pytest.mark.parametrize("fn", [
    lambda x: adl.sum(adl.abs(x) * x),
    lambda x: adl.sum(adl.relu(x) ** 2),
    lambda x: adl.sum(adl.maximum(x, x * 0.5)),
    lambda x: adl.max(x * x),
])
def test_complex_step_through_real_part_ops_matches_tape(fn):
    g = adl.trace(fn, x=(4,))
    x = {"x": np.array([-1.5, 0.7, 2.0, -0.3])}
    tape = adl.gradient(g, x, engine="tape")
    r = numeric(g, x, method="complex")
    np.testing.assert_allclose(r.grads["x"], tape.grads["x"], rtol=1e-14, atol=1e-15)


def test_complex_step_refuses_an_op_not_marked_complex_safe(monkeypatch):
    monkeypatch.setitem(OPS, "abs", dataclasses.replace(OPS["abs"], complex_safe=False))
    g = adl.trace(lambda x: adl.sum(adl.abs(x)), x=(3,))
    with pytest.raises(adl.NotDifferentiableError, match="'abs'.*complex-safe|complex-safe.*'abs'"):
        adl.engine("numeric", method="complex").compile(g)
    program = adl.engine("numeric", method="central").compile(g)  # other methods are fine
    with pytest.raises(adl.NotDifferentiableError, match="abs"):
        program.directional({"x": np.ones(3)}, {"x": np.ones(3)}, method="complex")


def test_complex_refusal_ignores_ops_off_the_path(monkeypatch):
    monkeypatch.setitem(OPS, "abs", dataclasses.replace(OPS["abs"], complex_safe=False))
    g = adl.trace(lambda x, y: adl.sum(x * x) + adl.sum(adl.abs(y)), x=(2,), y=(2,))
    program = adl.engine("numeric", method="complex").compile(g, wrt=["x"])
    r = program({"x": np.array([1.0, 2.0]), "y": np.array([1.0, -1.0])})
    np.testing.assert_allclose(r.grads["x"], [2.0, 4.0], rtol=1e-15)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, x, op", [
    (lambda x: adl.sum(adl.relu(x)), [0.0, 1.0], "relu"),
    (lambda x: adl.sum(adl.abs(x)), [2.0, 0.0], "abs"),
    (lambda x: adl.sum(adl.maximum(x, x * 0 + 1.0)), [1.0, 3.0], "maximum"),
    (lambda x: adl.max(x), [2.0, 2.0], "max"),
])
def test_kink_warning_names_the_op(fn, x, op):
    g = adl.trace(fn, x=(2,))
    with pytest.warns(KinkWarning, match=f"'{op}'"):
        r = numeric(g, {"x": np.array(x)})
    assert r.info["kinks"]


def test_no_kink_warning_away_from_kinks():
    e = mlp(d_in=6, hidden=4, batch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KinkWarning)
        numeric(e.graph, e.values)


def test_nonfinite_step_is_reported_and_retried_one_sided():
    g = adl.trace(lambda x: adl.sum(adl.log(x)), x=(2,))
    x = np.array([1e-7, 2.0])  # the central step (≈ 7.6e-6) leaves log's domain at x[0]
    with pytest.warns(NonFiniteStepWarning, match=r"x\[0\].*retried one-sided"):
        r = numeric(g, {"x": x}, method="central")
    report = r.info["nonfinite"]
    assert len(report) == 1 and report[0]["index"] == 0 and report[0]["offsets"]
    assert report[0]["retried_step"] > 0
    assert np.all(np.abs(r.grads["x"] - 1 / x) <= r.error_estimate["x"])
    assert abs(r.grads["x"][0] - 1e7) <= 1e-4 * 1e7


def test_nonfinite_base_point_is_an_error():
    g = adl.trace(lambda x: adl.sum(adl.log(x)), x=(2,))
    with pytest.raises(adl.NonFiniteError, match="log"):
        numeric(g, {"x": np.array([-1.0, 2.0])})
