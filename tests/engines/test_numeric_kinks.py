"""Finite differences that know where they are wrong: kinks (relu, abs, max, max pooling).

A stencil x ± m·h that straddles a kink mixes two slopes; the numeric engine sees it from
the sign of the ops' kink coordinates (``Op.kink_coord``) at x and at every stencil point,
recomputes those components one-sided on the side free of kinks, and on a kink reports the
one-sided derivatives, follows the engines' convention where the op table gives one, and
otherwise widens the estimate to cover the jump. The bound checked throughout is per
component: |numeric − tape| ≤ error estimate + the tape's own round-off.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab.compare.harness import rel_error
from autodiff_lab.engines.numeric import KinkWarning
from autodiff_lab.engines.numeric_steps import METHODS
from autodiff_lab.examples import dncnn, mlp
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.graph import param, spec, trace
from autodiff_lab.graph.optable import OPS


def _inpainting_small():
    """The report's inpainting case in miniature (14×14 digits, 16 hidden units)."""
    from autodiff_lab.examples import inpainting
    return inpainting(hidden=16, batch=16, block=6, side=14)


def _denoiser_small():
    """The report's denoiser case in miniature (3 convs of 4 channels on 16×16 patches)."""
    from autodiff_lab.examples import denoiser
    return denoiser(depth=3, channels=4, batch=2, size=16)

EPS = np.finfo(np.float64).eps


def numeric(graph, values, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KinkWarning)
        return adl.gradient(graph, values, engine="numeric", progress=False, **options)


def assert_bounded(graph, values, method, wrt=None, **options):
    """Every component's error against the tape within its own estimate (plus the tape's
    round-off); returns the result."""
    tape = adl.gradient(graph, values, engine="tape", wrt=wrt).grads
    r = numeric(graph, values, method=method, wrt=wrt, **options)
    for name, g in tape.items():
        slack = 8 * EPS * max(1.0, float(np.max(np.abs(g))))
        excess = np.abs(r.grads[name] - g) - r.error_estimate[name] - slack
        k = int(np.argmax(excess))
        assert np.all(excess <= 0), (
            f"{method} {name}[{k}]: numeric {r.grads[name].ravel()[k]!r} tape {g.ravel()[k]!r} "
            f"estimate {r.error_estimate[name].ravel()[k]:.3g}; flagged {r.info['kink_flagged']}")
    return r


# --- the op table ---------------------------------------------------------------------------

def test_every_op_with_a_kink_has_kink_coordinates():
    missing = [name for name, op in OPS.items() if op.kink is not None and op.kink_coord is None]
    assert not missing, (f"op(s) {missing} have a kink but no kink_coord: the numeric engine "
                         "cannot see its stencils cross their kinks (see optable's docstring)")
    conventions = {name: op.kink_convention for name, op in OPS.items()}
    assert set(conventions.values()) <= {"negative", "mean", None}
    assert conventions["relu"] == conventions["leaky_relu"] == "negative"
    assert conventions["abs"] == conventions["maximum"] == "mean"


