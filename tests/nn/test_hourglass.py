"""nn.Hourglass, the Deep Image Prior's encoder-decoder: shapes, where the gradient flows,
the layout of its layers, bad settings."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F

RNG = np.random.default_rng(3)


def _grads(model, x):
    y = RNG.random((x.shape[0], model.out_channels) + x.shape[2:])
    g = adl.trace(lambda x, y: F.mse_loss(model(x), y, reduction="sum"), x=x, y=y)
    names = [p.name for p in model.parameters()]
    r = adl.gradient(g, {**model.state_dict(), "x": x, "y": y}, engine="tape", wrt=[*names, "x"])
    return r.grads


@pytest.mark.parametrize("widths,skips,size", [
    ((3,), (2,), (4, 6)), ((2, 3), (0, 2), (8, 4)), ((2, 3, 4), (1, 0, 2), (16, 8)),
    ((4, 4, 4, 4), (0, 0, 2, 2), (16, 32))])
@pytest.mark.parametrize("up", ["bilinear", "nearest"])
def test_shapes_and_layout(widths, skips, size, up):
    model = nn.Hourglass(2, 3, widths, skips, up=up, output="sigmoid", rng=0)
    x = RNG.random((2, 2) + size)
    y = model(x)
    assert y.shape == (2, 3) + size and np.all((y > 0) & (y < 1))
    assert model.depth == len(widths) and model.divisor == 2 ** len(widths)
    for lvl, (w, s) in enumerate(zip(widths, skips)):
        down = model.downs[lvl][0][0]                       # the level's first convolution
        assert down.stride == (2, 2) and down.weight.shape[1] == (2 if lvl == 0 else widths[lvl - 1])
        below = widths[lvl + 1] if lvl + 1 < len(widths) else w
        assert model.decoders[lvl][0][0].weight.shape == (w, s + below, 3, 3)
        assert model.decoders[lvl][1][0].weight.shape == (w, w, 1, 1)
        assert isinstance(model.skips[lvl], nn.Identity) == (s == 0)


def test_the_papers_network_and_every_level_gets_a_gradient():
    """Widths 8..128, skips 0, 0, 0, 4, 4: only the decoder's last 3×3 convolution works at
    full resolution; every level's weights, every skip and the code get a gradient."""
    model = nn.Hourglass(4, 1, output="sigmoid", rng=1)
    assert model.widths == (8, 16, 32, 64, 128) and model.skip_channels == (0, 0, 0, 4, 4)
    x = RNG.random((2, 4, 32, 32))
    grads = _grads(model, x)
    for name, gr in grads.items():
        assert np.all(np.isfinite(gr)) and np.abs(gr).max() > 0, name
    assert any(n.startswith("skips.3.") for n in grads)
    assert not any(n.startswith(("skips.0.", "skips.1.", "skips.2.")) for n in grads)


def test_a_skip_carries_the_gradient_alone():
    """Cut level 0's path through the deeper levels (zero the decoder's weights on the
    up-sampled channels): the code still gets a gradient through level 0's skip."""
    model = nn.Hourglass(1, 1, (2, 3), (2, 0), rng=2)
    x = RNG.random((2, 1, 8, 8))
    conv = model.decoders[0][0][0]
    conv.weight.data[:, 2:] = 0
    grads = _grads(model, x)
    assert np.abs(grads["x"]).max() > 1e-6
    assert np.abs(grads["downs.0.0.0.weight"]).max() == 0.0   # nothing flows below
    conv.weight.data[:, :2] = 0
    assert np.abs(_grads(model, x)["x"]).max() == 0.0


def test_engines_agree_on_an_hourglass_gradient():
    model = nn.Hourglass(1, 1, (2, 2), (1, 1), output="sigmoid", rng=4).double()
    x, y = RNG.random((1, 1, 8, 8)), RNG.random((1, 1, 8, 8))
    g = adl.trace(lambda x, y: F.mse_loss(model(x), y, reduction="sum"), x=x, y=y)
    names = [p.name for p in model.parameters()]
    values = {**model.state_dict(), "x": x, "y": y}
    tape = adl.gradient(g, values, engine="tape", wrt=names)
    matrix = adl.engine("symbolic", mode="matrix").compile(g, wrt=names)(values)
    for n in names:
        np.testing.assert_allclose(matrix.grads[n], tape.grads[n], rtol=1e-10, atol=1e-12)


def test_bad_settings_and_sizes():
    with pytest.raises(InputError, match="one skip width per level: 2 widths"):
        nn.Hourglass(1, 1, (2, 3), (1,))
    with pytest.raises(InputError, match="widths must be a non-empty tuple of integers >= 1"):
        nn.Hourglass(1, 1, (), ())
    with pytest.raises(InputError, match="skip_channels must be a non-empty tuple of integers >= 0"):
        nn.Hourglass(1, 1, (2,), (-1,))
    with pytest.raises(InputError, match="up must be 'bilinear' or 'nearest'"):
        nn.Hourglass(1, 1, (2,), (0,), up="transpose")
    model = nn.Hourglass(1, 1, (2, 2, 2), (0, 0, 1), rng=0)
    with pytest.raises(ShapeError, match=r"the image is 12×16 but an Hourglass of 3 levels.*"
                                         r"multiples of 2\*\*3 = 8"):
        model(np.zeros((1, 1, 12, 16)))
    with pytest.raises(ShapeError, match="1×1 map at the deepest level: batch normalisation"):
        model(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ShapeError, match="expects 1 input channels"):
        model(np.zeros((1, 2, 16, 16)))


@pytest.mark.parametrize("kw", [dict(up="bilinear", output="sigmoid"),
                                dict(up="nearest", activation="relu")])
def test_hourglass_matches_torch(kw):
    """PyTorch's hourglass of benchmarks/bench_unet.py, with our weights: same loss, same
    gradients (float64), so the benchmark times the same network."""
    pytest.importorskip("torch")
    from _bench_unet import assert_twin_matches
    model = nn.Hourglass(3, 2, (2, 3, 4), (0, 2, 1), rng=0, **kw)
    x, y = RNG.random((2, 3, 16, 8)), RNG.random((2, 2, 16, 8))
    assert_twin_matches(model, "torch_hourglass", x, y)
