"""adl.gradcheck and adl.jacobian (autodiff_lab/checks.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import examples as E
from autodiff_lab.graph.optable import OPS


def _tanh_layer():
    g = adl.trace(lambda x, W: adl.tanh(W @ x), x=(3,), W=(2, 3))
    values = {"x": np.array([1.0, 2.0, 3.0]), "W": np.arange(6.0).reshape(2, 3) / 10}
    return g, values


def test_gradcheck_passes_in_full_and_projection_modes():
    ex = E.mlp(d_in=10, hidden=5, batch=3)
    full = adl.gradcheck(ex.graph, ex.values)
    assert full.ok and full.mode == "full" and full.checked == sum(
        ex.values[n].size for n in ex.graph.inputs)
    proj = adl.gradcheck(ex.graph, ex.values, mode="projection", n_directions=2)
    assert proj.ok and proj.mode == "projection" and len(proj.details) == 2
    big = E.mlp(d_in=64, hidden=32, batch=2, bias=False)
    assert adl.gradcheck(big.graph, big.values).mode == "projection"


def test_gradcheck_names_input_index_expected_and_got(monkeypatch):
    g, values = _tanh_layer()
    broken = dataclasses.replace(OPS["tanh"], vjp=(lambda g_, ans, x: g_ * (1 - ans),))
    monkeypatch.setitem(OPS, "tanh", broken)
    with pytest.raises(adl.GradcheckError, match=r"input '(x|W)' index \([\d, ]+\): "
                                                 r"expected .* got .*"):
        adl.gradcheck(g, values)
    result = adl.gradcheck(g, values, raise_exception=False)
    assert not result.ok and result.details[0]["input"] in ("x", "W")
    with pytest.raises(adl.GradcheckError, match="random direction"):
        adl.gradcheck(g, values, mode="projection")


def test_gradcheck_warns_for_float32():
    g, values = _tanh_layer()
    with pytest.warns(UserWarning, match="float32"):
        assert adl.gradcheck(g, {k: v.astype(np.float32) for k, v in values.items()})


def test_jacobian_is_output_by_input():
    g, values = _tanh_layer()
    J = adl.jacobian(g, values, wrt="x")
    assert J.shape == (2, 3)
    W, x = values["W"], values["x"]
    np.testing.assert_allclose(J, (1 - np.tanh(W @ x) ** 2)[:, None] * W, rtol=1e-12)
    both = adl.jacobian(g, values)
    assert both["W"].shape == (2, 2, 3)
    numeric = adl.engine("numeric").compile(g, wrt=["x", "W"]).jacobian(values).grads
    for name in both:
        np.testing.assert_allclose(both[name], numeric[name], atol=1e-8)


def test_jacobian_of_a_scalar_output_is_the_gradient():
    ex = E.sigmoid_neuron_vector()
    J = adl.jacobian(ex.graph, ex.values, wrt="w")
    np.testing.assert_allclose(J, [-0.1966, -0.3932, 0.1966], atol=1e-4)
