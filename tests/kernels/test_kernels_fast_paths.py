"""The speed paths of the kernels against the numpy reference: the fused convolution
backward (one patch matrix of g for both gradients), the blocked patch matrices, the fused
batch-norm rules with the forward's statistics, and the tape steps that use them."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import examples
from autodiff_lab.graph.optable import OPS
from autodiff_lab.kernels import batch_norm_fast as BN
from autodiff_lab.kernels import conv_fast as F
from autodiff_lab.kernels import conv_reference as R
from autodiff_lab.kernels import dispatch

RNG = np.random.default_rng(11)
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-11, atol=1e-11)}


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


# x shape, weight shape, stride, padding, dilation, groups: odd sizes, rows that do not
# divide into blocks, thin (≤ 4 filters) and wide, padding inside and beyond the kernel reach
CONVS = [
    ((2, 3, 7, 5), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 4, 9, 6), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2),
    ((1, 4, 11, 7), (2, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1),      # thin
    ((2, 2, 9, 8), (5, 2, 3, 2), (1, 1), (2, 1), (2, 1), 1),       # dilated
    ((2, 6, 8, 9), (6, 2, 5, 3), (1, 1), (2, 0), (1, 1), 3),       # 5×3 kernel, groups 3
    ((2, 3, 9, 7), (4, 3, 3, 3), (2, 1), (1, 1), (1, 1), 1),       # strided: no sharing
    ((1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (3, 3), (1, 1), 1),       # padding beyond the reach
    ((2, 1, 6, 5), (8, 1, 3, 3), (1, 1), (1, 1), (1, 1), 1),       # one input channel
]


def _conv_operands(dtype, x_shape, w_shape, stride, padding, dilation, groups):
    x = RNG.standard_normal(x_shape).astype(dtype)
    w = RNG.standard_normal(w_shape).astype(dtype)
    out = R.conv2d_forward(x, w, stride, padding, dilation, groups)
    g = RNG.standard_normal(out.shape).astype(dtype)
    return x, w, g


@pytest.mark.parametrize("block_bytes", [1, 600, None], ids=["row", "small", "default"])
@pytest.mark.parametrize("case", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_fused_conv_backward_matches_the_reference(dtype, case, block_bytes, monkeypatch):
    x_shape, w_shape, stride, padding, dilation, groups = case
    if block_bytes is not None:
        monkeypatch.setattr(F, "BLOCK_BYTES", block_bytes)
    x, w, g = _conv_operands(dtype, *case)
    args = (stride, padding, dilation, groups)
    want_dx = R.conv2d_backward_input(g, w, x.shape, *args)
    want_dw = R.conv2d_backward_weight(g, x, w.shape, *args)
    for wanted in ((True, True), (True, False), (False, True)):
        dx, dw = F.conv2d_backward(g, x, w, *args, *wanted)
        for got, want, on in ((dx, want_dx, wanted[0]), (dw, want_dw, wanted[1])):
            if not on:
                assert got is None
                continue
            assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
            np.testing.assert_allclose(got, want, **TOL[dtype])
    np.testing.assert_allclose(F.conv2d_forward(x, w, *args),
                               R.conv2d_forward(x, w, *args), **TOL[dtype])
    np.testing.assert_allclose(F.conv2d_backward_weight(g, x, w.shape, *args), want_dw,
                               **TOL[dtype])


def test_fused_conv_backward_shares_one_patch_matrix_only_where_it_may():
    x, w, g = _conv_operands(np.float64, *CONVS[0])
    assert F._shares_patches(g, x, w, (1, 1), (1, 1), (1, 1))
    assert not F._shares_patches(g, x, w, (2, 1), (1, 1), (1, 1))       # strided
    assert not F._shares_patches(g, x, w, (1, 1), (3, 1), (1, 1))       # padding beyond reach
    w_bad = w.copy()
    w_bad[0, 0, 0, 0] = np.inf
    assert not F._shares_patches(g, x, w_bad, (1, 1), (1, 1), (1, 1))   # 0·Inf in the padding
    g_bad = g.copy()
    g_bad[0, 0, 0, 0] = np.nan
    assert not F._shares_patches(g_bad, x, w, (1, 1), (1, 1), (2, 2))   # dilated: g checked


def test_dilated_window_wholly_in_the_padding_keeps_the_references_nan():
    # h = 1, kernel 2 with dilation 3 and padding 3: output row 1 sees only padding, so its
    # g meets no pixel in the shared sum; the reference multiplies it by zeros (0·Inf = NaN)
    x = RNG.standard_normal((1, 1, 1, 4))
    w = RNG.standard_normal((2, 1, 2, 1))
    args = ((1, 1), (3, 0), (3, 1), 1)
    g = RNG.standard_normal(R.conv2d_forward(x, w, *args).shape)
    g[0, 0, 1, 2] = np.inf
    with np.errstate(all="ignore"):
        got = F.conv2d_backward(g, x, w, *args, True, True)[1]
        want = R.conv2d_backward_weight(g, x, w.shape, *args)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any()


@pytest.mark.parametrize("n,ho,row_bytes,block", [(5, 7, 100, 1), (3, 9, 10, 200),
                                                  (4, 40, 46080, 1 << 20), (2, 3, 7, 21)])
def test_blocks_cover_every_output_row_once(n, ho, row_bytes, block, monkeypatch):
    monkeypatch.setattr(F, "BLOCK_BYTES", block)
    seen = np.zeros((n, ho), dtype=int)
    for n0, n1, r0, r1 in F._blocks(n, ho, row_bytes):
        assert n0 < n1 and r0 < r1
        assert (n1 - n0) * (r1 - r0) * row_bytes <= max(block, row_bytes)
        seen[n0:n1, r0:r1] += 1
    assert (seen == 1).all()


def test_dispatch_fused_conv_backward_takes_the_reference_for_complex_numbers():
    x, w, g = _conv_operands(np.float64, *CONVS[1])
    xc = x + 1e-20j
    dx, dw = dispatch.conv2d_backward(g, xc, w, (1, 1), (1, 1), (1, 1), 2, (True, True))
    np.testing.assert_allclose(dx, R.conv2d_backward_input(g, w, x.shape, (1, 1), (1, 1),
                                                           (1, 1), 2))
    assert np.iscomplexobj(dw)


# --------------------------------------------------------------------------------------
# batch norm: one pass for x, γ and β, with the forward's statistics
# --------------------------------------------------------------------------------------

def _bn_reference(x, gamma, beta, mean, var, training, eps, g):
    op = OPS["batch_norm"]
    args = (x, gamma, beta) + ((mean, var) if not training else ())
    before = dispatch.enabled
    dispatch.enabled = False
    try:
        out = op.forward(*args, training=training, eps=eps)
        grads = [op.vjp_for(i)(g, out, *args, training=training, eps=eps) for i in range(3)]
    finally:
        dispatch.enabled = before
    return out, grads


@pytest.mark.parametrize("shape", [(7, 3), (3, 5, 7, 1), (2, 4, 3, 5)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_fused_rules_match_the_numpy_rules(dtype, shape, training):
    c = shape[1]
    x = (RNG.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma, beta = RNG.standard_normal(c).astype(dtype), RNG.standard_normal(c).astype(dtype)
    mean = None if training else RNG.standard_normal(c).astype(dtype)
    var = None if training else (RNG.uniform(0.5, 2, c)).astype(dtype)
    g = RNG.standard_normal(shape).astype(dtype)
    want_out, want = _bn_reference(x, gamma, beta, mean, var, training, 1e-5, g)
    out, stats = BN.batch_norm_forward_saving(x, gamma, beta, mean, var, training, 1e-5)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, want_out, **TOL[dtype])
    if training:
        axes = (0,) + tuple(range(2, len(shape)))
        np.testing.assert_allclose(stats[0], x.astype(np.float64).mean(axis=axes), rtol=1e-6)
        np.testing.assert_allclose(stats[1], x.astype(np.float64).var(axis=axes), rtol=1e-6)
    else:
        assert stats is None
    for given in (stats, None):
        for wanted in ((True, True, True), (True, False, False), (False, True, True),
                       (False, False, True)):
            got = BN.batch_norm_backward_all(g, x, gamma, mean, var, training, 1e-5, wanted,
                                             given)
            for on, a, b in zip(wanted, got, want):
                if not on:
                    assert a is None
                    continue
                assert a.dtype == dtype and a.shape == b.shape
                np.testing.assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("shape", [(3, 5, 7, 1), (2, 3, 6, 5), (1, 1, 4, 4)])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_batch_norm_on_channel_ranges_of_two_threads_is_bit_for_bit(dtype, shape, activation,
                                                                    monkeypatch):
    # the serial kernels over channel ranges on two Python threads (large arrays) give the
    # very numbers of one loop over every channel: forward, statistics and backward
    c = shape[1]
    x = (RNG.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma, beta = RNG.standard_normal(c).astype(dtype), RNG.standard_normal(c).astype(dtype)
    g = RNG.standard_normal(shape).astype(dtype)
    monkeypatch.setattr(BN, "PARALLEL_MIN", 1)
    ran = []
    real = BN.conv_fast._run_blocks
    monkeypatch.setattr(BN.conv_fast, "_run_blocks", lambda w, b: ran.append(b) or real(w, b))
    results = {}
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # as dispatch runs the kernels: not Numba's parallel loops
    try:
        for workers in (1, 2):
            monkeypatch.setattr(BN.conv_fast, "BLOCK_WORKERS", workers)
            out, stats = BN.batch_norm_forward_saving(x, gamma, beta, None, None, True, 1e-5,
                                                      activation)
            grads = BN.batch_norm_backward_all(g, x, gamma, None, None, True, 1e-5,
                                               (True, True, True), None, activation, out)
            results[workers] = (out, *stats, *grads, BN.batch_stats(x))
    finally:
        numba.set_num_threads(before)
    # forward, backward (statistics again: none given), batch_stats
    assert ran == ([] if c == 1 else [[(0, c // 2), (c // 2, c)]] * 4)
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# the tape with fused rules: the same gradients as the per-input rules
# --------------------------------------------------------------------------------------

def test_tape_fused_steps_give_the_per_input_gradients(dtype, monkeypatch):
    ex = examples.dncnn(batch=2, size=7, channels=5, depth=4, dtype=np.dtype(dtype).name)
    wrt = list(ex.graph.parameters)
    fused = adl.engine("tape").compile(ex.graph, wrt=wrt)
    assert any(f is not None for *_, f in fused._backward)
    got = fused(ex.values)
    # the same program with every op's fused rule and saving forward removed
    import dataclasses
    plain_ops = {name: dataclasses.replace(op, fused_vjp=None, forward_saving=None)
                 for name, op in OPS.items()}
    monkeypatch.setattr("autodiff_lab.engines.tape.OPS", plain_ops)
    monkeypatch.setattr("autodiff_lab.engines.tape.FUSIONS", {})  # fused pairs have fused rules
    plain = adl.engine("tape").compile(ex.graph, wrt=wrt)
    assert all(f is None for *_, f in plain._backward)
    want = plain(ex.values)
    np.testing.assert_allclose(got.value, want.value, **TOL[dtype])
    for k in wrt:
        np.testing.assert_allclose(got.grads[k], want.grads[k], **TOL[dtype], err_msg=k)


def test_tape_keeps_saved_statistics_only_until_the_backward_step(monkeypatch):
    ex = examples.dncnn(batch=2, size=6, channels=3, depth=4)
    program = adl.engine("tape").compile(ex.graph, wrt=list(ex.graph.parameters))
    state = program.forward(ex.values)
    # the steps holding a batch norm (fused with the ReLU after it: then the ReLU's node)
    bn_nodes = {s.node for s in program.steps if s.op.name.startswith("batch_norm")}
    assert len(bn_nodes) == 2

    def holding():  # (the conv+relu steps save nothing: None)
        return {node for node, kept in state.saved.items() if kept is not None}
    assert holding() == bn_nodes
    first = program.backward(state, retain=True)
    assert holding() == bn_nodes  # retained for another pass
    second = program.backward(state)
    assert state.saved == {}
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tape_keeps_the_mse_difference_for_its_rule_and_reads_it_twice_alike(dtype, monkeypatch):
    """The inpainting MLP's loss keeps ŷ − y from its forward (one pass) for its rule: the
    gradients are those of the numpy rules, and a retained second pass gets them again."""
    ex = examples.mlp(bias=False, dtype=dtype)
    program = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])
    state = program.forward(ex.values)
    (node,) = [s.node for s in program.steps if s.op.name == "mse"]
    assert state.saved[node].shape == (784, 64)
    first = program.backward(state, retain=True)
    second = program.backward(state)
    assert state.saved == {}
    monkeypatch.setattr(dispatch, "difference_squares", lambda pred, target: None)
    plain = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])(ex.values)
    for k in ("W1", "W2"):
        np.testing.assert_array_equal(first[k], second[k])
        np.testing.assert_array_equal(first[k], plain.grads[k])  # the same rule's numbers


# --------------------------------------------------------------------------------------
# the tape's fusions: relu(batch_norm(x)) as one step
# --------------------------------------------------------------------------------------

def _step_ops(program):
    return [s.op.name for s in program.steps]


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_tape_fuses_relu_after_batch_norm_and_gets_the_same_gradients(dtype_name, monkeypatch):
    ex = examples.dncnn(batch=3, size=9, channels=4, depth=4, dtype=dtype_name)
    wrt = list(ex.graph.parameters)
    fused = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=wrt)
    # anomaly mode checks results, not every op, so it fuses too
    checked = adl.engine("tape", anomaly=True).compile(ex.graph, wrt=wrt)
    drawn = adl.engine("tape", anomaly=False, keep_all=True).compile(ex.graph, wrt=wrt)
    monkeypatch.setattr("autodiff_lab.engines.tape.FUSIONS", {})
    unfused = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=wrt)
    assert _step_ops(fused).count("batch_norm+relu") == 2
    assert _step_ops(checked).count("batch_norm+relu") == 2
    assert "batch_norm+relu" not in _step_ops(unfused) + _step_ops(drawn)
    # the normalised values are not kept (unfused neither: relu's rule reads its result)
    assert fused.memory_bytes <= unfused.memory_bytes
    assert not {s.args[0] for s in unfused.steps if s.op.name == "relu"} & unfused.kept
    np.testing.assert_array_equal(checked(ex.values).grads["w1"], fused(ex.values).grads["w1"])
    got, want = fused(ex.values), unfused(ex.values)
    tol = TOL[np.dtype(dtype_name).type]
    np.testing.assert_allclose(got.value, want.value, **tol)
    for k in wrt:
        np.testing.assert_allclose(got.grads[k], want.grads[k], **tol, err_msg=k)


def test_tape_does_not_fuse_a_batch_norm_whose_result_is_read_elsewhere():
    def twice(x, gamma, beta):
        y = adl.batch_norm(x, gamma, beta)
        return adl.sum(adl.relu(y)) + adl.sum(y * y)

    def as_output(x, gamma, beta):
        return adl.relu(adl.batch_norm(x, gamma, beta))

    shapes = dict(x=(4, 3, 2, 2), gamma=(3,), beta=(3,))
    vals = {"x": RNG.standard_normal(shapes["x"]), "gamma": RNG.standard_normal(3),
            "beta": RNG.standard_normal(3)}
    g = adl.trace(twice, **shapes)
    p = adl.engine("tape", anomaly=False).compile(g)
    assert "batch_norm+relu" not in _step_ops(p)
    r = p(vals)
    ref = adl.engine("tape").compile(g)(vals)
    for k in vals:
        np.testing.assert_allclose(r.grads[k], ref.grads[k], rtol=1e-10, atol=1e-12)
    # the relu's result is the output: still fused (only the batch norm's result must be
    # private to the pair)
    p2 = adl.engine("tape", anomaly=False).compile(adl.trace(as_output, **shapes))
    assert _step_ops(p2) == ["batch_norm+relu"]


def _bn_leaky_net(alpha, training=True):
    """conv → batch norm → leaky ReLU twice (the second with the default slope), then a sum
    of squares: two batch_norm+leaky_relu pairs for the tape to fuse."""
    def net(x, w, gamma, beta, mean, var):
        def bn(h):
            if training:
                return adl.batch_norm(h, gamma, beta)
            return adl.batch_norm(h, gamma, beta, mean, var, training=False)
        h = adl.leaky_relu(bn(adl.conv2d(x, w, padding=1)), alpha)
        h = adl.leaky_relu(bn(adl.conv2d(h, w, padding=1)))
        return adl.sum(h * h)
    return net


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("alpha", [0.2, 0.0, -0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tape_fuses_leaky_relu_after_batch_norm_and_gets_the_same_gradients(dtype, alpha,
                                                                           training):
    rng = np.random.default_rng(5)
    vals = {"x": rng.standard_normal((3, 4, 6, 5)), "w": rng.standard_normal((4, 4, 3, 3)),
            "gamma": rng.standard_normal(4), "beta": rng.standard_normal(4),
            "mean": rng.standard_normal(4), "var": rng.random(4) + 0.5}
    vals = {k: v.astype(dtype) for k, v in vals.items()}
    g = adl.trace(_bn_leaky_net(alpha, training), **vals)
    fused = adl.engine("tape", anomaly=False).compile(g)
    unfused = adl.engine("tape", anomaly=False, keep_all=True).compile(g)
    assert _step_ops(fused).count("batch_norm+leaky_relu") == 2
    assert "batch_norm+leaky_relu" not in _step_ops(unfused)
    assert "leaky_relu" not in _step_ops(fused)
    got, want = fused(vals), unfused(vals)
    np.testing.assert_allclose(got.value, want.value, **TOL[dtype])
    for k in vals:
        np.testing.assert_allclose(got.grads[k], want.grads[k], **TOL[dtype], err_msg=k)


def test_fused_batch_norm_leaky_relu_is_the_two_kernels_bit_for_bit(dtype):
    # the fused kernels against the unfused ones run one after the other (train mode, the
    # forward's statistics reused), with NaN and ±Inf in some channels
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 5, 9, 7)).astype(dtype)
    x[0, 1, 2, 3], x[1, 2, 0, 0], x[3, 3, 1, 1] = np.nan, np.inf, -np.inf
    gamma, beta = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    g[2, 0, 0, 0] = np.nan
    g[2, 4, 1, 1] = np.inf
    with np.errstate(all="ignore"):
        for alpha in (0.2, 0.01, 1e-30):
            y, stats = BN.batch_norm_forward_saving(x, gamma, beta, None, None, True, 1e-5)
            want_ans = OPS["leaky_relu"].forward(y, alpha=alpha)
            ans, stats2 = BN.batch_norm_forward_saving(x, gamma, beta, None, None, True, 1e-5,
                                                       "leaky_relu", alpha)
            np.testing.assert_array_equal(ans, want_ans)
            dy = OPS["leaky_relu"].vjp_for(0)(g, want_ans, y, alpha=alpha)
            want = BN.batch_norm_backward_all(dy, x, gamma, None, None, True, 1e-5,
                                              (True, True, True), stats)
            got = BN.batch_norm_backward_all(g, x, gamma, None, None, True, 1e-5,
                                             (True, True, True), stats2, "leaky_relu", ans, alpha)
            for a, b in zip(got, want):
                assert a.dtype == dtype
                np.testing.assert_array_equal(a, b)


def test_fusions_name_every_attribute_of_the_second_op(monkeypatch):
    from autodiff_lab.graph import optable
    from autodiff_lab.graph.optable import Fusion, _register_fusion
    monkeypatch.setattr(optable, "FUSIONS", dict(optable.FUSIONS))

    def fwd(*a, **k):
        return None, None
    # none, one clashing with batch norm's eps, one attribute twice
    for bad in ((), (("exponent", "eps"),), (("exponent", "a"), ("exponent", "b"))):
        with pytest.raises(ValueError, match="attribute"):
            _register_fusion(Fusion("batch_norm", "pow", fwd, fwd, second_attrs=bad))
    assert ("batch_norm", "pow") not in optable.FUSIONS
    fusion = Fusion("batch_norm", "leaky_relu", fwd, fwd, second_attrs=(("alpha", "slope"),))
    assert fusion.step_attrs({"eps": 1e-3}, {}) == {"eps": 1e-3, "slope": 0.01}
    assert fusion.step_attrs({"eps": 1e-3}, {"alpha": 0.5}) == {"eps": 1e-3, "slope": 0.5}
    assert fusion.step_attrs({}, {"other": 1}) is None


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "reference"])
def test_fused_batch_norm_relu_keeps_relu_prime_zero_at_zero(fast):
    # evaluation mode with x equal to the running mean and β = 0: the normalised value is
    # exactly 0 there, where relu'(0) = 0 gives no gradient to x
    from autodiff_lab.graph.optable import FUSIONS
    fusion = FUSIONS[("batch_norm", "relu")]
    x = RNG.standard_normal((5, 2))
    mean = x[0].copy()
    var = np.array([1.0, 2.0])
    gamma, beta = np.array([1.5, -0.5]), np.zeros(2)
    attrs = dict(training=False, eps=1e-5)
    before = dispatch.enabled
    dispatch.enabled = fast
    try:
        ans, saved = fusion.forward_saving(x, gamma, beta, mean, var, **attrs)
        assert (ans[0] == 0).all()
        g = np.ones_like(x)
        dx = fusion.fused_vjp((True, False, False, False, False), saved, g, ans, x, gamma, beta,
                              mean, var, **attrs)[0]
    finally:
        dispatch.enabled = before
    assert (dx[0] == 0).all()
    np.testing.assert_allclose(dx[1:], np.where(ans[1:] > 0, gamma / np.sqrt(var + 1e-5), 0))


# --------------------------------------------------------------------------------------
# blocks shared by several threads, numpy's BLAS on one thread meanwhile
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [CONVS[0], CONVS[1], CONVS[4], CONVS[5]],
                         ids=["plain", "groups", "5x3", "strided"])
def test_blocks_on_several_threads_give_the_one_thread_results(dtype, case, monkeypatch):
    x, w, g = _conv_operands(dtype, *case)
    args = case[2:]
    monkeypatch.setattr(F, "BLOCK_BYTES", 300)  # many blocks
    results = {}
    for workers in (1, 3):
        monkeypatch.setattr(F, "BLOCK_WORKERS", workers)
        results[workers] = (F.conv2d_forward(x, w, *args),
                            *F.conv2d_backward(g, x, w, *args, True, True),
                            F.conv2d_backward_weight(g, x, w.shape, *args))
    for a, b in zip(results[1], results[3]):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    np.testing.assert_allclose(results[3][0], R.conv2d_forward(x, w, *args), **TOL[dtype])


def test_blas_runs_single_threaded_only_inside_the_block_and_restores_the_count():
    from autodiff_lab.kernels import blas
    if not blas.available():
        pytest.skip("numpy's BLAS is not an OpenBLAS this build can reach")
    before = blas.threads()
    bound = blas._bind()
    with blas.single_threaded():
        assert bound[0]() == 1
        assert blas.threads() == before  # what the blocks split over
        with blas.single_threaded():     # nested (another thread's convolution)
            assert bound[0]() == 1
        assert bound[0]() == 1
    assert bound[0]() == before == blas.threads()
    x, w, g = _conv_operands(np.float32, *CONVS[0])
    F.conv2d_backward(g, x, w, (1, 1), (1, 1), (1, 1), 1, True, True)
    assert blas.threads() == before


def test_without_a_reachable_blas_the_blocks_run_in_the_calling_thread(monkeypatch):
    from autodiff_lab.kernels import blas
    monkeypatch.setattr(blas, "_searched", True)
    monkeypatch.setattr(blas, "_bound", None)
    assert blas.threads() == 1 and not blas.available()
    seen = set()
    import threading

    def work(blocks):
        seen.add(threading.get_ident())
        return len(blocks)
    assert F._run_blocks(work, [(0, 1, 0, 1)] * 4) == [4]
    assert seen == {threading.get_ident()}
    with blas.single_threaded():  # a no-op
        pass


def test_worker_threads_follow_the_callers_numpy_error_state(monkeypatch):
    # numpy's error state is per thread: a block on another thread must see the caller's
    monkeypatch.setattr(F, "BLOCK_WORKERS", 3)
    import threading
    seen = {}

    def work(blocks):
        seen[threading.get_ident()] = np.geterr()["invalid"]
        return len(blocks)
    with np.errstate(invalid="raise"):
        assert sorted(F._run_blocks(work, [(0, 1, 0, 1)] * 7)) == [2, 2, 3]
    assert len(seen) >= 2 and set(seen.values()) == {"raise"}
