"""U-Net, residual block, the bilinear up-sampling op and the layer-level drawing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.optable import OPS, bilinear_matrix
from autodiff_lab.nn.agreement import engine_agreement, format_agreement

RNG = np.random.default_rng(7)


def _loss(model):
    return lambda x, y: F.mse_loss(model(x), y, reduction="sum")


# --------------------------------------------------------------------------------------
# the bilinear up-sampling op
# --------------------------------------------------------------------------------------

def bilinear_loop(x, scale):
    """PyTorch's align_corners=False definition, one output pixel at a time."""
    sh, sw = scale
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (h * sh, w * sw))

    def source(o, s, n):
        src = max((o + 0.5) / s - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n - 1)
        return i0, min(i0 + 1, n - 1), src - i0

    for oh, ow in itertools.product(range(h * sh), range(w * sw)):
        h0, h1, lh = source(oh, sh, h)
        w0, w1, lw = source(ow, sw, w)
        out[..., oh, ow] = ((1 - lh) * ((1 - lw) * x[..., h0, w0] + lw * x[..., h0, w1])
                            + lh * ((1 - lw) * x[..., h1, w0] + lw * x[..., h1, w1]))
    return out


@pytest.mark.parametrize("shape,scale", [((2, 3, 4, 5), (2, 2)), ((1, 2, 3, 1), (3, 2)),
                                         ((3, 1, 1), (2, 4)), ((2, 2), (1, 3)),
                                         ((1, 1, 5, 2), (4, 1))])
def test_bilinear_forward_matches_the_loop_definition(shape, scale):
    x = RNG.standard_normal(shape)
    want = bilinear_loop(x, scale)
    for dtype, tol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        got = adl.upsample(x.astype(dtype), scale, mode="bilinear")
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # the matrix rule's dense matrices are the same linear map: Y = A_H X A_Wᵀ
    a_h, a_w = bilinear_matrix(shape[-2], scale[0]), bilinear_matrix(shape[-1], scale[1])
    np.testing.assert_allclose(a_h @ x @ a_w.T, want, atol=1e-13)


def test_bilinear_gradient_against_central_differences_and_the_adjoint():
    x = RNG.standard_normal((2, 2, 3, 4))
    g = adl.trace(lambda x: adl.sum(adl.upsample(x, (2, 3), mode="bilinear") ** 3), x=x)
    adl.gradcheck(g, {"x": x})
    # the VJP is the adjoint: <G, U x> = <Uᵀ G, x>
    op = OPS["upsample_bilinear"]
    y = op.forward(x, scale=(3, 2))
    gy = RNG.standard_normal(y.shape)
    gx = op.vjp[0](gy, y, x, scale=(3, 2))
    np.testing.assert_allclose(np.sum(gy * y), np.sum(gx * x), rtol=1e-12)


def test_bilinear_against_torch():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 3, 5, 4))
    for scale in ((2, 2), (3, 2), (1, 4)):
        tx = torch.tensor(x, requires_grad=True)
        ty = torch.nn.functional.interpolate(tx, scale_factor=scale, mode="bilinear",
                                             align_corners=False)
        gy = RNG.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(gy))
        y = adl.upsample(x, scale, mode="bilinear")
        np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
        gx = OPS["upsample_bilinear"].vjp[0](gy, y, x, scale=scale)
        np.testing.assert_allclose(gx, tx.grad.numpy(), atol=1e-12)


def test_bilinear_propagates_nan_and_inf_locally():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 2] = np.nan
    y = adl.upsample(x, 2, mode="bilinear")
    bad = np.isnan(y[0, 0])
    assert bad.any() and not bad.all()          # only the pixels that read it
    assert bad[2:4, 4:6].all() and not bad[0, 0] and not bad[7, 7]
    g = np.zeros(y.shape)
    g[0, 0, 0, 0] = np.inf
    gx = OPS["upsample_bilinear"].vjp[0](g, y, x, scale=(2, 2))
    assert np.isinf(gx[0, 0, 0, 0]) and np.isfinite(gx[0, 0, 2:, 2:]).all()


