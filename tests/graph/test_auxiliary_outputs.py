"""Auxiliary outputs (values layers register while tracing) and ignorable inputs (module
state a trace does not read): the graph keeps them, every engine returns the outputs."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import GraphError, InputError, TraceError
from autodiff_lab.graph.graph import Graph


def traced_with_aux(extra_ignorable=("w_unused",)):
    def f(x, w):
        h = adl.tanh(x * w)
        b = h.builder
        b.aux_outputs["stats.mean"] = adl.mean(h)  # what a layer would register
        b.ignorable_inputs.update(extra_ignorable)
        return adl.sum(h * h)
    return adl.trace(f, x=(3,), w=adl.param((3,)))


VALUES = {"x": np.array([0.5, -1.0, 2.0]), "w": np.array([1.5, 0.3, -0.2])}


def test_the_main_output_is_the_default():
    g = traced_with_aux()
    assert set(g.outputs) == {"out", "stats.mean"} and g.auxiliary == {"stats.mean"}
    assert g.main_outputs == {"out": g.outputs["out"]} and g.output == g.outputs["out"]
    assert "auxiliary stats.mean" in g.summary()
    assert set(g.evaluate(VALUES)) == {"out", "stats.mean"}


@pytest.mark.parametrize("engine,options", [("tape", {}), ("tape", {"keep_all": True}),
                                            ("symbolic", {}), ("symbolic", {"mode": "expanded"}),
                                            ("numeric", {})])
def test_every_engine_returns_every_output(engine, options):
    g = traced_with_aux()
    r = adl.gradient(g, VALUES, engine=engine, **options)
    h = np.tanh(VALUES["x"] * VALUES["w"])
    assert r.output == "out" and set(r.outputs) == {"out", "stats.mean"}
    np.testing.assert_allclose(r.outputs["stats.mean"], h.mean(), rtol=1e-14)
    np.testing.assert_allclose(r.outputs["out"], r.value)
    np.testing.assert_allclose(r.grads["w"], 2 * h * (1 - h * h) * VALUES["x"], rtol=1e-7)


def test_scalar_fast_path_returns_its_output():
    g = adl.trace(lambda a, b: a * b + 1.0, a=(), b=())
    r = adl.gradient(g, {"a": 2.0, "b": 3.0})
    assert r.info.get("path") == "scalar" and r.outputs == {"out": 7.0}


def test_serialisation_and_rewriting_keep_them():
    g = traced_with_aux()
    back = Graph.from_json(g.to_json())
    assert back.auxiliary == g.auxiliary and back.ignorable_inputs == {"w_unused"}
    assert back == g
    assert adl.trace(lambda x: adl.sigmoid(x), x=(2,)).to_dict().keys() == {
        "format", "version", "nodes", "outputs"}  # plain graphs serialise as before
    expanded = g.expand("tanh")
    assert expanded.auxiliary == g.auxiliary


def test_ignorable_values_are_dropped_unknown_ones_are_errors():
    g = traced_with_aux()
    r = adl.gradient(g, {**VALUES, "w_unused": np.zeros(7)})
    assert set(r.grads) == {"x", "w"}
    with pytest.raises(InputError, match="'typo'"):
        adl.gradient(g, {**VALUES, "typo": 1.0})


def test_bad_auxiliary_outputs():
    def clash(x):
        x.builder.aux_outputs["out"] = x * 2
        return adl.sum(x)
    with pytest.raises(TraceError, match="auxiliary output"):
        adl.trace(clash, x=(2,))
    g = traced_with_aux()
    with pytest.raises(GraphError, match="not outputs"):
        Graph.from_nx(g.nx, g.outputs, auxiliary={"nope"})
    with pytest.raises(GraphError, match="every output"):
        Graph.from_nx(g.nx, g.outputs, auxiliary=set(g.outputs))


def test_drawings_leave_auxiliary_outputs_out():
    g = traced_with_aux()
    src = adl.render(g, values=VALUES, grads=True)
    mean_node = g.outputs["stats.mean"]
    assert f"n{mean_node} " not in src and "stats.mean" not in src
    assert f"n{g.outputs['out']} -> o0" in src
