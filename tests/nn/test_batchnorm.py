"""Batch-norm running statistics against their definition (momentum 0.1, unbiased running
variance, biased variance for normalising), eagerly and in traced training with each engine."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn

RNG = np.random.default_rng(21)


def expected_running(batches, momentum=0.1, c=3):
    mean, var = np.zeros(c), np.ones(c)
    for k, x in enumerate(batches, start=1):
        axes = (0,) + tuple(range(2, x.ndim))
        m = momentum if momentum is not None else 1.0 / k
        mean = (1 - m) * mean + m * x.mean(axis=axes)
        var = (1 - m) * var + m * x.var(axis=axes, ddof=1)  # unbiased, as PyTorch
    return mean, var


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_eager_training_updates_running_statistics(momentum):
    bn = nn.BatchNorm2d(3, momentum=momentum)
    batches = [RNG.standard_normal((4, 3, 2, 3)) * 2 + 1 for _ in range(3)]
    for x in batches:
        y = bn(x)
        # normalised with the batch's biased variance
        axes = (0, 2, 3)
        ref = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
        np.testing.assert_allclose(y, ref, rtol=1e-10)
    mean, var = expected_running(batches, momentum)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 3


def test_evaluation_uses_running_statistics_and_changes_nothing():
    bn = nn.BatchNorm1d(3)
    bn(RNG.standard_normal((8, 3)))
    bn.eval()
    before = bn.state_dict()
    x = RNG.standard_normal((5, 3))
    y = bn(x)
    np.testing.assert_allclose(y, (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5), rtol=1e-12)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_track_running_stats_false_always_uses_the_batch():
    bn = nn.BatchNorm2d(2, track_running_stats=False).eval()
    assert "running_mean" not in bn.state_dict()
    x = RNG.standard_normal((3, 2, 2, 2))
    np.testing.assert_allclose(bn(x).mean(axis=(0, 2, 3)), 0, atol=1e-12)


def _conv_model():
    return nn.Sequential(nn.Conv2d(1, 3, 2, rng=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 1, rng=2))


def _dense_model():
    return nn.Sequential(nn.Linear(2, 2, rng=1), nn.BatchNorm1d(2), nn.Tanh(), nn.Linear(2, 1, rng=2))


@pytest.mark.parametrize("kind,engine,options", [
    ("conv", "tape", {}), ("conv", "symbolic", {}), ("dense", "tape", {}),
    ("dense", "symbolic", {"mode": "expanded"}), ("dense", "numeric", {})])
def test_traced_training_updates_like_eager(kind, engine, options):
    """compile_step (any engine) leaves the same running statistics as eager training."""
    make = _conv_model if kind == "conv" else _dense_model
    eager, traced = make(), make()
    shape = (2, 1, 3, 3) if kind == "conv" else (3, 2)
    xs = [RNG.standard_normal(shape) for _ in range(2)]
    ys = [RNG.standard_normal((shape[0], 1)) for _ in range(2)]
    step = nn.compile_step(traced, nn.MSELoss(), xs[0], ys[0], engine=engine, **options)
    for x, y in zip(xs, ys):
        eager(x)
        out = step(x, y)
        assert {"1.batch_mean", "1.batch_var"} <= set(out.outputs)
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        np.testing.assert_allclose(traced.state_dict()[key], eager.state_dict()[key], rtol=1e-10,
                                   err_msg=key)
    # the auxiliary batch statistics are the definition's (unbiased variance)
    h = traced[0](xs[-1])
    axes = (0, 2, 3) if kind == "conv" else (0,)
    np.testing.assert_allclose(out.outputs["1.batch_var"], h.var(axis=axes, ddof=1), rtol=1e-10)


def test_update_running_stats_from_a_traced_gradient():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4))
    x = RNG.standard_normal((6, 3))
    g = adl.trace(lambda x: adl.sum(model(x) ** 2), x=x)
    assert g.auxiliary == {"1.batch_mean", "1.batch_var"}
    r = adl.gradient(g, {**model.state_dict(), "x": x})
    assert model.update_running_stats(r.outputs) == ["1"]
    h = x @ model[0].weight.data.T + model[0].bias.data
    np.testing.assert_allclose(model[1].running_mean, 0.1 * h.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model[1].running_var, 0.9 + 0.1 * h.var(axis=0, ddof=1), rtol=1e-12)
    with pytest.raises(adl.InputError, match="no '1.batch_mean'"):
        model.update_running_stats({"out": r.value})
    assert model.update_running_stats({}, strict=False) == []


def test_a_layer_used_twice_in_one_trace_updates_twice():
    bn = nn.BatchNorm1d(2)
    model = nn.Sequential(bn, nn.Tanh(), bn)
    x = RNG.standard_normal((5, 2))
    g = adl.trace(lambda x: adl.sum(model(x)), x=x)
    assert g.auxiliary == {"0.batch_mean", "0.batch_var", "0.batch_mean@2", "0.batch_var@2"}
    r = adl.gradient(g, {**model.state_dict(), "x": x})
    eager = nn.Sequential(b := nn.BatchNorm1d(2), nn.Tanh(), b)
    eager(x)
    model.update_running_stats(r.outputs)
    np.testing.assert_allclose(bn.running_var, b.running_var, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 2


def test_one_value_per_channel_in_training_is_an_error():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(adl.ShapeError, match="more than 1 value per channel"):
        bn(np.ones((1, 3)))
    bn.eval()
    assert bn(np.ones((1, 3))).shape == (1, 3)


def test_float32_statistics_stay_float32():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype="float32"), nn.BatchNorm2d(2, dtype="float32"))
    step = nn.compile_step(model, nn.MSELoss(), RNG.random((2, 1, 4, 4)), RNG.random((2, 2, 4, 4)))
    step(RNG.random((2, 1, 4, 4)), RNG.random((2, 2, 4, 4)))
    assert model[1].running_mean.dtype == np.float32 and model[1].running_var.dtype == np.float32