def test_bilinear_symbolic_forms_and_errors():
    import sympy as sp
    a, b = sp.symbols("a b")
    row = OPS["upsample_bilinear"].sympy(np.array([[a, b]], dtype=object), scale=(1, 2))
    assert list(row[0]) == [a, 3 * a / 4 + b / 4, a / 4 + 3 * b / 4, b]
    with pytest.raises(adl.TraceError, match="'nearest' or 'bilinear', got mode='cubic'"):
        adl.upsample(np.zeros((1, 1, 2, 2)), 2, mode="cubic")
    with pytest.raises(ShapeError, match="upsample_bilinear scale must be"):
        adl.trace(lambda x: adl.upsample(x, 0, mode="bilinear"), x=(1, 1, 2, 2))
    with pytest.raises(InputError, match="'nearest' or 'bilinear', got 'area'"):
        nn.Upsample(2, mode="area")


# --------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,size,down,up", [
    (1, (4, 6), "maxpool", "nearest"), (2, (8, 12), "conv", "bilinear"),
    (3, (16, 8), "maxpool", "transpose"), (2, (12, 4), "conv", "transpose"),
    (3, (8, 16), "conv", "nearest"), (1, (2, 10), "maxpool", "bilinear")])
@pytest.mark.parametrize("skip", [None, 2])
def test_unet_shapes(depth, size, down, up, skip):
    model = nn.UNet(2, 3, depth, 3, down=down, up=up, skip_channels=skip, rng=0)
    x = RNG.random((2, 2) + size)
    assert model(x).shape == (2, 3) + size
    g = adl.trace(lambda x: model(x), x=x)
    assert g.node(g.output)["shape"] == (2, 3) + size
    assert model.channels == [3 * 2 ** k for k in range(depth + 1)]


def test_unet_widths_growth_and_output():
    model = nn.UNet(1, 1, 2, (2, 5, 7), output="sigmoid", batch_norm=False,
                    activation="relu", rng=0)
    y = model(RNG.random((1, 1, 8, 8)))
    assert model.channels == [2, 5, 7] and y.shape == (1, 1, 8, 8)
    assert np.all((y > 0) & (y < 1))
    assert nn.UNet(1, 1, 3, 4, growth=1).channels == [4, 4, 4, 4]
    with pytest.raises(InputError, match="depth \\+ 1 = 3 channel counts"):
        nn.UNet(1, 1, 2, (2, 5))
    with pytest.raises(InputError, match="UNet up must be one of"):
        nn.UNet(1, 1, 2, 4, up="pixelshuffle")


def test_unet_refuses_sizes_the_depth_does_not_divide():
    model = nn.Sequential(nn.UNet(1, 1, depth=3, width=2, rng=0))
    with pytest.raises(ShapeError, match=r"layer '0' \(UNet.*the image is 20×16 but a U-Net of "
                                         r"depth 3.*multiples of 2\*\*3 = 8 \(crop to 16×16"):
        model(np.zeros((1, 1, 20, 16)))
    with pytest.raises(ShapeError, match="image is 4×8.*pad to at least 8×8"):
        model(np.zeros((1, 1, 4, 8)))
    with pytest.raises(ShapeError, match="1×1 bottleneck at depth 3: batch normalisation"):
        model(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ShapeError, match="expects 1 input channels"):
        model(np.zeros((1, 3, 8, 8)))
    model.eval()  # running statistics: a 1×1 bottleneck is fine
    assert model(np.zeros((1, 1, 8, 8))).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_skip_connection_carries_gradient(level):
    """Cut the up-sampled input of decoder ``level`` (zero its weights): encoder ``level``
    still gets a gradient, through its skip connection alone; cut the skip too and it gets
    none."""
    model = nn.UNet(1, 1, depth=3, width=2, up="bilinear", rng=1)
    x, y = RNG.random((2, 1, 16, 16)), RNG.random((2, 1, 16, 16))
    g = adl.trace(_loss(model), x=x, y=y)
    conv = model.decoders[level].conv1
    skip_channels = model.channels[level]
    enc = [p.name for p in model.encoders[level].parameters()]

    def encoder_grad():
        values = {**model.state_dict(), "x": x, "y": y}
        r = adl.gradient(g, values, engine="tape", wrt=enc)
        return max(float(np.abs(r.grads[n]).max()) for n in enc)

    assert encoder_grad() > 0
    conv.weight.data[:, skip_channels:] = 0   # the path through the deeper levels is cut
    assert encoder_grad() > 1e-6               # ... the skip still carries the gradient
    conv.weight.data[:, :skip_channels] = 0   # and the skip too
    assert encoder_grad() == 0.0


