"""The Winograd kernels, F(2×2, 3×3) and F(4×4, 3×3): chosen only where valid, equal to the
reference elsewhere.

float32 3×3 convolutions with stride 1, no dilation, one group, padding 0..2 and enough
channels go through :mod:`autodiff_lab.kernels.winograd`; these tests compare them (the
forward, both gradients, the fused backward) with the float64 reference kernels over odd
sizes, every padding they take, one channel (the threshold lowered), blocks of one tile
row on one and two threads, with both tiles (the ``tile`` fixture), and check that
anything else never reaches them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import autodiff_lab as adl
import autodiff_lab.examples  # noqa: F401 - adl.examples, when this file runs alone
from autodiff_lab.kernels import conv_fast, conv_reference, dispatch, winograd

RNG = np.random.default_rng(7)
TOL = dict(rtol=2e-5, atol=2e-5)


def _operands(n, c, h, w, f, padding, rng=RNG):
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, 3, 3)) / 3.0
    ho, wo = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    g = rng.standard_normal((n, f, ho, wo))
    return x, wt, g


def _reference(x, wt, g, padding):
    args = ((1, 1), padding, (1, 1), 1)
    return (conv_reference.conv2d_forward(x, wt, *args),
            conv_reference.conv2d_backward_input(g, wt, x.shape, *args),
            conv_reference.conv2d_backward_weight(g, x, wt.shape, *args))


def _dispatched(x, wt, g, padding):
    x, wt, g = (a.astype(np.float32) for a in (x, wt, g))
    args = ((1, 1), padding, (1, 1), 1)
    both = dispatch.conv2d_backward(g, x, wt, *args, (True, True))
    return (dispatch.conv2d_forward(x, wt, *args),
            dispatch.conv2d_backward_input(g, wt, x.shape, *args),
            dispatch.conv2d_backward_weight(g, x, wt.shape, *args), both[0], both[1],
            dispatch.conv2d_backward(g, x, wt, *args, (False, True))[1])


def _close(got, want, label):
    scale = max(1.0, float(np.abs(want).max()))
    assert got.dtype == np.float32 and got.shape == want.shape, label
    np.testing.assert_allclose(got, want, rtol=TOL["rtol"], atol=TOL["atol"] * scale,
                               err_msg=label)


@pytest.fixture(autouse=True)
def small_winograd(monkeypatch):
    """The Winograd kernels for the small operands of these tests (8 channels, a few
    tiles); the thresholds themselves are tested below."""
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_CHANNELS", 8)
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_TILES", 1)


@pytest.fixture(params=[2, 4], ids=["F2", "F4"])
def tile(request, monkeypatch):
    """The tests that take it run with F(2×2, 3×3) and with F(4×4, 3×3)."""
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", request.param)
    return request.param


@pytest.fixture
def calls(monkeypatch):
    """Counts the Winograd calls (and lets a test lower the channel threshold)."""
    seen = []
    depth = [0]
    for name in ("conv2d_forward", "conv2d_backward", "conv2d_backward_weight"):
        real = getattr(winograd, name)

        def spy(*a, real=real, name=name, **k):
            if depth[0] == 0:  # the calls from dispatch, not those inside the module
                seen.append(name)
            depth[0] += 1
            try:
                return real(*a, **k)
            finally:
                depth[0] -= 1
        monkeypatch.setattr(winograd, name, spy)
    return seen


SIZES = [(1, 1), (2, 3), (3, 2), (5, 7), (7, 6), (4, 4), (9, 1)]
PADDINGS = [(0, 0), (1, 1), (2, 0), (0, 2), (1, 2), (2, 2)]


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_winograd_matches_the_reference_on_odd_sizes(padding, calls, monkeypatch, tile):
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_CHANNELS", 1)
    for (h, w), (c, f) in itertools.product(SIZES, [(1, 1), (1, 3), (3, 1), (2, 5)]):
        if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
            continue
        x, wt, g = _operands(2, c, h, w, f, padding)
        want = _reference(x, wt, g, padding)
        calls.clear()
        got = _dispatched(x, wt, g, padding)
        assert len(calls) == 5, (h, w, c, f, calls)  # one per dispatched call
        label = f"{(h, w)} c={c} f={f} padding={padding}"
        for k, (a, b) in enumerate(zip(got, [want[0], want[1], want[2], want[1], want[2],
                                             want[2]])):
            _close(a, b, f"{label} result {k}")


@pytest.mark.parametrize("workers", [1, 2])
def test_winograd_blocks_of_one_tile_row(workers, monkeypatch, tile):
    # row blocks inside each image (and whole images), on one thread and two
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv_fast, "BLOCK_WORKERS", workers)
    for padding, (h, w) in [((1, 1), (9, 8)), ((0, 1), (7, 7)), ((2, 0), (5, 6))]:
        x, wt, g = _operands(3, 8, h, w, 8, padding)
        want = _reference(x, wt, g, padding)
        got = _dispatched(x, wt, g, padding)
        for k, (a, b) in enumerate(zip(got, [want[0], want[1], want[2], want[1], want[2]])):
            _close(a, b, f"{padding} {(h, w)} workers={workers} result {k}")


def test_winograd_is_chosen_only_where_it_applies(monkeypatch):
    shape, w8 = (2, 8, 6, 6), (8, 8, 3, 3)
    ok = dispatch._winograd_ok
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    base = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    assert ok(f32, shape, w8, **base)
    for change in [dict(stride=(2, 1)), dict(stride=(1, 2)), dict(dilation=(2, 1)),
                   dict(dilation=(1, 2)), dict(groups=2), dict(padding=(3, 1)),
                   dict(padding=(1, 3))]:
        assert not ok(f32, shape, w8, **{**base, **change}), change
    assert not ok(f64, shape, w8, **base)                       # float64 stays exact
    assert not ok(f32, shape, (8, 8, 3, 2), **base)             # 3×3 kernels only
    assert not ok(f32, shape, (8, 8, 5, 5), **base)
    assert not ok(f32, (2, 4, 6, 6), (8, 4, 3, 3), **base)      # few input channels
    assert not ok(f32, shape, (4, 8, 3, 3), **base)             # few output channels
    assert not ok(f32, (2, 8, 1, 6), w8, **{**base, "padding": (0, 1)})  # no output row
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_TILES", 18)  # 2 images × 3 × 3 tiles
    assert ok(f32, shape, w8, **base)
    assert not ok(f32, (1, 8, 6, 6), w8, **base)
    monkeypatch.setattr(dispatch, "WINOGRAD", False)
    assert not ok(f32, shape, w8, **base)


def test_the_default_thresholds_take_the_dncnn_layers_only(monkeypatch):
    # the 32 → 32 layers of DnCNN-lite (16×40×40) are above both thresholds; small images
    # and few channels are not
    monkeypatch.undo()  # the module's own thresholds, not the fixture's
    ok = dispatch._winograd_ok
    f32, base = np.dtype(np.float32), ((1, 1), (1, 1), (1, 1), 1)
    assert ok(f32, (16, 32, 40, 40), (32, 32, 3, 3), *base)
    assert not ok(f32, (16, 1, 40, 40), (32, 1, 3, 3), *base)
    assert not ok(f32, (16, 32, 40, 40), (1, 32, 3, 3), *base)
    assert not ok(f32, (16, 8, 40, 40), (8, 8, 3, 3), *base)
    assert not ok(f32, (2, 32, 9, 9), (32, 32, 3, 3), *base)


def test_other_convolutions_never_reach_winograd(calls):
    # stride 2, dilation, groups, a 3×2 kernel, float64, padding 3, few channels
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((2, 8, 7, 6)).astype(np.float32)
    for w_shape, stride, padding, dilation, groups, dtype in [
            ((8, 8, 3, 3), (2, 2), (1, 1), (1, 1), 1, np.float32),
            ((8, 8, 3, 3), (1, 1), (2, 2), (2, 2), 1, np.float32),
            ((8, 4, 3, 3), (1, 1), (1, 1), (1, 1), 2, np.float32),
            ((8, 8, 3, 2), (1, 1), (1, 1), (1, 1), 1, np.float32),
            ((8, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float64),
            ((8, 8, 3, 3), (1, 1), (3, 3), (1, 1), 1, np.float32),
            ((2, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, np.float32)]:
        x = x32.astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        y = dispatch.conv2d_forward(x, w, stride, padding, dilation, groups)
        g = np.ones_like(y)
        dispatch.conv2d_backward(g, x, w, stride, padding, dilation, groups, (True, True))
        dispatch.conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups)
        dispatch.conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups)
    assert calls == []


def test_winograd_hands_nan_and_inf_to_im2col(calls, tile):
    # a NaN or Inf anywhere: Winograd declines (None) and the result is the reference's
    x, wt, g = (a.astype(np.float32) for a in _operands(2, 8, 6, 5, 8, (1, 1)))
    for name, special in itertools.product(["x", "w", "g"], [np.nan, np.inf, -np.inf]):
        ops = {"x": x.copy(), "w": wt.copy(), "g": g.copy()}
        ops[name].reshape(-1)[7] = special
        with np.errstate(all="ignore"):
            if name != "g":
                assert winograd.conv2d_forward(ops["x"], ops["w"], (1, 1), tile=tile) is None
            if name != "w":
                assert winograd.conv2d_backward_weight(ops["g"], ops["x"], (1, 1),
                                                       tile=tile) is None
            if name != "x":
                assert winograd.conv2d_backward(ops["g"], ops["x"], ops["w"], (1, 1), True,
                                                False, tile=tile) is None
                assert winograd.conv2d_backward(ops["g"], None, ops["w"], (1, 1), True,
                                                False, tile=tile) is None
    # finite operands whose result overflows: declined too
    big = np.full((1, 8, 4, 4), 3e37, dtype=np.float32)
    assert winograd.conv2d_forward(big, np.ones((8, 8, 3, 3), np.float32), (1, 1),
                                   tile=tile) is None


@pytest.mark.parametrize("tile", [2, 4])
def test_the_weight_transforms_are_adjoint(tile):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 3, 3))
    du = rng.standard_normal(((tile + 2) ** 2, 3, 2))
    lhs = np.sum(winograd.transform_weights(w, tile) * du)
    rhs = np.sum(w * winograd.weights_from_transformed(du, np.float64, tile))
    assert np.isclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_dncnn_float32_gradient_stays_accurate(batch_norm, calls, tile):
    # the Winograd layers keep the float32 gradient within 1e-5 (relative to each
    # parameter's largest entry) of the float64 one
    ex32 = adl.examples.dncnn(batch=2, size=12, channels=16, depth=4, batch_norm=batch_norm,
                              dtype="float32")
    ex64 = adl.examples.dncnn(batch=2, size=12, channels=16, depth=4, batch_norm=batch_norm,
                              dtype="float64")
    wrt = list(ex32.graph.parameters)
    tape = adl.engine("tape", anomaly=False)
    got = tape.compile(ex32.graph, wrt=wrt)(ex32.values).grads
    want = tape.compile(ex64.graph, wrt=wrt)(ex64.values).grads
    assert "conv2d_forward" in calls and "conv2d_backward" in calls
    for k in wrt:
        err = np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()
        assert err < 1e-5, (k, err)


def _relu_reference(x, wt, b, g, padding):
    """relu(conv(x, w) + b) and the gradients of x, w from the gradient g of its result,
    with the float64 reference kernels (relu'(0) = 0)."""
    args = ((1, 1), padding, (1, 1), 1)
    z = conv_reference.conv2d_forward(x, wt, *args) + b[:, None, None]
    r = np.maximum(z, 0)
    dz = g * (z > 0)
    return (r, conv_reference.conv2d_backward_input(dz, wt, x.shape, *args),
            conv_reference.conv2d_backward_weight(dz, x, wt.shape, *args))


def _relu_fused(x, wt, b, g, padding, wanted=(True, True)):
    x, wt, b, g = (a.astype(np.float32) for a in (x, wt, b, g))
    args = ((1, 1), padding, (1, 1), 1)
    r = dispatch.conv2d_relu_forward(x, wt, b, *args)
    assert r is not None
    return r, dispatch.conv2d_relu_backward(g, r, x, wt, *args, wanted)


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_conv_relu_kernels_match_the_reference(padding, monkeypatch, tile):
    # bias and ReLU in the output transform, ReLU's rule in the gradient transform
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_CHANNELS", 1)
    for (h, w), (c, f) in itertools.product(SIZES, [(1, 3), (3, 1), (2, 5)]):
        if h + 2 * padding[0] < 3 or w + 2 * padding[1] < 3:
            continue
        x, wt, g = _operands(2, c, h, w, f, padding)
        b = RNG.standard_normal(f)
        want = _relu_reference(x, wt, b, g, padding)
        for wanted in [(True, True), (True, False), (False, True)]:
            r, (dx, dw) = _relu_fused(x, wt, b, g, padding, wanted)
            label = f"{(h, w)} c={c} f={f} padding={padding} {wanted}"
            _close(r, want[0], f"{label} forward")
            assert (dx is not None) == wanted[0] and (dw is not None) == wanted[1], label
            if wanted[0]:
                _close(dx, want[1], f"{label} input gradient")
            if wanted[1]:
                _close(dw, want[2], f"{label} weight gradient")


@pytest.mark.parametrize("workers", [1, 2])
def test_conv_relu_kernels_in_blocks_of_one_tile_row(workers, monkeypatch, tile):
    # the input gradient's rows shared by two blocks of one image are added once
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv_fast, "BLOCK_WORKERS", workers)
    for padding, (h, w) in [((1, 1), (9, 8)), ((0, 1), (7, 7)), ((2, 0), (5, 6)),
                            ((0, 0), (8, 9))]:
        x, wt, g = _operands(3, 8, h, w, 8, padding)
        b = RNG.standard_normal(8)
        want = _relu_reference(x, wt, b, g, padding)
        r, (dx, dw) = _relu_fused(x, wt, b, g, padding)
        for k, (a, ref) in enumerate(zip((r, dx, dw), want)):
            _close(a, ref, f"{padding} {(h, w)} workers={workers} result {k}")


