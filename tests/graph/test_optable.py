"""Every op's shape rule and numpy forward, against plain numpy written independently here."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import ShapeError, UnknownOpError
from autodiff_lab.graph.optable import OPS, get_op

rng = np.random.default_rng(1)


def run(fn, **arrays):
    """Trace fn on the arrays' shapes, evaluate, and return the single output."""
    g = adl.trace(fn, **{k: v.shape if v.dtype.kind == "f" else v for k, v in arrays.items()})
    return g.evaluate(arrays)["out"], g


def r(*shape):
    return rng.standard_normal(shape)


# (name, function traced, inputs, the same thing in plain numpy)
ELEMENTWISE = [
    ("add", lambda a, b: a + b, dict(a=r(3, 4), b=r(4)), lambda a, b: a + b),
    ("sub", lambda a, b: a - b, dict(a=r(3, 1), b=r(1, 4)), lambda a, b: a - b),
    ("mul", lambda a, b: a * b, dict(a=r(2, 3), b=r(2, 3)), lambda a, b: a * b),
    ("div", lambda a, b: a / b, dict(a=r(5), b=r(5) + 3), lambda a, b: a / b),
    ("neg", lambda x: -x, dict(x=r(4)), lambda x: -x),
    ("reciprocal", lambda x: 1 / x, dict(x=r(4) + 5), lambda x: 1 / x),
    ("exp", adl.exp, dict(x=r(4)), np.exp),
    ("log", adl.log, dict(x=np.abs(r(4)) + 0.1), np.log),
    ("sqrt", adl.sqrt, dict(x=np.abs(r(4)) + 0.1), np.sqrt),
    ("sin", adl.sin, dict(x=r(4)), np.sin),
    ("cos", adl.cos, dict(x=r(4)), np.cos),
    ("tanh", adl.tanh, dict(x=r(4)), np.tanh),
    ("sigmoid", adl.sigmoid, dict(x=r(4) * 10), lambda x: 1 / (1 + np.exp(-x))),
    ("relu", adl.relu, dict(x=r(6)), lambda x: np.where(x > 0, x, 0)),
    ("leaky_relu", lambda x: adl.leaky_relu(x, 0.2), dict(x=r(6)), lambda x: np.where(x > 0, x, 0.2 * x)),
    ("abs", adl.abs, dict(x=r(6)), np.abs),
    ("maximum", adl.maximum, dict(a=r(3, 4), b=r(4)), np.maximum),
    ("minimum", adl.minimum, dict(a=r(3, 4), b=r(4)), np.minimum),
    ("pow", lambda x: x ** 3, dict(x=r(4)), lambda x: x * x * x),
    ("pow_frac", lambda x: x ** 0.5, dict(x=np.abs(r(4))), np.sqrt),
]


@pytest.mark.parametrize("name,fn,inputs,reference", ELEMENTWISE, ids=[c[0] for c in ELEMENTWISE])
def test_elementwise_forward_matches_numpy(name, fn, inputs, reference):
    out, g = run(fn, **inputs)
    expected = reference(*inputs.values())
    assert out.shape == expected.shape == g.node(g.output)["shape"]
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-300)


def test_sigmoid_is_finite_at_extremes():
    out, _ = run(adl.sigmoid, x=np.array([-800.0, -40.0, 0.0, 40.0, 800.0]))
    np.testing.assert_allclose(out, [0.0, 4.248354255291589e-18, 0.5, 1.0, 1.0], rtol=1e-12)


REDUCTIONS = [
    ("sum_all", lambda x: adl.sum(x), lambda x: np.sum(x)),
    ("sum_axis", lambda x: adl.sum(x, axis=1), lambda x: np.sum(x, axis=1)),
    ("sum_keep", lambda x: adl.sum(x, axis=(0, 2), keepdims=True), lambda x: np.sum(x, axis=(0, 2), keepdims=True)),
    ("mean", lambda x: adl.mean(x, axis=-1), lambda x: np.mean(x, axis=-1)),
    ("max", lambda x: adl.max(x, axis=0), lambda x: np.max(x, axis=0)),
    ("max_all", lambda x: x.max(), lambda x: np.max(x)),
    ("method_sum", lambda x: x.sum(axis=2), lambda x: x.sum(axis=2)),
]


