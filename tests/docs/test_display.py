"""What a notebook shows: results, drawings and gradient checks display themselves inline."""

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import GraphvizNotFoundError
from autodiff_lab.examples import sigmoid_neuron


def _neuron():
    g = adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]), w=adl.param((3,)), x=(2,))
    return g, {"w": np.array([2.0, -3.0, -3.0]), "x": np.array([-1.0, -2.0])}


@pytest.mark.parametrize("engine", ["tape", "numeric", "symbolic"])
def test_a_result_of_adl_gradient_shows_its_graph_and_a_table(engine):
    g, vals = _neuron()
    html = adl.gradient(g, vals, engine=engine)._repr_html_()
    assert html.startswith("<div><svg") and "−0.393224" in html and f"<b>{engine}</b>" in html
    assert "0.7311" in html                         # forward values on the drawing's edges


def test_a_result_without_its_graph_or_of_a_big_graph_shows_the_table_only():
    g, vals = _neuron()
    html = adl.engine("tape").compile(g)(vals)._repr_html_()
    assert html.startswith("<table>") and "∂out/∂w" in html and ">(3,)<" in html
    big = adl.trace(lambda x: adl.sum(adl.tanh(adl.concatenate([x[i:i + 1] * x[i:i + 1] for i in range(40)]))),
                    x=(40,))
    html = adl.gradient(big, {"x": np.ones(40)})._repr_html_()
    assert html.startswith("<table>") and "mean" in html   # a 40-element gradient is summarised


def test_render_returns_dot_text_that_notebooks_draw():
    e = sigmoid_neuron()
    drawing = adl.render(e.graph, values=e.values, grads=True)
    assert isinstance(drawing, str) and drawing == adl.render.to_dot(e.graph, e.values, True)
    svg = drawing._repr_svg_()
    assert "<svg" in svg and "0.7311" in svg and "−0.1966" in svg


def test_without_graphviz_notebooks_fall_back_to_text(monkeypatch):
    import autodiff_lab.render as render_package

    def missing(*args, **kwargs):
        raise GraphvizNotFoundError("no dot")

    monkeypatch.setattr(render_package, "run_dot", missing)
    g, vals = _neuron()
    assert g._repr_svg_() is None
    assert adl.render(g, values=vals)._repr_svg_() is None
    assert adl.gradient(g, vals)._repr_html_().startswith("<table>")


def test_gradcheck_shows_its_verdict():
    g, vals = _neuron()
    assert "gradcheck passed" in adl.gradcheck(g, vals)._repr_html_()
    failed = adl.checks.GradcheckResult(False, "full", 5, 1.0, 1.0, "input 'w' index (0,): expected <1>")
    html = failed._repr_html_()
    assert "FAILED" in html and "&lt;1&gt;" in html
