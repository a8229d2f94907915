"""Every layer's forward and gradient against a plain numpy definition written here.

The reference gradient is central differences of the numpy definition (independent of the
graph and of the op table); our gradient comes from tracing the layer and running the tape
engine and the symbolic engine's matrix mode.
"""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn

RNG = np.random.default_rng(11)


# --- plain numpy definitions -------------------------------------------------------------

def np_conv2d(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, ho, wo))
    per = f // groups
    for o in range(f):
        g = o // per
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                           j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, o, i, j] = np.sum(patch * w[o], axis=(1, 2, 3))
    return out if b is None else out + b[None, :, None, None]


def np_conv_transpose2d(x, w, b, stride, padding, output_padding, dilation, groups):
    """Scatter each input pixel times the kernel (the definition of the transpose)."""
    n, c, h, wd = x.shape
    _, fg, kh, kw = w.shape
    (sh, sw), (ph, pw), (oh, ow), (dh, dw) = stride, padding, output_padding, dilation
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oh
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + ow
    out = np.zeros((n, fg * groups, full_h, full_w))
    cpg = c // groups
    for ci in range(c):
        g = ci // cpg
        for i in range(h):
            for j in range(wd):
                for p in range(kh):
                    for q in range(kw):
                        out[:, g * fg:(g + 1) * fg, i * sh + p * dh, j * sw + q * dw] += \
                            x[:, ci, i, j][:, None] * w[ci, :, p, q][None, :]
    out = out[:, :, ph:full_h - ph, pw:full_w - pw]
    return out if b is None else out + b[None, :, None, None]


def np_pool(x, kernel, stride, padding, kind):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return out


def np_batch_norm(x, gamma, beta, mean=None, var=None, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) \
        + beta.reshape(shape)


# --- the cases: (id, layer, input shape, numpy forward of (params, x)) ---------------------