def test_conv_relu_kernels_decline_nan_and_inf(tile):
    # a NaN or Inf in x, w, b, g or the ReLU's result: None, and the op table composes the
    # two ops' own rules (the reference's NaN and Inf pattern)
    x, wt, g = (a.astype(np.float32) for a in _operands(2, 8, 6, 5, 8, (1, 1)))
    b = np.zeros(8, np.float32)
    args = ((1, 1), (1, 1), (1, 1), 1)
    r = dispatch.conv2d_relu_forward(x, wt, b, *args)
    for name, special in itertools.product(["x", "w", "b", "g", "r"], [np.nan, np.inf, -np.inf]):
        ops = {"x": x.copy(), "w": wt.copy(), "b": b.copy(), "g": g.copy(), "r": r.copy()}
        ops[name].reshape(-1)[3] = special
        with np.errstate(all="ignore"):
            if name in "xwb":
                assert dispatch.conv2d_relu_forward(ops["x"], ops["w"], ops["b"], *args) is None
            if name != "b":
                assert dispatch.conv2d_relu_backward(ops["g"], ops["r"], ops["x"], ops["w"],
                                                     *args, (True, True)) is None, name
    # an overflow to -Inf before the ReLU is declined too, not clipped to 0
    big = np.full((1, 8, 4, 4), 3e37, dtype=np.float32)
    with np.errstate(all="ignore"):
        assert dispatch.conv2d_relu_forward(big, -np.ones((8, 8, 3, 3), np.float32), None,
                                            *args) is None
    with pytest.raises(adl.errors.ShapeError):
        dispatch.conv2d_relu_backward(g, r[:, :, :-1], x, wt, *args, (True, True))


