"""NaN and ±Inf go through every fast kernel as they go through the numpy reference.

numpy and PyTorch propagate NaN; a kernel that writes a number where the reference writes
NaN hides a broken computation (with ``anomaly=False`` nothing else would tell). For every
fast kernel :mod:`autodiff_lab.kernels.dispatch` can call (enumerated from its source, so
a new kernel without a case here fails), operands holding NaN, +Inf and −Inf, in float32
and float64, at sizes on both sides of every threshold that switches implementations: the
fast result must have NaN, +Inf and −Inf exactly where the reference has them, and agree
elsewhere. The tape's scalar fast path (straight-line Python from the op table's scalar
forms) is held to the same standard against the array path.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.graph.optable import OPS
from autodiff_lab.graph.tensor import apply
from autodiff_lab.kernels import conv_fast, conv_reference, dispatch

DTYPES = [np.float32, np.float64]
SPECIALS = {"nan": [np.nan], "+inf": [np.inf], "-inf": [-np.inf], "mixed": [np.nan, np.inf, -np.inf]}
BIG = dispatch.ELEMENTWISE_MIN_SIZE + 7232  # above the element-wise threshold
SMALL = 1000                                # below it


@contextlib.contextmanager
def reference_kernels():
    """Run the op table's rules with the numpy reference (no fast kernel)."""
    before = dispatch.enabled
    dispatch.enabled = False
    try:
        yield
    finally:
        dispatch.enabled = before


def fast(module: str):
    return dispatch._fast(module)


def _ref_rule(name, which, *args, **attrs):
    """The op table's forward (``which`` None) or VJP ``which`` with the reference kernels."""
    op = OPS[name]
    full = {**op.attrs, **attrs}
    with reference_kernels():
        if which is None:
            return op.forward(*args, **full)
        return op.vjp_for(which)(args[0], None, *args[1:], **full)


# --------------------------------------------------------------------------------------
# one case per fast kernel: (operands by name, fast call, reference call) for each variant
# --------------------------------------------------------------------------------------

def _conv_variants():
    # thin (direct loop) and wide (im2col + BLAS) filters, stride 1 (the input gradient as a
    # convolution) and 2 (col2im), groups, padding (zeros multiplied in the im2col products)
    # ... and (float32, 8 channels, stride 1) Winograd, with the padding it takes, and the
    # direct kernels of one input or one output channel
    return [dict(f=2, stride=(1, 1), padding=(1, 1), groups=1),
            dict(f=6, stride=(1, 1), padding=(1, 1), groups=1),
            dict(f=2, stride=(2, 1), padding=(1, 0), groups=1),
            dict(f=6, stride=(2, 2), padding=(1, 1), groups=2),
            dict(f=8, stride=(1, 1), padding=(0, 2), groups=1, c=8),
            # one input channel, one output channel: the direct kernels (conv_direct)
            dict(f=3, stride=(1, 1), padding=(1, 1), groups=1, c=1),
            dict(f=1, stride=(1, 1), padding=(2, 0), groups=1),
            # 1×1 as plain matrix products (thin and wide), and a 1×1 that is not (padding)
            dict(f=2, stride=(1, 1), padding=(0, 0), groups=1, k=1),
            dict(f=6, stride=(1, 1), padding=(0, 0), groups=1, k=1),
            dict(f=6, stride=(1, 1), padding=(1, 0), groups=1, k=1)]


