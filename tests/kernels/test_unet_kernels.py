"""The U-Net's fast kernels against the op table's numpy rules (bit for bit where the
kernel follows the rule's order of operations) and against PyTorch when it is installed:
leaky ReLU, bilinear up-sampling by 2, 1×1 convolutions as matrix products, and the serial
and parallel versions of every kernel that has both (the serial one runs with one Numba
thread, the default; the parallel one otherwise)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from autodiff_lab.graph.optable import OPS
from autodiff_lab.kernels import batch_norm_fast as BN
from autodiff_lab.kernels import conv_fast as CF
from autodiff_lab.kernels import conv_reference as R
from autodiff_lab.kernels import dispatch
from autodiff_lab.kernels import elementwise as E
from autodiff_lab.kernels import upsample_fast as U

RNG = np.random.default_rng(23)
DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


def _reference(name, which, *args, **attrs):
    """The op table's forward (``which`` None) or VJP with the fast kernels switched off."""
    op = OPS[name]
    before = dispatch.enabled
    dispatch.enabled = False
    try:
        full = {**op.attrs, **attrs}
        if which is None:
            return op.forward(*args, **full)
        return op.vjp_for(which)(args[0], None, *args[1:], **full)
    finally:
        dispatch.enabled = before


def _with_specials(a, count=5, rng=RNG):
    """A copy with NaN, ±Inf, +0 and −0 at random places (at least one of each)."""
    out = a.copy()
    flat = out.reshape(-1)
    values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=a.dtype)
    where = rng.choice(flat.size, size=min(flat.size, count * len(values)), replace=False)
    flat[where] = np.resize(values, where.size)
    return out