@pytest.mark.parametrize("name,fn,reference", REDUCTIONS, ids=[c[0] for c in REDUCTIONS])
def test_reductions_match_numpy(name, fn, reference):
    x = r(2, 3, 4)
    out, _ = run(fn, x=x)
    np.testing.assert_allclose(out, reference(x), rtol=1e-14)


SHAPE_OPS = [
    ("reshape", lambda x: x.reshape((4, 6)), lambda x: x.reshape(4, 6)),
    ("reshape_infer", lambda x: adl.reshape(x, (-1, 2)), lambda x: x.reshape(-1, 2)),
    ("flatten", adl.flatten, lambda x: x.ravel()),
    ("transpose", lambda x: x.transpose((1, 2, 0)), lambda x: x.transpose(1, 2, 0)),
    ("T", lambda x: x.T, lambda x: x.T),
    ("broadcast_to", lambda x: adl.broadcast_to(x[:, :1, :], (5, 2, 3, 4)), lambda x: np.broadcast_to(x[:, :1, :], (5, 2, 3, 4))),
    ("index_int", lambda x: x[1], lambda x: x[1]),
    ("index_slices", lambda x: x[:, 1:, ::2], lambda x: x[:, 1:, ::2]),
    ("index_neg_newaxis", lambda x: x[-1, None, ..., 2], lambda x: x[-1, None, ..., 2]),
    ("concatenate", lambda x: adl.concatenate([x, x[:, :1]], axis=1), lambda x: np.concatenate([x, x[:, :1]], axis=1)),
]


@pytest.mark.parametrize("name,fn,reference", SHAPE_OPS, ids=[c[0] for c in SHAPE_OPS])
def test_shape_ops_match_numpy(name, fn, reference):
    x = r(2, 3, 4)
    out, g = run(fn, x=x)
    expected = reference(x)
    assert g.node(g.output)["shape"] == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                    ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_matches_numpy(sa, sb):
    a, b = r(*sa), r(*sb)
    out, g = run(lambda a, b: a @ b, a=a, b=b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-13)
    assert g.node(g.output)["shape"] == (a @ b).shape


def conv2d_loops(x, w, b, stride, padding, dilation, groups):
    """Convolution by its definition, with plain loops (an independent reference)."""
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, f, ho, wo))
    fg = f // groups
    for ni in range(n):
        for fi in range(f):
            grp = fi // fg
            for i in range(ho):
                for j in range(wo):
                    acc = b[fi] if b is not None else 0.0
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                acc += w[fi, ci, p, q] * xp[ni, grp * cg + ci,
                                                            i * stride[0] + p * dilation[0],
                                                            j * stride[1] + q * dilation[1]]
                    out[ni, fi, i, j] = acc
    return out


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 1), 1), ((1, 1), (2, 2), (2, 1), 1),
    ((1, 1), (1, 1), (1, 1), 2)])
def test_conv2d_matches_definition(stride, padding, dilation, groups):
    x, w, b = r(2, 4, 7, 6), r(6, 4 // groups, 3, 2), r(6)
    out, g = run(lambda x, w, b: adl.conv2d(x, w, b, stride, padding, dilation, groups), x=x, w=w, b=b)
    expected = conv2d_loops(x, w, b, stride, padding, dilation, groups)
    assert out.shape == expected.shape == g.node(g.output)["shape"]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_conv2d_same_padding_keeps_size():
    out, _ = run(lambda x, w: adl.conv2d(x, w, padding="same"), x=r(1, 2, 9, 7), w=r(3, 2, 3, 3))
    assert out.shape == (1, 3, 9, 7)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    # <conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for the same stride/padding/dilation
    x, w = r(2, 3, 9, 8), r(4, 3, 3, 3)
    kw = dict(stride=2, padding=1, dilation=1)
    y_shape = adl.conv2d(x, w, **kw).shape
    y = r(*y_shape)
    xt = adl.conv_transpose2d(y, w, **kw, output_padding=(0, 1))
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(adl.conv2d(x, w, **kw) * y), np.sum(x * xt), rtol=1e-12)


