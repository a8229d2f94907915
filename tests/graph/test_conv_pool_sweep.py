"""Every convolution, pooling and up-sampling op against a plain-loop definition.

The definitions below are written from the formulas (PyTorch's), one output (or input)
pixel at a time, with nothing shared with the package: for each output pixel and each
kernel tap, the input pixel it reads is ``o·stride − padding + tap·dilation``, and taps
falling outside the image read zero. The adjoints are the same loops with the products
sent the other way, so they are checked to be adjoints (⟨g, F x⟩ = ⟨Fᵀ g, x⟩) too.

The op table's forward and both VJPs are compared with them over strides, paddings,
dilations, groups, output paddings and odd sizes, in float32 and float64, with the fast
(Numba/BLAS) kernels and with the reference (numpy) kernels (``dispatch.enabled = False``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.graph.optable import OPS
from autodiff_lab.kernels import dispatch

RNG = np.random.default_rng(11)
TOL = {np.float32: dict(rtol=3e-4, atol=3e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------------------
# plain-loop definitions (float64)
# --------------------------------------------------------------------------------------

def conv2d_loop(x, w, stride, padding, dilation, groups):
    """out[n, f, oh, ow] = Σ_c,i,j w[f, c, i, j] · x[n, group(f)·Cg + c, oh·s − p + i·d, …];
    returns the output and the adjoint (g ↦ dL/dx, dL/dw)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    fg = f // groups
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def taps():
        for oh, ow, i, j in itertools.product(range(ho), range(wo), range(kh), range(kw)):
            ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
            if 0 <= ih < h and 0 <= iw < wd:
                for gi in range(groups):
                    yield oh, ow, i, j, ih, iw, slice(gi * fg, (gi + 1) * fg), \
                        slice(gi * cg, (gi + 1) * cg)

    out = np.zeros((n, f, ho, wo))
    for oh, ow, i, j, ih, iw, fs, cs in taps():
        out[:, fs, oh, ow] += x[:, cs, ih, iw] @ w[fs, :, i, j].T

    def adjoint(g):
        dx, dwt = np.zeros_like(x), np.zeros_like(w)
        for oh, ow, i, j, ih, iw, fs, cs in taps():
            dx[:, cs, ih, iw] += g[:, fs, oh, ow] @ w[fs, :, i, j]
            dwt[fs, :, i, j] += g[:, fs, oh, ow].T @ x[:, cs, ih, iw]
        return dx, dwt

    return out, adjoint


def conv_transpose2d_loop(x, w, stride, padding, output_padding, dilation, groups):
    """PyTorch's transpose convolution: input pixel (ih, iw) adds x · w[c, f, i, j] to output
    pixel (ih·s − p + i·d, iw·s − p + j·d); output size (H−1)·s − 2p + d·(k−1) + op + 1."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, c, h, wd = x.shape
    _, fg, kh, kw = w.shape
    cg = c // groups
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1

    def taps():
        for ih, iw, i, j in itertools.product(range(h), range(wd), range(kh), range(kw)):
            oh, ow = ih * sh - ph + i * dh, iw * sw - pw + j * dw
            if 0 <= oh < ho and 0 <= ow < wo:
                for gi in range(groups):
                    yield ih, iw, i, j, oh, ow, slice(gi * cg, (gi + 1) * cg), \
                        slice(gi * fg, (gi + 1) * fg)

    out = np.zeros((n, fg * groups, ho, wo))
    for ih, iw, i, j, oh, ow, cs, fs in taps():
        out[:, fs, oh, ow] += x[:, cs, ih, iw] @ w[cs, :, i, j]

    def adjoint(g):
        dx, dwt = np.zeros_like(x), np.zeros_like(w)
        for ih, iw, i, j, oh, ow, cs, fs in taps():
            dx[:, cs, ih, iw] += g[:, fs, oh, ow] @ w[cs, :, i, j].T
            dwt[cs, :, i, j] += x[:, cs, ih, iw].T @ g[:, fs, oh, ow]
        return dx, dwt

    return out, adjoint


def _pool_windows(shape, kernel, stride, padding):
    n, c, h, wd = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    for oh, ow in itertools.product(range(ho), range(wo)):
        pixels = [(oh * sh - ph + i, ow * sw - pw + j) for i in range(kh) for j in range(kw)]
        yield oh, ow, [(ih, iw) for ih, iw in pixels if 0 <= ih < h and 0 <= iw < wd]
    return ho, wo


def _pool_out_shape(shape, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return shape[:2] + ((shape[2] + 2 * ph - kh) // sh + 1, (shape[3] + 2 * pw - kw) // sw + 1)


def max_pool2d_loop(x, kernel, stride, padding):
    """The largest pixel of each window (padding never wins); the gradient goes to the first
    largest pixel in row-major order."""
    out = np.zeros(_pool_out_shape(x.shape, kernel, stride, padding))
    where = {}
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for oh, ow, pixels in _pool_windows(x.shape, kernel, stride, padding):
            best = max(pixels, key=lambda p: (x[n, c, p[0], p[1]], -pixels.index(p)))
            out[n, c, oh, ow] = x[n, c, best[0], best[1]]
            where[n, c, oh, ow] = best

    def adjoint(g):
        dx = np.zeros_like(x)
        for (n, c, oh, ow), (ih, iw) in where.items():
            dx[n, c, ih, iw] += g[n, c, oh, ow]
        return (dx,)

    return out, adjoint


def avg_pool2d_loop(x, kernel, stride, padding):
    """Sum of each window's pixels over kh·kw (padding counts as zeros)."""
    area = kernel[0] * kernel[1]
    out = np.zeros(_pool_out_shape(x.shape, kernel, stride, padding))
    windows = list(_pool_windows(x.shape, kernel, stride, padding))
    for oh, ow, pixels in windows:
        for ih, iw in pixels:
            out[:, :, oh, ow] += x[:, :, ih, iw] / area

    def adjoint(g):
        dx = np.zeros_like(x)
        for oh, ow, pixels in windows:
            for ih, iw in pixels:
                dx[:, :, ih, iw] += g[:, :, oh, ow] / area
        return (dx,)

    return out, adjoint


