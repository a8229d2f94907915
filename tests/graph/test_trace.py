"""Tracing ordinary Python into the shared graph: the neuron, an MLP, a conv net, constants."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import TraceError
from autodiff_lab.examples import NEURON_W, NEURON_X, dncnn, mlp, sigmoid_neuron

VALS = {"w": NEURON_W, "x": NEURON_X}


def neuron_graph():
    return adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]), w=(3,), x=(2,))


def test_sigmoid_neuron_graph_structure():
    g = neuron_graph()
    assert isinstance(g.nx, nx.DiGraph)
    assert list(g.nx.nodes) == list(range(len(g)))  # stable ids 0..n-1
    assert g.order == sorted(g.order)  # ids are a topological order
    ops = [g.node(v)["op"] for v in g.order]
    assert ops[:2] == ["input", "input"]
    assert sorted(ops[2:]) == sorted(["index"] * 5 + ["mul", "mul", "add", "add", "sigmoid"])
    out = g.output
    assert g.node(out)["op"] == "sigmoid" and g.node(out)["shape"] == ()
    assert g.outputs == {"out": out}
    for u, v, data in g.nx.edges(data=True):
        assert data["args"], (u, v)
    assert g.evaluate(VALS)["out"] == pytest.approx(0.7310585786300049, rel=1e-15)


def test_textbook_neuron_has_scalar_inputs_and_value():
    ex = sigmoid_neuron()
    assert set(ex.graph.inputs) == {"w0", "x0", "w1", "x1", "w2"}
    assert set(ex.graph.parameters) == {"w0", "w1", "w2"}
    assert ex.graph.evaluate(ex.values)["out"] == pytest.approx(0.73105857863, rel=1e-10)


def test_primitive_neuron_expands_sigmoid():
    g = sigmoid_neuron(primitive=True).graph
    ops = sorted(g.node(v)["op"] for v in g.order if g.node(v)["role"] == "op")
    assert ops == ["add", "add", "add", "exp", "mul", "mul", "neg", "reciprocal"]
    assert g.evaluate(sigmoid_neuron().values)["out"] == pytest.approx(0.7310585786300049, rel=1e-15)


def test_fan_out_is_one_edge_with_two_argument_positions():
    g = adl.trace(lambda x: x * x, x=(3,))
    (u, v, data), = g.nx.edges(data=True)
    assert data["args"] == (0, 1)
    assert g.operands(v) == (u, u)


def test_mlp_and_conv_net_trace_with_expected_shapes():
    ex = mlp(d_in=20, hidden=7, batch=5)
    g = ex.graph
    assert g.input_shapes()["W1"] == (7, 20) and g.node(g.output)["shape"] == ()
    matmuls = [v for v in g.order if g.node(v)["op"] == "matmul"]
    assert [g.node(v)["shape"] for v in matmuls] == [(7, 5), (20, 5)]
    assert "parameters: 2*7*20".replace("2*7*20", str(2 * 7 * 20 + 7 + 20)) in g.summary()
    d = dncnn(batch=2, size=8, channels=4, depth=4)
    convs = [v for v in d.graph.order if d.graph.node(v)["op"] == "conv2d"]
    assert len(convs) == 4 and all(d.graph.node(v)["shape"][2:] == (8, 8) for v in convs)
    assert np.isfinite(d.graph.evaluate(d.values)["out"])


def test_constants_broadcasting_and_reflected_operators():
    g = adl.trace(lambda x: 2.0 - x / 4 + np.array([1.0, 2.0, 3.0]) * x ** 2, x=(2, 3))
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(g.evaluate({"x": x})["out"], 2.0 - x / 4 + np.array([1, 2, 3]) * x ** 2)
    consts = [v for v in g.order if g.node(v)["role"] == "constant"]
    assert len(consts) == 3


def test_numpy_ufuncs_on_tensors_record_our_ops():
    g = adl.trace(lambda x: np.exp(x) + np.maximum(x, 0.0), x=(3,))
    assert {g.node(v)["op"] for v in g.order} >= {"exp", "maximum", "add"}


def test_multiple_named_outputs_and_tuple_outputs():
    g = adl.trace(lambda x: {"loss": adl.sum(x * x), "pred": 2 * x}, x=(3,))
    assert set(g.outputs) == {"loss", "pred"}
    out = g.evaluate({"x": np.ones(3)})
    assert out["loss"] == 3.0 and out["pred"].tolist() == [2.0, 2.0, 2.0]
    g2 = adl.trace(lambda x: (x, -x), x=(2,))
    assert set(g2.outputs) == {"out0", "out1"}


def test_pruning_removes_dead_code_but_keeps_inputs():
    def f(x, unused):
        _dead = adl.exp(x) * 3.0
        return adl.sum(x)

    g = adl.trace(f, x=(3,), unused=(2,))
    assert sorted(g.node(v)["op"] for v in g.order) == ["input", "input", "sum"]
    assert "unused" in g.inputs


def test_arrays_give_shape_and_dtype_and_float32_is_kept():
    g = adl.trace(lambda x: x * 2.0, x=np.ones((2, 2), dtype=np.float32))
    assert g.node(g.inputs["x"])["dtype"] == "float32" and g.node(g.output)["dtype"] == "float32"
    out = g.evaluate({"x": np.ones((2, 2), dtype=np.float32)})["out"]
    assert out.dtype == np.float32


def test_eager_mode_on_plain_arrays():
    assert adl.sigmoid(0.0) == 0.5
    np.testing.assert_allclose(adl.relu(np.array([-1.0, 2.0])), [0.0, 2.0])


def test_source_location_is_recorded():
    g = adl.trace(lambda x: adl.exp(x), x=(2,))
    assert g.node(g.output)["loc"].startswith("test_trace.py:")


@pytest.mark.parametrize("fn,fragment", [
    (lambda x: x if x > 0 else -x, "comparisons"),
    (lambda x: adl.exp(x) if x else x, "truth value"),
    (lambda x: float(x), "float()"),
    (lambda x: x ** x, "traced exponent"),
    (lambda x: np.asarray(x), "numpy array"),
    (lambda x: np.cumsum(x), "numpy array"),
    (lambda x: x["a"], "integers, slices"),
])
def test_untraceable_code_raises_trace_error(fn, fragment):
    with pytest.raises(TraceError, match=fragment):
        adl.trace(fn, x=(3,))


def test_tensors_from_two_traces_do_not_mix():
    saved = []
    adl.trace(lambda x: saved.append(x) or x, x=(2,))
    with pytest.raises(TraceError, match="two different traces"):
        adl.trace(lambda y: y + saved[0], y=(2,))


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(x=3), "bare int"),
    (dict(x=(2,), z=(2,)), "not an argument"),
    (dict(), "no shape given"),
    (dict(x="abc"), "cannot read"),
])
def test_bad_trace_arguments(kwargs, fragment):
    with pytest.raises(TraceError, match=fragment):
        adl.trace(lambda x: x * 2.0, **kwargs)
