"""The Graph class: JSON round trip, summary, validation of hand-made graphs, bad values."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import GraphError, InputError, NonFiniteError, ShapeError, UnknownOpError
from autodiff_lab.examples import dncnn, mlp, sigmoid_neuron_vector


def test_json_round_trip_preserves_everything(tmp_path):
    for ex in (sigmoid_neuron_vector(), mlp(d_in=6, hidden=3, batch=2), dncnn(batch=1, size=6, channels=2, depth=3)):
        g = ex.graph
        path = tmp_path / f"{ex.name}.json"
        g.save(path)
        back = adl.load(path)
        assert back == g and back.fingerprint() == g.fingerprint()
        assert back.to_json() == g.to_json()
        for v in g.order:
            assert back.node(v)["attrs"] == g.node(v)["attrs"]
            assert back.operands(v) == g.operands(v)
        np.testing.assert_array_equal(back.evaluate(ex.values)["out"], g.evaluate(ex.values)["out"])


def test_json_keeps_constants_and_index_keys():
    g = adl.trace(lambda x: x[1:, None, ::2] * np.array([[1.5, -2.0]]) + 1.0, x=(3, 4))
    back = adl.Graph.from_json(g.to_json())
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(back.evaluate({"x": x})["out"], g.evaluate({"x": x})["out"])


def test_summary_counts_ops_and_parameters():
    text = sigmoid_neuron_vector().graph.summary()
    assert "index×5" in text and "mul×2" in text and "sigmoid×1" in text
    assert "parameters: 3 scalars" in text
    assert "parameter w: shape (3,)" in text


def test_expand_keeps_values():
    ex = sigmoid_neuron_vector()
    assert ex.graph.expand("sigmoid").evaluate(ex.values)["out"] == pytest.approx(
        ex.graph.evaluate(ex.values)["out"], rel=1e-15)


def _raw(ops):
    """A hand-made networkx graph: list of (id, attrs, inputs)."""
    g = nx.DiGraph()
    for v, attrs, inputs in ops:
        g.add_node(v, **attrs)
        for pos, u in enumerate(inputs):
            if g.has_edge(u, v):
                g.edges[u, v]["args"] += (pos,)
            else:
                g.add_edge(u, v, args=(pos,))
    return g


X = {"op": "input", "role": "input", "shape": (3,), "dtype": "float64", "name": "x"}


def test_cycles_are_rejected():
    g = _raw([(0, X, []), (1, {"op": "exp", "role": "op", "shape": (3,), "dtype": "float64"}, [0, ]),
              (2, {"op": "add", "role": "op", "shape": (3,), "dtype": "float64"}, [1, 1])])
    g.add_edge(2, 1, args=(1,))
    with pytest.raises(GraphError, match="cycle"):
        adl.Graph.from_nx(g, {"out": 2})


def test_unknown_op_in_a_loaded_graph():
    g = _raw([(0, X, []), (1, {"op": "softplus", "role": "op", "shape": (3,), "dtype": "float64"}, [0])])
    with pytest.raises(UnknownOpError, match="softplus"):
        adl.Graph.from_nx(g, {"out": 1})


def test_wrong_number_of_arguments():
    g = _raw([(0, X, []), (1, {"op": "add", "role": "op", "shape": (3,), "dtype": "float64"}, [0])])
    with pytest.raises(ShapeError, match="add takes 2 arguments, got 1"):
        adl.Graph.from_nx(g, {"out": 1})


def test_recorded_shape_must_match_the_shape_rule():
    g = _raw([(0, X, []), (1, {"op": "exp", "role": "op", "shape": (4,), "dtype": "float64"}, [0])])
    with pytest.raises(ShapeError, match=r"node 1 'exp'.*recorded shape \(4,\).*gives \(3,\)"):
        adl.Graph.from_nx(g, {"out": 1})


def test_duplicate_and_unnamed_inputs():
    g = _raw([(0, X, []), (1, dict(X), []),
              (2, {"op": "add", "role": "op", "shape": (3,), "dtype": "float64"}, [0, 1])])
    with pytest.raises(GraphError, match="two inputs are named 'x'"):
        adl.Graph.from_nx(g, {"out": 2})
    g = _raw([(0, {**X, "name": ""}, [])])
    with pytest.raises(GraphError, match="needs a name"):
        adl.Graph.from_nx(g, {"out": 0})


def test_bad_outputs_and_attributes():
    g = _raw([(0, X, [])])
    with pytest.raises(GraphError, match="not in the graph"):
        adl.Graph.from_nx(g, {"out": 5})
    with pytest.raises(GraphError, match="at least one"):
        adl.Graph.from_nx(g, {})
    g = _raw([(0, X, []), (1, {"op": "exp", "role": "op", "shape": (3,), "dtype": "float64",
                               "attrs": {"stride": 2}}, [0])])
    with pytest.raises(GraphError, match="unknown attribute"):
        adl.Graph.from_nx(g, {"out": 1})


def test_malformed_json():
    with pytest.raises(GraphError, match="not an autodiff_lab graph"):
        adl.Graph.from_json(json.dumps({"nodes": []}))
    data = sigmoid_neuron_vector().graph.to_dict()
    del data["nodes"][3]["shape"]
    with pytest.raises(GraphError, match="malformed"):
        adl.Graph.from_dict(data)


# --- values given to a graph ------------------------------------------------------------------

G = adl.trace(lambda w, x: adl.sum(adl.log(w * x)), w=(3,), x=(3,))
OK = {"w": np.ones(3), "x": np.full(3, 2.0)}


@pytest.mark.parametrize("values,error,fragment", [
    ({"w": np.ones(3)}, InputError, "missing value.*x \\(3,\\)"),
    ({**OK, "z": 1.0}, InputError, "'z', which the graph does not have; its inputs are: w, x"),
    ({**OK, "x": np.ones(4)}, InputError, "input 'x' \\(node 1\\) expects shape \\(3,\\), got \\(4,\\)"),
    ({**OK, "x": np.ones(3, dtype=np.int64)}, InputError, "expects floating values.*int64"),
    ({**OK, "x": np.ones(3, dtype=np.complex128)}, InputError, "complex"),
    ({**OK, "x": np.array([1.0, np.nan, 2.0])}, NonFiniteError, "input 'x'.*NaN at index \\(1,\\)"),
    ({**OK, "w": np.array([1.0, 2.0, np.inf])}, NonFiniteError, "Inf at index \\(2,\\)"),
    ({**OK, "x": np.array([1.0, -1.0, 2.0])}, NonFiniteError, "node \\d+ 'log'.*produced NaN"),
    ([1, 2], InputError, "must be a dict"),
])
def test_bad_values_raise_our_errors(values, error, fragment):
    with pytest.raises(error, match=fragment):
        G.evaluate(values)


def test_python_numbers_and_lists_are_accepted():
    out = G.evaluate({"w": [1, 1, 1], "x": [2.0, 2.0, 2.0]})["out"]
    assert out == pytest.approx(3 * np.log(2.0))


def test_non_finite_check_can_be_switched_off():
    with np.errstate(invalid="ignore"):
        out = G.evaluate({**OK, "x": np.array([1.0, -1.0, 2.0])}, check_finite=False)["out"]
    assert np.isnan(out)


def test_all_node_values():
    env = G.evaluate(OK, all_nodes=True)
    assert set(env) == set(G.order)