def test_conv_relu_fusion_keeps_nan_pattern_in_the_tape(tile):
    # a NaN in the input of a fused conv+relu: the same gradients as the unfused ops give
    from autodiff_lab.graph import optable
    ex = adl.examples.dncnn(batch=2, size=12, channels=16, depth=4, batch_norm=False,
                            dtype="float32")
    values = {k: np.array(v) for k, v in ex.values.items()}
    values["noisy"].reshape(-1)[5] = np.nan
    wrt = list(ex.graph.parameters)
    tape = adl.engine("tape", anomaly=False)
    with np.errstate(all="ignore"):
        fused = tape.compile(ex.graph, wrt=wrt)(values).grads
        pair = optable.FUSIONS.pop(("conv2d", "relu"))
        try:
            plain = tape.compile(ex.graph, wrt=wrt)(values).grads
        finally:
            optable.FUSIONS[("conv2d", "relu")] = pair
    for k in wrt:
        np.testing.assert_array_equal(np.isnan(fused[k]), np.isnan(plain[k]), err_msg=k)
        np.testing.assert_allclose(fused[k], plain[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_nan_left_in_a_recycled_output_buffer_is_not_read(monkeypatch, tile):
    # the outputs come from the memory pool uninitialised: a NaN left there by an earlier
    # array must not make the kernels decline finite operands
    from autodiff_lab.kernels import memory

    def poisoned(shape, dtype):
        return np.full(shape, np.nan, dtype=dtype)
    monkeypatch.setattr(memory, "empty", poisoned)
    x, wt, g = (a.astype(np.float32) for a in _operands(2, 8, 6, 5, 8, (1, 1)))
    assert winograd.conv2d_forward(x, wt, (1, 1), tile=tile) is not None
    assert winograd.conv2d_forward(x, wt, (1, 1), None, True, tile=tile) is not None
    both = winograd.conv2d_backward(g, x, wt, (1, 1), True, True, tile=tile)
    assert both is not None and np.isfinite(both[0]).all()


# --- F(4×4, 3×3) --------------------------------------------------------------------------

def test_winograd4_matrices_compute_the_correlation_exactly():
    # Σ_j Aᵀ[i, j] G[j, k] Bᵀ[j, l] = δ(l, i + k): y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the 1-D
    # correlation y_i = Σ_k g_k d_{i+k}, in exact rational arithmetic (G's thirds as
    # fractions: the float64 matrix holds them rounded)
    from fractions import Fraction

    from autodiff_lab.kernels import winograd4
    at = [[Fraction(v) for v in row] for row in winograd4.AT]
    bt = [[Fraction(v) for v in row] for row in winograd4.BT]
    g = [[Fraction(v).limit_denominator(3) for v in row] for row in winograd4.G]
    for i, k, l_ in itertools.product(range(4), range(3), range(6)):
        total = sum(at[i][j] * g[j][k] * bt[j][l_] for j in range(6))
        assert total == (1 if l_ == i + k else 0), (i, k, l_)


def test_winograd4_written_out_products_match_the_matrices():
    # the loops of the transforms, with the entries written out, against the matrices
    from autodiff_lab.kernels import winograd4 as w4
    rng = np.random.default_rng(5)
    d = rng.standard_normal((6, 37))
    m = rng.standard_normal((6, 37))
    e = rng.standard_normal((4, 37))
    bias = 0.75

    def run(kernel, inputs, n_out, *extra):
        out = [np.empty(37) for _ in range(n_out)]
        kernel(*inputs, *out, *extra)
        return np.array(out)
    np.testing.assert_allclose(run(w4._bt_rows, d, 6), w4.BT @ d, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(run(w4._bt_columns, d, 6), w4.BT.T @ d, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(run(w4._at_rows, m, 4, bias), w4.AT @ m + bias, rtol=1e-14,
                               atol=1e-14)
    np.testing.assert_allclose(run(w4._at_columns, e, 6), w4.AT.T @ e, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("padding", [(0, 0), (1, 1), (2, 1)], ids=str)
def test_winograd_kernels_are_exact_algebra_in_float64(tile, padding):
    # the kernels take float64 too (dispatch never sends it: the reference stays exact);
    # there they agree with the reference to rounding, so the algebra -- transforms,
    # adjoints, the blocks' shared rows -- is right, not merely within float32's error
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)  # one tile row per block, spilled rows
    try:
        for (h, w), (c, f) in [((9, 7), (3, 2)), ((5, 12), (1, 4)), ((13, 6), (2, 1))]:
            x, wt, g = _operands(2, c, h, w, f, padding)
            b = RNG.standard_normal(f)
            want = _relu_reference(x, wt, b, g, padding)
            r = winograd.conv2d_forward(x, wt, padding, b, True, tile=tile)
            dx, dw = winograd.conv2d_backward(g, x, wt, padding, True, True, r, tile=tile)
            for got, ref in zip((r, dx, dw), want):
                assert got.dtype == np.float64
                np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11 * np.abs(ref).max())
            plain = winograd.conv2d_forward(x, wt, padding, tile=tile)
            args = ((1, 1), padding, (1, 1), 1)
            np.testing.assert_allclose(plain, conv_reference.conv2d_forward(x, wt, *args),
                                       rtol=1e-11, atol=1e-11)
            only_dx = winograd.conv2d_backward(g, None, wt, padding, True, False, tile=tile)[0]
            np.testing.assert_allclose(
                only_dx, conv_reference.conv2d_backward_input(g, wt, x.shape, *args),
                rtol=1e-11, atol=1e-11 * np.abs(g).max())
    finally:
        monkeypatch.undo()


def test_winograd_tile_choice(monkeypatch):
    # F(2×2) by default; F(4×4) when asked; left to decide (None), F(4×4) unless its tiles
    # would cover over a quarter more outputs than there are
    monkeypatch.undo()
    assert dispatch.WINOGRAD_TILE == 2
    assert dispatch.winograd_tile((16, 32, 40, 40), (1, 1)) == 2
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", 4)
    assert dispatch.winograd_tile((16, 32, 9, 9), (1, 1)) == 4
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", None)
    assert dispatch.winograd_tile((16, 32, 40, 40), (1, 1)) == 4   # 40×40: no waste
    assert dispatch.winograd_tile((16, 32, 9, 9), (1, 1)) == 2     # 12×12 for 9×9: 78 % more
    assert dispatch.winograd_tile((1, 32, 62, 62), (0, 0)) == 4    # 60×60


def test_winograd4_reaches_the_tape_when_asked(calls, monkeypatch):
    # with F(4×4) chosen, the DnCNN layers go through it: its kernels run (a spy on the
    # transforms) and the gradient equals F(2×2)'s to float32 accuracy
    from autodiff_lab.kernels import winograd4
    ran = []
    real = winograd4._input_transform
    monkeypatch.setattr(winograd, "_SCHEMES", {})
    monkeypatch.setattr(winograd4, "_input_transform",
                        lambda *a: ran.append(1) or real(*a))
    ex = adl.examples.dncnn(batch=2, size=12, channels=16, depth=4, dtype="float32")
    wrt = list(ex.graph.parameters)
    tape = adl.engine("tape", anomaly=False)
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", 4)
    got = tape.compile(ex.graph, wrt=wrt)(ex.values).grads
    assert ran
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", 2)
    want = tape.compile(ex.graph, wrt=wrt)(ex.values).grads
    for k in wrt:
        assert np.abs(got[k] - want[k]).max() <= 1e-5 * np.abs(want[k]).max(), k


def test_winograd_matches_torch(tile):
    # an independent oracle, when PyTorch is installed: a DnCNN-sized layer, forward and
    # both gradients of relu(conv(x, w) + b)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x, wt, g = (a.astype(np.float32) for a in _operands(4, 16, 20, 20, 16, (1, 1), rng))
    b = rng.standard_normal(16).astype(np.float32)
    tx, tw_, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, wt, b))
    ty = torch.relu(torch.nn.functional.conv2d(tx, tw_, tb, padding=1))
    ty.backward(torch.tensor(g, dtype=torch.float64))
    r, (dx, dw) = _relu_fused(x, wt, b, g, (1, 1))
    for got, ref in ((r, ty), (dx, tx.grad), (dw, tw_.grad)):
        _close(got, ref.detach().numpy(), f"tile={tile}")


def test_conv_relu_fusion_with_a_bias_gives_the_unfused_gradients(tile, calls):
    # a Winograd conv+bias+ReLU in the tape: the bias gradient (ReLU's rule, summed) and
    # the others equal those of the two ops' own rules
    from autodiff_lab.graph import optable
    rng = np.random.default_rng(4)
    from autodiff_lab.graph.graph import spec
    shapes = dict(x=(2, 8, 7, 6), w=(8, 8, 3, 3), b=(8,), v=(2, 8, 7, 6))
    g = adl.trace(lambda x, w, b, v: adl.sum(adl.relu(adl.conv2d(x, w, b, padding=1)) * v),
                  **{k: spec(s, "float32") for k, s in shapes.items()})
    values = {"x": rng.standard_normal((2, 8, 7, 6)), "w": rng.standard_normal((8, 8, 3, 3)),
              "b": rng.standard_normal(8), "v": rng.standard_normal((2, 8, 7, 6))}
    values = {k: v.astype(np.float32) for k, v in values.items()}
    tape = adl.engine("tape", anomaly=False, generate=False)  # the step loop, not codegen
    fused = tape.compile(g, wrt=["x", "w", "b"])(values).grads
    assert calls == ["conv2d_forward", "conv2d_backward"]  # the fused kernels ran
    pair = optable.FUSIONS.pop(("conv2d", "relu"))
    try:
        plain = tape.compile(g, wrt=["x", "w", "b"])(values).grads
    finally:
        optable.FUSIONS[("conv2d", "relu")] = pair
    for k in ("x", "w", "b"):
        np.testing.assert_allclose(fused[k], plain[k], rtol=1e-5,
                                   atol=1e-5 * np.abs(plain[k]).max(), err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_finiteness_check_reads_only_its_range(dtype):
    # an output is checked block by block while other threads write the rest of it: a NaN
    # left outside the range by a recycled buffer must not decline the block
    a = np.array([np.nan, 1.0, 2.0, np.inf], dtype=dtype)
    assert winograd._nonfinite(a, 1, 3) == 0
    assert np.isnan(winograd._nonfinite(a, 0, 2)) and np.isnan(winograd._nonfinite(a, 2, 4))
    assert winograd._nonfinite(a, 2, 2) == 0
