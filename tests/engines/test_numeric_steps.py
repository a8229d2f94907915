"""User steps of the numeric engine: validation, per-element steps, honest error estimates.

A step the user picks can be anywhere between round-off territory and a step larger than
the scale on which f varies. For every step the engine must either return an error
estimate that bounds the actual error or say (a :class:`StepSizeWarning`) that the step is
beyond the region where its estimate holds; a step that means nothing (0, negative, NaN,
Inf) is refused with an InputError naming the value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.engines.numeric import NumericEngine, StepSizeWarning
from autodiff_lab.engines.numeric_steps import METHODS, STENCILS
from autodiff_lab.examples import mlp, sigmoid_neuron, sigmoid_neuron_vector

EPS = np.finfo(np.float64).eps
#: from round-off territory to a step larger than the scale of x
SWEEP_STEPS = sorted(set(np.logspace(-12, 1, 14)) | {3e-14, 2.0, np.pi, 2 * np.pi, 5.0})

SMOOTH = {
    "sin": (adl.sin, np.cos),
    "exp": (adl.exp, np.exp),
    "tanh": (adl.tanh, lambda x: 1 / np.cosh(x) ** 2),  # not 1 − tanh², which cancels
}


def _bounded_or_warned(graph, values, exact, method, step):
    """True when the estimate bounds the error in every component, or a warning said it
    may not; the estimate may be short by a few ulps of the exact value itself."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = NumericEngine(method, step=step, progress=False).compile(graph)(values)
    except adl.InputError as e:  # only a step below the spacing of x may be refused here
        assert "below the spacing" in str(e), e
        return True, None
    warned = any(issubclass(w.category, StepSizeWarning) for w in caught)
    if warned:
        assert r.info["step_warnings"], "a StepSizeWarning is also reported in info"
        return True, None
    for name, ex in exact.items():
        err = abs(float(r.grads[name]) - ex)
        est = float(r.error_estimate[name])
        if not err <= est + 4 * EPS * abs(ex):
            return False, (name, err, est)
    return True, None


@pytest.mark.parametrize("fn", sorted(SMOOTH))
@pytest.mark.parametrize("method", METHODS)
def test_estimate_bounds_the_error_or_warns_over_a_step_sweep(fn, method):
    op, derivative = SMOOTH[fn]
    g = adl.trace(lambda x: op(x), x=())
    bad = []
    for x in (-2.5, -0.7, 0.0, 1.0, 3.0):
        for h in SWEEP_STEPS:
            ok, detail = _bounded_or_warned(g, {"x": np.float64(x)}, {"x": float(derivative(x))},
                                            method, h)
            if not ok:
                bad.append((x, h, detail))
    assert not bad, f"{fn} {method}: estimate short of the error without a warning at {bad}"


@pytest.mark.parametrize("method", METHODS)
def test_estimate_bounds_the_error_or_warns_on_the_sigmoid_neuron(method):
    e = sigmoid_neuron()
    exact = {k: float(v) for k, v in adl.gradient(e.graph, e.values, engine="tape").grads.items()}
    bad = [(h, d) for h in SWEEP_STEPS
           for ok, d in [_bounded_or_warned(e.graph, e.values, exact, method, h)] if not ok]
    assert not bad, bad


def test_large_steps_warn_and_small_ones_do_not():
    g = adl.trace(lambda x: adl.sin(x), x=())
    with pytest.warns(StepSizeWarning, match=r"step 10 for x.*beyond the region.*scale of x"):
        r = adl.gradient(g, {"x": 1.0}, engine="numeric", step=10.0)
    assert r.info["step_warnings"][0]["step"] == 10.0
    # a step of 2π sees sin at multiples of its period: flat samples, but refused trust
    with pytest.warns(StepSizeWarning):
        adl.gradient(g, {"x": 0.5}, engine="numeric", method="forward", step=2 * np.pi)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepSizeWarning)
        r = adl.gradient(g, {"x": 1.0}, engine="numeric", step=1e-3)
    assert abs(float(r.grads["x"]) - np.cos(1.0)) <= float(r.error_estimate["x"])
    assert r.info["step_warnings"] == []


def test_step_ratios_flag_a_step_the_scale_rule_lets_through():
    # x = 100: the scale rule allows steps up to 100, but sin varies on a scale of 1
    g = adl.trace(lambda x: adl.sin(x), x=())
    with pytest.warns(StepSizeWarning, match="halving the step should shrink"):
        adl.gradient(g, {"x": 100.0}, engine="numeric", step=3.0)


def test_estimate_is_widened_by_the_change_between_h_over_2_and_h():
    g = adl.trace(lambda x: adl.exp(x), x=())
    plain = adl.gradient(g, {"x": 0.3}, engine="numeric", method="forward")  # rule step
    r = adl.gradient(g, {"x": 0.3}, engine="numeric", method="forward", step=0.25)
    err = abs(float(r.grads["x"]) - np.exp(0.3))
    assert err <= float(r.error_estimate["x"]) <= 10 * err  # honest, and not absurdly loose
    assert r.evaluations == 1 + 3 and plain.evaluations == 1 + 2  # h, 2h and h/2 (+ base)


