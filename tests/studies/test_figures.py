"""Each slide figure is written as PNG and SVG at slide proportions, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autodiff_lab import figures
from autodiff_lab.data import confusion_matrix, load_digits
from autodiff_lab.errors import InputError


def check(paths, ratio):
    """PNG and SVG written; the PNG has the slide's proportions (ratio), or, for ratio None,
    fits in a 16:9 slide at 150 dpi and fills its width or height."""
    png, svg = paths
    assert png.suffix == ".png" and svg.suffix == ".svg" and svg.stat().st_size > 1000
    with Image.open(png) as img:
        w, h = img.size
    if ratio is None:
        assert w <= 2000 and h <= 1125 and (w >= 1900 or h >= 1050)
    else:
        assert w >= 1400 and abs(w / h - ratio) < 0.02
    text = svg.read_text()
    assert "<svg" in text and "DejaVu Sans" in text
    return png


def test_loss_curves(tmp_path):
    steps = np.arange(1, 201)
    loss = 1 / np.sqrt(steps)
    paths = figures.loss_curves({"tape": loss, "symbolic": loss, "numeric": loss * 1.1},
                                tmp_path / "curves.png", val={"tape": [0.3, 0.1, 0.08, 0.07]},
                                title="inpainting MLP")
    check(paths, 16 / 9)
    # values ≤ 0 fall back to a linear axis; (x, y) pairs and no suffix work too
    check(figures.loss_curves({"a": (np.arange(5), np.array([1.0, 0.0, -1.0, 2.0, 3.0]))}, tmp_path / "lin"),
          16 / 9)
    with pytest.raises(InputError, match="non-empty"):
        figures.loss_curves({}, tmp_path / "x.png")
    with pytest.raises(InputError, match="history 'a'"):
        figures.loss_curves({"a": np.zeros((2, 2))}, tmp_path / "x.png")
    with pytest.raises(InputError, match="PNG and SVG"):
        figures.loss_curves({"a": [1, 2]}, tmp_path / "x.pdf")


def test_image_panel(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.random((3, 40, 40))
    rows = [[c + rng.normal(0, 0.1, c.shape), c * 0.9, c] for c in clean]
    caps = [[20.1, 25.33, None] for _ in rows]
    check(figures.image_panel(rows, tmp_path / "panel.svg", column_titles=["noisy", "DnCNN", "clean"],
                              captions=caps, row_titles=["a", "b", "c"]), None)
    assert (tmp_path / "panel.png").exists()
    with pytest.raises(InputError, match="column_titles"):
        figures.image_panel(rows, tmp_path / "p.png", column_titles=["one"])
    with pytest.raises(InputError, match=r"image \[0\]\[0\]"):
        figures.image_panel([[np.zeros(5)]], tmp_path / "p.png")


def test_confusion_matrix_plot(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.8, y, rng.integers(0, 10, 500))
    check(figures.confusion_matrix_plot(confusion_matrix(y, pred, 10), tmp_path / "cm.png"), 4 / 3)
    check(figures.confusion_matrix_plot(confusion_matrix(y, pred, 10), tmp_path / "cmn.png", normalize=True),
          4 / 3)
    with pytest.raises(InputError, match="square"):
        figures.confusion_matrix_plot(np.zeros((2, 3)), tmp_path / "x.png")


def test_weight_templates(tmp_path):
    x, labels = load_digits("test")
    means = np.stack([x[labels == c].mean(axis=0).ravel() for c in range(10)])
    check(figures.weight_templates(means - means.mean(axis=0), tmp_path / "templates.png"), 16 / 9)
    with pytest.raises(InputError, match=r"\(k, 784\)"):
        figures.weight_templates(np.zeros((784, 10)), tmp_path / "x.png")


def test_decision_boundary(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(90, 2)) + np.repeat(np.array([[0, 0], [3, 0], [0, 3]]), 30, axis=0)
    y = np.repeat(np.arange(3), 30)
    centres = np.array([[0, 0], [3, 0], [0, 3]])

    def scores(P):
        return -((P[:, None, :] - centres[None]) ** 2).sum(axis=2)

    check(figures.decision_boundary(scores, X, y, tmp_path / "boundary.png", resolution=120,
                                    title="nearest centre"), 4 / 3)
    with pytest.raises(InputError, match="predict_fn"):
        figures.decision_boundary(lambda P: np.zeros(3), X, y, tmp_path / "x.png", resolution=10)
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        figures.decision_boundary(scores, X[:, :1], y, tmp_path / "x.png")