def assert_identical(got, want):
    """Same shape, dtype and numbers, NaN where the reference has NaN, and the same sign
    on every other value (zeros included)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got, want, equal_nan=True)
    keep = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[keep]), np.signbit(want[keep]))


# --------------------------------------------------------------------------------------
# leaky ReLU
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.2, 0.01, 0.0, -0.3, 1.5])
@pytest.mark.parametrize("n", [dispatch.ELEMENTWISE_MIN_SIZE + 3, 3 * E.CHUNK + 11])
def test_leaky_relu_forward_is_the_rule_bit_for_bit(dtype, alpha, n):
    x = _with_specials(RNG.standard_normal(n).astype(dtype))
    got = OPS["leaky_relu"].forward(x, alpha=alpha)
    assert_identical(got, _reference("leaky_relu", None, x, alpha=alpha))
    assert_identical(E.leaky_relu_forward(x, alpha), got)


def test_leaky_relu_forward_takes_any_layout_and_leaves_small_arrays_to_numpy():
    x = RNG.standard_normal((2, 8, 64, 48)).astype(np.float32).transpose(0, 2, 1, 3)
    assert_identical(OPS["leaky_relu"].forward(x, alpha=0.2),
                     _reference("leaky_relu", None, x, alpha=0.2))
    assert dispatch.leaky_relu_forward(np.ones(10), 0.2) is None
    assert dispatch.leaky_relu_forward(np.ones(1 << 16, dtype=np.complex128), 0.2) is None


@pytest.mark.parametrize("n", [dispatch.ELEMENTWISE_MIN_SIZE + 5, 3 * E.CHUNK + 7])
def test_relu_and_leaky_relu_backward_are_the_rules_bit_for_bit(dtype, n):
    x = _with_specials(RNG.standard_normal(n).astype(dtype))
    g = _with_specials(RNG.standard_normal(n).astype(dtype))
    assert_identical(E.relu_backward(g, x), _reference("relu", 0, g, x))
    assert_identical(E.relu_forward(x), _reference("relu", None, x))
    assert_identical(E.leaky_relu_backward(g, x, 0.2), _reference("leaky_relu", 0, g, x,
                                                                   alpha=0.2))


# --------------------------------------------------------------------------------------
# bilinear up-sampling
# --------------------------------------------------------------------------------------

BILINEAR = [((2, 3, 5, 7), (2, 2)), ((1, 2, 1, 1), (2, 2)), ((1, 1, 2, 2), (2, 2)),
            ((2, 2, 4, 3), (1, 2)), ((2, 2, 3, 4), (2, 1)), ((3, 9, 1), (2, 2)),
            ((6, 5), (2, 2)), ((2, 1, 2, 3, 4), (2, 2)), ((1, 16, 33, 17), (2, 2))]


@pytest.mark.parametrize("shape,scale", BILINEAR)
def test_bilinear_kernels_are_the_rule_bit_for_bit(dtype, shape, scale):
    x = _with_specials(RNG.standard_normal(shape).astype(dtype), count=1)
    with np.errstate(invalid="ignore"):
        got = OPS["upsample_bilinear"].forward(x, scale=scale)
        assert_identical(got, _reference("upsample_bilinear", None, x, scale=scale))
    g = _with_specials(RNG.standard_normal(got.shape).astype(dtype), count=1)
    with np.errstate(invalid="ignore"):
        assert_identical(OPS["upsample_bilinear"].vjp_for(0)(g, None, x, scale=scale),
                         _reference("upsample_bilinear", 0, g, x, scale=scale))
    # finite values and all-negative-zero gradients too (the edges add an explicit 0)
    g = RNG.standard_normal(got.shape).astype(dtype)
    for grad in (g, -np.zeros_like(g)):
        assert_identical(U.upsample_bilinear2d_backward(grad, x.shape, scale),
                         _reference("upsample_bilinear", 0, grad, x, scale=scale))


def test_bilinear_dispatch_keeps_other_scales_and_kinds_on_the_rule():
    x = RNG.standard_normal((1, 2, 3, 4))
    assert dispatch.upsample_bilinear_forward(x, (3, 2)) is None
    assert dispatch.upsample_bilinear_forward(x, (1, 1)) is None
    assert dispatch.upsample_bilinear_forward(x.astype(np.complex128), (2, 2)) is None
    assert dispatch.upsample_bilinear_backward(np.ones((1, 2, 6, 8)), x.shape, (3, 2)) is None
    # a scale the kernels do not take still gives the rule's result through the op table
    out = OPS["upsample_bilinear"].forward(x, scale=(3, 2))
    assert_identical(out, _reference("upsample_bilinear", None, x, scale=(3, 2)))


# --------------------------------------------------------------------------------------
# nearest-neighbour up-sampling
# --------------------------------------------------------------------------------------

NEAREST = BILINEAR + [((2, 3, 4, 5), (3, 2)), ((1, 2, 3, 4), (2, 5)), ((2, 2, 3, 2), (4, 7)),
                      ((1, 2, 3, 1), (2, 2)), ((2, 2, 3, 4), (1, 8)), ((2, 3, 5, 33), (5, 1))]


@pytest.mark.parametrize("shape,scale", NEAREST)
def test_nearest_kernels_are_the_rule_bit_for_bit(dtype, shape, scale):
    # shapes and scales the backward kernel leaves to numpy (W = 1, a factor 1 or ≥ 8
    # along W) are here too: through the op table they give the rule's result all the same
    x = _with_specials(RNG.standard_normal(shape).astype(dtype), count=1)
    got = OPS["upsample"].forward(x, scale=scale)
    assert_identical(got, _reference("upsample", None, x, scale=scale))
    assert_identical(U.upsample_nearest2d(x, scale), got)
    g = _with_specials(RNG.standard_normal(got.shape).astype(dtype), count=2)
    big = (RNG.standard_normal(got.shape) * 10.0 ** RNG.integers(-30, 30, got.shape)
           ).astype(dtype)  # sums whose rounding depends on their order
    with np.errstate(invalid="ignore", over="ignore"):
        for grad in (g, big, -np.zeros_like(g), np.full_like(g, np.finfo(dtype).max)):
            assert_identical(OPS["upsample"].vjp_for(0)(grad, None, x, scale=scale),
                             _reference("upsample", 0, grad, x, scale=scale))


@pytest.mark.parametrize("scale", [(2, 2), (3, 2)])
def test_nearest_backward_of_a_slice_is_the_rule_bit_for_bit(dtype, scale):
    # a skip connection's gradient is a channel slice of the concatenation's: C order with
    # gaps, which numpy's sum visits as a contiguous copy
    whole = (RNG.standard_normal((3, 8, 6 * scale[0], 5 * scale[1]))
             * 10.0 ** RNG.integers(-20, 20, (3, 8, 6 * scale[0], 5 * scale[1]))).astype(dtype)
    for g in (whole[:, 2:6], whole[:, ::2], whole[1:], whole[:, :, :, :]):
        x = np.zeros(g.shape[:2] + (6, 5), dtype)
        assert dispatch.upsample_nearest_backward(g, x.shape, scale) is not None
        assert_identical(OPS["upsample"].vjp_for(0)(g, None, x, scale=scale),
                         _reference("upsample", 0, g, x, scale=scale))
    # other layouts (transposed, reversed, broadcast) keep the rule
    x = np.zeros((3, 8, 6, 5), dtype)
    for g in (np.ascontiguousarray(whole.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3),
              whole[:, ::-1], np.broadcast_to(whole[:1], whole.shape)):
        assert dispatch.upsample_nearest_backward(g, x.shape, scale) is None
        assert_identical(OPS["upsample"].vjp_for(0)(g, None, x, scale=scale),
                         _reference("upsample", 0, g, x, scale=scale))


def test_nearest_dispatch_takes_real_arrays_only():
    x = RNG.standard_normal((1, 2, 3, 4))
    g = np.ones((1, 2, 6, 8))
    assert dispatch.upsample_nearest_forward(x, (1, 1)) is None
    assert dispatch.upsample_nearest_forward(x.astype(np.complex128), (2, 2)) is None
    assert dispatch.upsample_nearest_forward(x.astype(np.int64), (2, 2)) is None
    assert dispatch.upsample_nearest_forward(x.astype(object), (2, 2)) is None
    assert dispatch.upsample_nearest_backward(g.astype(np.complex128), x.shape, (2, 2)) is None
    assert dispatch.upsample_nearest_backward(np.asfortranarray(g), x.shape, (2, 2)) is None
    assert dispatch.upsample_nearest_backward(np.ones((1, 2, 6, 9)), x.shape, (2, 2)) is None
    assert dispatch.upsample_nearest_backward(g, x.shape, (2, 2)) is not None
    # a complex step through the op table keeps numpy's rule
    z = x + 1e-20j
    np.testing.assert_array_equal(OPS["upsample"].forward(z, scale=(2, 2)),
                                  np.repeat(np.repeat(z, 2, axis=-2), 2, axis=-1))


# --------------------------------------------------------------------------------------
# 1×1 convolutions
# --------------------------------------------------------------------------------------

POINTWISE = [((2, 3, 5, 7), (4, 3, 1, 1)), ((1, 8, 9, 6), (1, 8, 1, 1)),
             ((3, 5, 4, 4), (7, 5, 1, 1)), ((1, 2, 1, 1), (3, 2, 1, 1))]


@pytest.mark.parametrize("x_shape,w_shape", POINTWISE)
def test_pointwise_convolution_matches_the_reference(dtype, x_shape, w_shape):
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    x = RNG.standard_normal(x_shape).astype(dtype)
    w = RNG.standard_normal(w_shape).astype(dtype)
    args = ((1, 1), (0, 0), (1, 1), 1)
    y = dispatch.conv2d_forward(x, w, *args)
    np.testing.assert_allclose(y, R.conv2d_forward(x, w, *args), **tol)
    g = RNG.standard_normal(y.shape).astype(dtype)
    want = (R.conv2d_backward_input(g, w, x.shape, *args),
            R.conv2d_backward_weight(g, x, w.shape, *args))
    for wanted in ((True, True), (True, False), (False, True)):
        got = dispatch.conv2d_backward(g, x, w, *args, wanted)
        for k in range(2):
            assert (got[k] is None) == (not wanted[k])
            if wanted[k]:
                assert got[k].shape == want[k].shape and got[k].dtype == dtype
                np.testing.assert_allclose(got[k], want[k], **tol)
    np.testing.assert_allclose(dispatch.conv2d_backward_input(g, w, x.shape, *args), want[0],
                               **tol)
    np.testing.assert_allclose(dispatch.conv2d_backward_weight(g, x, w.shape, *args), want[1],
                               **tol)


def test_pointwise_path_only_for_1x1_stride_1_unpadded_single_group():
    assert CF._pointwise((4, 3, 1, 1), (1, 1), (0, 0), 1)
    assert not CF._pointwise((4, 3, 1, 1), (2, 2), (0, 0), 1)
    assert not CF._pointwise((4, 3, 1, 1), (1, 1), (1, 0), 1)
    assert not CF._pointwise((4, 1, 1, 1), (1, 1), (0, 0), 3)
    assert not CF._pointwise((4, 3, 3, 3), (1, 1), (0, 0), 1)


# --------------------------------------------------------------------------------------
# serial and parallel versions agree
# --------------------------------------------------------------------------------------

@pytest.fixture
def parallel_kernels(monkeypatch):
    """Every kernel with a parallel version runs it (on Numba's threads, at any size)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here")
    monkeypatch.setattr(dispatch, "kernel_threads", None)
    for mod in (BN, CF, U):
        monkeypatch.setattr(mod, "PARALLEL_MIN", 1)


def _all_results(dtype):
    """The outputs of every kernel with serial and parallel versions, for one set of
    operands with NaN and Inf in them."""
    rng = np.random.default_rng(3)
    x = _with_specials(rng.standard_normal((2, 3, 9, 8)).astype(dtype), count=1, rng=rng)
    g = _with_specials(rng.standard_normal((2, 3, 9, 8)).astype(dtype), count=1, rng=rng)
    w = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    big = _with_specials(rng.standard_normal(3 * E.CHUNK + 5).astype(dtype), rng=rng)
    gam, bet = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    fast = dispatch._fast
    out = {}
    with np.errstate(all="ignore"):
        out["relu"] = fast("elementwise").relu_forward(big)
        out["relu'"] = fast("elementwise").relu_backward(big[::-1].copy(), big)
        out["leaky"] = fast("elementwise").leaky_relu_forward(big, 0.2)
        out["leaky'"] = fast("elementwise").leaky_relu_backward(big[::-1].copy(), big, 0.2)
        y, stats = fast("batch_norm_fast").batch_norm_forward_saving(x, gam, bet, None, None,
                                                                    True, 1e-5)
        out["bn"] = y
        out["bn'"] = fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gam, None, None, True, 1e-5, (True, True, True))
        out["bn relu'"] = fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gam, None, None, True, 1e-5, (True, True, True), None, "relu",
            np.maximum(y, 0))
        leaky, _ = fast("batch_norm_fast").batch_norm_forward_saving(
            x, gam, bet, None, None, True, 1e-5, "leaky_relu", 0.2)
        out["bn leaky"] = leaky
        out["bn leaky'"] = fast("batch_norm_fast").batch_norm_backward_all(
            g, x, gam, None, None, True, 1e-5, (True, True, True), None, "leaky_relu", leaky,
            0.2)
        out["nearest"] = fast("upsample_fast").upsample_nearest2d(x, (2, 2))
        out["nearest'"] = fast("upsample_fast").upsample_nearest2d_backward(
            rng.standard_normal((2, 3, 18, 16)).astype(dtype), x.shape, (2, 2))
        out["stats"] = fast("batch_norm_fast").batch_stats(x)
        out["up"] = fast("upsample_fast").upsample_bilinear2d(x, (2, 2))
        out["up'"] = fast("upsample_fast").upsample_bilinear2d_backward(
            rng.standard_normal((2, 3, 18, 16)).astype(dtype), x.shape, (2, 2))
        wf = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
        out["direct"] = fast("conv_fast").conv2d_forward(x, wf, (1, 1), (1, 1), (1, 1), 1)
        out["col2im"] = fast("conv_fast").conv2d_backward_input(
            rng.standard_normal((2, 2, 5, 4)).astype(dtype), w, x.shape, (2, 2), (1, 1),
            (1, 1), 1)
        out["direct dw"] = fast("conv_fast").conv2d_backward_weight(
            rng.standard_normal((2, 2, 9, 8)).astype(dtype), np.nan_to_num(x), w.shape,
            (1, 1), (1, 1), (1, 1), 1)
        for name in ("max", "avg"):
            p = ((3, 2), (2, 1), (1, 0))
            out[f"{name} pool"] = getattr(fast("conv_fast"), f"{name}_pool2d_forward")(x, *p)
        out["max pool'"] = fast("conv_fast").max_pool2d_backward(
            rng.standard_normal(out["max pool"].shape).astype(dtype), x, *p)
        out["avg pool'"] = fast("conv_fast").avg_pool2d_backward(
            rng.standard_normal(out["avg pool"].shape).astype(dtype), x.shape, *p)
        out["im2col"] = CF.im2col_rows(x, (3, 3), (1, 2), (1, 1), (1, 1)).copy()
    return out