def test_unet_and_residual_blocks_save_and_load(tmp_path):
    for model, shape in ((nn.UNet(2, 1, 2, (3, 4, 5), down="conv", up="transpose",
                                  skip_channels=2, rng=0),
                          (2, 2, 8, 8)),
                         (nn.Sequential(nn.ResidualBlock(2, 2, rng=0),
                                        nn.ResidualBlock(2, 4, stride=2, rng=1)), (2, 2, 7, 7))):
        x = RNG.random(shape)
        model(x)  # training mode: running statistics move
        model.eval()
        nn.save(model, tmp_path / "m.npz")
        back = nn.load(tmp_path / "m.npz").eval()
        assert type(back) is type(model)
        np.testing.assert_array_equal(back(x), model(x))


@pytest.mark.parametrize("kw", [dict(down="conv", up="bilinear", output="sigmoid", skip_channels=2),
                                dict(down="maxpool", up="transpose", activation="relu"),
                                dict(down="maxpool", up="nearest", batch_norm=False)])
def test_unet_matches_torch(kw):
    """PyTorch's U-Net of benchmarks/bench_unet.py, with our weights: same output, same
    gradients (float64), so the benchmark times the same network."""
    pytest.importorskip("torch")
    from _bench_unet import assert_twin_matches
    model = nn.UNet(2, 1, depth=2, width=(2, 3, 4), rng=0, **kw)
    x, y = RNG.random((2, 2, 8, 8)), RNG.random((2, 1, 8, 8))
    assert_twin_matches(model, "torch_unet", x, y)


# --------------------------------------------------------------------------------------
# residual block
# --------------------------------------------------------------------------------------

def _conv_np(x, w, stride, pad):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for i, j in itertools.product(range(kh), range(kw)):
        patch = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
        out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    return out


def _bn_np(x, bn):
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mu) / np.sqrt(var + bn.eps) * bn.weight.data[None, :, None, None] \
        + bn.bias.data[None, :, None, None]


@pytest.mark.parametrize("cin,cout,stride,size", [(3, 3, 1, 6), (3, 5, 1, 5), (4, 4, 2, 7),
                                                  (2, 6, 2, 8)])