# --- one kink ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("x0, slope", [(1e-5, 1.0), (-1e-5, 0.0), (3e-9, 1.0)])
def test_relu_next_to_its_kink(method, x0, slope):
    """relu'(1e-5) is 1: the default steps of central, five-point and Richardson (6e-6,
    7e-4, 6e-3) reach across 0, which used to give 0.5 with a tiny estimate."""
    g = adl.trace(lambda x: adl.sum(adl.relu(x) * 3.0), x=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", KinkWarning)  # x is not on the kink: no warning
        r = adl.gradient(g, {"x": np.array([x0])}, engine="numeric", method=method)
    err = abs(float(r.grads["x"][0]) - 3.0 * slope)
    assert err <= float(r.error_estimate["x"][0])
    assert err <= 1e-6 and float(r.error_estimate["x"][0]) <= 1e-5
    flagged = r.info["kink_components"]
    if flagged:
        assert flagged[0]["kind"] == "crossing" and flagged[0]["op"] == "relu"
        assert flagged[0]["resolution"] == "one-sided"


@pytest.mark.parametrize("method", METHODS)
def test_relu_on_its_kink_follows_the_convention(method):
    g = adl.trace(lambda x: adl.sum(adl.relu(x) * 3.0), x=(2,))
    with pytest.warns(KinkWarning, match=r"x\[0\].*'relu'"):
        r = adl.gradient(g, {"x": np.array([0.0, 2.0])}, engine="numeric", method=method)
    np.testing.assert_array_equal(r.grads["x"], [0.0, 3.0])  # relu'(0) = 0, as PyTorch
    assert r.error_estimate["x"][0] <= 1e-6
    (record,) = r.info["kink_components"]
    assert record["kind"] == "on_kink" and not record["differentiable"] and record["index"] == (0,)
    if method != "complex":  # the complex step moves no real part: no one-sided values
        assert record["one_sided"] == pytest.approx((0.0, 3.0), abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("x", [[0.0, 1e-6, -3e-6], [2e-7, -2e-7, 5.0]])
def test_abs_at_and_next_to_zero(method, x):
    g = adl.trace(lambda x: adl.sum(adl.abs(x) * np.array([1.0, 2.0, 3.0])), x=(3,))
    assert_bounded(g, {"x": np.array(x)}, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fn", [adl.maximum, adl.minimum])
def test_maximum_and_minimum_with_ties_and_near_ties(method, fn):
    g = adl.trace(lambda a, b: adl.sum(fn(a, b) ** 2), a=(4,), b=(4,))
    values = {"a": np.array([1.0, 2.0, 3.0, -1.0]), "b": np.array([1.0, 2.0 + 1e-6, 3.0 - 1e-7, 0.5])}
    r = assert_bounded(g, values, method)
    kinds = {(c["input"], c["index"]): c["kind"] for c in r.info["kink_components"]}
    assert kinds[("a", (0,))] == "on_kink"  # the tie: split evenly, as the engines do
    np.testing.assert_allclose(r.grads["a"][0], 1.0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_max_reduction_ties_are_covered_by_the_estimate(method):
    """Three tied maxima: the engines give each 1/3; one-sided derivatives are 1 and 0, and
    no single side is the convention, so the estimate covers the jump."""
    g = adl.trace(lambda x: adl.max(x) * 2.0, x=(4,))
    r = assert_bounded(g, {"x": np.array([1.0, 1.0, 1.0, 0.5])}, method)
    if method == "complex":  # the complex step shares ties like the engines
        np.testing.assert_allclose(r.grads["x"], [2 / 3, 2 / 3, 2 / 3, 0.0], atol=1e-15)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gap", [0.0, 1e-7, 1e-4])
def test_max_pool_with_near_ties(method, gap):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 0, 0] = abs(x[0, 0, 0, 0]) + 3.0  # a window's top two
    x[0, 0, 0, 1] += gap
    x[0, 1, 2:, 2:] = 0.7  # a window of four equal values
    x[0, 1, 3, 3] += gap
    g = adl.trace(lambda x: adl.sum(adl.max_pool2d(x, 2) * np.arange(1.0, 9.0).reshape(1, 2, 2, 2)),
                  x=(1, 2, 4, 4))
    r = assert_bounded(g, {"x": x}, method)
    if gap == 1e-4 and method == "central":
        assert not r.info["kink_components"]  # 1e-4 is beyond central's reach (1.2e-5)
    if gap == 0.0:
        assert r.info["kinks"], "the ties were reported"


def test_float32_relu_next_to_its_kink():
    g = adl.trace(lambda x: adl.sum(adl.relu(x)), x=spec((2,), "float32"))
    for method in ("central", "five_point", "richardson"):
        r = numeric(g, {"x": np.array([1e-3, -1e-3], dtype=np.float32)}, method=method)
        assert r.grads["x"].dtype == np.float32
        np.testing.assert_allclose(r.grads["x"], [1.0, 0.0], atol=float(r.error_estimate["x"].max()))
        assert float(r.error_estimate["x"].max()) < 1e-2


def test_one_call_per_copy_sees_the_same_kinks():
    e = mlp(d_in=5, hidden=4, batch=3, seed=2)
    pre = e.values["W1"] @ e.values["x"]  # put the first column's pre-activations near 0
    e.values["b1"] = -pre[:, :1] + np.array([[1e-4], [-2e-4], [1e-6], [0.3]])
    a = numeric(e.graph, e.values, method="five_point")
    b = numeric(e.graph, e.values, method="five_point", batch_size=1)
    assert a.info["kink_flagged"] == b.info["kink_flagged"] and sum(a.info["kink_flagged"].values())
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_and_directional_next_to_kinks(method):
    g = adl.trace(lambda x: adl.relu(x) * 2.0, x=(3,))
    program = adl.engine("numeric", method=method).compile(g)
    r = program.jacobian({"x": np.array([1e-5, -1e-5, 0.5])})
    assert np.all(np.abs(r.grads["x"] - np.diag([2.0, 0.0, 2.0])) <= r.error_estimate["x"] + 1e-15)
    s = adl.trace(lambda x: adl.sum(adl.relu(x) * np.array([1.0, 2.0, 3.0])), x=(3,))
    p = adl.engine("numeric", method=method).compile(s)
    d, e = p.directional({"x": np.array([1e-5, -2e-6, 0.5])}, {"x": np.ones(3)}, return_error=True)
    assert abs(d - 4.0) <= e <= 1e-6


# --- random ReLU networks: the estimate bounds the error, for every method ----------------

def _maxpool_net(seed: int, size: int, channels: int):
    """conv 3×3 + relu, max pool 2×2, conv 1×1, squared loss: ties and kinks together."""
    rng = np.random.default_rng(seed)

    def loss(x, w0, b0, w1):
        h = F.max_pool2d(F.relu(F.conv2d(x, w0, b0, padding=1)), 2)
        return F.sum(F.conv2d(h, w1) ** 2) * 0.5

    g = trace(loss, x=spec((1, 1, size, size)), w0=param((channels, 1, 3, 3)),
              b0=param((channels,)), w1=param((1, channels, 1, 1)))
    values = {"x": rng.random((1, 1, size, size)), "w0": rng.standard_normal((channels, 1, 3, 3)) * 0.5,
              "b0": rng.standard_normal(channels) * 0.1, "w1": rng.standard_normal((1, channels, 1, 1))}
    return g, values


@settings(max_examples=10, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["mlp", "dncnn", "maxpool"]), seed=st.integers(0, 10_000),
       small=st.integers(2, 4), near=st.booleans())
def test_random_relu_networks_error_within_estimate(kind, seed, small, near):
    if kind == "mlp":
        e = mlp(d_in=small + 2, hidden=small, batch=small - 1, seed=seed)
        g, values = e.graph, e.values
        if near:  # biases that put some pre-activations within a step of 0
            pre = values["W1"] @ values["x"]
            values["b1"] = -pre[:, :1] + np.random.default_rng(seed).choice([1e-4, -1e-5, 1e-6], (small, 1))
    elif kind == "dncnn":
        e = dncnn(batch=1, size=small + 2, channels=2, depth=3, seed=seed)
        g, values = e.graph, e.values
    else:
        g, values = _maxpool_net(seed, 2 * small, 2)
        if near:  # a constant patch: exact ties in the pool, which no parameter breaks
            values["x"][0, 0, :6, :6] = 0.5
    wrt = list(g.parameters)
    for method in METHODS:
        assert_bounded(g, values, method, wrt=wrt)


def _smooth_mlp(seed: int):
    rng = np.random.default_rng(seed)
    g = trace(lambda W1, W2, x, y: F.mse_loss(W2 @ F.tanh(W1 @ x), y),
              W1=param((4, 5)), W2=param((5, 4)), x=spec((5, 3)), y=spec((5, 3)))
    return g, {"W1": rng.standard_normal((4, 5)), "W2": rng.standard_normal((5, 4)),
               "x": rng.standard_normal((5, 3)), "y": rng.standard_normal((5, 3))}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", METHODS)
def test_estimate_is_not_wildly_pessimistic_on_smooth_graphs(method, seed):
    """Per input, the largest estimate is within 100× of the largest error wherever that
    error is above round-off (the complex step's error is round-off: only bounded)."""
    g, values = _smooth_mlp(seed)
    r = assert_bounded(g, values, method, wrt=["W1", "W2"])
    tape = adl.gradient(g, values, engine="tape", wrt=["W1", "W2"]).grads
    assert not any(r.info["kink_flagged"].values())
    for name, ref in tape.items():
        err = float(np.max(np.abs(r.grads[name] - ref)))
        est = float(np.max(r.error_estimate[name]))
        if err > 1e3 * EPS * float(np.max(np.abs(ref))):
            assert est <= 100 * err, (method, name, err, est)


# --- the comparison report's cases: what the report shows -----------------------------------

@pytest.fixture(scope="module")
def report_cases():
    cases = []
    for ex in (_inpainting_small(), _denoiser_small()):
        wrt = list(ex.graph.parameters)
        cases.append((ex, wrt, adl.gradient(ex.graph, ex.values, engine="tape", wrt=wrt).grads))
    return cases


@pytest.mark.parametrize("method", METHODS)
def test_report_cases_estimate_covers_the_measured_error(report_cases, method):
    """The report's 'own est.' column (‖estimate‖∞ / ‖g_ref‖∞) is at least its 'rel. error'
    column, overall and per input, for every finite-difference method."""
    for ex, wrt, ref in report_cases:
        r = numeric(ex.graph, ex.values, method=method, wrt=wrt)
        scale = max(float(np.max(np.abs(g))) for g in ref.values())
        err = rel_error(r.grads, ref)
        est = max(float(np.max(r.error_estimate[k])) for k in ref) / scale
        assert est >= err, (ex.name, method, err, est)
        for k in ref:
            assert np.max(r.error_estimate[k]) >= np.max(np.abs(r.grads[k] - ref[k])), (ex.name, method, k)
        if method in ("five_point", "richardson"):  # no longer worse than central differences
            assert err < 1e-8, (ex.name, method, err)
