"""The tape's generated function for small array graphs: same numbers as the general loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autodiff_lab as adl
from autodiff_lab import examples as E
from autodiff_lab.engines import tape_codegen
from autodiff_lab.errors import AutodiffError, NonFiniteError

SHAPES = [(), (3,), (2, 3), (1, 3), (2, 1)]
UNARY = ["exp", "tanh", "sigmoid", "sin", "neg", "relu", "abs"]
BINARY = ["add", "sub", "mul", "div", "maximum"]


def _build(plan, a, b, c):
    nodes = [a, b, c]
    for kind, name, i, j in plan:
        x, y = nodes[i % len(nodes)], nodes[j % len(nodes)]
        try:
            if kind == "unary":
                nodes.append(getattr(adl, name)(x))
            elif kind == "binary":
                nodes.append(getattr(adl, name)(x, y))
            elif kind == "sum":
                nodes.append(adl.sum(x, axis=-1) if x.shape else adl.sum(x))
            elif kind == "index" and x.shape:
                nodes.append(x[0])
            elif kind == "matmul" and len(x.shape) == 2 and len(y.shape) == 2:
                nodes.append(x @ adl.transpose(y))
            elif kind == "reshape":
                nodes.append(adl.reshape(x, (-1,)))
        except AutodiffError:  # operands that do not fit: skip the step
            pass
    return adl.sum(nodes[-1] * nodes[-1]) + adl.sum(nodes[-2])


def _compare(fast, slow, dtype):
    rtol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(fast.value, slow.value, rtol=rtol, equal_nan=True)
    assert fast.value.dtype == slow.value.dtype and type(fast.value) is np.ndarray
    assert fast.grads.keys() == slow.grads.keys()
    for name in slow.grads:
        f, s = fast.grads[name], slow.grads[name]
        assert type(f) is np.ndarray and f.shape == s.shape and f.dtype == s.dtype, name
        np.testing.assert_allclose(f, s, rtol=rtol, atol=rtol * 1e-3, equal_nan=True,
                                   err_msg=name)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.tuples(st.just("unary"), st.sampled_from(UNARY), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("binary"), st.sampled_from(BINARY), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.sampled_from(["sum", "index", "matmul", "reshape"]), st.just(""),
              st.integers(0, 50), st.integers(0, 50))), min_size=1, max_size=8),
    st.tuples(*[st.sampled_from(SHAPES)] * 3), st.sampled_from(["float64", "float32"]),
    st.integers(0, 2 ** 16))
def test_generated_path_equals_the_general_loop(plan, shapes, dtype, seed):
    """Random small graphs (broadcasting, fan-out, scalars, reductions, matmul): value and
    every gradient from the generated function and from the general loop agree."""
    g = adl.trace(lambda a, b, c: _build(plan, a, b, c),
                  **{n: adl.spec(s, dtype) for n, s in zip("abc", shapes)})
    rng = np.random.default_rng(seed)
    values = {n: rng.uniform(-2, 2, s).astype(dtype) for n, s in zip("abc", shapes)}
    program = adl.engine("tape", anomaly=False).compile(g)
    assert program.generated_path and program.source  # written now (else on the 2nd call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # both paths: overflow of exp, 0/0
        fast = program(values)
        slow = program._run_arrays(values, None)
    assert fast.info.get("path") == "generated"
    _compare(fast, slow, dtype)


@pytest.mark.parametrize("anomaly", [True, False])
def test_the_neuron_and_a_small_mlp_take_the_generated_path(anomaly):
    for ex in (E.sigmoid_neuron_vector(), E.mlp(16, 8, 4), E.mlp(16, 8, 4, dtype="float32")):
        program = adl.engine("tape", anomaly=anomaly).compile(ex.graph)
        assert program.generated_path and "def generated_gradient" in program.source
        fast = program(ex.values)
        assert fast.info["path"] == "generated"
        _compare(fast, program._run_arrays(ex.values, None), str(ex.values["x"].dtype))
        off = adl.engine("tape", anomaly=anomaly, generate=False).compile(ex.graph)
        assert not off.generated_path and off(ex.values).info.get("path") is None


def test_returned_gradients_are_separate_writable_arrays():
    g = adl.trace(lambda a, b: adl.sum(a + b), a=(3,), b=(3,))
    program = adl.engine("tape").compile(g)
    first = program({"a": np.ones(3), "b": np.ones(3)})  # the general loop; then generated
    assert first.info.get("path") is None
    r = program({"a": np.ones(3), "b": np.ones(3)})
    assert r.info["path"] == "generated"
    r.grads["a"][0] = 99.0
    assert r.grads["b"][0] == 1.0 and r.grads["a"].flags.writeable


def test_anomaly_names_the_op_and_inputs_fall_back_to_the_general_checks():
    g = adl.trace(lambda x, y: adl.sum(adl.log(x) * y), x=(3,), y=(3,))
    program = adl.engine("tape").compile(g)
    assert program.generated_path and program.source
    with warnings.catch_warnings():
        # a numpy warning raised as an error sends the call to the general loop too, whose
        # forward is silenced: the error is ours, naming the op
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError, match="'log'"):
            program({"x": np.array([1.0, -1.0, 2.0]), "y": np.ones(3)})
    with pytest.raises(NonFiniteError, match="'y'"):  # a NaN input the output does not show
        program({"x": np.ones(3), "y": np.array([0.0, np.nan, 1.0])})
    # other dtypes, lists, wrong shapes: the general loop converts or names the input
    r = program({"x": [1.0, 2.0, 3.0], "y": np.ones(3, dtype=np.float32)})
    np.testing.assert_allclose(r.grads["x"], [1.0, 0.5, 1 / 3])
    with pytest.raises(AutodiffError, match="'x'"):
        program({"x": np.ones(4), "y": np.ones(3)})
    off = adl.engine("tape", anomaly=False).compile(g)
    assert off.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = off({"x": np.array([1.0, -1.0, 2.0]), "y": np.ones(3)})
    assert r.info["path"] == "generated" and np.isnan(r.value)


def test_big_graphs_keep_the_general_loop():
    small = E.mlp(16, 8, 4)
    assert adl.engine("tape").compile(small.graph).generated_path
    big = E.mlp(256, 64, 32)
    assert adl.engine("tape").compile(big.graph).source is None
    assert tape_codegen.SMALL_ELEMENTS < 256 * 64 * 2 + 256 * 32 * 4


def _warm(program, values):
    """Call ``program`` until its generated function tests results with the compiled check."""
    for _ in range(tape_codegen.COMPILED_CHECK_CALL):
        r = program(values)
    assert r.info["path"] == "generated" and "_finite0(" in program.source
    return r


def test_the_compiled_check_sends_every_non_finite_result_to_the_general_loop():
    # the value, an auxiliary output and a gradient each carry the NaN/Inf in turn; the
    # general loop then names the op, exactly as with the sums of the first calls
    g = adl.trace(lambda x, y: {"out": adl.sum(1.0 / adl.exp(x)) + adl.sum(y),
                                "aux": adl.log(y)}, x=(2,), y=(2,))
    program = adl.engine("tape").compile(g, wrt=["x", "y"], output="out")
    ok = {"x": np.zeros(2), "y": np.ones(2)}
    _warm(program, ok)
    with pytest.raises(NonFiniteError, match="'exp'"):  # value 0 + ..., gradient NaN
        program({"x": np.array([0.0, 1000.0]), "y": np.ones(2)})
    with pytest.raises(NonFiniteError, match="'log'"):  # only the auxiliary output
        program({"x": np.zeros(2), "y": np.array([1.0, -1.0])})
    with pytest.raises(NonFiniteError, match="'y'"):  # a NaN input that reaches the value
        program({"x": np.zeros(2), "y": np.array([np.nan, 1.0])})
    r = program(ok)  # and back on the generated path
    assert r.info["path"] == "generated" and r.value == 4.0


def test_the_compiled_check_returns_what_the_general_loop_returns():
    # a NaN/Inf only in an input that reaches no result, an infinite gradient of a finite
    # forward: the general loop returns these (documented), so the generated path does too
    g = adl.trace(lambda x, c: adl.sum(x) + adl.sum(adl.minimum(adl.exp(c), 1.0)),
                  x=(2,), c=(2,))
    program = adl.engine("tape").compile(g, wrt=["x"])
    _warm(program, {"x": np.ones(2), "c": np.zeros(2)})
    r = program({"x": np.ones(2), "c": np.array([0.0, np.inf])})
    assert r.value == 4.0 and r.info.get("path") == "generated"
    roots = adl.engine("tape").compile(adl.trace(lambda x: adl.sum(adl.sqrt(x)), x=(2,)))
    _warm(roots, {"x": np.ones(2)})
    r = roots({"x": np.array([0.0, 4.0])})  # d√x/dx at 0 is +Inf: the general loop's result
    assert r.info.get("path") is None and r.grads["x"][0] == np.inf


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_compiled_check_over_many_gradients(dtype):
    # more results than one compiled function takes (8): split over several calls
    names = [f"a{i}" for i in range(11)]
    g = adl.trace(lambda **xs: adl.sum(adl.log(sum(xs.values()))),
                  **{n: adl.spec((2, 3) if i % 2 else (3,), dtype) for i, n in enumerate(names)})
    program = adl.engine("tape").compile(g)
    values = {n: np.full((2, 3) if i % 2 else (3,), 1.0, dtype) for i, n in enumerate(names)}
    r = _warm(program, values)
    assert program.source.count("_finite") == 2 and r.grads["a10"].dtype == dtype
    for n in (names[0], names[-1]):
        bad = dict(values, **{n: values[n].copy()})
        bad[n].flat[1] = -20.0  # log of a negative sum
        with pytest.raises(NonFiniteError, match="'log'"):
            program(bad)