def _conv_operands(dtype, v, rng):
    c = v.get("c", 4)
    x = rng.standard_normal((3, c, 7, 6)).astype(dtype)
    k = v.get("k", 3)
    w = rng.standard_normal((v["f"], c // v["groups"], k, k)).astype(dtype)
    ho, wo = (conv_reference.conv_output_size(7, k, v["stride"][0], v["padding"][0], 1),
              conv_reference.conv_output_size(6, k, v["stride"][1], v["padding"][1], 1))
    g = rng.standard_normal((3, v["f"], ho, wo)).astype(dtype)
    return {"x": x, "w": w, "g": g}


@pytest.fixture(autouse=True, params=[2, 4], ids=["F2", "F4"])
def small_winograd(request, monkeypatch):
    """The Winograd kernels for the small operands here too (float32, 8 channels), with
    tiles of 2×2 and of 4×4 outputs."""
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_CHANNELS", 8)
    monkeypatch.setattr(dispatch, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(dispatch, "WINOGRAD_TILE", request.param)


def test_the_conv_cases_reach_winograd():
    # the 8-channel variant runs the Winograd kernels in float32 (and im2col in float64)
    reached = [v for v in _conv_variants() if dispatch._winograd_ok(
        np.dtype(np.float32), (3, v.get("c", 4), 7, 6), (v["f"], v.get("c", 4), 3, 3),
        v["stride"], v["padding"], (1, 1), v["groups"])]
    assert len(reached) == 1


def _conv_args(v):
    return v["stride"], v["padding"], (1, 1), v["groups"]


CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@case("conv2d_forward")
def _(dtype, rng):
    for v in _conv_variants():
        ops = _conv_operands(dtype, v, rng)
        del ops["g"]
        yield ops, (lambda o, v=v: dispatch.conv2d_forward(o["x"], o["w"], *_conv_args(v))), \
            (lambda o, v=v: conv_reference.conv2d_forward(o["x"], o["w"], *_conv_args(v)))


@case("conv2d_backward_input")
def _(dtype, rng):
    for v in _conv_variants():
        ops = _conv_operands(dtype, v, rng)
        shape = ops.pop("x").shape
        yield ops, (lambda o, v=v, s=shape: dispatch.conv2d_backward_input(
            o["g"], o["w"], s, *_conv_args(v))), \
            (lambda o, v=v, s=shape: conv_reference.conv2d_backward_input(
                o["g"], o["w"], s, *_conv_args(v)))


@case("conv2d_backward_weight")
def _(dtype, rng):
    for v in _conv_variants():
        ops = _conv_operands(dtype, v, rng)
        shape = ops.pop("w").shape
        yield ops, (lambda o, v=v, s=shape: dispatch.conv2d_backward_weight(
            o["g"], o["x"], s, *_conv_args(v))), \
            (lambda o, v=v, s=shape: conv_reference.conv2d_backward_weight(
                o["g"], o["x"], s, *_conv_args(v)))


def _conv_both_variants():
    # the fused rule's shared patch matrix (stride 1, with and without dilation), its
    # fallbacks (stride 2; padding beyond the kernel's reach), and one gradient at a time
    return _conv_variants() + [dict(f=6, stride=(1, 1), padding=(2, 1), groups=1, dilation=(2, 1)),
                               dict(f=3, stride=(1, 1), padding=(3, 3), groups=1)]


@case("conv2d_backward")
def _(dtype, rng):
    for v in _conv_both_variants():
        dil = v.get("dilation", (1, 1))
        c = v.get("c", 4)
        x = rng.standard_normal((3, c, 7, 6)).astype(dtype)
        k = v.get("k", 3)
        w = rng.standard_normal((v["f"], c // v["groups"], k, k)).astype(dtype)
        g = conv_reference.conv2d_forward(x, w, v["stride"], v["padding"], dil, v["groups"])
        ops = {"x": x, "w": w, "g": rng.standard_normal(g.shape).astype(dtype)}
        args = (v["stride"], v["padding"], dil, v["groups"])
        for which, wanted in ((0, (True, True)), (1, (True, True)), (0, (True, False)),
                              (1, (False, True))):
            yield ops, (lambda o, a=args, i=which, m=wanted: dispatch.conv2d_backward(
                o["g"], o["x"], o["w"], *a, m)[i]), \
                (lambda o, a=args, i=which: (conv_reference.conv2d_backward_input(
                    o["g"], o["w"], o["x"].shape, *a), conv_reference.conv2d_backward_weight(
                    o["g"], o["x"], o["w"].shape, *a))[i])


def _conv_relu_variants(dtype, rng):
    # relu(conv2d(x, w) + b) as the tape's fused step runs it: Winograd (float32, 8
    # channels) with the bias and ReLU in its transforms, and im2col composed with relu
    for v in (_conv_variants()[1], _conv_variants()[4]):
        ops = _conv_operands(dtype, v, rng)
        ops["b"] = rng.standard_normal(v["f"]).astype(dtype)
        yield v, ops


def _ref_conv_relu(o, v):
    z = conv_reference.conv2d_forward(o["x"], o["w"], *_conv_args(v)) + o["b"][:, None, None]
    return _ref_rule("relu", None, z)


@case("conv2d_relu_forward")
def _(dtype, rng):
    from autodiff_lab.graph.optable import FUSIONS
    fusion = FUSIONS[("conv2d", "relu")]
    for v, ops in _conv_relu_variants(dtype, rng):
        del ops["g"]
        attrs = dict(zip(("stride", "padding", "dilation", "groups"), _conv_args(v)))
        yield ops, (lambda o, a=attrs: fusion.forward_saving(o["x"], o["w"], o["b"], **a)[0]), \
            (lambda o, v=v: _ref_conv_relu(o, v))


@case("conv2d_relu_backward")
def _(dtype, rng):
    # g is the gradient of the ReLU's result r (from the reference forward)
    from autodiff_lab.graph.optable import FUSIONS
    fusion = FUSIONS[("conv2d", "relu")]
    for v, ops in _conv_relu_variants(dtype, rng):
        attrs = dict(zip(("stride", "padding", "dilation", "groups"), _conv_args(v)))
        for i in range(3):
            yield ops, (lambda o, a=attrs, v=v, i=i: fusion.fused_vjp(
                (True, True, True), None, o["g"], _ref_conv_relu(o, v), o["x"], o["w"], o["b"],
                **a)[i]), \
                (lambda o, v=v, i=i: _ref_rule(
                    "conv2d", i, _ref_rule("relu", 0, o["g"], _ref_conv_relu(o, v)), o["x"],
                    o["w"], o["b"], **dict(zip(("stride", "padding", "dilation", "groups"),
                                               _conv_args(v)))))


POOLS = [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 2), (1, 1)), ((3, 2), (2, 1), (1, 0))]


def _pool_operands(dtype, pool, rng):
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    out = conv_reference.avg_pool2d_forward(x, *pool)
    return x, rng.standard_normal(out.shape).astype(dtype)


@case("max_pool2d_forward")
def _(dtype, rng):
    for pool in POOLS:
        x, _g = _pool_operands(dtype, pool, rng)
        yield {"x": x}, (lambda o, p=pool: dispatch.max_pool2d_forward(o["x"], *p)), \
            (lambda o, p=pool: conv_reference.max_pool2d_forward(o["x"], *p))


@case("max_pool2d_backward")
def _(dtype, rng):
    for pool in POOLS:
        x, g = _pool_operands(dtype, pool, rng)
        yield {"x": x, "g": g}, (lambda o, p=pool: dispatch.max_pool2d_backward(o["g"], o["x"], *p)), \
            (lambda o, p=pool: conv_reference.max_pool2d_backward(o["g"], o["x"], *p))


@case("avg_pool2d_forward")
def _(dtype, rng):
    for pool in POOLS:
        x, _g = _pool_operands(dtype, pool, rng)
        yield {"x": x}, (lambda o, p=pool: dispatch.avg_pool2d_forward(o["x"], *p)), \
            (lambda o, p=pool: conv_reference.avg_pool2d_forward(o["x"], *p))


@case("avg_pool2d_backward")
def _(dtype, rng):
    for pool in POOLS:
        x, g = _pool_operands(dtype, pool, rng)
        yield {"g": g}, (lambda o, p=pool, s=x.shape: dispatch.avg_pool2d_backward(o["g"], s, *p)), \
            (lambda o, p=pool, s=x.shape: conv_reference.avg_pool2d_backward(o["g"], s, *p))


def _elementwise_sizes(dtype, rng, with_g):
    for n in (SMALL, BIG):
        ops = {"x": rng.standard_normal(n).astype(dtype)}
        ops["x"][:50] = 0.0  # relu'(0) = 0 must survive too
        if with_g:
            ops["g"] = rng.standard_normal(n).astype(dtype)
        yield ops


def test_the_element_wise_sizes_straddle_the_threshold():
    x = np.ones(BIG)
    assert dispatch.relu_forward(x) is not None and dispatch.relu_forward(x[:SMALL]) is None


@case("relu_forward")
def _(dtype, rng):
    for ops in _elementwise_sizes(dtype, rng, False):
        # the kernel itself at both sizes, and the op table's rule (fast only above the threshold)
        yield ops, (lambda o: fast("elementwise").relu_forward(o["x"])), \
            (lambda o: _ref_rule("relu", None, o["x"]))
        yield ops, (lambda o: OPS["relu"].forward(o["x"])), \
            (lambda o: _ref_rule("relu", None, o["x"]))


@case("relu_backward")
def _(dtype, rng):
    for ops in _elementwise_sizes(dtype, rng, True):
        yield ops, (lambda o: fast("elementwise").relu_backward(o["g"], o["x"])), \
            (lambda o: _ref_rule("relu", 0, o["g"], o["x"]))
        yield ops, (lambda o: OPS["relu"].vjp_for(0)(o["g"], None, o["x"])), \
            (lambda o: _ref_rule("relu", 0, o["g"], o["x"]))


@case("difference_squares")
def _(dtype, rng):
    # the mse loss of one pass and the difference it keeps for its rule, against the
    # reference's three passes and its own pred − target
    for n in (SMALL, BIG):
        ops = {"pred": rng.standard_normal(n).astype(dtype),
               "target": rng.standard_normal(n).astype(dtype)}
        for reduction in ("sum", "mean"):
            def got(o, r=reduction):
                fast_d = dispatch.difference_squares(o["pred"], o["target"])
                value, saved = OPS["mse"].forward_saving(o["pred"], o["target"], reduction=r)
                d = fast_d[0] if fast_d is not None else o["pred"] - o["target"]
                assert (saved is None) == (fast_d is None)
                return np.append(d, value)

            def want(o, r=reduction):
                return np.append(o["pred"] - o["target"],
                                 _ref_rule("mse", None, o["pred"], o["target"], reduction=r))
            yield ops, got, want


@case("leaky_relu_forward")
def _(dtype, rng):
    for ops in _elementwise_sizes(dtype, rng, False):
        for alpha in (0.2, 0.0, -0.5):  # alpha·(−Inf) is NaN at alpha = 0, as in the rule
            yield ops, (lambda o, a=alpha: fast("elementwise").leaky_relu_forward(o["x"], a)), \
                (lambda o, a=alpha: _ref_rule("leaky_relu", None, o["x"], alpha=a))
            yield ops, (lambda o, a=alpha: OPS["leaky_relu"].forward(o["x"], alpha=a)), \
                (lambda o, a=alpha: _ref_rule("leaky_relu", None, o["x"], alpha=a))


@case("leaky_relu_backward")
def _(dtype, rng):
    for ops in _elementwise_sizes(dtype, rng, True):
        yield ops, (lambda o: fast("elementwise").leaky_relu_backward(o["g"], o["x"], 0.1)), \
            (lambda o: _ref_rule("leaky_relu", 0, o["g"], o["x"], alpha=0.1))
        yield ops, (lambda o: OPS["leaky_relu"].vjp_for(0)(o["g"], None, o["x"], alpha=0.1)), \
            (lambda o: _ref_rule("leaky_relu", 0, o["g"], o["x"], alpha=0.1))


def _bn_variants(dtype, rng):
    for shape in ((6, 3), (2, 3, 4, 5)):
        for training in (True, False):
            ops = {"x": rng.standard_normal(shape).astype(dtype),
                   "gamma": rng.standard_normal(3).astype(dtype),
                   "beta": rng.standard_normal(3).astype(dtype),
                   "g": rng.standard_normal(shape).astype(dtype)}
            if not training:
                ops["mean"] = rng.standard_normal(3).astype(dtype)
                ops["var"] = rng.uniform(0.5, 2.0, 3).astype(dtype)
            yield training, ops


def _bn_args(o, training):
    return (o["x"], o["gamma"], o["beta"]) + ((o["mean"], o["var"]) if not training else ())


@case("batch_norm_forward")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        del ops["g"]
        yield ops, (lambda o, t=training: dispatch.batch_norm_forward(
            *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5)), \
            (lambda o, t=training: _ref_rule("batch_norm", None, *_bn_args(o, t), training=t))


@case("batch_stats")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        if training:
            yield {"x": ops["x"]}, (lambda o: dispatch.batch_stats(o["x"])), \
                (lambda o: _ref_rule("batch_stats", None, o["x"]))


@case("batch_norm_backward")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        for i, wanted in enumerate(("x", "gamma", "beta")):
            yield ops, (lambda o, t=training, wanted=wanted: dispatch.batch_norm_backward(
                o["g"], *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5, wanted)), \
                (lambda o, t=training, i=i: _ref_rule("batch_norm", i, o["g"], *_bn_args(o, t),
                                                      training=t))


@case("batch_norm_forward_saving")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        del ops["g"]
        yield ops, (lambda o, t=training: dispatch.batch_norm_forward_saving(
            *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5)[0]), \
            (lambda o, t=training: _ref_rule("batch_norm", None, *_bn_args(o, t), training=t))


def _bn_saved(o, t):
    """The statistics the saving forward keeps for the fused rule (None in evaluation)."""
    return dispatch.batch_norm_forward_saving(*_bn_args(o, t) + ((None, None) if t else ()),
                                              t, 1e-5)[1]


@case("batch_norm_backward_all")
def _(dtype, rng):
    # every gradient the fused rule returns, with the forward's statistics and without
    for training, ops in _bn_variants(dtype, rng):
        for i in range(3):
            for with_stats in (False, True):
                yield ops, (lambda o, t=training, i=i, s=with_stats:
                            dispatch.batch_norm_backward_all(
                                o["g"], *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5,
                                (True, True, True), _bn_saved(o, t) if s else None)[i]), \
                    (lambda o, t=training, i=i: _ref_rule("batch_norm", i, o["g"],
                                                          *_bn_args(o, t), training=t))


def _ref_bn_relu(o, t):
    """relu(batch_norm(...)) and its x, γ, β gradients with the reference rules, one entry
    after the other (what the fused kernels must reproduce)."""
    y = _ref_rule("batch_norm", None, *_bn_args(o, t), training=t)
    r = _ref_rule("relu", None, y)
    dy = _ref_rule("relu", 0, o["g"], y) if "g" in o else None
    return r, dy


@case("batch_norm_relu_forward_saving")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        del ops["g"]
        yield ops, (lambda o, t=training: dispatch.batch_norm_relu_forward_saving(
            *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5)[0]), \
            (lambda o, t=training: _ref_bn_relu(o, t)[0])


@case("batch_norm_relu_backward_all")
def _(dtype, rng):
    # g is the gradient of the ReLU's result; its value (ans) comes from the fused forward
    for training, ops in _bn_variants(dtype, rng):
        for i in range(3):
            yield ops, (lambda o, t=training, i=i: dispatch.batch_norm_relu_backward_all(
                o["g"], _ref_bn_relu(o, t)[0], *_bn_args(o, t) + ((None, None) if t else ()),
                t, 1e-5, (True, True, True), _bn_saved(o, t))[i]), \
                (lambda o, t=training, i=i: _ref_rule("batch_norm", i, _ref_bn_relu(o, t)[1],
                                                      *_bn_args(o, t), training=t))


def _ref_bn_leaky(o, t, alpha):
    """leaky_relu(batch_norm(...), alpha) and its gradient with the reference rules."""
    y = _ref_rule("batch_norm", None, *_bn_args(o, t), training=t)
    r = _ref_rule("leaky_relu", None, y, alpha=alpha)
    dy = _ref_rule("leaky_relu", 0, o["g"], y, alpha=alpha) if "g" in o else None
    return r, dy


@case("batch_norm_leaky_relu_forward_saving")
def _(dtype, rng):
    for training, ops in _bn_variants(dtype, rng):
        del ops["g"]
        for alpha in (0.01, 0.0, -0.5):
            yield ops, (lambda o, t=training, a=alpha: dispatch.batch_norm_leaky_relu_forward_saving(
                *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5, a)[0]), \
                (lambda o, t=training, a=alpha: _ref_bn_leaky(o, t, a)[0])


@case("batch_norm_leaky_relu_backward_all")
def _(dtype, rng):
    # g is the gradient of the leaky ReLU's result; its value (ans) from the reference
    for training, ops in _bn_variants(dtype, rng):
        for i in range(3):
            for alpha in (0.01, 0.5):
                yield ops, (lambda o, t=training, i=i, a=alpha:
                            dispatch.batch_norm_leaky_relu_backward_all(
                                o["g"], _ref_bn_leaky(o, t, a)[0],
                                *_bn_args(o, t) + ((None, None) if t else ()), t, 1e-5, a,
                                (True, True, True), _bn_saved(o, t))[i]), \
                    (lambda o, t=training, i=i, a=alpha: _ref_rule(
                        "batch_norm", i, _ref_bn_leaky(o, t, a)[1], *_bn_args(o, t),
                        training=t))


#: (input shape, scale): both axes, one axis, a length-one axis, odd sizes, a 3-D input
UPSAMPLE_VARIANTS = [((2, 3, 5, 7), (2, 2)), ((1, 2, 4, 3), (1, 2)), ((2, 1, 3, 1), (2, 1)),
                     ((1, 1, 1, 2), (2, 2)), ((3, 4, 6), (2, 2))]


@case("upsample_bilinear_forward")
def _(dtype, rng):
    for shape, scale in UPSAMPLE_VARIANTS:
        ops = {"x": rng.standard_normal(shape).astype(dtype)}
        yield ops, (lambda o, s=scale: dispatch.upsample_bilinear_forward(o["x"], s)), \
            (lambda o, s=scale: _ref_rule("upsample_bilinear", None, o["x"], scale=s))


@case("upsample_bilinear_backward")
def _(dtype, rng):
    for shape, scale in UPSAMPLE_VARIANTS:
        up = shape[:-2] + (shape[-2] * scale[0], shape[-1] * scale[1])
        ops = {"g": rng.standard_normal(up).astype(dtype)}
        x = np.zeros(shape, dtype)
        yield ops, (lambda o, s=scale, x=x: dispatch.upsample_bilinear_backward(
            o["g"], x.shape, s)), \
            (lambda o, s=scale, x=x: _ref_rule("upsample_bilinear", 0, o["g"], x, scale=s))


@case("upsample_nearest_forward")
def _(dtype, rng):
    for shape, scale in UPSAMPLE_VARIANTS + [((2, 2, 3, 4), (3, 5))]:
        ops = {"x": rng.standard_normal(shape).astype(dtype)}
        yield ops, (lambda o, s=scale: dispatch.upsample_nearest_forward(o["x"], s)), \
            (lambda o, s=scale: _ref_rule("upsample", None, o["x"], scale=s))


@case("upsample_nearest_backward")
def _(dtype, rng):
    for shape, scale in UPSAMPLE_VARIANTS + [((2, 2, 3, 4), (3, 5))]:
        up = shape[:-2] + (shape[-2] * scale[0], shape[-1] * scale[1])
        ops = {"g": rng.standard_normal(up).astype(dtype)}
        x = np.zeros(shape, dtype)
        yield ops, (lambda o, s=scale, x=x: OPS["upsample"].vjp_for(0)(
            o["g"], None, x, scale=s)), \
            (lambda o, s=scale, x=x: _ref_rule("upsample", 0, o["g"], x, scale=s))


def _ce_operands(dtype, rng):
    for shape in ((5, 4), (2, 3, 6)):
        logits = rng.standard_normal(shape).astype(dtype)
        labels = rng.integers(0, shape[-1], shape[:-1])
        yield {"logits": logits, "g": np.asarray(rng.standard_normal(), dtype=dtype)}, labels


@case("softmax_cross_entropy_forward")
def _(dtype, rng):
    for ops, labels in _ce_operands(dtype, rng):
        del ops["g"]
        for reduction in ("mean", "sum"):
            yield ops, (lambda o, y=labels, r=reduction: dispatch.softmax_cross_entropy_forward(
                o["logits"], y, r)), \
                (lambda o, y=labels, r=reduction: _ref_rule("softmax_cross_entropy", None,
                                                            o["logits"], y, reduction=r))


@case("softmax_cross_entropy_backward")
def _(dtype, rng):
    for ops, labels in _ce_operands(dtype, rng):
        for reduction in ("mean", "sum"):
            yield ops, (lambda o, y=labels, r=reduction: dispatch.softmax_cross_entropy_backward(
                o["g"], o["logits"], y, r)), \
                (lambda o, y=labels, r=reduction: _ref_rule("softmax_cross_entropy", 0, o["g"],
                                                            o["logits"], y, reduction=r))


# --------------------------------------------------------------------------------------
# every fast kernel has a case
# --------------------------------------------------------------------------------------

def fast_kernels() -> set[str]:
    """The dispatch functions that can call a fast (Numba/BLAS) kernel."""
    return {name for name, fn in vars(dispatch).items()
            if inspect.isfunction(fn) and fn.__module__ == dispatch.__name__
            and not name.startswith("_") and "_fast(" in inspect.getsource(fn)}


def test_every_fast_kernel_has_a_nonfinite_case():
    assert fast_kernels() == set(CASES), (
        "add a case to this file for each new fast kernel (and drop those of removed ones)")


#: Numba modules that are not op kernels, and why the enumeration above does not need them
NOT_OP_KERNELS = {
    # optimiser updates: every gradient is checked finite before any parameter is touched
    # (tests/nn/test_optim.py checks the NonFiniteError)
    "optim_fast",
    # the tape's anomaly check on small graphs: it only reads arrays (tests/kernels/
    # test_finite_kernel.py checks it against NaN/Inf at every position)
    "finite",
    # F(4×4, 3×3): called by the winograd module (dispatch's winograd_tile picks it), and
    # run here through dispatch with WINOGRAD_TILE = 4 (the small_winograd fixture)
    "winograd4",
}


def test_every_numba_module_is_reached_through_dispatch():
    # a kernel module used without dispatch would escape the enumeration above
    reached = set(re.findall(r'_fast\("(\w+)"\)', inspect.getsource(dispatch))) | NOT_OP_KERNELS
    folder = Path(dispatch.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")
               if "@cached_njit" in p.read_text() and p.stem != "numba_cache"}
    assert modules <= reached, f"kernel modules not dispatched: {sorted(modules - reached)}"


# --------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------

def assert_same_nonfinite(got, want, label):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, label
    for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        where_got, where_want = test(got), test(want)
        if not np.array_equal(where_got, where_want):
            idx = np.argwhere(where_got != where_want)[0]
            raise AssertionError(f"{label}: {what} differs at {tuple(idx)}: fast "
                                 f"{got[tuple(idx)]!r}, reference {want[tuple(idx)]!r}")
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max()) if finite.any() else 1.0
    tol = 2e-4 if got.dtype == np.float32 or want.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol * max(scale, 1.0),
                               err_msg=label)


def _inject(a: np.ndarray, values: list[float], rng) -> np.ndarray:
    """A copy of ``a`` with a few entries (at least one) set to the special values."""
    out = a.copy()
    if out.ndim == 0:
        return np.asarray(values[0], dtype=a.dtype)
    flat = out.reshape(-1)
    count = max(1, min(flat.size // 40, 12))
    where = rng.choice(flat.size, size=count, replace=False)
    flat[where] = np.resize(np.asarray(values, dtype=a.dtype), count)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel", sorted(CASES))
def test_fast_kernel_puts_nan_and_inf_where_the_reference_does(kernel, dtype):
    rng = np.random.default_rng(zlib.crc32(kernel.encode()) + np.dtype(dtype).itemsize)
    checked = 0
    for k, (ops, fast_call, reference_call) in enumerate(CASES[kernel](dtype, rng)):
        # the clean operands first: the comparison itself must hold there
        assert_same_nonfinite(fast_call(ops), reference_call(ops), f"{kernel} #{k} finite")
        for name in ops:
            for special, values in SPECIALS.items():
                bad = {**ops, name: _inject(ops[name], values, rng)}
                with np.errstate(all="ignore"):
                    got, want = fast_call(bad), reference_call(bad)
                assert_same_nonfinite(got, want, f"{kernel} #{k} with {special} in {name}")
                checked += 1
    assert checked


@pytest.mark.parametrize("kernel", ["conv2d_forward", "conv2d_backward", "conv2d_backward_weight",
                                    "conv2d_backward_input"])
@pytest.mark.parametrize("workers", [1, 2])
def test_conv_blocks_and_nonfinite_values(monkeypatch, kernel, workers):
    # one output row per block, on one or two threads: the blocked products see the NaN/Inf
    # in the same places
    monkeypatch.setattr(conv_fast, "BLOCK_BYTES", 1)
    monkeypatch.setattr(conv_fast, "BLOCK_WORKERS", workers)
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        for ops, fast_call, reference_call in CASES[kernel](dtype, rng):
            for name in ops:
                bad = {**ops, name: _inject(ops[name], SPECIALS["mixed"], rng)}
                with np.errstate(all="ignore"):
                    assert_same_nonfinite(fast_call(bad), reference_call(bad),
                                          f"blocked {kernel}, NaN/Inf in {name}")


# --------------------------------------------------------------------------------------
# end to end: the examples that used to hide a NaN
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10, BIG])
def test_sum_of_relu_with_one_nan_is_nan_at_every_size(n):
    g = adl.trace(lambda x: adl.sum(adl.relu(x)), x=(n,))
    x = np.ones(n)
    x[3] = np.nan
    r = adl.engine("tape", anomaly=False).compile(g)({"x": x})
    assert np.isnan(r.value)
    assert np.isnan(r.grads["x"][3]) and np.all(r.grads["x"][np.arange(n) != 3] == 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_max_pool_window_with_a_nan_is_nan_and_takes_the_gradient(dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    for enabled in (True, False):
        dispatch.enabled = enabled
        try:
            out = adl.max_pool2d(x, 2)
            grad = OPS["max_pool2d"].vjp_for(0)(np.ones_like(out), out, x, kernel=(2, 2),
                                                 stride=(2, 2), padding=(0, 0))
        finally:
            dispatch.enabled = True
        assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 7
        assert grad[0, 0, 0, 1] == 1 and grad[0, 0, 0, 0] == 0 and grad[0, 0, 1, 1] == 0


def test_max_pool_gradient_never_goes_to_the_padding():
    # a window whose pixels are all −Inf: the gradient goes to its first pixel, not to a
    # padding position (where it would be dropped), in both kernels
    x = np.full((1, 1, 3, 3), -np.inf)
    g = np.ones((1, 1, 2, 2))
    got = conv_fast.max_pool2d_backward(g, x, (2, 2), (2, 2), (1, 1))
    want = conv_reference.max_pool2d_backward(g, x, (2, 2), (2, 2), (1, 1))
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 4


# --------------------------------------------------------------------------------------
# the tape's scalar fast path: generated from the op table's scalar forms
# --------------------------------------------------------------------------------------

SCALAR_VALUES = [np.nan, np.inf, -np.inf, 0.0, 1.5, -2.0]


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items() if op.scalar is not None))
def test_scalar_forms_propagate_nan_like_the_array_rules(name):
    op = OPS[name]
    n_args = op.n_args[0]
    names = ["a", "b"][:n_args]
    fn = (lambda a: apply(name, a)) if n_args == 1 else (lambda a, b: apply(name, a, b))
    g = adl.trace(fn, **{n: 1.0 for n in names})
    program = adl.engine("tape", anomaly=False).compile(g)
    assert program.scalar_fast_path
    for point in np.array(np.meshgrid(*[SCALAR_VALUES] * n_args)).reshape(n_args, -1).T:
        values = dict(zip(names, (float(v) for v in point)))
        with np.errstate(all="ignore"):
            want = program._run_arrays(values, None)
            got = program(values)
        label = f"{name} at {values}"
        assert_same_nonfinite(got.value, want.value, label + " (value)")
        for n in names:
            assert_same_nonfinite(got.grads[n], want.grads[n], f"{label} (d/d{n})")
