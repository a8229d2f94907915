"""The drawings name a font that exists and their node boxes hold their text.

Graphviz measures every label with the font it is told and writes that name into the SVG;
a browser without that font substitutes another, and a wider substitute overflows the boxes.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.examples import sigmoid_neuron
from autodiff_lab.render import fonts
from autodiff_lab.render.dot import FONT


def _needs_font_list() -> None:
    if shutil.which("fc-list") is None or fonts.installed_families() is None:
        pytest.skip("fc-list is not installed: the machine's fonts cannot be listed")


def _tensor_svg() -> str:
    """A small graph whose labels hold non-ASCII text (×, ½‖ŷ−y‖², σ, −)."""
    name = "ŵŴŵŴŵŴŵŴŵŴ"  # wide letters of two bytes each: a byte-wise guess is too narrow
    g = adl.trace(lambda x, y, **p: adl.mse_loss(adl.sigmoid(p[name] @ x) - 1.5, y),
                  x=(4, 2), y=(3, 2), **{name: adl.param((3, 4))})
    rng = np.random.default_rng(0)
    vals = {name: rng.standard_normal((3, 4)), "x": rng.random((4, 2)), "y": rng.random((3, 2))}
    return adl.render.to_svg(g, vals, True, rankdir="TB")


def test_graph_svgs_name_only_installed_fonts():
    _needs_font_list()
    ex = sigmoid_neuron()
    for svg in (adl.render.to_svg(ex.graph, ex.values, True), _tensor_svg()):
        assert fonts.missing_fonts(svg) == []
        named = fonts.svg_font_families(svg)
        assert FONT in named and "sans-serif" in named and "Helvetica" not in named


def test_layer_drawing_and_matplotlib_figures_name_only_installed_fonts(tmp_path):
    _needs_font_list()
    from autodiff_lab import figures, nn
    from autodiff_lab.compare import plots

    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=1))
    nn.render_modules(model, (5, 3), path=tmp_path / "layers.svg")
    figures.loss_curves({"tape": [3.0, 2.0, 1.0]}, tmp_path / "loss")
    with plots.styled():
        fig = plots.new_figure()
        fig.add_subplot().set_title("x")
        plots.save(fig, tmp_path / "plot")
    for name in ("layers.svg", "loss.svg", "plot.svg"):
        svg = (tmp_path / name).read_text(encoding="utf-8")
        assert fonts.missing_fonts(svg) == [], name
    assert "<text" not in (tmp_path / "plot.svg").read_text()  # glyphs drawn as paths


def test_the_font_list_parser_sees_what_a_browser_reads():
    svg = ('<text font-family="Helvetica,sans-Serif">a</text>'
           '<g style="font-family: \'No Such Font\'; font-size: 3px"/>'
           '<text style="font: 12px \'Other Font\', serif">b</text>')
    assert fonts.svg_font_families(svg) == {"Helvetica", "sans-Serif", "No Such Font",
                                            "Other Font", "serif"}
    fixed = fonts.with_generic_fallback('<text font-family="DejaVu Sans">a</text>'
                                        '<g style="font-family: \'DejaVu Sans\'"/>')
    assert fixed.count("sans-serif") == 2
    if fonts.installed_families() is not None:
        assert "No Such Font" in fonts.missing_fonts(svg)


def _node_boxes(svg: str):
    """(width of the node's box at each text line, text, font size, bold) for every node."""
    for group in re.findall(r'<g id="node\d+" class="node">(.*?)</g>', svg, re.S):
        poly = re.search(r'<polygon[^>]*points="([^"]+)"', group) or \
            re.search(r'<path[^>]*\sd="([^"]+)"', group)  # rounded boxes are paths
        ellipse = re.search(r'<ellipse[^>]*cx="([-\d.]+)"[^>]*cy="([-\d.]+)"[^>]*rx="([-\d.]+)"'
                            r'[^>]*ry="([-\d.]+)"', group)
        for m in re.finditer(r'<text([^>]*)>([^<]*)</text>', group):
            attrs, text = m.group(1), m.group(2)
            size = float(re.search(r'font-size="([\d.]+)"', attrs).group(1))
            bold = 'font-weight="bold"' in attrs
            y = float(re.search(r'\sy="([-\d.]+)"', attrs).group(1))
            if poly:
                numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", poly.group(1))]
                xs = numbers[::2]
                width = max(xs) - min(xs)
            elif ellipse:
                _, cy, rx, ry = map(float, ellipse.groups())
                dy = min(abs(y - size * 0.35 - cy), ry)  # the text's middle
                width = 2 * rx * (1 - (dy / ry) ** 2) ** 0.5
            else:
                continue
            import html
            yield width, html.unescape(text), size, bold


@pytest.mark.parametrize("which", ["neuron", "tensors", "layers"])
def test_node_text_fits_its_box_measured_with_the_named_font(which, tmp_path):
    pytest.importorskip("matplotlib")
    if which == "neuron":
        ex = sigmoid_neuron()
        svg = adl.render.to_svg(ex.graph, ex.values, True, primitive=True)
    elif which == "tensors":
        svg = _tensor_svg()
    else:
        from autodiff_lab import nn
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 1, 3, padding=1, rng=1))
        nn.render_modules(model, (2, 1, 8, 8), path=tmp_path / "l.svg")
        svg = (tmp_path / "l.svg").read_text(encoding="utf-8")
    boxes = list(_node_boxes(svg))
    assert boxes
    assert any(not t.isascii() for _, t, _, _ in boxes) or which == "neuron"
    for width, text, size, bold in boxes:
        need = fonts.text_width_pt(text, size, bold)
        assert need <= width + 0.5, (text, need, width)
