"""Batch norm's running statistics from a traced training step: one batch_stats op."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.errors import ShapeError


def _numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes, ddof=1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6, 5)])
def test_batch_stats_is_the_mean_and_unbiased_variance(shape, dtype):
    x = (np.random.default_rng(1).standard_normal(shape) * 3 + 2).astype(dtype)
    got = adl.batch_stats(x)  # the Numba kernel for real floats
    mean, var = _numpy_stats(x.astype(np.float64))
    assert got.shape == (2, shape[1]) and got.dtype == x.dtype
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got[0], mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got[1], var, rtol=rtol)
    ref = adl.OPS["batch_stats"].sympy(x.astype(object))  # the numpy/SymPy definition
    np.testing.assert_allclose(ref.astype(np.float64), got, rtol=rtol, atol=rtol)
    g = adl.trace(lambda x: adl.sum(adl.batch_stats(x) * np.array([[1.0], [0.5]])), x=shape)
    adl.gradcheck(g, {"x": x.astype(np.float64)})
    sym = adl.gradient(g, {"x": x.astype(np.float64)}, engine="symbolic", mode="matrix")
    np.testing.assert_allclose(sym.grads["x"], adl.gradient(g, {"x": x.astype(np.float64)})
                               .grads["x"], rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        adl.trace(lambda x: adl.batch_stats(x), x=(1, 3))


def _denoiser_running_stats(dtype: str) -> tuple[nn.Module, list[np.ndarray]]:
    model = nn.DnCNN(3, 4, 1, dtype=np.dtype(dtype), rng=0)
    step = nn.compile_step(model, nn.MSELoss(reduction="mean"), engine="tape")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 1, 6, 6)).astype(dtype) for _ in range(3)]
    for b in batches:
        step(b, b)
    return model, batches


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_traced_running_statistics_follow_the_eager_definition(dtype):
    """The traced step's running statistics equal the eager forward's (numpy definition)."""
    model, batches = _denoiser_running_stats(dtype)
    eager = nn.DnCNN(3, 4, 1, dtype=np.dtype(dtype), rng=0)
    for b in batches:
        eager(b)  # eager training forward: numpy mean and var(ddof=1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    eager_norms = [m for m in eager.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    rtol = 1e-10 if dtype == "float64" else 2e-5
    for m, e in zip(norms, eager_norms):
        np.testing.assert_allclose(m.running_mean, e.running_mean, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(m.running_var, e.running_var, rtol=rtol)
        assert int(m.num_batches_tracked) == 3


def test_running_statistics_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    layer = nn.BatchNorm2d(3)
    step = nn.compile_step(layer, lambda y, t: adl.mse_loss(y, t))
    ref = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
        step(x, x)
        ref(torch.tensor(x))
    np.testing.assert_allclose(layer.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, ref.running_var.numpy(), rtol=1e-12)