def upsample_loop(x, scale):
    """out[..., h·sh + a, w·sw + b] = x[..., h, w]."""
    sh, sw = scale
    h, wd = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (h * sh, wd * sw))
    for ih, iw, a, b in itertools.product(range(h), range(wd), range(sh), range(sw)):
        out[..., ih * sh + a, iw * sw + b] = x[..., ih, iw]

    def adjoint(g):
        dx = np.zeros_like(x)
        for ih, iw, a, b in itertools.product(range(h), range(wd), range(sh), range(sw)):
            dx[..., ih, iw] += g[..., ih * sh + a, iw * sw + b]
        return (dx,)

    return out, adjoint


# --------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------

@pytest.fixture
def backends(monkeypatch):
    """Run a check with the fast kernels, then with the reference kernels."""
    def run(check):
        for enabled in (True, False):
            monkeypatch.setattr(dispatch, "enabled", enabled)
            check("fast" if enabled else "reference")
        monkeypatch.setattr(dispatch, "enabled", True)
    return run


def _compare(name, args, attrs, loop, backends, linear=True):
    """The op table's forward and VJPs against ``loop`` (forward, adjoint) in f32 and f64."""
    op = OPS[name]
    full = {**op.attrs, **attrs}
    shape = op.shape(*(a.shape for a in args), **full)
    want, adjoint = loop(*args)
    assert shape == want.shape
    g = RNG.standard_normal(want.shape)
    want_grads = adjoint(g)
    if linear:  # the loop adjoint really is the adjoint (checks the test's own loops)
        lhs = float(np.sum(g * want))
        rhs = float(np.sum(want_grads[0] * args[0]))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)

    def check(backend):
        for dtype in (np.float32, np.float64):
            xs = [a.astype(dtype) for a in args]
            out = op.forward(*xs, **full)
            label = f"{name} {attrs} {backend} {np.dtype(dtype).name}"
            assert out.shape == want.shape and out.dtype == dtype, label
            np.testing.assert_allclose(out, want, **TOL[dtype], err_msg=label)
            for i, want_grad in enumerate(want_grads):
                got = op.vjp_for(i)(g.astype(dtype), out, *xs, **full)
                assert got.shape == args[i].shape, f"{label}: d/d arg {i} has shape {got.shape}"
                np.testing.assert_allclose(got, want_grad, **TOL[dtype],
                                           err_msg=f"{label}: d/d arg {i}")

    backends(check)


