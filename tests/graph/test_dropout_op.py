"""The dropout op: forward, shape rule, every engine's derivative, batched form, sympy form."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import ShapeError, TraceError
from autodiff_lab.graph.optable import OPS

RNG = np.random.default_rng(7)


def _mask(shape, p):
    return (RNG.random(shape) >= p).astype(np.uint8)


def test_forward_is_x_times_mask_over_keep_probability():
    x, m = RNG.standard_normal((5, 4)), _mask((5, 4), 0.25)
    np.testing.assert_allclose(adl.dropout(x, m, 0.25), x * m / 0.75, rtol=1e-15)
    assert adl.dropout(x.astype(np.float32), m, 0.5).dtype == np.float32
    np.testing.assert_array_equal(adl.dropout(x, m, 1.0), np.zeros_like(x))  # p = 1 drops all
    np.testing.assert_array_equal(adl.dropout(x, np.ones((5, 4), np.uint8), 0.0), x)


def test_mask_broadcasts_per_channel():
    x, m = RNG.standard_normal((2, 3, 4, 4)), _mask((2, 3, 1, 1), 0.5)
    np.testing.assert_allclose(adl.dropout(x, m, 0.5), x * m * 2.0)


@pytest.mark.parametrize("shapes,fragment", [
    (((3, 4), (4, 4)), "must have the shape"),
    (((3, 4), (3, 4, 1)), "must have the shape"),
])
def test_shape_rule(shapes, fragment):
    with pytest.raises(ShapeError, match=fragment):
        adl.trace(lambda x, m: adl.dropout(x, m, 0.5), x=shapes[0], m=adl.spec(shapes[1], "uint8"))


def test_bad_probability_and_float_mask_are_our_errors():
    with pytest.raises(ShapeError, match="p must be in"):
        adl.dropout(np.ones(3), np.ones(3, np.uint8), 1.5)
    with pytest.raises(TraceError, match="integers"):
        adl.dropout(np.ones(3), np.ones(3), 0.5)
    with pytest.raises(TraceError, match="integer"):
        adl.trace(lambda x, m: adl.dropout(x, m), x=(3,), m=(3,))


@pytest.mark.parametrize("engine,options", [("tape", {}), ("symbolic", {}), ("numeric", {})])
def test_every_engine_differentiates_it_the_same(engine, options):
    x, m = RNG.standard_normal((3, 4)), _mask((3, 4), 0.4)
    g = adl.trace(lambda x, m: adl.sum(adl.tanh(adl.dropout(x, m, 0.4))), x=(3, 4),
                  m=adl.spec((3, 4), "uint8"))
    r = adl.gradient(g, {"x": x, "m": m}, engine=engine, **options)
    y = x * m / 0.6
    expected = (1 - np.tanh(y) ** 2) * m / 0.6
    assert list(r.grads) == ["x"]  # the mask is integer data: not differentiated by default
    np.testing.assert_allclose(r.grads["x"], expected, rtol=1e-8, atol=1e-10)


def test_mask_cannot_be_differentiated():
    g = adl.trace(lambda x, m: adl.sum(adl.dropout(x, m)), x=(3,), m=adl.spec((3,), "uint8"))
    with pytest.raises(adl.NotDifferentiableError):
        adl.engine("tape").compile(g, wrt=["m"])


def test_batched_and_sympy_forms_agree_with_forward():
    op = OPS["dropout"]
    x, m = RNG.standard_normal((6, 2, 3)), _mask((2, 3), 0.5)
    batched = op.batched(1, x, m[None], p=0.5)
    np.testing.assert_allclose(batched, np.stack([op.forward(xi, m, p=0.5) for xi in x]))
    sym = op.sympy(np.array([[1.5, -2.0, 0.25]], dtype=object), np.array([[1, 0, 1]]), p=0.5)
    assert [float(v) for v in sym.ravel()] == [3.0, 0.0, 0.5]
    assert op.complex_safe and op.kink is None and op.label and op.doc
    assert op.matrix is not None and op.matrix[1] is None and op.vjp[1] is None


def test_complex_step_through_dropout():
    x, m = RNG.standard_normal(4), _mask((4,), 0.5)
    g = adl.trace(lambda x, m: adl.sum(adl.dropout(x, m) ** 3), x=(4,), m=adl.spec((4,), "uint8"))
    r = adl.gradient(g, {"x": x, "m": m}, engine="numeric", method="complex")
    np.testing.assert_allclose(r.grads["x"], 3 * (x * m * 2) ** 2 * m * 2, rtol=1e-12)
