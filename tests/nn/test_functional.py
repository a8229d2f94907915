"""adl.grad / adl.value_and_grad: gradients of plain functions, re-traced per input shape."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl

RNG = np.random.default_rng(9)


def loss(w, x, y):
    return adl.mse_loss(x @ w, y)


def test_grad_of_the_first_argument_and_retracing_on_a_new_batch_size():
    w, x, y = RNG.random(3), RNG.random((5, 3)), RNG.random(5)
    dloss = adl.grad(loss)
    np.testing.assert_allclose(dloss(w, x, y), x.T @ (x @ w - y), rtol=1e-12)
    assert dloss.traces == 1
    x2, y2 = RNG.random((8, 3)), RNG.random(8)
    np.testing.assert_allclose(dloss(w, x2, y2), x2.T @ (x2 @ w - y2), rtol=1e-12)
    assert dloss.traces == 2
    dloss(w, x, y)
    dloss(w + 1, x, y)
    assert dloss.traces == 2 and len(dloss.graphs) == 2
    dloss(w.astype(np.float32), x.astype(np.float32), y.astype(np.float32))
    assert dloss.traces == 3  # a new dtype is a new trace


@pytest.mark.parametrize("engine", ["tape", "symbolic", "numeric"])
def test_value_and_grad_with_several_arguments(engine):
    w, x, y = RNG.random(3), RNG.random((4, 3)), RNG.random(4)
    value, (gw, gy) = adl.value_and_grad(loss, wrt=("w", 2), engine=engine)(w, x, y=y)
    r = x @ w - y
    assert value == pytest.approx(0.5 * np.sum(r ** 2))
    np.testing.assert_allclose(gw, x.T @ r, rtol=1e-7)
    np.testing.assert_allclose(gy, -r, rtol=1e-7)


def test_scalars_integer_labels_and_keywords():
    assert adl.grad(lambda a: a * a * a)(2.0) == pytest.approx(12.0)
    assert adl.grad(lambda a: a * a)(3) == pytest.approx(6.0)  # a Python int is a float input
    z, labels = RNG.standard_normal((3, 4)), np.array([0, 3, 1])
    g = adl.grad(lambda z, y: adl.softmax_cross_entropy(z, y))(z, labels)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(3), labels] -= 1
    np.testing.assert_allclose(g, p / 3, rtol=1e-12)


def test_errors():
    with pytest.raises(adl.InputError, match="'v' is not an argument"):
        adl.grad(loss, wrt="v")
    with pytest.raises(adl.InputError, match="3 argument"):
        adl.grad(loss, wrt=5)
    with pytest.raises(adl.TraceError, match=r"\*args"):
        adl.grad(lambda *xs: xs[0])
    with pytest.raises(adl.InputError, match="not an array of numbers"):
        adl.grad(lambda a, flag: a * 2)(1.0, "yes")
    with pytest.raises(adl.InputError):
        adl.grad(loss)(np.ones(3))  # missing arguments
    with pytest.raises(adl.NotDifferentiableError):
        adl.grad(lambda a: a * 2)(np.ones(3))  # not a scalar


def test_gradient_of_an_untraced_function_is_our_error():
    with pytest.raises(adl.TraceError, match="trace it first.*adl.grad"):
        adl.gradient(loss, {"w": np.ones(3)})
    with pytest.raises(adl.TraceError, match="traced graph"):
        adl.gradient({"w": 1}, {})
