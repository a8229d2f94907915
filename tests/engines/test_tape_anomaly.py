"""The tape's anomaly check (``anomaly=True``, the default) on every path a call can take.

A NaN or an Inf in the value, in an auxiliary output or in one gradient is never returned
silently: the call raises :class:`NonFiniteError` naming the op (or the input) it came from.
Each case runs on the generated function of small graphs and on the general loop, before and
after the check becomes the compiled one (a program used in a loop), in float32 and float64;
each would pass through silently if that path skipped its check.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.engines import tape as tape_module
from autodiff_lab.engines import tape_codegen
from autodiff_lab.errors import NonFiniteError

DTYPES = ["float32", "float64"]
#: (how calls run, whether the program has been called in a loop first)
PATHS = [("generated", False), ("generated", True), ("general", False), ("general", True)]


def _program(graph, path, warm, values, **kw):
    """A compiled program that runs ``path``, called until its check is the compiled one
    when ``warm`` (else twice: the generated function is written on the second call)."""
    program = adl.engine("tape", generate=path == "generated").compile(graph, **kw)
    calls = tape_codegen.COMPILED_CHECK_CALL + 1 if warm else 2
    for _ in range(calls):
        r = program(values)
    assert r.info.get("path") == ("generated" if path == "generated" else None)
    if path == "generated":  # (reading ``source`` would write the final version)
        fn = program._generated_fn
        assert fn._fn is not None if warm else (fn._fn is None and fn._first is not None)
    else:
        assert (program._compiled_check is not None) == warm
    return program


def _spec(shape, dtype):
    return adl.spec(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path,warm", PATHS)
def test_a_nan_in_one_gradient_only_names_the_op(path, warm, dtype):
    # exp overflows; 1/inf = 0 hides it from the value, the gradient -exp/exp² is NaN. The
    # gradient of ``a`` is complete before the backward pass ends: the general loop tests
    # it there, while it is in the cache (``b``'s, at the last step)
    g = adl.trace(lambda a, b: adl.sum(adl.tanh(adl.tanh(b))) + adl.sum(1.0 / adl.exp(a)),
                  a=_spec((2,), dtype), b=_spec((3,), dtype))
    ok = {"a": np.zeros(2, dtype), "b": np.ones(3, dtype)}
    program = _program(g, path, warm, ok)
    bad = {"a": np.array([0.0, 1000.0], dtype), "b": np.ones(3, dtype)}
    off = adl.engine("tape", anomaly=False, generate=path == "generated").compile(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        unchecked = off(bad)
    assert np.isfinite(unchecked.value) and np.isfinite(unchecked.grads["b"]).all()
    assert not np.isfinite(unchecked.grads["a"]).all()
    with pytest.raises(NonFiniteError, match="'exp'"):
        program(bad)
    if path == "general" and warm:
        _result, early = program._run_once(ok, None, early_check=True)
        assert early == (True, [])  # both were tested during the backward pass
        last = program._backward[-1][3]
        assert [u for _i, _rule, u in last] == [g.inputs["b"]]
    r = program(ok)  # and the next finite call is returned as before
    assert np.isfinite(r.value) and r.info.get("path") == (
        "generated" if path == "generated" else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path,warm", PATHS)
def test_a_nan_in_an_auxiliary_output_only_names_the_op_or_the_input(path, warm, dtype):
    g = adl.trace(lambda x, y: {"out": adl.sum(x * 2.0), "aux": adl.log(y)},
                  x=_spec((3,), dtype), y=_spec((2,), dtype))
    ok = {"x": np.ones(3, dtype), "y": np.ones(2, dtype)}
    program = _program(g, path, warm, ok, wrt=["x"], output="out")
    with pytest.raises(NonFiniteError, match="'log'"):  # log(-1): value, gradient finite
        program({"x": np.ones(3, dtype), "y": np.array([1.0, -1.0], dtype)})
    with pytest.raises(NonFiniteError, match="'y'"):  # a NaN input only the output shows
        program({"x": np.ones(3, dtype), "y": np.array([np.nan, 1.0], dtype)})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path,warm", PATHS)
def test_non_finite_inputs_are_named_when_they_reach_a_result_and_returned_otherwise(
        path, warm, dtype):
    # relu(-inf) = 0: that input reaches no result (value, gradients finite), which the
    # check does not report on any path (documented); NaN passes relu and is named
    g = adl.trace(lambda a, b: adl.sum(a * adl.relu(b)) + adl.sum(a),
                  a=_spec((2,), dtype), b=_spec((2,), dtype))
    ok = {"a": np.ones(2, dtype), "b": np.ones(2, dtype)}
    program = _program(g, path, warm, ok)
    r = program({"a": np.ones(2, dtype), "b": np.array([1.0, -np.inf], dtype)})
    assert r.value == 3.0 and r.value.dtype == dtype
    np.testing.assert_array_equal(r.grads["a"], [2.0, 1.0])
    np.testing.assert_array_equal(r.grads["b"], [1.0, 0.0])
    with pytest.raises(NonFiniteError, match="'b'"):
        program({"a": np.ones(2, dtype), "b": np.array([1.0, np.nan], dtype)})
    with pytest.raises(NonFiniteError, match="'a'"):  # through the value and a gradient
        program({"a": np.array([np.inf, 1.0], dtype), "b": np.ones(2, dtype)})


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_general_loop_checks_every_one_of_many_gradients(dtype):
    # eleven gradients: more than one compiled call takes (eight); each is the bad one once
    names = [f"a{i}" for i in range(11)]
    g = adl.trace(lambda **xs: adl.sum(adl.log(sum(xs.values()))),
                  **{n: _spec((2, 3) if i % 2 else (3,), dtype) for i, n in enumerate(names)})
    values = {n: np.full((2, 3) if i % 2 else (3,), 1.0, dtype) for i, n in enumerate(names)}
    program = _program(g, "general", True, values)
    for n in names:
        bad = dict(values, **{n: values[n].copy()})
        bad[n].flat[1] = -20.0  # log of a negative sum
        with pytest.raises(NonFiniteError, match="'log'"):
            program(bad)


def test_the_compiled_check_starts_early_on_big_results_and_never_on_a_few_calls():
    big = adl.trace(lambda w: adl.sum(adl.tanh(w)), w=(600, 600))
    program = adl.engine("tape").compile(big)
    w = np.zeros((600, 600))
    calls = tape_module._COMPILED_CHECK_ELEMENTS // w.size + 1
    assert calls < tape_codegen.COMPILED_CHECK_CALL
    for _ in range(calls):
        program({"w": w})
    assert program._compiled_check is not None  # numpy had tested 2M elements
    w[123, 456] = np.nan
    with pytest.raises(NonFiniteError, match=r"'w'.*\(123, 456\)"):
        program({"w": w})
    few = adl.engine("tape", generate=False).compile(adl.trace(lambda x: adl.sum(x), x=(3,)))
    for _ in range(5):
        few({"x": np.ones(3)})
    assert few._compiled_check is None  # a program run a few times compiles nothing


def test_forward_and_backward_alone_keep_their_checks_with_the_compiled_one():
    g = adl.trace(lambda x: adl.sum(1.0 / adl.exp(x)), x=(2,))
    program = adl.engine("tape", generate=False).compile(g)
    _program(g, "general", True, {"x": np.zeros(2)})  # the compiled check is loaded
    program._compiled_check = tape_module._compiled_all_finite()
    state = program.forward({"x": np.array([0.0, 1000.0])})  # the value is finite
    with pytest.raises(NonFiniteError, match="'exp'"):
        program.backward(state)
    with pytest.raises(NonFiniteError, match="'exp'"):  # an Inf value: forward says so
        program.forward({"x": np.array([0.0, -1000.0])})


def test_the_scalar_path_sends_a_non_finite_gradient_to_the_array_path():
    # one test of the sum of the value and the gradients: an infinite gradient of a finite
    # forward goes to the array path (which returns it, documented); so does a sum that
    # overflows while every number is finite, and the numbers are the same
    g = adl.trace(lambda x, y, z: x * y * z, x=(), y=(), z=())
    program = adl.engine("tape").compile(g)
    assert program.scalar_fast_path and "_isfinite(" in program.source
    r = program({"x": 1e200, "y": 1e-200, "z": 1e200})  # dL/dy = x·z overflows
    assert r.info.get("path") is None and r.grads["y"] == np.inf
    assert np.isfinite(r.value) and r.grads["x"] == 1.0
    r = program({"x": 1e308, "y": 1.0, "z": 1.0})  # every number finite, their sum not
    assert r.info.get("path") is None
    assert r.value == 1e308 and r.grads["y"] == 1e308 and r.grads["x"] == 1.0
    assert program({"x": 2.0, "y": 3.0, "z": 4.0}).info["path"] == "scalar"
    with pytest.raises(NonFiniteError, match="'x'"):
        program({"x": np.nan, "y": 1.0, "z": 1.0})


@pytest.mark.parametrize("warm", [False, True])
def test_gradients_scattered_from_scalars_are_checked_through_those_scalars(warm):
    # w's gradient is made of the index steps' scalar gradients at distinct positions (as
    # in the vector neuron): the generated check tests those scalars, not the array, and
    # still sends an infinite one to the general loop (dL/dw1 = w0·x0 overflows)
    g = adl.trace(lambda w, x: w[0] * w[1] * x[0], w=(2,), x=(1,))
    ok = {"w": np.array([2.0, 3.0]), "x": np.array([4.0])}
    program = _program(g, "generated", warm, ok)
    fn = program._generated_fn
    source = (fn._fn if warm else fn._first).source
    assert "_finite0(" not in source and "_sum(" not in source
    r = program({"w": np.array([1e200, 1e-200]), "x": np.array([1e200])})
    assert r.info.get("path") is None and r.value == 1e200  # the general loop's result
    assert r.grads["w"][1] == np.inf and np.isfinite(r.grads["w"][0])
    with pytest.raises(NonFiniteError, match="'x'"):
        program({"w": np.array([2.0, 3.0]), "x": np.array([np.nan])})
    assert program(ok).info["path"] == "generated"
    # two steps reading the same element: their sum could overflow, so the array is tested
    twice = adl.trace(lambda w: w[0] * w[0] + w[1], w=(2,))
    program = _program(twice, "generated", True, {"w": np.ones(2)})
    assert "_finite0(r0)" in program.source


def test_the_generated_forward_keeps_numpy_warnings_quiet_and_the_general_loop_names_the_op():
    # anomaly on: the generated function runs under CHECKED_MODULE, whose RuntimeWarnings one
    # filter ignores; the check after the forward sends the call to the general loop, which
    # re-runs silenced and raises our error. anomaly off: numpy's warning shows.
    g = adl.trace(lambda x: adl.sum(adl.log(x)), x=(3,))
    program = _program(g, "generated", True, {"x": np.ones(3)})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                module=tape_codegen.CHECKED_MODULE)  # as installed at import
        with pytest.raises(NonFiniteError, match="'log'"):
            program({"x": np.array([1.0, -1.0, 2.0])})
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)]
    loud = adl.engine("tape", anomaly=False).compile(g)
    loud({"x": np.ones(3)})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = loud({"x": np.array([1.0, -1.0, 2.0])})
    assert r.info["path"] == "generated" and np.isnan(r.value)
    assert [w for w in seen if issubclass(w.category, RuntimeWarning)]
    general = _program(g, "general", True, {"x": np.ones(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the general loop's forward is silenced
        with pytest.raises(NonFiniteError, match="'log'"):
            general({"x": np.array([1.0, -1.0, 2.0])})


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradients_proven_finite_from_their_factors_keep_every_check(dtype):
    # the MLP's weight gradients (256×784) are each made by one matrix product from smaller
    # factors: the loaded check proves them finite from the factors instead of reading them.
    # A NaN in the input is still named; a product that overflows from finite factors is
    # still found (the proof refuses, the gradient is read) and returned as a program
    # without the proof returns it; an ordinary call agrees with anomaly=False exactly
    from autodiff_lab import examples as E
    ex = E.mlp(bias=False, dtype=dtype)
    program = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])
    plain = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])
    for p in (program, plain):
        for _ in range(tape_codegen.COMPILED_CHECK_CALL + 1):
            p(ex.values)
        assert p._compiled_check is not None
    assert sum(len(proofs) for proofs in program._proof_at) == 2  # W1's and W2's
    plain._proof_at = [{} for _ in plain._proof_at]
    off = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=["W1", "W2"])
    r, ref = program(ex.values), off(ex.values)
    for name in ("W1", "W2"):
        np.testing.assert_array_equal(r.grads[name], ref.grads[name])
    x = ex.values["x"].copy()
    x[3, 5] = np.nan
    with pytest.raises(NonFiniteError, match="'x'"):
        program({**ex.values, "x": x})
    # finite factors, an infinite product: huge hidden units (W1) times a large dL/dŷ (y far
    # from ŷ = 0) overflow in W2's gradient while every forward value stays finite
    top = float(np.finfo(dtype).max)
    far = {**ex.values, "W1": np.full_like(ex.values["W1"], top / 1e4),
           "W2": np.zeros_like(ex.values["W2"]), "y": np.full_like(ex.values["y"], -1e6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r, ref = program(far), plain(far)
    assert np.isfinite(r.value) and not np.isfinite(r.grads["W2"]).all()
    for name in ("W1", "W2"):
        np.testing.assert_array_equal(r.grads[name], ref.grads[name])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_hidden_from_the_value_in_a_proven_gradients_factor_is_named(dtype):
    # 1/exp(z) at z = 1000 is 0 (the value stays finite) but its gradient is NaN (0·Inf):
    # dL/d(W@x) carries the NaN into W's gradient, which the check proves finite from its
    # factors when it can -- here it must refuse, read it, and name exp
    g = adl.trace(lambda W, x: adl.sum(1.0 / adl.exp(W @ x)),
                  W=_spec((128, 256), dtype), x=_spec((256, 8), dtype))
    ok = {"W": np.zeros((128, 256), dtype), "x": np.ones((256, 8), dtype)}
    program = _program(g, "general", True, ok, wrt=["W"])
    assert [p for p in program._proof_at if p]  # W's gradient is proven, not read
    bad = {"W": ok["W"].copy(), "x": ok["x"]}
    bad["W"][0, 0] = 1000.0
    with warnings.catch_warnings(), pytest.raises(NonFiniteError, match="'exp'"):
        warnings.simplefilter("ignore", RuntimeWarning)  # the backward's 0·Inf
        program(bad)
    assert np.isfinite(program(ok).grads["W"]).all()
