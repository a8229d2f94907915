"""The Numba/BLAS kernels against the numpy reference kernels, and the dispatch around them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

from autodiff_lab.graph.optable import OPS
from autodiff_lab.kernels import conv_fast as F
from autodiff_lab.kernels import conv_reference as R
from autodiff_lab.kernels import dispatch

RNG = np.random.default_rng(3)
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-11, atol=1e-11)}
CONV_CASES = [  # stride, padding, dilation, groups, weight shape
    ((1, 1), (1, 1), (1, 1), 1, (5, 4, 3, 3)),
    ((2, 1), (0, 2), (1, 2), 2, (6, 2, 3, 2)),
    ((2, 2), (1, 0), (2, 1), 1, (3, 4, 2, 3)),
    ((3, 2), (1, 1), (1, 1), 4, (8, 1, 3, 3)),
    ((1, 1), (3, 3), (1, 1), 1, (2, 4, 3, 3)),  # padding larger than the kernel reach
]


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("stride,padding,dilation,groups,w_shape", CONV_CASES)
def test_conv2d_fast_matches_reference(dtype, stride, padding, dilation, groups, w_shape):
    x = RNG.standard_normal((2, 4, 9, 11)).astype(dtype)
    w = RNG.standard_normal(w_shape).astype(dtype)
    out = F.conv2d_forward(x, w, stride, padding, dilation, groups)
    ref = R.conv2d_forward(x, w, stride, padding, dilation, groups)
    assert out.dtype == dtype and out.flags.c_contiguous
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    g = RNG.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(
        F.conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups),
        R.conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups), **TOL[dtype])
    np.testing.assert_allclose(
        F.conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups),
        R.conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups), **TOL[dtype])


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)),
                                                   ((3, 3), (2, 1), (1, 1)),
                                                   ((3, 2), (1, 2), (1, 0))])
def test_pooling_fast_matches_reference(dtype, kernel, stride, padding):
    x = RNG.standard_normal((2, 3, 9, 8)).astype(dtype)
    out = F.max_pool2d_forward(x, kernel, stride, padding)
    np.testing.assert_array_equal(out, R.max_pool2d_forward(x, kernel, stride, padding))
    g = RNG.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(F.max_pool2d_backward(g, x, kernel, stride, padding),
                               R.max_pool2d_backward(g, x, kernel, stride, padding), **TOL[dtype])
    np.testing.assert_allclose(F.avg_pool2d_forward(x, kernel, stride, padding),
                               R.avg_pool2d_forward(x, kernel, stride, padding), **TOL[dtype])
    np.testing.assert_allclose(F.avg_pool2d_backward(g, x.shape, kernel, stride, padding),
                               R.avg_pool2d_backward(g, x.shape, kernel, stride, padding),
                               **TOL[dtype])


def test_max_pool_ties_go_to_the_first_maximum():
    x = np.ones((1, 1, 2, 2))
    g = np.ones((1, 1, 1, 1))
    np.testing.assert_array_equal(F.max_pool2d_backward(g, x, (2, 2), (2, 2), (0, 0))[0, 0],
                                  [[1.0, 0.0], [0.0, 0.0]])


def _op_table_results(name, args, attrs, g):
    op = OPS[name]
    out = op.forward(*args, **attrs)
    if g is None:
        return out, []
    grads = [op.vjp_for(i)(g, out, *args, **attrs) if op.vjp_for(i) else None
             for i in range(len(args))]
    return out, grads


OP_CASES = {
    "conv_transpose2d": (lambda d: [RNG.standard_normal((2, 3, 4, 5)).astype(d),
                                    RNG.standard_normal((3, 2, 3, 3)).astype(d),
                                    RNG.standard_normal(2).astype(d)],
                         {"stride": (2, 2), "padding": (1, 0), "output_padding": (1, 1),
                          "dilation": (1, 1), "groups": 1}),
    "batch_norm": (lambda d: [RNG.standard_normal((4, 3, 5, 2)).astype(d) * 3 + 1,
                              RNG.standard_normal(3).astype(d), RNG.standard_normal(3).astype(d)],
                   {"training": True, "eps": 1e-5}),
    "batch_norm_eval": (lambda d: [RNG.standard_normal((6, 3)).astype(d),
                                   RNG.standard_normal(3).astype(d),
                                   RNG.standard_normal(3).astype(d),
                                   RNG.standard_normal(3).astype(d),
                                   np.abs(RNG.standard_normal(3)).astype(d) + 0.5],
                        {"training": False, "eps": 1e-5}),
    "softmax_cross_entropy": (lambda d: [RNG.standard_normal((7, 5)).astype(d) * 4,
                                         RNG.integers(0, 5, 7)], {"reduction": "mean"}),
    "relu": (lambda d: [RNG.standard_normal(1 << 16).astype(d)], {}),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_table_fast_paths_match_the_numpy_rules(dtype, case):
    make, attrs = OP_CASES[case]
    name = case.removesuffix("_eval")
    args = make(dtype)
    out_fast, _ = _op_table_results(name, args, attrs, None)
    g = RNG.standard_normal(np.shape(out_fast)).astype(dtype)
    out_fast, grads_fast = _op_table_results(name, args, attrs, g)
    dispatch.enabled = False
    try:
        out_ref, grads_ref = _op_table_results(name, args, attrs, g)
    finally:
        dispatch.enabled = True
    assert np.asarray(out_fast).dtype == dtype
    np.testing.assert_allclose(out_fast, out_ref, **TOL[dtype])
    for a, b in zip(grads_fast, grads_ref):
        if b is not None:
            assert np.asarray(a).dtype == dtype
            np.testing.assert_allclose(a, b, **TOL[dtype])


def test_results_do_not_alias_the_scratch_buffers():
    """A single-channel output makes the final transpose a no-op: it must still be a copy."""
    x = RNG.standard_normal((2, 3, 5, 5))
    w1, w2 = RNG.standard_normal((2, 1, 3, 3, 3))
    first = F.conv2d_forward(x, w1, (1, 1), (1, 1), (1, 1))
    kept = first.copy()
    F.conv2d_forward(x, w2, (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(first, kept)


def test_complex_and_sympy_arrays_still_use_the_reference():
    x = RNG.standard_normal((1, 2, 4, 4)) + 1e-20j
    w = RNG.standard_normal((3, 2, 3, 3))
    out = OPS["conv2d"].forward(x, w, padding=(1, 1))
    np.testing.assert_allclose(out.real, R.conv2d_forward(x.real, w, (1, 1), (1, 1), (1, 1)))
    assert np.iscomplexobj(out)
    xs = np.array(sp.symbols("a:9"), dtype=object).reshape(1, 1, 3, 3)
    pooled = OPS["avg_pool2d"].forward(xs, kernel=(3, 3), stride=(3, 3), padding=(0, 0))
    assert pooled.dtype == object
    conv = OPS["conv2d"].forward(xs, np.ones((1, 1, 3, 3)), padding=(0, 0))
    assert sp.simplify(conv[0, 0, 0, 0] - sum(xs.ravel())) == 0


def test_mixed_dtypes_fall_back_to_the_reference():
    assert not dispatch.real_float(np.ones(2, np.float32), np.ones(2))
    assert not dispatch.real_float(np.ones(2, dtype=np.int64))
    assert dispatch.real_float(np.ones(2), np.ones(3))


def test_package_works_when_the_numba_cache_dir_is_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = textwrap.dedent("""
        import numpy as np, numba
        from autodiff_lab.kernels import elementwise, numba_cache
        out = elementwise.relu_backward(np.ones(4), np.array([1.0, -1.0, 0.0, 2.0]))
        assert list(out) == [1.0, 0.0, 0.0, 1.0], out
        print(numba.config.CACHE_DIR)
    """)
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(blocker / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "autodiff_lab-numba-cache" in proc.stdout


def test_image_chunks_give_the_same_result(monkeypatch, dtype):
    """Big batches are processed a few images at a time; the chunk seams must not show."""
    x = RNG.standard_normal((5, 3, 6, 7)).astype(dtype)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(dtype)
    g = RNG.standard_normal((5, 4, 6, 7)).astype(dtype)
    args = ((1, 1), (1, 1), (1, 1))
    whole = (F.conv2d_forward(x, w, *args), F.conv2d_backward_weight(g, x, w.shape, *args),
             F.conv2d_backward_input(g, w, x.shape, *args))
    monkeypatch.setattr(F, "BLOCK_BYTES", 1)  # one row of one image per block
    chunked = (F.conv2d_forward(x, w, *args), F.conv2d_backward_weight(g, x, w.shape, *args),
               F.conv2d_backward_input(g, w, x.shape, *args))
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    np.testing.assert_allclose(chunked[0], R.conv2d_forward(x, w, *args), **TOL[dtype])
