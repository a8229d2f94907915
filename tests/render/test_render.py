"""The drawing: the DOT text of the sigmoid neuron, number formatting, the accepted forms of
values and gradients, real PNG/SVG files, and how the dot program is found."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import AutodiffError, InputError
from autodiff_lab.examples import sigmoid_neuron, sigmoid_neuron_vector
from autodiff_lab.render import (
    backend,
    format_number,
    format_summary,
    render,
    to_dot,
    to_graphviz,
    to_svg,
)
from autodiff_lab.render.dot import GRAD_COLOUR, ROLE_COLOURS, VALUE_COLOUR, op_label
from autodiff_lab.render.numbers import format_value

G, R = VALUE_COLOUR, GRAD_COLOUR


def edge(u: int, v: int, value: str, grad: str) -> str:
    """The DOT line of a textbook edge: value above (green), gradient below (red)."""
    return (f'  n{u} -> n{v} [label=<<font color="{G}">{value}</font><br/>'
            f'<font color="{R}">{grad}</font>>];')


def node_lines(dot: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^  n(\d+) \[.*$", dot, re.M)}


@pytest.fixture(scope="module")
def neuron():
    return sigmoid_neuron()


@pytest.fixture(scope="module")
def fused_dot(neuron):
    return to_dot(neuron.graph, neuron.values, grads=True)


@pytest.fixture(scope="module")
def primitive_dot(neuron):
    return to_dot(neuron.graph, neuron.values, grads=True, primitive=True)


# --- the sigmoid neuron ------------------------------------------------------------------------

def test_fused_neuron_edges_carry_values_and_gradients(fused_dot):
    lines = fused_dot.splitlines()
    # inputs -> multiplications (data direction), the textbook numbers
    assert edge(0, 5, "2", "−0.1966") in lines       # w0
    assert edge(1, 5, "−1", "0.3932") in lines       # x0
    assert edge(2, 6, "−3", "−0.3932") in lines      # w1
    assert edge(3, 6, "−2", "−0.5898") in lines      # x1
    assert edge(4, 8, "−3", "0.1966") in lines       # w2
    assert edge(8, 9, "1", "0.1966") in lines        # into σ
    # the output edge: f = 0.7311, dL/dL = 1
    assert f'  n9 -> o0 [label=<<font color="{G}">0.7311</font><br/><font color="{R}">1</font>>];' \
        in lines
    assert not any(re.search(r"n9 -> n\d", line) for line in lines)


def test_fused_neuron_nodes_labels_and_role_colours(fused_dot):
    nodes = node_lines(fused_dot)
    assert sorted(nodes) == list(range(10))
    for v in (0, 2, 4):
        assert f'fillcolor="{ROLE_COLOURS["parameter"]}"' in nodes[v]
    for v in (1, 3):
        assert f'fillcolor="{ROLE_COLOURS["input"]}"' in nodes[v]
    for v in (5, 6, 7, 8):
        assert f'fillcolor="{ROLE_COLOURS["op"]}"' in nodes[v]
    assert f'fillcolor="{ROLE_COLOURS["output"]}"' in nodes[9]
    assert "<b>w0</b>" in nodes[0] and "<b>x1</b>" in nodes[3]
    assert ">×<" in nodes[5] and ">+<" in nodes[7] and ">σ<" in nodes[9]
    assert "rankdir=LR" in fused_dot  # inputs on the left, output on the right


def test_primitive_neuron_reads_mul_add_neg_exp_plus1_reciprocal(primitive_dot):
    nodes = node_lines(primitive_dot)
    labels = [re.search(r'point-size="14">([^<]+)<', nodes[v]).group(1) for v in sorted(nodes)
              if 'point-size="14"' in nodes[v]]
    assert labels == ["×", "×", "+", "+", "−x", "exp", "+1", "1/x"]
    assert 11 not in nodes  # the constant 1 is folded into "+1", not drawn
    assert "n11 ->" not in primitive_dot
    lines = primitive_dot.splitlines()
    assert edge(9, 10, "−1", "−0.1966") in lines
    assert edge(10, 12, "0.3679", "−0.5344") in lines
    assert edge(12, 13, "1.368", "−0.5344") in lines
    assert f'  n13 -> o0 [label=<<font color="{G}">0.7311</font><br/><font color="{R}">1</font>>];' \
        in lines


def test_dot_text_is_deterministic(neuron, primitive_dot):
    again = to_dot(sigmoid_neuron().graph, dict(neuron.values), grads=True, primitive=True)
    assert again == primitive_dot
    assert "0x" not in primitive_dot  # no memory addresses
    assert to_dot(neuron.graph) == to_dot(sigmoid_neuron().graph)


def test_structure_only_and_numbers_in_nodes(neuron):
    bare = to_dot(neuron.graph)
    assert "label=<<font color" not in bare and "forward value" not in bare
    inside = to_dot(neuron.graph, neuron.values, grads=True, numbers="nodes")
    assert f'<font color="{G}">0.7311</font><br/><font color="{R}">1</font>' in node_lines(inside)[9]
    assert "n0 -> n5;" in inside  # bare edges
    with pytest.raises(InputError, match="numbers"):
        to_dot(neuron.graph, numbers="sideways")


def test_title_and_legend(neuron):
    dot = to_dot(neuron.graph, neuron.values, grads=True, title="a < b & c")
    assert "a &lt; b &amp; c" in dot and "gradient ∂L/∂·" in dot
    assert "label=<" not in to_dot(neuron.graph, legend=False).split("n0 [")[0]


# --- formatting -----------------------------------------------------------------------------

@pytest.mark.parametrize("x, text", [
    (0.7310585786, "0.7311"), (-0.19661193, "−0.1966"), (2.0, "2"), (-3, "−3"), (1.368, "1.368"),
    (123456.0, "1.235e5"), (3e-7, "3e−7"), (-0.0, "0"), (float("nan"), "nan"),
    (float("-inf"), "−∞"), (np.float32(0.5), "0.5"), (True, "true"),
])
def test_format_number(x, text):
    assert format_number(x) == text


def test_format_tensor_summaries():
    assert format_summary(np.array([[0.0, 1.0], [0.25, 0.75], [0.5, 0.5]])) == "mean 0.5 [0, 1]"
    assert format_summary(np.arange(12.0).reshape(3, 4) - 3) == "mean 2.5 [−3, 8]"
    assert format_summary(np.zeros((0, 3))) == "empty"
    assert format_summary(np.array([1.0, np.nan, 3.0, 5.0, 7.0])) == "mean 4 [1, 7], 1 non-finite"
    assert format_value(np.array([2.0, -3.0, -3.0])) == "[2, −3, −3]"     # small: in full
    assert format_value(np.array([[1.0, 2.0], [3.0, 4.0]])) == "[[1, 2], [3, 4]]"
    assert format_value(np.full((3, 3), 2.0)) == "mean 2 [2, 2]"


def test_tensor_graph_shows_shapes_summaries_and_fan_out_totals():
    ex = adl.examples.mlp(d_in=16, hidden=8, batch=4)
    dot = to_dot(ex.graph, ex.values, grads=True)
    w1 = node_lines(dot)[ex.graph.inputs["W1"]]
    assert "(8, 16)" in w1 and "<b>W1</b>" in w1
    assert re.search(r"mean −?[0-9.e−]+ \[−?[0-9.e−]+, −?[0-9.e−]+\]", dot)
    assert "tensors: mean [min, max]" in dot
    vec = sigmoid_neuron_vector()
    dot = to_dot(vec.graph, vec.values, grads=True)
    w = node_lines(dot)[vec.graph.inputs["w"]]
    assert f'<font color="{R}" point-size="10">Σ [−0.1966, −0.3932, 0.1966]</font>' in w
    # each branch carries its own share of the gradient (from the index op's VJP)
    assert f'<font color="{R}">[−0.1966, 0, 0]</font>' in dot
    assert ">[0]<" in dot and ">[2]<" in dot


def test_constant_folding_labels():
    g = adl.trace(lambda x: adl.power(2.0 * x - 3.0, 2) / 4.0 + 1.0 / x, x=())
    labels = [op_label(g, v)[0] for v in g.order if g.node(v)["role"] == "op"]
    assert labels == ["×2", "−3", "x²", "÷4", "1/x", "+"]


# --- the accepted forms of values and gradients ----------------------------------------------

def test_grads_in_every_accepted_form_give_the_same_input_edges(neuron):
    g, values = neuron.graph, neuron.values
    kept = adl.engine("tape", keep_all=True).compile(g)(values)
    plain = adl.gradient(g, values)
    forms = {
        "True": True,
        "GradientResult with node grads": kept,
        "GradientResult, by name": plain,
        "by name": dict(plain.grads),
        "by node id": dict(kept.node_grads),
    }
    for form, grads in forms.items():
        lines = to_dot(g, values, grads).splitlines()
        assert edge(0, 5, "2", "−0.1966") in lines, form
        assert edge(3, 6, "−2", "−0.5898") in lines, form
    # only the input gradients known: op edges carry values alone
    by_name = to_dot(g, values, dict(plain.grads))
    assert f'  n5 -> n7 [label=<<font color="{G}">−2</font>>];' in by_name.splitlines()


def test_values_in_every_accepted_form(neuron):
    g = neuron.graph
    kept = adl.engine("tape", keep_all=True).compile(g)(neuron.values)
    expected = to_dot(g, neuron.values, kept)
    assert to_dot(g, kept, kept) == expected
    assert to_dot(g, dict(kept.node_values), kept) == expected
    inputs_by_id = {v: neuron.values[n] for n, v in g.inputs.items()}
    assert to_dot(g, inputs_by_id, kept) == expected  # the rest is evaluated


def test_bad_values_and_grads(neuron):
    g = neuron.graph
    with pytest.raises(InputError, match="needs values"):
        to_dot(g, grads=True)
    with pytest.raises(InputError, match="not inputs"):
        to_dot(g, neuron.values, {"nope": 1.0})
    with pytest.raises(InputError, match="keyed all by"):
        to_dot(g, {"w0": 1.0, 3: 2.0})
    with pytest.raises(InputError, match="keep_all"):
        to_dot(g, adl.gradient(g, neuron.values))
    with pytest.raises(InputError):
        to_dot(g, {"w0": 1.0})  # missing inputs: the evaluator's own error
    with pytest.raises(InputError, match="Graph"):
        to_dot("not a graph")
    with pytest.raises(InputError, match="primitive level"):
        to_dot(g, grads={"w0": 1.0}, primitive=True)


def test_primitive_recomputes_on_the_expanded_graph(neuron):
    kept = adl.engine("tape", keep_all=True).compile(neuron.graph)(neuron.values)
    from_result = to_dot(neuron.graph, kept, kept, primitive=True)
    assert from_result == to_dot(neuron.graph, neuron.values, True, primitive=True)
    assert to_dot(neuron.graph, primitive=True).count("->") == 13  # 12 ops edges + output


# --- files --------------------------------------------------------------------------------------

def test_writes_real_png_and_svg(neuron, tmp_path):
    source = render(neuron.graph, neuron.values, grads=True, path=tmp_path / "n.png",
                    primitive=True)
    assert (tmp_path / "n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    render(neuron.graph, neuron.values, grads=True, path=tmp_path / "n.svg", primitive=True)
    root = ET.parse(tmp_path / "n.svg").getroot()
    assert root.tag.endswith("svg")
    text = "".join(root.itertext())
    assert "0.7311" in text and "1/x" in text and "−0.5344" in text
    render(neuron.graph, path=tmp_path / "n.dot")
    assert (tmp_path / "n.dot").read_text(encoding="utf-8") == to_dot(neuron.graph)
    render(neuron.graph, path=tmp_path / "picture", format="svg")
    assert (tmp_path / "picture").read_bytes().lstrip().startswith(b"<?xml")
    assert source.startswith("// autodiff_lab graph ")


def test_bad_paths_and_formats(neuron, tmp_path):
    with pytest.raises(InputError, match="format"):
        render(neuron.graph, path=tmp_path / "no_suffix")
    with pytest.raises(InputError, match="does not exist"):
        render(neuron.graph, path=tmp_path / "missing" / "n.svg")
    with pytest.raises(InputError, match="needs a path"):
        render(neuron.graph, format="svg")
    with pytest.raises(backend.RenderError, match="could not write"):
        render(neuron.graph, path=tmp_path / "n.nosuchformat")


def test_to_svg_and_jupyter_repr(neuron):
    svg = to_svg(neuron.graph, neuron.values, grads=True)
    assert ET.fromstring(svg.encode()).tag.endswith("svg")
    assert ET.fromstring(neuron.graph._repr_svg_().encode()).tag.endswith("svg")


# --- finding dot ------------------------------------------------------------------------------

def _only(found: dict[str, str]):
    return lambda name, *args, **kwargs: found.get(name)


def test_system_dot_is_preferred(monkeypatch, tmp_path):
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(backend, "_script_dirs", lambda: [tmp_path])
    monkeypatch.setattr(shutil, "which", _only({"dot": "/usr/bin/dot",
                                                 "graphviz-pure": "/x/graphviz-pure"}))
    assert [p.kind for p in backend.find_dot_programs()] == ["system dot", "graphviz-pure"]
    assert backend.find_dot().path == "/usr/bin/dot"


def test_falls_back_to_graphviz_pure_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(backend, "_script_dirs", lambda: [tmp_path])
    monkeypatch.setattr(shutil, "which", _only({"graphviz-pure": "/opt/bin/graphviz-pure"}))
    program = backend.find_dot()
    assert (program.kind, program.path) == ("graphviz-pure", "/opt/bin/graphviz-pure")


def test_falls_back_to_graphviz_pure_next_to_python(monkeypatch, tmp_path):
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    binary = tmp_path / "graphviz-pure"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(backend, "_script_dirs", lambda: [tmp_path])
    monkeypatch.setattr(shutil, "which", _only({}))
    assert backend.find_dot().path == str(binary)


def test_no_dot_at_all_names_both_options(monkeypatch, tmp_path, neuron):
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(backend, "_script_dirs", lambda: [tmp_path])
    monkeypatch.setattr(shutil, "which", _only({}))
    with pytest.raises(backend.GraphvizNotFoundError) as info:
        render(neuron.graph, path=tmp_path / "n.svg")
    assert "graphviz-pure" in str(info.value) and "dot" in str(info.value)
    assert isinstance(info.value, AutodiffError)


def test_real_graphviz_pure_binary_draws_png_and_svg(monkeypatch, neuron):
    pure = next((p for p in backend.find_dot_programs() if p.kind == "graphviz-pure"), None)
    if pure is None:
        pytest.skip("graphviz-pure is not installed")
    monkeypatch.setattr(shutil, "which", _only({"graphviz-pure": pure.path}))
    monkeypatch.setattr(backend, "_script_dirs", lambda: [])
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    source = to_dot(neuron.graph, neuron.values, grads=True, primitive=True)
    png, program = backend.run_dot(source, "png")
    assert program.path == pure.path and png[:8] == b"\x89PNG\r\n\x1a\n"
    svg, program = backend.run_dot(source, "svg")
    assert program.path == pure.path and "0.7311" in "".join(ET.fromstring(svg).itertext())


def test_graphviz_package_is_pointed_at_the_fallback(monkeypatch, neuron):
    from graphviz.backend import dot_command

    pure = next((p for p in backend.find_dot_programs() if p.kind == "graphviz-pure"), None)
    if pure is None:
        pytest.skip("graphviz-pure is not installed")
    monkeypatch.setattr(shutil, "which", _only({"graphviz-pure": pure.path}))
    monkeypatch.setattr(backend, "_script_dirs", lambda: [])
    monkeypatch.delenv(backend.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(dot_command, "DOT_BINARY", dot_command.DOT_BINARY)  # restored after
    source = to_graphviz(neuron.graph, neuron.values, grads=True)
    assert str(dot_command.DOT_BINARY) == pure.path
    assert source.pipe(format="png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_environment_variable_must_name_a_program(monkeypatch):
    monkeypatch.setenv(backend.ENV_VARIABLE, "/no/such/dot")
    with pytest.raises(backend.GraphvizNotFoundError, match="AUTODIFF_LAB_DOT"):
        backend.find_dot()