def test_residual_block_against_numpy(cin, cout, stride, size):
    block = nn.ResidualBlock(cin, cout, stride, rng=3)
    for bn in (block.bn1, block.bn2):  # non-trivial affine parameters
        bn.weight.data[:] = RNG.uniform(0.5, 1.5, cout)
        bn.bias.data[:] = RNG.standard_normal(cout)
    x = RNG.standard_normal((2, cin, size, size))
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    h = relu(_bn_np(_conv_np(x, block.conv1.weight.data, stride, 1), block.bn1))
    h = _bn_np(_conv_np(h, block.conv2.weight.data, 1, 1), block.bn2)
    if stride == 1 and cin == cout:
        assert not block.projects
        short = x
    else:
        assert block.projects
        short = _bn_np(_conv_np(x, block.shortcut[0].weight.data, stride, 0), block.shortcut[1])
    want = relu(h + short)
    got = block(x)
    assert got.shape == (2, cout, -(-size // stride), -(-size // stride))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    g = adl.trace(lambda x: adl.sum(block(x) ** 2), x=x)
    adl.gradcheck(g, {**block.state_dict(), "x": x},
                  wrt=["x", "conv1.weight", "bn2.weight"])


# --------------------------------------------------------------------------------------
# every engine on one U-Net gradient; the layer-level drawing
# --------------------------------------------------------------------------------------

def test_engines_agree_on_a_unet_gradient():
    model = nn.UNet(1, 1, depth=2, width=2, up="bilinear", down="conv", rng=0)
    x, y = RNG.random((2, 1, 8, 8)), RNG.random((2, 1, 8, 8))
    rows = engine_agreement(model, x, y, directions=2)
    errors = {r["engine"]: r["relative_error"] for r in rows}
    assert errors["tape"] == 0.0
    assert errors["symbolic (matrix mode)"] < 1e-10
    assert errors["numeric (central)"] < 1e-6
    assert errors["numeric (complex)"] < 1e-12
    assert "| symbolic (matrix mode) | full gradient |" in format_agreement(rows)
    assert model.dtype == np.float64


def test_module_graph_of_a_unet_shows_every_skip():
    model = nn.UNet(1, 2, depth=3, width=2, up="bilinear", rng=0)
    graph = nn.module_graph(model, (1, 1, 16, 16), level=1)
    titles = [n.title for n in graph.nodes]
    assert titles[:3] == ["input", "encoders.0", "downs.0"] and titles[-1] == "output"
    assert titles.count("concatenate") == 3
    skips = {(graph.node(e.src).title, graph.node(e.dst).title, e.shape) for e in graph.skips}
    assert skips == {("encoders.0", "concatenate", (1, 2, 16, 16)),
                     ("encoders.1", "concatenate", (1, 4, 8, 8)),
                     ("encoders.2", "concatenate", (1, 8, 4, 4))}
    assert graph.edges[-1].shape == (1, 2, 16, 16)
    narrow = nn.module_graph(nn.UNet(1, 1, 2, 2, skip_channels=1, rng=0), (1, 1, 8, 8), level=1)
    assert sorted((narrow.node(e.src).title, narrow.node(e.dst).title) for e in narrow.skips) == [
        ("encoders.0", "skips.0"), ("encoders.1", "skips.1"), ("skips.0", "concatenate"),
        ("skips.1", "concatenate")]
    leaves = nn.module_graph(model, (1, 1, 16, 16))
    assert "encoders.0.conv1" in [n.title for n in leaves.nodes]
    assert len(leaves.skips) == 3


def test_module_graph_of_residual_blocks_and_render(tmp_path):
    model = nn.Sequential(nn.ResidualBlock(2, 2, rng=0), nn.ResidualBlock(2, 3, stride=2, rng=0))
    graph = nn.module_graph(model, (1, 2, 6, 6), level=2)
    assert [n.title for n in graph.nodes if n.kind == "op"] == ["add", "add"]
    # the identity shortcut jumps from the input to the first addition; the projection
    # (a box on a branch of its own) is the second block's shortcut
    assert sorted((graph.node(e.src).title, graph.node(e.dst).title) for e in graph.skips) == \
        [("0.relu2", "1.shortcut"), ("1.shortcut", "add"), ("input", "add")]
    assert sorted(graph.node(d).title for d in graph.successors(
        next(n.id for n in graph.nodes if n.title == "0.relu2"))) == ["1.conv1", "1.shortcut"]
    source = nn.render_modules(nn.UNet(1, 1, 2, 2, rng=0), (1, 1, 8, 8), tmp_path / "unet",
                               level=1, align_skips=True)
    assert "dashed" in source and "encoders.0" in source
    assert (tmp_path / "unet.svg").read_text().startswith("<?xml")
    assert (tmp_path / "unet.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="SVG or PNG"):
        nn.render_modules(model, (1, 2, 6, 6), tmp_path / "x.pdf")
    with pytest.raises(InputError, match="level must be"):
        nn.module_graph(model, (1, 2, 6, 6), level=-1)


def test_skip_channels_per_level():
    """A tuple gives each level's skip width, full resolution first; 0 drops that level's
    skip connection, so its decoder reads the up-sampled features alone and the encoder of
    that level reaches the output only through the deeper levels."""
    model = nn.UNet(1, 1, depth=3, width=(2, 3, 4, 5), up="bilinear", skip_channels=(0, 0, 2),
                    rng=0)
    assert model.skip_channels == (0, 0, 2)
    assert [m.conv1.weight.shape[1] for m in model.decoders] == [3, 4, 2 + 5]
    x, y = RNG.random((2, 1, 16, 16)), RNG.random((2, 1, 16, 16))
    assert model(x).shape == (2, 1, 16, 16)
    g = adl.trace(_loss(model), x=x, y=y)
    names = [p.name for p in model.parameters()]
    r = adl.gradient(g, {**model.state_dict(), "x": x, "y": y}, engine="tape", wrt=names)
    used = {n for n in names if np.abs(r.grads[n]).max() > 0}
    assert not any(n.startswith(("skips.0.", "skips.1.")) for n in names)  # no projection
    assert any(n.startswith("skips.2.") for n in used)
    assert any(n.startswith("encoders.0.") for n in used)  # through the deeper levels
    with pytest.raises(InputError, match=r"skip_channels as a tuple needs depth = 3 counts"):
        nn.UNet(1, 1, 3, 2, skip_channels=(0, 2))
    with pytest.raises(InputError, match=r"integers >= 0 \(0: no skip at that level\)"):
        nn.UNet(1, 1, 2, 2, skip_channels=(-1, 2))