def test_conv_transpose2d_output_size_is_pytorchs():
    out = adl.conv_transpose2d(r(1, 3, 5, 5), r(3, 2, 3, 3), stride=2, padding=1, output_padding=1)
    assert out.shape == (1, 2, 10, 10)  # (5-1)*2 - 2 + 3 + 1


def test_pooling_matches_loops():
    x = r(2, 3, 6, 7)
    mp = adl.max_pool2d(x, kernel=2, stride=2)
    ap = adl.avg_pool2d(x, kernel=3, stride=1, padding=1)
    expected_mp = np.array([[[[x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(3)]
                              for i in range(3)] for c in range(3)] for n in range(2)])
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected_ap = np.array([[[[xp[n, c, i:i + 3, j:j + 3].sum() / 9 for j in range(7)]
                              for i in range(6)] for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(mp, expected_mp)
    np.testing.assert_allclose(ap, expected_ap, rtol=1e-13)


def test_upsample_nearest():
    x = r(1, 2, 2, 3)
    np.testing.assert_array_equal(adl.upsample(x, (2, 3)), x.repeat(2, axis=2).repeat(3, axis=3))


def test_batch_norm_training_and_evaluation():
    x, gamma, beta = r(8, 3, 4, 4), r(3), r(3)
    out = adl.batch_norm(x, gamma, beta, eps=1e-5)
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # biased, as PyTorch normalises
    expected = (x - mu) / np.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    rm, rv = r(3), np.abs(r(3)) + 0.5
    out_eval = adl.batch_norm(x, gamma, beta, rm, rv, training=False)
    expected_eval = ((x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * gamma[:, None, None]
                     + beta[:, None, None])
    np.testing.assert_allclose(out_eval, expected_eval, rtol=1e-12)


def test_softmax_family_and_losses():
    logits, labels = r(5, 4) * 30, np.array([0, 3, 1, 1, 2])
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    np.testing.assert_allclose(adl.log_softmax(logits), logp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adl.softmax(logits), np.exp(logp), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(adl.softmax_cross_entropy(logits, labels),
                               -logp[np.arange(5), labels].mean(), rtol=1e-12)
    p, t = r(3, 4), r(3, 4)
    np.testing.assert_allclose(adl.mse_loss(p, t), 0.5 * np.sum((p - t) ** 2), rtol=1e-14)
    np.testing.assert_allclose(adl.mse_loss(p, t, "mean"), 0.5 * np.mean((p - t) ** 2), rtol=1e-14)
    np.testing.assert_allclose(adl.l1_loss(p, t), np.sum(np.abs(p - t)), rtol=1e-14)
    np.testing.assert_allclose(adl.l1_loss(p, t, "mean"), np.mean(np.abs(p - t)), rtol=1e-14)


def test_cross_entropy_traces_with_integer_label_input():
    g = adl.trace(lambda z, y: adl.softmax_cross_entropy(z, y), z=(4, 3), y=np.array([0, 1, 2, 0]))
    assert g.node(g.inputs["y"])["dtype"] == "int64"
    out = g.evaluate({"z": np.zeros((4, 3)), "y": np.array([0, 1, 2, 0])})["out"]
    np.testing.assert_allclose(out, np.log(3))


@pytest.mark.parametrize("fn,shapes,fragment", [
    (lambda a, b: a + b, dict(a=(3, 4), b=(5,)), "could not be broadcast"),
    (lambda a, b: a @ b, dict(a=(3, 4), b=(5, 2)), "inner dimensions 4 and 5"),
    (lambda x: x.reshape((5,)), dict(x=(2, 3)), "cannot reshape"),
    (lambda x: x[3], dict(x=(2, 3)), "out of bounds"),
    (lambda x, w: adl.conv2d(x, w), dict(x=(1, 3, 8, 8), w=(4, 2, 3, 3)), "channels"),
    (lambda x, w: adl.conv2d(x, w), dict(x=(3, 8, 8), w=(4, 3, 3, 3)), "(N, C, H, W)"),
    (lambda x, w: adl.conv2d(x, w), dict(x=(1, 3, 2, 2), w=(4, 3, 3, 3)), "does not fit"),
    (lambda x: adl.max_pool2d(x, 4), dict(x=(1, 1, 2, 2)), "does not fit"),
    (lambda x, g, b: adl.batch_norm(x, g, b), dict(x=(4, 3), g=(4,), b=(3,)), "gamma"),
    (lambda p, t: adl.mse_loss(p, t), dict(p=(3,), t=(4,)), "one shape"),
    (lambda a, b: adl.concatenate([a, b], axis=0), dict(a=(2, 3), b=(2, 4)), "cannot concatenate"),
])
def test_shape_errors_name_node_op_and_shapes(fn, shapes, fragment):
    with pytest.raises(ShapeError) as info:
        adl.trace(fn, **shapes)
    message = str(info.value)
    assert fragment in message
    assert "node " in message and "test_optable.py" in message  # where the user wrote it
    assert any(str(tuple(s)) in message for s in shapes.values())


def test_every_op_has_all_table_fields():
    for name, op in OPS.items():
        assert op.name == name and op.label and callable(op.shape) and callable(op.forward)
        assert op.vjp and any(v is not None for v in op.vjp), name
        assert op.sympy is not None, name
        assert op.doc, name


def test_required_primitives_are_in_the_table():
    required = """add sub mul div neg pow reciprocal exp log sqrt sin cos tanh sigmoid relu
        leaky_relu abs maximum minimum sum mean max reshape transpose broadcast_to index
        concatenate matmul conv2d conv_transpose2d max_pool2d avg_pool2d upsample batch_norm
        log_softmax softmax_cross_entropy mse l1""".split()
    assert not set(required) - set(OPS)


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(UnknownOpError, match="unknown op 'frobnicate'.*sigmoid"):
        get_op("frobnicate")


def test_complex_safe_forwards_act_on_the_real_part():
    z = np.array([-1.0 + 1e-20j, 2.0 + 1e-20j])
    assert OPS["abs"].complex_safe and OPS["relu"].complex_safe
    np.testing.assert_array_equal(OPS["abs"].forward(z).imag, [-1e-20, 1e-20])  # not the modulus
    np.testing.assert_array_equal(OPS["relu"].forward(z).imag, [0, 1e-20])
    np.testing.assert_array_equal(OPS["maximum"].forward(z, np.zeros(2)).imag, [0, 1e-20])


def test_kinks_are_reported():
    assert OPS["relu"].kink(np.array([0.0, 1.0]))
    assert not OPS["relu"].kink(np.array([0.5, 1.0]))
    assert OPS["max"].kink(np.array([[1.0, 1.0]]), axes=(-1,))
    assert OPS["maximum"].kink(np.array(1.0), np.array(1.0))


# --------------------------------------------------------------------------------------
# vjp_product_with: the tape proves a gradient finite from the two factors of its products
# --------------------------------------------------------------------------------------

# op name -> operand shapes (1-D operands, batches broadcast against each other)
PRODUCT_CASES = {
    "matmul": [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
               ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2))],
}


def test_every_op_claiming_products_has_cases():
    assert {n for n, op in OPS.items() if op.vjp_product_with is not None} == set(PRODUCT_CASES)


@pytest.mark.parametrize("name,shapes", [(n, s) for n, cases in PRODUCT_CASES.items() for s in cases])
def test_a_rule_claimed_a_sum_of_products_is_bilinear_and_bounded_by_them(name, shapes):
    # the claim "input i's rule sums products g[·]·xs[j][·], each element of g at most once
    # per sum" implies: scaling g by s and xs[j] by t scales the result by s·t, and every
    # |result| ≤ g.size · max|g| · max|xs[j]| (what the tape's proof assumes)
    op = OPS[name]
    xs = [r(*s) for s in shapes]
    ans = op.forward(*xs)
    g = r(*np.shape(ans))
    for i, j in enumerate(op.vjp_product_with):
        if j is None:
            continue
        rule = op.vjp_for(i)
        base = rule(g, ans, *xs)
        scaled = list(xs)
        scaled[j] = xs[j] * -3.0
        np.testing.assert_allclose(rule(g * 0.5, ans, *scaled), -1.5 * base, rtol=1e-13, atol=1e-13)
        # the other inputs and ``ans`` do not enter: changing them changes nothing
        others = [x if k == j else x + 1.0 for k, x in enumerate(xs)]
        np.testing.assert_allclose(rule(g, ans + 1.0, *others), base, rtol=1e-13, atol=1e-13)
        bound = g.size * np.abs(g).max() * np.abs(xs[j]).max()
        assert np.abs(base).max() <= bound
        # at most once per sum: with g and xs[j] all ones, every |result| ≤ g.size
        ones = list(xs)
        ones[j] = np.ones_like(xs[j])
        assert np.abs(rule(np.ones_like(g), ans, *ones)).max() <= g.size


# --------------------------------------------------------------------------------------
# fused rules: the tape's one-call form of an op's VJPs must agree with the rules
# --------------------------------------------------------------------------------------

def _bn_case(shape, training):
    def make(dtype):
        c = shape[1]
        args = [r(*shape) * 2 + 0.5, r(c), r(c)]
        if not training:
            args += [r(c), np.abs(r(c)) + 0.5]
        return [a.astype(dtype) for a in args]
    return make, {"training": training, "eps": 1e-5}


def _conv_case(x_shape, w_shape, bias, **attrs):
    def make(dtype):
        args = [r(*x_shape), r(*w_shape)] + ([r(w_shape[0])] if bias else [])
        return [a.astype(dtype) for a in args]
    return make, attrs


def _pair_loss_case(shape, reduction):
    def make(dtype):
        return [r(*shape).astype(dtype), r(*shape).astype(dtype)]
    return make, {"reduction": reduction}


# op name -> cases (operands for a dtype, attributes)
FUSED_CASES = {
    "mse": [_pair_loss_case((16, 4), "sum"), _pair_loss_case((3, 1, 5), "mean"),
            _pair_loss_case((784, 64), "sum"), _pair_loss_case((), "mean"),
            _pair_loss_case((64, 50), "mean")],  # the last two big: a saved difference
    "conv2d": [_conv_case((2, 3, 7, 6), (4, 3, 3, 3), True, padding=(1, 1)),
               _conv_case((2, 4, 5, 7), (2, 4, 3, 2), False, padding=(1, 0)),  # thin
               _conv_case((1, 4, 9, 8), (6, 2, 3, 3), True, padding=(2, 1), dilation=(2, 1),
                          groups=2),
               _conv_case((2, 3, 7, 7), (5, 3, 3, 3), False, stride=(2, 1), padding=(1, 1)),
               _conv_case((1, 2, 4, 4), (3, 2, 3, 3), False, padding=(3, 3))],
    "batch_norm": [_bn_case((4, 3, 5, 2), True), _bn_case((6, 3), True),
                   _bn_case((3, 2, 3, 3), False), _bn_case((5, 4), False)],
}


def test_every_fused_rule_has_cases():
    fused = {name for name, op in OPS.items() if op.fused_vjp is not None}
    assert fused == set(FUSED_CASES)
    assert all(op.fused_vjp is not None for op in OPS.values() if op.forward_saving is not None)


def _wanted_subsets(n):
    return [tuple(bool(m >> i & 1) for i in range(n)) for m in range(1, 1 << n)]


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,k", [(n, k) for n, cases in FUSED_CASES.items()
                                    for k in range(len(cases))])
def test_fused_vjp_agrees_with_the_per_input_rules(name, k, dtype, fast):
    from autodiff_lab.kernels import dispatch
    op = OPS[name]
    make, attrs = FUSED_CASES[name][k]
    args = make(dtype)
    attrs = {**op.attrs, **attrs}
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    before = dispatch.enabled
    dispatch.enabled = fast
    try:
        ans = op.forward(*args, **attrs)
        saves = [None]
        if op.forward_saving is not None:
            again, saved = op.forward_saving(*args, **attrs)
            np.testing.assert_array_equal(again, ans)
            saves.append(saved)
        g = r(*ans.shape).astype(dtype)
        rules = [op.vjp_for(i)(g, ans, *args, **attrs) for i in range(len(args))]
        for wanted in _wanted_subsets(len(args)):
            for saved in saves:
                got = op.fused_vjp(wanted, saved, g, ans, *args, **attrs)
                assert len(got) == len(args)
                for i, (want, a, b) in enumerate(zip(wanted, got, rules)):
                    if not want:
                        assert a is None, (wanted, i)
                        continue
                    assert a.shape == b.shape and a.dtype == dtype, (wanted, i)
                    np.testing.assert_allclose(a, b, **tol, err_msg=f"{name} input {i}, {wanted}")
    finally:
        dispatch.enabled = before


# op pair -> cases, as FUSED_CASES (operands of the first op)
FUSION_CASES = {
    ("batch_norm", "relu"): FUSED_CASES["batch_norm"],
    # the last two are big enough for the Winograd kernels (16 channels, 512 tiles in f32),
    # which apply the ReLU in their transforms
    ("conv2d", "relu"): FUSED_CASES["conv2d"] + [
        _conv_case((2, 16, 31, 32), (16, 16, 3, 3), True, padding=(1, 1)),
        _conv_case((2, 16, 33, 33), (16, 16, 3, 3), False, padding=(0, 2))],
    ("batch_norm", "leaky_relu"): FUSED_CASES["batch_norm"],
}
# op pair -> attributes of the second op to try (default: its defaults only); slopes the
# fused kernels read from the result (positive, finite) and ones they leave to the entries
FUSION_SECOND_ATTRS = {
    ("batch_norm", "leaky_relu"): [{}, {"alpha": 0.3}, {"alpha": 0.0}, {"alpha": -0.5},
                                   {"alpha": 1e-60}],
}


def test_every_fusion_has_cases():
    from autodiff_lab.graph.optable import FUSIONS
    assert set(FUSIONS) == set(FUSION_CASES)


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("pair,k", [(p, k) for p, cases in FUSION_CASES.items()
                                    for k in range(len(cases))])
def test_fusion_agrees_with_the_two_entries(pair, k, dtype, fast):
    from autodiff_lab.graph.optable import FUSIONS
    from autodiff_lab.kernels import dispatch
    fusion = FUSIONS[pair]
    first, second = OPS[pair[0]], OPS[pair[1]]
    make, first_attrs = FUSION_CASES[pair][k]
    args = make(dtype)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    before = dispatch.enabled
    dispatch.enabled = fast
    try:
        for second_attrs in FUSION_SECOND_ATTRS.get(pair, [{}]):
            attrs = fusion.step_attrs({**first.attrs, **first_attrs}, second_attrs)
            _check_fusion(fusion, first, second, args, {**first.attrs, **first_attrs},
                          {**second.attrs, **second_attrs}, attrs, dtype, tol)
    finally:
        dispatch.enabled = before


def _check_fusion(fusion, first, second, args, first_attrs, second_attrs, attrs, dtype, tol):
    """The fusion (keywords ``attrs``) against ``first`` then ``second`` with their own."""
    y = first.forward(*args, **first_attrs)
    ans = second.forward(y, **second_attrs)
    got_ans, saved = fusion.forward_saving(*args, **attrs)
    np.testing.assert_allclose(got_ans, ans, **tol)
    g = r(*ans.shape).astype(dtype)
    dy = second.vjp_for(0)(g, ans, y, **second_attrs)
    want = first.per_input_vjps((True,) * len(args), dy, y, *args, **first_attrs)
    op = fusion.as_op()
    for wanted in _wanted_subsets(len(args)):
        for s in (saved, None):
            got = op.fused_vjp(wanted, s, g, ans, *args, **attrs)
            for i, (on, a, b) in enumerate(zip(wanted, got, want)):
                if not on:
                    assert a is None
                    continue
                assert a.dtype == dtype
                np.testing.assert_allclose(a, b, **tol, err_msg=f"{op.name} {attrs} input {i}")
    # the one-rule-per-input view of the pair agrees too
    for i in range(len(args)):
        np.testing.assert_allclose(op.vjp_for(i)(g, ans, *args, **attrs), want[i], **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("k", range(len(FUSED_CASES["mse"])))
def test_mse_fused_rule_is_the_per_input_rules_exactly(k, dtype):
    """The target's gradient is the prediction's negated: the same numbers, bit for bit, as
    its own rule, for either reduction, a float64 or a same-dtype upstream gradient -- also
    from the difference the saving forward kept, which the rule leaves unchanged."""
    op = OPS["mse"]
    make, attrs = FUSED_CASES["mse"][k]
    pred, target = make(dtype)
    ans = op.forward(pred, target, **attrs)
    again, saved = op.forward_saving(pred, target, **attrs)
    assert (saved is not None) == (pred.size >= 2048)  # big arrays: one pass, d kept
    kept = None if saved is None else saved.copy()
    for g in (np.asarray(0.7, dtype), 1.0, np.float64(-3.25)):
        rules = [op.vjp_for(i)(g, ans, pred, target, **attrs) for i in range(2)]
        for wanted in _wanted_subsets(2):
            for s in (None, saved):
                got = op.fused_vjp(wanted, s, g, ans, pred, target, **attrs)
                for want, a, b in zip(wanted, got, rules):
                    if want:
                        assert np.asarray(a).dtype == np.asarray(b).dtype
                        np.testing.assert_array_equal(a, b)
                    else:
                        assert a is None
    if saved is not None:
        np.testing.assert_array_equal(saved, kept)
        np.testing.assert_array_equal(saved, pred - target)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mse_one_pass_loss_is_the_float64_sum_rounded_once(dtype, reduction):
    """The one-pass loss of big arrays sums the squares in float64: the float32 loss is the
    exact sum rounded once (within float64's error), NaN and ±Inf give NaN or Inf as
    numpy's three passes do, and small arrays keep numpy's arithmetic."""
    op = OPS["mse"]
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((300, 70)).astype(dtype)
    target = rng.standard_normal((300, 70)).astype(dtype)
    got = op.forward(pred, target, reduction=reduction)
    d = pred.astype(np.float64) - target.astype(np.float64)  # exact for float32 inputs
    want = 0.5 * (np.sum(d * d) if reduction == "sum" else np.mean(d * d))
    assert got.dtype == dtype
    assert got == pytest.approx(want, rel=6e-8 if dtype == np.float32 else 1e-13)
    for bad, expect in ((np.nan, np.isnan), (np.inf, np.isinf)):
        p = pred.copy()
        p[7, 3] = bad
        with np.errstate(invalid="ignore", over="ignore"):
            value, saved = op.forward_saving(p, target, reduction=reduction)
            assert expect(value) and expect(op.forward(p, target, reduction=reduction))
    small = op.forward(pred[:2, :5], target[:2, :5], reduction=reduction)
    ref = pred[:2, :5] - target[:2, :5]
    ref = 0.5 * (np.add.reduce(ref * ref, axis=(0, 1)) if reduction == "sum" else (ref * ref).mean())
    assert small == ref