def _flatten(results):
    for name, value in results.items():
        if isinstance(value, tuple):
            for k, v in enumerate(value):
                if v is not None:
                    yield f"{name}[{k}]", np.array(v, copy=True)
        else:
            yield name, np.array(value, copy=True)


def test_parallel_kernels_give_the_serial_results(dtype, request):
    serial = dict(_flatten(_all_results(dtype)))
    request.getfixturevalue("parallel_kernels")
    parallel = dict(_flatten(_all_results(dtype)))
    assert serial.keys() == parallel.keys()
    for name in serial:  # the same loops per plane or chunk: the same numbers
        assert_identical(parallel[name], serial[name])


def test_one_numba_thread_runs_the_serial_loops(monkeypatch):
    calls = []
    monkeypatch.setattr(E, "_relu_forward_par", lambda *a: calls.append("parallel"))
    out = dispatch.relu_forward(np.ones(4 * E.CHUNK, dtype=np.float32))
    assert not calls and np.all(out == 1)


# --------------------------------------------------------------------------------------
# PyTorch as an oracle
# --------------------------------------------------------------------------------------

def test_the_kernels_agree_with_pytorch():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 4, 33, 20)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    for alpha in (0.2, 0.01):
        ty = torch.nn.functional.leaky_relu(tx, alpha)
        g = RNG.standard_normal(x.shape).astype(np.float32)
        (dx,) = torch.autograd.grad(ty, tx, torch.tensor(g))
        np.testing.assert_array_equal(OPS["leaky_relu"].forward(x, alpha=alpha),
                                      ty.detach().numpy())
        np.testing.assert_array_equal(OPS["leaky_relu"].vjp_for(0)(g, None, x, alpha=alpha),
                                      dx.numpy())
    ty = torch.nn.functional.interpolate(tx, scale_factor=2, mode="bilinear",
                                         align_corners=False)
    g = RNG.standard_normal(ty.shape).astype(np.float32)
    (dx,) = torch.autograd.grad(ty, tx, torch.tensor(g))
    np.testing.assert_allclose(OPS["upsample_bilinear"].forward(x, scale=(2, 2)),
                               ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(OPS["upsample_bilinear"].vjp_for(0)(g, None, x, scale=(2, 2)),
                               dx.numpy(), rtol=1e-5, atol=1e-5)
    w = RNG.standard_normal((3, 4, 1, 1)).astype(np.float32)
    tw = torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw)
    g = RNG.standard_normal(ty.shape).astype(np.float32)
    dx, dw = torch.autograd.grad(ty, (tx, tw), torch.tensor(g))
    args = ((1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(dispatch.conv2d_forward(x, w, *args), ty.detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    got = dispatch.conv2d_backward(g, x, w, *args, (True, True))
    np.testing.assert_allclose(got[0], dx.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], dw.numpy(), rtol=1e-4, atol=1e-4)
