"""The direct kernels (:mod:`autodiff_lab.kernels.conv_direct`) -- conv+bias+ReLU of a
one-channel input, convolution to one output channel: equal to the reference over odd sizes,
paddings, batches, channels, with and without bias and ReLU, in float32 and float64; reached
only where they apply; NaN, Inf and overflow handed to the ops' own rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import autodiff_lab as adl
import autodiff_lab.examples  # noqa: F401 - adl.examples, when this file runs alone
from autodiff_lab.kernels import conv_direct, conv_reference, dispatch

RNG = np.random.default_rng(3)
SIZES = [(1, 1), (2, 3), (3, 2), (5, 7), (8, 8), (9, 1), (40, 40)]
PADDINGS = [(0, 0), (1, 1), (2, 0), (0, 2), (1, 2), (2, 2)]


def _reference(x, w, b, padding, relu):
    z = conv_reference.conv2d_forward(x, w, (1, 1), padding, (1, 1), 1)
    if b is not None:
        z = z + b[:, None, None]
    return np.maximum(z, 0) if relu else z


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_direct_kernel_matches_the_reference(dtype, padding):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for (h, w), (n, f), bias, relu in itertools.product(SIZES, [(1, 1), (3, 5)], [False, True],
                                                      [False, True]):
        if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
            continue
        x = RNG.standard_normal((n, 1, h, w))
        wt = RNG.standard_normal((f, 1, 3, 3))
        b = RNG.standard_normal(f) if bias else None
        want = _reference(x, wt, b, padding, relu)
        got = conv_direct.conv2d_forward(x.astype(dtype), wt.astype(dtype), padding,
                                         None if b is None else b.astype(dtype), relu)
        label = f"{(n, h, w, f)} padding={padding} bias={bias} relu={relu}"
        assert got.dtype == dtype and got.shape == want.shape, label
        np.testing.assert_allclose(got, want, **tol, err_msg=label)


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = conv_direct.conv2d_forward
    monkeypatch.setattr(conv_direct, "conv2d_forward",
                        lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    return seen


def test_dispatch_takes_it_only_for_one_input_channel_3x3_stride_1(calls):
    x1 = RNG.standard_normal((2, 1, 7, 6)).astype(np.float32)
    w1 = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    base = ((1, 1), (1, 1), (1, 1), 1)
    assert dispatch.conv2d_relu_forward(x1, w1, b, *base) is not None
    assert dispatch.conv2d_relu_forward(x1.astype(np.float64), w1.astype(np.float64),
                                        b.astype(np.float64), *base) is not None
    assert len(calls) == 2
    x2 = RNG.standard_normal((2, 2, 7, 6)).astype(np.float32)
    w2 = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w5 = RNG.standard_normal((4, 1, 5, 5)).astype(np.float32)
    for x, w, stride, padding, dilation in [(x2, w2, (1, 1), (1, 1), (1, 1)),  # 2 channels
                                            (x1, w5, (1, 1), (1, 1), (1, 1)),  # 5×5
                                            (x1, w1, (2, 1), (1, 1), (1, 1)),  # stride 2
                                            (x1, w1, (1, 1), (3, 1), (1, 1)),  # padding 3
                                            (x1, w1, (1, 1), (1, 1), (2, 2))]:  # dilation
        dispatch.conv2d_relu_forward(x, w, b, stride, padding, dilation, 1)
    assert len(calls) == 2
    dispatch.CONV_DIRECT = False
    try:
        assert dispatch.conv2d_relu_forward(x1, w1, b, *base) is None  # the ops' forwards
    finally:
        dispatch.CONV_DIRECT = True
    assert len(calls) == 2


def test_direct_kernel_declines_nan_inf_and_overflow():
    x = RNG.standard_normal((2, 1, 6, 5)).astype(np.float32)
    w = RNG.standard_normal((3, 1, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    for name, special in itertools.product("xwb", [np.nan, np.inf, -np.inf]):
        ops = {"x": x.copy(), "w": w.copy(), "b": b.copy()}
        ops[name].reshape(-1)[1] = special
        for relu in (False, True):
            assert conv_direct.conv2d_forward(ops["x"], ops["w"], (1, 1), ops["b"],
                                              relu) is None, (name, special, relu)
    big = np.full((1, 1, 4, 4), 3e38, dtype=np.float32)
    with np.errstate(all="ignore"):
        for sign, relu in itertools.product((1, -1), (False, True)):  # −Inf before a ReLU too
            assert conv_direct.conv2d_forward(big, sign * np.ones((2, 1, 3, 3), np.float32),
                                              (1, 1), None, relu) is None, (sign, relu)


def test_the_tape_gives_the_same_gradients_and_nan_pattern_with_it():
    # DnCNN's first layer (1 → 16, bias, ReLU) with and without the kernel; a NaN in the
    # input reaches the same values either way
    ex = adl.examples.dncnn(batch=2, size=12, channels=16, depth=4, batch_norm=False,
                            dtype="float32")
    wrt = list(ex.graph.parameters)
    tape = adl.engine("tape", anomaly=False)
    bad = {k: np.array(v) for k, v in ex.values.items()}
    bad["noisy"].reshape(-1)[5] = np.nan
    got = {}
    for direct in (True, False):
        dispatch.CONV_DIRECT = direct
        try:
            program = tape.compile(ex.graph, wrt=wrt)
            with np.errstate(all="ignore"):
                got[direct] = (program(ex.values), program(bad))
        finally:
            dispatch.CONV_DIRECT = True
    (a, a_bad), (b, b_bad) = got[True], got[False]
    np.testing.assert_allclose(a.value, b.value, rtol=1e-5)
    for k in wrt:
        np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-4,
                                   atol=1e-6 * np.abs(b.grads[k]).max(), err_msg=k)
        np.testing.assert_array_equal(np.isnan(a_bad.grads[k]), np.isnan(b_bad.grads[k]))


def test_direct_kernel_matches_torch():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((4, 1, 17, 23)).astype(np.float32)
    w = RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    for padding in [(0, 0), (1, 1), (2, 1)]:
        want = torch.relu(torch.nn.functional.conv2d(
            torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
            torch.tensor(b, dtype=torch.float64), padding=padding)).numpy()
        got = conv_direct.conv2d_forward(x, w, padding, b, True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_direct_kernel_to_one_channel_matches_the_reference(dtype, padding):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for (h, w), (n, c) in itertools.product(SIZES, [(1, 1), (2, 3), (3, 4), (2, 9), (1, 33)]):
        if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
            continue
        x = RNG.standard_normal((n, c, h, w))
        wt = RNG.standard_normal((1, c, 3, 3))
        want = _reference(x, wt, None, padding, False)
        got = conv_direct.conv2d_forward_to_one(x.astype(dtype), wt.astype(dtype), padding)
        label = f"{(n, c, h, w)} padding={padding}"
        assert got.dtype == dtype and got.shape == want.shape, label
        np.testing.assert_allclose(got, want, **tol, err_msg=label)


def test_dispatch_takes_the_kernel_to_one_channel_only_where_it_applies(monkeypatch):
    seen = []
    real = conv_direct.conv2d_forward_to_one
    monkeypatch.setattr(conv_direct, "conv2d_forward_to_one",
                        lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    x = RNG.standard_normal((2, 5, 7, 6)).astype(np.float32)
    w1 = RNG.standard_normal((1, 5, 3, 3)).astype(np.float32)
    want = conv_reference.conv2d_forward(x, w1, (1, 1), (1, 1), (1, 1), 1)
    got = dispatch.conv2d_forward(x, w1, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(seen) == 1
    w2 = RNG.standard_normal((2, 5, 3, 3)).astype(np.float32)
    for w, stride, padding, dilation in [(w2, (1, 1), (1, 1), (1, 1)),  # 2 output channels
                                         (w1, (2, 2), (1, 1), (1, 1)),  # stride 2
                                         (w1, (1, 1), (1, 1), (2, 1))]:  # dilation
        dispatch.conv2d_forward(x, w, stride, padding, dilation, 1)
    assert len(seen) == 1
    # a NaN: declined, and im2col gives the reference's pattern
    bad = x.copy()
    bad[1, 2, 3, 4] = np.nan
    with np.errstate(all="ignore"):
        assert conv_direct.conv2d_forward_to_one(bad, w1, (1, 1)) is None
        np.testing.assert_array_equal(
            np.isnan(dispatch.conv2d_forward(bad, w1, (1, 1), (1, 1), (1, 1), 1)),
            np.isnan(conv_reference.conv2d_forward(bad, w1, (1, 1), (1, 1), (1, 1), 1)))
        big = np.full((1, 4, 4, 4), 3e38, dtype=np.float32)
        assert conv_direct.conv2d_forward_to_one(big, np.ones((1, 4, 3, 3), np.float32),
                                                 (1, 1)) is None