def test_directional_derivative_with_user_steps():
    e = sigmoid_neuron_vector()
    program = adl.engine("numeric", step={"w": 1e-4, "x": np.array([1e-3, 2e-3])}).compile(e.graph)
    v = {"w": np.array([1.0, -2.0, 0.5]), "x": np.array([0.5, 1.0])}
    got, err = program.directional(e.values, v, return_error=True)
    tape = adl.gradient(e.graph, e.values, engine="tape")
    exact = sum(float(np.sum(tape.grads[k] * v[k])) for k in v)
    # no coordinate moves by more than its own step: t = min(h_j / |v_j|)
    assert program.last_directional["step"] == pytest.approx(min(1e-4 / 2.0, 1e-3 / 0.5, 2e-3 / 1))
    assert abs(got - exact) <= err
    assert not program.last_directional["step_warning"]
    big = adl.engine("numeric", step=50.0).compile(e.graph)
    with pytest.warns(StepSizeWarning, match="directional step"):
        big.directional(e.values, v, return_error=True)


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0.0, -1.0, np.nan, np.inf, -np.inf])
def test_meaningless_steps_are_refused_naming_the_value(step):
    e = sigmoid_neuron_vector()
    with pytest.raises(adl.InputError, match=f"positive and finite, got {step!r}"):
        adl.engine("numeric", step=step)
    with pytest.raises(adl.InputError, match="'w'.*positive and finite"):
        adl.engine("numeric", step={"w": step})
    with pytest.raises(adl.InputError, match=f"got {step!r} at index \\(1,\\)"):
        adl.engine("numeric", step=np.array([1e-3, step, 1e-3]))
    with pytest.raises(adl.InputError):
        adl.gradient(e.graph, e.values, engine="numeric", step=step)


def test_a_step_changed_after_construction_is_still_checked():
    e = sigmoid_neuron_vector()
    program = adl.engine("numeric").compile(e.graph)
    program.engine.step = 0.0
    with pytest.raises(adl.InputError, match="positive and finite, got 0.0"):
        program.directional(e.values, {"w": np.ones(3)})  # was nan, silently
    with pytest.raises(adl.InputError, match="positive and finite"):
        program(e.values)


@pytest.mark.parametrize("step, message", [
    ("small", "positive number"), (True, "positive number"),
    ({"nope": 1e-3}, "'nope', which the graph does not have"),
    ({"w": {"w": 1e-3}}, "nested dict"),
])
def test_malformed_steps_are_refused(step, message):
    e = sigmoid_neuron_vector()
    with pytest.raises(adl.InputError, match=message):
        adl.engine("numeric", step=step).compile(e.graph)


def test_step_underflowing_in_float32_is_refused():
    e = sigmoid_neuron_vector()
    values = {k: v.astype(np.float32) for k, v in e.values.items()}
    with pytest.raises(adl.InputError, match="underflows to 0 in float32"):
        adl.gradient(e.graph.astype("float32"), values, engine="numeric", step=1e-50)


# --- per-element steps ------------------------------------------------------------------------

def test_per_element_step_arrays():
    e = mlp(d_in=3, hidden=2, batch=2)
    W1 = e.values["W1"]
    steps = np.linspace(1e-4, 6e-4, W1.size).reshape(W1.shape)
    tape = adl.gradient(e.graph, e.values, engine="tape")
    # a bare array for one input, and a dict mixing arrays, numbers and rule steps
    for step, wrt in ((steps, ["W1"]), ({"W1": steps, "W2": 1e-3, "b1": None}, None)):
        r = adl.gradient(e.graph, e.values, engine="numeric", wrt=wrt, step=step)
        np.testing.assert_allclose(r.info["steps"]["W1"], steps.ravel(), rtol=1e-12)
        assert np.all(np.abs(r.grads["W1"] - tape.grads["W1"]) <= r.error_estimate["W1"] + 1e-15)
    assert np.all(r.info["steps"]["W2"] == pytest.approx(1e-3))
    rule = adl.gradient(e.graph, e.values, engine="numeric")
    np.testing.assert_array_equal(r.info["steps"]["b1"], rule.info["steps"]["b1"])
    # a row of steps broadcasts to the input's shape
    r = adl.gradient(e.graph, e.values, engine="numeric", wrt=["W1"], step=steps[:1])
    assert r.info["steps"]["W1"].reshape(W1.shape)[1, 2] == pytest.approx(steps[0, 2])


def test_step_array_of_the_wrong_shape_names_both_shapes():
    e = mlp(d_in=3, hidden=2, batch=2)
    with pytest.raises(adl.InputError, match=r"'W1' has shape \(5,\).*input's shape \(2, 3\)"):
        adl.gradient(e.graph, e.values, engine="numeric", step={"W1": np.full(5, 1e-3)})
    with pytest.raises(adl.InputError, match="give a dict"):  # one array for inputs of two shapes
        adl.gradient(e.graph, e.values, engine="numeric", step=np.full((2, 3), 1e-3))


def test_every_point_of_a_user_step_is_taken_exactly():
    # Richardson evaluates x ± h/2^k: with a step of a few ulps those must land exactly too
    g = adl.trace(lambda x: adl.sin(x), x=())
    r = adl.gradient(g, {"x": 3.0}, engine="numeric", method="richardson", step=1e-13)
    h = float(r.info["steps"]["x"][0])
    for m in STENCILS["richardson"].offsets:
        assert (3.0 + m * h) - 3.0 == m * h
    assert abs(float(r.grads["x"]) - np.cos(3.0)) <= float(r.error_estimate["x"])


def test_user_steps_cost_the_h_over_2_points_only_with_the_estimate():
    e = sigmoid_neuron_vector()
    r = adl.gradient(e.graph, e.values, engine="numeric", step=1e-4)
    assert r.evaluations == 1 + 5 * 6  # ±h, ±2h, ±h/2 per coordinate
    r = adl.gradient(e.graph, e.values, engine="numeric", step=1e-4, estimate_error=False)
    assert r.evaluations == 1 + 5 * 2 and r.error_estimate is None
    r = adl.gradient(e.graph, e.values, engine="numeric", method="richardson", step=1e-2)
    assert r.evaluations == 1 + 5 * 8  # its tableau already has the points