CONV_CASES = [
    dict(stride=s, padding=p, dilation=d, groups=gr, filters=f)
    for s, p, d, gr, f in itertools.product([(1, 1), (2, 2), (2, 3)], [(0, 0), (1, 1), (2, 0)],
                                            [(1, 1), (2, 2), (1, 3)], [1, 2], [2, 6])
    if not (gr == 2 and f == 2 and s == (2, 3))  # keep the sweep short: a few thin grouped cases
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_conv2d_matches_the_loop_definition(case, backends):
    case = dict(case)
    filters, groups = case.pop("filters"), case["groups"]
    x = RNG.standard_normal((2, 4, 7, 9))
    w = RNG.standard_normal((filters, 4 // groups, 3, 2))
    _compare("conv2d", [x, w], case,
             lambda x, w: conv2d_loop(x, w, case["stride"], case["padding"], case["dilation"],
                                      groups), backends)


def _convT_cases():
    for s, p, d, gr in itertools.product([(1, 1), (2, 2), (3, 2)], [(0, 0), (1, 2)],
                                         [(1, 1), (2, 2), (3, 1)], [1, 2]):
        # every output_padding PyTorch allows: below max(stride, dilation) on each axis
        limit = [max(a, b) for a, b in zip(s, d)]
        for op in {(0, 0), (limit[0] - 1, limit[1] - 1), (limit[0] - 1, 0)}:
            yield dict(stride=s, padding=p, output_padding=op, dilation=d, groups=gr)


@pytest.mark.parametrize("case", list(_convT_cases()),
                         ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_conv_transpose2d_matches_the_loop_definition(case, backends):
    groups = case["groups"]
    x = RNG.standard_normal((2, 4, 4, 5))
    w = RNG.standard_normal((4, 3, 3, 2))
    _compare("conv_transpose2d", [x, w], case,
             lambda x, w: conv_transpose2d_loop(x, w, case["stride"], case["padding"],
                                                case["output_padding"], case["dilation"], groups),
             backends)


POOL_CASES = [dict(kernel=k, stride=s, padding=p)
              for k, s, p in itertools.product([(1, 1), (2, 2), (3, 3), (2, 3)],
                                               [(1, 1), (2, 2), (1, 3)], [(0, 0), (1, 1), (0, 1)])
              if 2 * p[0] <= k[0] and 2 * p[1] <= k[1]]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_pooling_matches_the_loop_definition(case, backends):
    x = RNG.standard_normal((2, 3, 7, 8))
    args = (case["kernel"], case["stride"], case["padding"])
    _compare("avg_pool2d", [x], case, lambda x: avg_pool2d_loop(x, *args), backends)
    _compare("max_pool2d", [x], case, lambda x: max_pool2d_loop(x, *args), backends, linear=False)


def test_the_max_pool_loop_adjoint_is_its_derivative():
    x = RNG.standard_normal((1, 2, 5, 6))
    v = RNG.standard_normal(x.shape)
    args = ((3, 2), (2, 1), (1, 1))
    out, adjoint = max_pool2d_loop(x, *args)
    g = RNG.standard_normal(out.shape)
    h = 1e-6
    central = np.sum(g * (max_pool2d_loop(x + h * v, *args)[0]
                          - max_pool2d_loop(x - h * v, *args)[0])) / (2 * h)
    np.testing.assert_allclose(central, np.sum(adjoint(g)[0] * v), rtol=1e-6)


@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (2, 3), (3, 1)])
@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (3, 4, 5)])
def test_upsample_matches_the_loop_definition(scale, shape, backends):
    x = RNG.standard_normal(shape)
    _compare("upsample", [x], dict(scale=scale), lambda x: upsample_loop(x, scale), backends)


def test_conv_transpose2d_with_dilation_and_output_padding_on_every_engine():
    # output_padding 1 ≥ stride 1 (allowed by dilation 2): the convolution adjoint to this
    # transpose convolution has one row and column more than x, which must not leak out
    g = adl.trace(lambda x, w: adl.sum(adl.conv_transpose2d(x, w, stride=1, output_padding=1,
                                                            dilation=2) ** 2),
                  x=(1, 2, 4, 4), w=(2, 3, 3, 3))
    x = RNG.standard_normal((1, 2, 4, 4))
    w = RNG.standard_normal((2, 3, 3, 3))
    out, adjoint = conv_transpose2d_loop(x, w, (1, 1), (0, 0), (1, 1), (2, 2), 1)
    assert out.shape == (1, 3, 9, 9)
    want_x, want_w = adjoint(2 * out)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-3)):
        vals = {"x": x.astype(dtype), "w": w.astype(dtype)}
        for name, options in (("tape", {}), ("numeric", {}), ("symbolic", {"mode": "matrix"}),
                              ("symbolic", {"mode": "expanded"})):
            if dtype == np.float32 and name == "numeric":
                continue  # finite differences in float32 cannot reach this tolerance
            r = adl.engine(name, **options).compile(g)(vals)
            label = f"{name} {options} {np.dtype(dtype).name}"
            assert r.grads["x"].shape == x.shape, label
            np.testing.assert_allclose(r.value, np.sum(out ** 2), rtol=tol, err_msg=label)
            scale = np.abs(want_x).max()
            np.testing.assert_allclose(r.grads["x"], want_x, rtol=tol, atol=tol * scale,
                                       err_msg=label)
            np.testing.assert_allclose(r.grads["w"], want_w, rtol=tol,
                                       atol=tol * np.abs(want_w).max(), err_msg=label)