def _conv_case(name, kwargs, x_shape):
    layer = nn.Conv2d(rng=1, **kwargs)
    pad = layer.padding if not isinstance(layer.padding, str) else \
        ((0, 0) if layer.padding == "valid" else
         tuple(d * (k - 1) // 2 for k, d in zip(layer.kernel_size, layer.dilation)))
    return (name, layer, x_shape, lambda p, x: np_conv2d(
        x, p["weight"], p.get("bias"), layer.stride, pad, layer.dilation, layer.groups))


def _convT_case(name, kwargs, x_shape):
    layer = nn.ConvTranspose2d(rng=2, **kwargs)
    return (name, layer, x_shape, lambda p, x: np_conv_transpose2d(
        x, p["weight"], p.get("bias"), layer.stride, layer.padding, layer.output_padding,
        layer.dilation, layer.groups))


def _bn_eval(layer):
    layer.running_mean[...] = RNG.standard_normal(layer.num_features) * 0.3
    layer.running_var[...] = RNG.uniform(0.5, 2.0, layer.num_features)
    layer.weight.data[...] = RNG.uniform(0.5, 1.5, layer.num_features)
    layer.bias.data[...] = RNG.standard_normal(layer.num_features) * 0.1
    layer.eval()
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    return lambda p, x: np_batch_norm(x, p["weight"], p["bias"], rm, rv)


CASES = [
    ("linear", nn.Linear(5, 3, rng=0), (4, 5),
     lambda p, x: x @ p["weight"].T + p["bias"]),
    ("linear_nobias", nn.Linear(5, 3, bias=False, rng=0), (2, 4, 5),
     lambda p, x: x @ p["weight"].T),
    _conv_case("conv", dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (2, 2, 5, 5)),
    _conv_case("conv_stride_dilation", dict(in_channels=2, out_channels=2, kernel_size=(3, 2),
                                            stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
               (1, 2, 7, 6)),
    _conv_case("conv_groups_nobias", dict(in_channels=4, out_channels=2, kernel_size=3, groups=2,
                                          bias=False), (2, 4, 5, 5)),
    _conv_case("conv_same", dict(in_channels=1, out_channels=2, kernel_size=3, padding="same",
                                 dilation=2), (1, 1, 6, 6)),
    _convT_case("conv_transpose", dict(in_channels=2, out_channels=3, kernel_size=3, stride=2,
                                       padding=1, output_padding=1), (2, 2, 3, 3)),
    _convT_case("conv_transpose_groups", dict(in_channels=4, out_channels=2, kernel_size=2,
                                              groups=2, dilation=2), (1, 4, 3, 2)),
    ("max_pool", nn.MaxPool2d(2), (2, 2, 4, 6), lambda p, x: np_pool(x, (2, 2), (2, 2), (0, 0), "max")),
    ("max_pool_overlap", nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 5, 5),
     lambda p, x: np_pool(x, (3, 3), (2, 2), (1, 1), "max")),
    ("avg_pool", nn.AvgPool2d((2, 3), stride=(1, 2), padding=1), (2, 1, 4, 5),
     lambda p, x: np_pool(x, (2, 3), (1, 2), (1, 1), "avg")),
    ("upsample", nn.Upsample(scale_factor=(2, 3)), (1, 2, 2, 3),
     lambda p, x: x.repeat(2, axis=2).repeat(3, axis=3)),
    ("batch_norm2d_train", nn.BatchNorm2d(3), (4, 3, 2, 2),
     lambda p, x: np_batch_norm(x, p["weight"], p["bias"])),
    ("batch_norm1d_train", nn.BatchNorm1d(4), (6, 4),
     lambda p, x: np_batch_norm(x, p["weight"], p["bias"])),
    ("batch_norm1d_sequence", nn.BatchNorm1d(2), (3, 2, 4),
     lambda p, x: np_batch_norm(x, p["weight"], p["bias"])),
    ("batch_norm_no_affine", nn.BatchNorm2d(2, affine=False), (3, 2, 2, 2),
     lambda p, x: np_batch_norm(x, np.ones(2), np.zeros(2))),
    ("relu", nn.ReLU(), (3, 4), lambda p, x: np.maximum(x, 0)),
    ("leaky_relu", nn.LeakyReLU(0.2), (3, 4), lambda p, x: np.where(x > 0, x, 0.2 * x)),
    ("sigmoid", nn.Sigmoid(), (3, 4), lambda p, x: 1 / (1 + np.exp(-x))),
    ("tanh", nn.Tanh(), (3, 4), lambda p, x: np.tanh(x)),
    ("flatten", nn.Flatten(), (2, 3, 2, 2), lambda p, x: x.reshape(2, -1)),
    ("flatten_middle", nn.Flatten(1, 2), (2, 3, 2, 4), lambda p, x: x.reshape(2, 6, 4)),
    ("identity", nn.Identity(), (3,), lambda p, x: x),
    ("sequential", nn.Sequential(nn.Linear(4, 3, rng=3), nn.Tanh(), nn.Linear(3, 2, rng=4)),
     (5, 4), lambda p, x: np.tanh(x @ p["0.weight"].T + p["0.bias"]) @ p["2.weight"].T + p["2.bias"]),
]
bn_eval = nn.BatchNorm2d(3)
CASES.append(("batch_norm2d_eval", bn_eval, (2, 3, 2, 2), _bn_eval(bn_eval)))
bn1_eval = nn.BatchNorm1d(3)
CASES.append(("batch_norm1d_eval", bn1_eval, (4, 3), _bn_eval(bn1_eval)))
IDS = [c[0] for c in CASES]


def _input(name, shape):
    x = RNG.standard_normal(shape)
    if "relu" in name or "pool" in name:  # away from kinks and ties
        x = np.where(np.abs(x) < 0.05, 0.3, x) + RNG.uniform(0, 1e-3, shape)
    return x


def _params(layer):
    return {n: p.data.copy() for n, p in layer.named_parameters()}


def _numeric_grad(fn, arrays, name, h=1e-6):
    base = arrays[name]
    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        for sign in (1, -1):
            shifted = dict(arrays)
            arr = base.copy()
            arr[idx] += sign * h
            shifted[name] = arr
            grad[idx] += sign * fn(shifted)
    return grad / (2 * h)


@pytest.mark.parametrize("name,layer,shape,reference", CASES, ids=IDS)
def test_forward_matches_numpy_definition(name, layer, shape, reference):
    x = _input(name, shape)
    out = layer(x)
    expected = reference(_params(layer), x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    # the traced graph evaluates to the same numbers
    g = adl.trace(lambda x: layer(x), x=x)
    traced = g.evaluate({**layer.state_dict(), "x": x})["out"]
    np.testing.assert_allclose(traced, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine,options", [("tape", {}), ("symbolic", {"mode": "matrix"})])
@pytest.mark.parametrize("name,layer,shape,reference", CASES, ids=IDS)
def test_gradient_matches_numpy_definition(name, layer, shape, reference, engine, options):
    if engine == "symbolic" and "groups" in name:
        pytest.skip("the matrix mode has convolution adjoints for groups=1 only")
    x = _input(name, shape)
    params = _params(layer)
    out_shape = reference(params, x).shape
    weights = RNG.standard_normal(out_shape)

    def scalar(arrays):
        ps = {k: v for k, v in arrays.items() if k != "x"}
        return float(np.sum(reference(ps, arrays["x"]) * weights))

    g = adl.trace(lambda x: adl.sum(layer(x) * weights), x=x)
    r = adl.gradient(g, {**layer.state_dict(), "x": x}, engine=engine, **options)
    arrays = {**params, "x": x}
    assert set(r.grads) >= set(arrays)
    for key in arrays:
        expected = _numeric_grad(scalar, arrays, key)
        np.testing.assert_allclose(r.grads[key], expected, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name}: gradient of {key!r}")


LOSSES = [
    ("mse_batch_mean", nn.MSELoss(), lambda p, t: 0.5 * np.sum((p - t) ** 2) / len(p)),
    ("mse_sum", nn.MSELoss("sum"), lambda p, t: 0.5 * np.sum((p - t) ** 2)),
    ("mse_mean", nn.MSELoss("mean"), lambda p, t: 0.5 * np.mean((p - t) ** 2)),
    ("l1_batch_mean", nn.L1Loss(), lambda p, t: np.sum(np.abs(p - t)) / len(p)),
    ("l1_sum", nn.L1Loss("sum"), lambda p, t: np.sum(np.abs(p - t))),
    ("l1_mean", nn.L1Loss("mean"), lambda p, t: np.mean(np.abs(p - t))),
]


@pytest.mark.parametrize("name,loss,reference", LOSSES, ids=[c[0] for c in LOSSES])
def test_pair_losses_match_definitions(name, loss, reference):
    pred, target = RNG.standard_normal((4, 3, 2)), RNG.standard_normal((4, 3, 2))
    np.testing.assert_allclose(loss(pred, target), reference(pred, target), rtol=1e-13)
    g = adl.trace(lambda p, t: loss(p, t), p=pred, t=target)
    for engine in ("tape", "symbolic"):
        r = adl.gradient(g, {"p": pred, "t": target}, engine=engine)
        expected = _numeric_grad(lambda a: reference(a["p"], a["t"]), {"p": pred, "t": target}, "p")
        np.testing.assert_allclose(r.grads["p"], expected, rtol=1e-6, atol=1e-8)


def test_cross_entropy_matches_definition():
    logits, labels = RNG.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])

    def reference(z):
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(5), labels].mean()

    loss = nn.CrossEntropyLoss()
    np.testing.assert_allclose(loss(logits, labels), reference(logits), rtol=1e-13)
    np.testing.assert_allclose(nn.CrossEntropyLoss("sum")(logits, labels), 5 * reference(logits))
    g = adl.trace(lambda z, y: loss(z, y), z=logits, y=labels)
    for engine in ("tape", "symbolic"):
        r = adl.gradient(g, {"z": logits, "y": labels}, engine=engine)
        expected = _numeric_grad(lambda a: reference(a["z"]), {"z": logits}, "z")
        np.testing.assert_allclose(r.grads["z"], expected, rtol=1e-6, atol=1e-8)


def test_mse_docstring_states_the_conventions():
    doc = nn.MSELoss.__doc__ + nn.losses.__doc__
    assert "averaged over the batch" in doc and "PyTorch" in doc and "½" in doc
    assert "averaged over the batch" in nn.L1Loss.__doc__


def test_default_initialisation_is_pytorchs():
    lin = nn.Linear(400, 300, rng=0)
    bound = 1 / np.sqrt(400)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    assert np.abs(lin.weight.data).max() > 0.95 * bound  # uniform over the whole range
    conv = nn.Conv2d(8, 16, 3, rng=0)
    bound = 1 / np.sqrt(8 * 9)
    assert np.abs(conv.weight.data).max() <= bound
    convt = nn.ConvTranspose2d(8, 4, 3, rng=0)  # fan-in from weight axis 1: 4·9
    assert np.abs(convt.weight.data).max() <= 1 / np.sqrt(4 * 9)
    assert np.abs(convt.weight.data).max() > 0.9 / np.sqrt(4 * 9)


def test_initialisers():
    w = np.zeros((200, 100))
    nn.init.kaiming_normal_(w, nonlinearity="relu", rng=0)
    assert abs(w.std() - np.sqrt(2 / 100)) < 0.01 * np.sqrt(2 / 100) * 10
    nn.init.kaiming_uniform_(w, nonlinearity="relu", mode="fan_out", rng=0)
    assert np.abs(w).max() <= np.sqrt(2) * np.sqrt(3 / 200)
    nn.init.xavier_uniform_(w, rng=0)
    assert np.abs(w).max() <= np.sqrt(6 / 300)
    nn.init.xavier_normal_(w, gain=2.0, rng=0)
    assert abs(w.std() - 2 * np.sqrt(2 / 300)) < 0.05 * 2 * np.sqrt(2 / 300)
    p = nn.Parameter(np.zeros((3, 4), np.float32))
    assert nn.init.he_normal_(p, rng=1) is p and p.data.dtype == np.float32
    nn.init.constant_(p, 2.5)
    assert np.all(p.data == 2.5)
    nn.init.ones_(p)
    nn.init.zeros_(w)
    assert np.all(p.data == 1) and np.all(w == 0)
    a, b = np.zeros((5, 5)), np.zeros((5, 5))
    nn.init.glorot_uniform_(a, rng=3)
    nn.init.xavier_uniform_(b, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # an int seed is a fresh generator with that seed
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(np.sqrt(2 / 1.04))
    with pytest.raises(adl.InputError, match="at least 2 axes"):
        nn.init.kaiming_normal_(np.zeros(3))


def test_manual_seed_makes_models_reproducible():
    nn.manual_seed(5)
    a = nn.MLPClassifier(20, 8, 3)
    nn.manual_seed(5)
    b = nn.MLPClassifier(20, 8, 3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    c = nn.MLPClassifier(20, 8, 3)
    assert not np.array_equal(c.fc1.weight.data, a.fc1.weight.data)


def test_dtype_argument_and_casts():
    m = nn.Sequential(nn.Conv2d(1, 2, 3, dtype="float32"), nn.BatchNorm2d(2, dtype=np.float32))
    assert m.dtype == np.float32 and m[1].running_var.dtype == np.float32
    x = RNG.random((2, 1, 5, 5))  # float64, as the loaders give
    assert m(x).dtype == np.float32  # eager inputs are cast to the model's dtype
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters()) and m[1].running_mean.dtype == np.float64
    assert m[1].num_batches_tracked.dtype == np.int64
    m.float()
    assert m.dtype == np.float32
    nn.set_default_dtype("float32")
    try:
        assert nn.Linear(2, 2).weight.dtype == np.float32
    finally:
        nn.set_default_dtype("float64")
    with pytest.raises(adl.InputError, match="float32 or float64"):
        nn.Linear(2, 2, dtype="int32")
