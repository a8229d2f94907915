"""The report's pictures: the networks drawn layer by layer (with the numbers of the nn
model's own gradient) and the case studies' image panels; tiny models, so it is fast."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from autodiff_lab import nn
from autodiff_lab.compare import case_figures
from autodiff_lab.compare.cases import CaseContext, CaseSpec
from autodiff_lab.compare.harness import parse_engines
from autodiff_lab.engines import engine
from autodiff_lab.examples import dncnn, mlp

sys.path.insert(0, str(Path(__file__).parent))
from chromium_devtools import Browser, find_chromium  # noqa: E402


def _tiny_classifier():
    from autodiff_lab.examples import classifier_function
    from autodiff_lab.graph.graph import param, spec, trace
    rng = np.random.default_rng(0)
    g = trace(classifier_function(), W=param((3, 5)), b=param((3,)), x=spec((4, 5)),
              labels=spec((4,), "int64"))
    values = {"W": rng.standard_normal((3, 5)), "b": rng.standard_normal(3),
              "x": rng.random((4, 5)), "labels": np.array([0, 2, 1, 2])}
    return g, values


@pytest.mark.parametrize("case", ["inpainting", "denoiser", "classifier"])
def test_the_nn_model_of_each_case_has_the_case_graphs_gradient(case):
    if case == "inpainting":
        ex = mlp(d_in=4, hidden=3, batch=2)
        graph, values = ex.graph, ex.values
    elif case == "denoiser":
        ex = dncnn(batch=2, size=5, channels=2, depth=3)
        graph, values = ex.graph, ex.values
    else:
        graph, values = _tiny_classifier()
    model, loss, x, y, names = case_figures.LAYER_MODELS[case](values)
    trace = nn.trace_modules(model, loss, x, y)
    mine = engine("tape").compile(trace.graph, output="loss")(trace.values)
    theirs = engine("tape").compile(graph)(values)
    assert float(mine.value) == pytest.approx(float(theirs.value), rel=1e-12)
    assert case_figures._relative_difference(theirs.grads, mine.grads, names) < 1e-12
    assert set(names.values()) <= set(trace.graph.inputs)


def test_trace_modules_boxes_name_graph_nodes_and_the_drawing_shows_them(tmp_path):
    from autodiff_lab.render.layers import SIZES, draw_layer_graph
    model = nn.DnCNN(5, 3, 1, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).random((2, 1, 6, 6))
    trace = nn.trace_modules(model, nn.MSELoss(), x, 0.1 * x)
    boxes = [n for n in trace.layers.nodes if n.kind == "module"]
    leaves = [m for m in model.modules() if not m.children()]
    assert len(boxes) == len(leaves) + 1  # every layer and the loss
    assert [n.kind for n in trace.layers.nodes].count("input") == 2  # input and target
    for e in trace.layers.edges:
        assert e.node in trace.graph.nx and tuple(trace.graph.node(e.node)["shape"]) == e.shape
    params = {p for n in boxes for p in n.params}
    assert {name for name, _, _ in params} == {n for n, _ in model.named_parameters()}
    assert all(trace.graph.inputs[name] == gid for name, _, gid in params)
    result = engine("tape", keep_all=True).compile(trace.graph, output="loss")(trace.values)
    source = draw_layer_graph(trace.layers, tmp_path / "layers", values=result.node_values,
                              grads=result.node_grads, wrap=7)
    assert source.count("±") >= 2 * len(trace.layers.edges) - 2
    assert "‖∂L/∂weight‖" in source and "rank=same" in source and "constraint=false" in source
    assert min(SIZES.values()) * 150 / 72 >= 14  # ≥ 14 px at the PNG's 150 dpi
    from PIL import Image
    with Image.open(tmp_path / "layers.png") as im:
        w, h = im.size
    assert h < 2.2 * w, (w, h)  # columns, not one tall strip
    assert source == draw_layer_graph(trace.layers, None, values=result.node_values,
                                      grads=result.node_grads, wrap=7)  # deterministic


def _ctx(spec, ex, tmp_path, **results):
    ctx = CaseContext(spec, ex, [n for n, v in ex.graph.inputs.items()
                                 if ex.graph.node(v)["role"] == "parameter"],
                      tmp_path / spec.name, tmp_path, True, parse_engines("tape"), 1.0,
                      echo=lambda text: None)
    ctx.results.update(results)
    return ctx


def test_layers_section_says_how_close_the_nn_gradient_is(tmp_path):
    ex = mlp(d_in=4, hidden=3, batch=2)
    spec = CaseSpec("inpainting", lambda quick: ex, ["layers"])
    sec = case_figures.layers_section(_ctx(spec, ex, tmp_path))
    text = " ".join(sec.paragraphs)
    assert "InpaintingMLP" in text and "largest difference" in text
    assert re.search(r"is (0\.0e\+00|\d\.\de-1[3-9])", text), text
    assert [f.png for f in sec.figures] == ["inpainting/layers.png"]
    assert sec.figures[0].width > 300
    # not a network case: no section
    other = CaseSpec("chain", lambda quick: ex, ["layers"])
    assert case_figures.layers_section(_ctx(other, ex, tmp_path)) is None


def test_case_study_panels(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    clean = rng.random((16, 16))
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    png, svg = case_figures.denoiser_figure(clean, noisy, 0.5 * (clean + noisy), tmp_path / "d")
    assert "<text" not in svg.read_text()  # glyphs as paths: no font needed
    digits = rng.random((12, 784))
    pred, truth = np.arange(12) % 10, np.arange(12) % 10
    pred[[3, 7]] = 0
    png2, _ = case_figures.classifier_figure(digits, pred, truth, tmp_path / "c", columns=6)
    for p in (png, png2):
        with Image.open(p) as im:
            assert im.size[0] >= 1500 and im.size[1] >= 300


def test_case_study_section_uses_the_trained_model(tmp_path):
    from autodiff_lab.examples import sigmoid_neuron
    from autodiff_lab.studies.neuron import make_points
    X, y = make_points(20, 0)
    model = nn.SigmoidNeuron(2, dtype=np.float64, rng=0)
    ex = sigmoid_neuron()
    spec = CaseSpec("neuron", lambda quick: ex, ["case_study"])
    ctx = _ctx(spec, ex, tmp_path, trained_models={"tape": model},
               training_setup={"train_data": (X, y[:, None])})
    sec = case_figures.case_study_section(ctx)
    assert sec.figures[0].png == "neuron/neuron_pictures.png" and "(tape)" in sec.figures[0].caption


def test_page_with_the_layer_drawing_in_headless_chromium(tmp_path):
    from autodiff_lab.compare import run_report
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page is not "
                    "checked in a browser")
    ex = mlp(d_in=4, hidden=3, batch=2)
    ex.name = "inpainting"
    spec = CaseSpec("inpainting", lambda quick: ex, ["graph", "layers"])
    run_report([spec], tmp_path / "out", engines="tape", quick=True, echo=lambda t: None,
               progress_bar=False)
    page = tmp_path / "out" / "report.html"
    assert "inpainting/layers.png" in page.read_text()
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(page.resolve().as_uri())
        state = browser.evaluate("""(async () => {
            await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
            return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth,
                                                  i.naturalHeight, i.clientWidth]);
        })()""")
    finally:
        browser.close()
    sizes = {src: (w, h, shown) for src, w, h, shown in state}
    assert "inpainting/layers.png" in sizes
    assert all(w > 0 and h > 0 and shown > 0 for w, h, shown in sizes.values()), sizes
