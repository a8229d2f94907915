"""Dropout: inverted scaling, training only, reproducible masks, traced steps."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn


def test_scaling_and_fraction_in_training():
    d = nn.Dropout(0.25, rng=0)
    x = np.ones((200, 100))
    y = d(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01
    assert abs(y.mean() - 1.0) < 0.02  # the expected value is kept


def test_identity_in_evaluation_and_for_p_zero():
    x = np.random.default_rng(0).standard_normal((4, 5))
    d = nn.Dropout(0.5, rng=0).eval()
    assert d(x) is x
    assert nn.Dropout(0.0)(x) is x
    np.testing.assert_array_equal(nn.Dropout(1.0, rng=0)(x), np.zeros_like(x))
    g = adl.trace(lambda x: d(x) * 2, x=x)  # traced in evaluation mode: no mask input
    assert list(g.inputs) == ["x"]


def test_reproducible_with_a_seed():
    x = np.ones((6, 7))
    a, b = nn.Dropout(0.5, rng=42), nn.Dropout(0.5, rng=42)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a(x), b(x))  # and call after call
    nn.manual_seed(3)
    c = nn.Dropout(0.5)
    nn.manual_seed(3)
    e = nn.Dropout(0.5)
    np.testing.assert_array_equal(c(x), e(x))
    assert not np.array_equal(nn.Dropout(0.5, rng=1)(x), nn.Dropout(0.5, rng=2)(x))
    with pytest.raises(adl.InputError, match=r"\[0, 1\]"):
        nn.Dropout(1.5)


def test_traced_step_uses_fresh_masks_like_eager():
    """compile_step draws one mask per step from the layer's generator: the same elements
    are dropped as eager calls with the same seed, and the gradient is the masked one."""
    def make():
        return nn.Sequential(nn.Linear(4, 8, rng=0), nn.Dropout(0.5, rng=7), nn.Linear(8, 1, rng=1))

    traced, eager = make(), make()
    x, y = np.random.default_rng(1).random((5, 4)), np.zeros((5, 1))
    step = nn.compile_step(traced, nn.MSELoss("sum"), x, y)
    g = step.graph_for(x, y)
    assert "1.mask" in g.inputs and g.node(g.inputs["1.mask"])["dtype"] == "uint8"
    losses = [step(x, y).loss for _ in range(3)]
    expected = [float(nn.MSELoss("sum")(eager(x), y)) for _ in range(3)]
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    assert len(set(losses)) == 3  # a new mask every step
    traced.eval()
    assert "1.mask" not in step.graph_for(x, y).inputs
    np.testing.assert_allclose(step.predict(x), eager.eval()(x), rtol=1e-12)


def test_dropout_masks_for_a_user_traced_graph():
    model = nn.Sequential(nn.Linear(3, 3, rng=0), nn.Dropout(0.3, rng=5))
    x = np.ones((2, 3))
    g = adl.trace(lambda x: adl.sum(model(x)), x=x)
    masks = model.dropout_masks(g)
    assert list(masks) == ["1.mask"] and masks["1.mask"].shape == (2, 3)
    with pytest.raises(adl.InputError, match="1.mask"):
        adl.gradient(g, {**model.state_dict(), "x": x})  # the mask is a required input
    for engine in ("tape", "symbolic", "numeric"):
        r = adl.gradient(g, {**model.state_dict(), "x": x, **masks}, engine=engine)
        np.testing.assert_allclose(r.grads["0.bias"], masks["1.mask"].sum(axis=0) / 0.7, rtol=1e-7)
