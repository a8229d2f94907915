"""Slide-ready figures for the case studies: loss curves, image panels, confusion matrices,
learned templates and decision boundaries.

Every function draws one figure at a slide's size (16:9 is 13.33 × 7.5 in, 4:3 is
10 × 7.5 in, PowerPoint's sizes, so the fonts keep their point size on a full-slide image),
with DejaVu Sans (shipped with matplotlib) at 16 pt and more, and saves it twice: PNG
(150 dpi) and SVG, next to each other. ``path`` may end in ``.png``, ``.svg`` or nothing; the
two paths written are returned. Figures are drawn with the Agg renderer on
:class:`matplotlib.figure.Figure` objects that pyplot never sees, so nothing opens a window,
nothing changes pyplot's global state, and no figure stays alive after the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError

__all__ = ["loss_curves", "psnr_curves", "image_panel", "confusion_matrix_plot", "weight_templates",
           "decision_boundary", "SLIDE_SIZES", "STYLE"]

#: figure sizes in inches
SLIDE_SIZES = {"16:9": (13.33, 7.5), "4:3": (10.0, 7.5)}
DPI = 150
#: matplotlib settings every figure is drawn with
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 18,
    "axes.titlesize": 20,
    "axes.labelsize": 18,
    "xtick.labelsize": 16,
    "ytick.labelsize": 16,
    "legend.fontsize": 16,
    "figure.titlesize": 22,
    "lines.linewidth": 2.5,
    "lines.markersize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text in the SVG (editable, searchable); _save adds
    # the generic sans-serif after DejaVu Sans for machines without it
    "image.interpolation": "nearest",
}
_LINESTYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _figure(aspect: str, size: tuple[float, float] | None = None) -> Any:
    from matplotlib.figure import Figure

    if aspect not in SLIDE_SIZES:
        raise InputError(f"aspect must be one of {sorted(SLIDE_SIZES)}, got {aspect!r}")
    return Figure(figsize=size or SLIDE_SIZES[aspect], dpi=DPI, layout="constrained")


def _grid_size(aspect: str, nrows: int, ncols: int, cell_ratio: float, top: float, per_row: float,
               left: float) -> tuple[float, float]:
    """The smallest figure that holds an nrows × ncols grid of cells (height/width = cell_ratio)
    as large as the slide box allows, with ``top`` inches of titles, ``per_row`` of captions
    and ``left`` of row labels."""
    width, height = SLIDE_SIZES[aspect]
    gap = 0.12
    cell_w = min((width - left) / ncols - gap, ((height - top) / nrows - per_row - gap) / cell_ratio)
    cell_w = max(cell_w, 0.3)
    return (min(width, left + ncols * (cell_w + gap) + 0.1),
            min(height, top + nrows * (cell_w * cell_ratio + per_row + gap) + 0.1))


def _targets(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix.lower() not in ("", ".png", ".svg"):
        raise InputError(f"figures are saved as PNG and SVG: give a path ending in .png, .svg or "
                         f"nothing, got {str(p)!r}")
    stem = p.with_suffix("") if p.suffix else p
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")


def _save(fig: Any, path: str | Path) -> tuple[Path, Path]:
    png, svg = _targets(path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI, format="png")
    fig.savefig(svg, format="svg")
    from autodiff_lab.render.fonts import with_generic_fallback
    svg.write_text(with_generic_fallback(svg.read_text(encoding="utf-8")), encoding="utf-8")
    return png, svg


def _style() -> Any:
    import matplotlib
    return matplotlib.rc_context(STYLE)


def _series(name: str, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a history: a 1-D sequence (x = 1..n) or a pair (x, y)."""
    if isinstance(values, tuple) and len(values) == 2:
        x, y = (np.asarray(v, dtype=float) for v in values)
    else:
        y = np.asarray(values, dtype=float)
        x = np.arange(1, y.size + 1, dtype=float)
    if y.ndim != 1 or y.size == 0 or x.shape != y.shape:
        raise InputError(f"history {name!r} must be a non-empty 1-D sequence or a pair (x, y) of equal "
                         f"length, got shapes {x.shape}, {y.shape}")
    return x, y


# -- loss curves ----------------------------------------------------------------------------------

def loss_curves(histories: Mapping[str, Any], path: str | Path, xlabel: str = "step", ylabel: str = "loss",
                logy: bool = True, val: Mapping[str, Any] | None = None, title: str | None = None,
                aspect: str = "16:9") -> tuple[Path, Path]:
    """Several training runs overlaid, e.g. the same model trained with each gradient engine.

    ``histories`` maps a label to its values per step (x = 1, 2, ...) or to a pair (x, y).
    Each run has its own colour, line style and markers (placed at staggered steps), so runs
    that coincide exactly still show as distinct. ``val`` adds validation values drawn in
    the run's colour with hollow markers; a plain sequence of m values under a label of
    ``histories`` with n steps is placed at x = n/m, 2n/m, ..., n (the end of each epoch).
    ``logy`` uses a log scale, unless some value is ≤ 0 (then the scale stays linear).
    """
    if not isinstance(histories, Mapping) or not histories:
        raise InputError("histories must be a non-empty dict {label: values}")
    runs = {str(k): _series(str(k), v) for k, v in histories.items()}
    vals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, v in (val or {}).items():
        x, y = _series(f"{k} (val)", v)
        if not (isinstance(v, tuple) and len(v) == 2) and str(k) in runs:
            n = runs[str(k)][0][-1]
            x = n * np.arange(1, y.size + 1) / y.size
        vals[str(k)] = (x, y)
    everything = np.concatenate([y for _, y in [*runs.values(), *vals.values()]])
    finite = everything[np.isfinite(everything)]
    use_log = logy and finite.size > 0 and bool(np.all(finite > 0))
    with _style():
        fig = _figure(aspect)
        ax = fig.add_subplot()
        colours = {label: f"C{i % 10}" for i, label in enumerate(runs)}
        for i, (label, (x, y)) in enumerate(runs.items()):
            every = max(1, y.size // 8)
            ax.plot(x, y, color=colours[label], linestyle=_LINESTYLES[i % 4], marker=_MARKERS[i % 8],
                    markevery=(min(y.size - 1, (i * every) // max(1, len(runs))), every), label=label)
        for j, (label, (x, y)) in enumerate(vals.items()):
            colour = colours.get(label, f"C{(len(runs) + j) % 10}")
            ax.plot(x, y, color=colour, linestyle=":", linewidth=2, marker=_MARKERS[j % 8],
                    markerfacecolor="white", markeredgewidth=2, label=f"{label} (val)")
        if use_log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(framealpha=0.85)
        return _save(fig, path)


def psnr_curves(histories: Mapping[str, Any], path: str | Path,
                references: Mapping[str, float] | None = None,
                marks: Mapping[str, tuple[float, float]] | None = None, xlabel: str = "step",
                ylabel: str = "PSNR (dB)", title: str | None = None,
                ylim: tuple[float | None, float | None] | None = None,
                aspect: str = "16:9") -> tuple[Path, Path]:
    """Quality curves against the step (PSNR of a fit, e.g. the Deep Image Prior's output against
    the clean image and against its noisy target), with horizontal reference lines (the noisy
    input, a classical filter, a trained network) and marked points (the peak).

    ``histories`` maps a label to values per step or to a pair (x, y); ``references`` a label
    to a constant drawn as a dashed line across the plot and labelled with its value;
    ``marks`` a label to one point (x, y) drawn as a large star; ``ylim`` (bottom, top)
    crops the vertical axis (``None`` for either end: automatic), e.g. to leave out the
    first steps of a fit far below every reference.
    """
    if not isinstance(histories, Mapping) or not histories:
        raise InputError("histories must be a non-empty dict {label: values}")
    runs = {str(k): _series(str(k), v) for k, v in histories.items()}
    refs = {}
    for k, v in (references or {}).items():
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise InputError(f"reference {k!r} must be a number, got {v!r}") from None
        if math.isfinite(value):
            refs[str(k)] = value
    with _style():
        fig = _figure(aspect)
        ax = fig.add_subplot()
        for i, (label, (x, y)) in enumerate(runs.items()):
            ax.plot(x, y, color=f"C{i % 10}", linestyle=_LINESTYLES[i % 4], label=label)
        for j, (label, value) in enumerate(refs.items()):
            ax.axhline(value, color=f"C{(len(runs) + j) % 10}", linestyle=(0, (5, 3)), linewidth=2,
                       label=f"{label}: {value:.2f} dB")
        for label, (mx, my) in (marks or {}).items():
            ax.plot([mx], [my], marker="*", markersize=22, color="k", linestyle="none",
                    label=f"{label}: {my:.2f} dB at {xlabel} {mx:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(framealpha=0.85, loc="center right")
        return _save(fig, path)


# -- images ---------------------------------------------------------------------------------------

def _caption(c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool):
        return "∞ dB" if math.isinf(c) else f"{float(c):.2f} dB"
    return str(c)


def _image(name: str, img: Any) -> np.ndarray:
    a = np.asarray(img, dtype=float)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]  # (1, H, W) channel-first grey
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InputError(f"{name} must be (H, W) grey or (H, W, 3|4) colour, got shape {a.shape}")
    return a


def image_panel(rows: Sequence[Sequence[Any]], path: str | Path, column_titles: Sequence[str] | None = None,
                captions: Sequence[Sequence[Any]] | None = None, row_titles: Sequence[str] | None = None,
                title: str | None = None, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0,
                aspect: str = "16:9") -> tuple[Path, Path]:
    """A grid of images: one row per example, one column per version (noisy, filtered,
    network, clean ...). The figure is as large as fits in a ``aspect`` slide and no larger
    than the grid needs (so it is not always exactly 16:9).

    ``captions`` has the shape of ``rows``: a number is shown as a PSNR ("27.43 dB"), a
    string as it is, ``None`` as nothing. An image of ``None`` leaves its cell blank. Grey
    images are drawn on the fixed range [vmin, vmax], so brightness compares across cells.
    """
    grid = [list(r) for r in rows]
    if not grid or not all(grid):
        raise InputError("rows must be a non-empty list of non-empty lists of images")
    ncols = max(len(r) for r in grid)
    for name, labels, n in (("column_titles", column_titles, ncols), ("row_titles", row_titles, len(grid))):
        if labels is not None and len(labels) != n:
            raise InputError(f"{name} has {len(labels)} entries for {n} {name.split('_')[0]}s")
    if captions is not None and [len(c) for c in captions] != [len(r) for r in grid]:
        raise InputError("captions must have one entry per image, row by row")
    images = [[None if img is None else _image(f"image [{i}][{j}]", img) for j, img in enumerate(r)]
              for i, r in enumerate(grid)]
    shapes = [img.shape[:2] for r in images for img in r if img is not None]
    if not shapes:
        raise InputError("image_panel got no image (every cell is None)")
    ratio = float(np.median([h / w for h, w in shapes]))
    size = _grid_size(aspect, len(grid), ncols, ratio, top=(0.55 if column_titles is not None else 0.1)
                      + (0.6 if title else 0.0), per_row=0.45 if captions is not None else 0.0,
                      left=0.55 if row_titles is not None else 0.0)
    with _style():
        fig = _figure(aspect, size)
        axes = fig.subplots(len(grid), ncols, squeeze=False)
        for i, row in enumerate(images):
            for j in range(ncols):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                a = images[i][j] if j < len(row) else None
                if a is not None:
                    ax.imshow(np.clip(a, vmin, vmax) if a.ndim == 3 else a, cmap=cmap, vmin=vmin, vmax=vmax)
                if captions is not None and j < len(captions[i]):
                    ax.set_xlabel(_caption(captions[i][j]))
                if i == 0 and column_titles is not None:
                    ax.set_title(column_titles[j])
                if j == 0 and row_titles is not None:
                    ax.set_ylabel(row_titles[i])
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def confusion_matrix_plot(cm: Any, path: str | Path, class_names: Sequence[str] | None = None,
                          normalize: bool = False, title: str | None = None,
                          aspect: str = "4:3") -> tuple[Path, Path]:
    """A confusion matrix (rows: true class, columns: predicted) with the count (or, with
    ``normalize``, the fraction of the row) written in each cell and the accuracy in the title."""
    m = np.asarray(cm, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0:
        raise InputError(f"a confusion matrix must be square (k, k), got shape {m.shape}")
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise InputError("a confusion matrix holds counts ≥ 0")
    k = m.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise InputError(f"class_names has {len(names)} entries for {k} classes")
    total = m.sum()
    accuracy = np.trace(m) / total if total else float("nan")
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    with _style():
        fig = _figure(aspect)
        ax = fig.add_subplot()
        im = ax.imshow(shown, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_xticks(range(k), names)
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for s in ax.spines.values():
            s.set_visible(False)
        cell_font = 16 if k <= 10 else max(8, int(160 / k))
        threshold = shown.max() / 2 if shown.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(round(m[i, j]))}"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell_font,
                        color="white" if shown[i, j] > threshold else "black")
        ax.set_title(title or f"accuracy {100 * accuracy:.1f} %")
        return _save(fig, path)


def weight_templates(W: Any, path: str | Path, titles: Sequence[str] | None = None,
                     image_shape: tuple[int, int] = (28, 28), title: str | None = None,
                     aspect: str = "16:9") -> tuple[Path, Path]:
    """The rows of a linear classifier's weight matrix (k, 784) as k 28×28 images.

    A diverging colour map centred at 0 (red positive, blue negative) on one symmetric
    scale shared by all templates, so their strengths compare; a colour bar shows it.
    """
    w = np.asarray(W, dtype=float)
    h, wd = image_shape
    if w.ndim != 2 or w.shape[1] != h * wd:
        raise InputError(f"W must be (k, {h * wd}), one row per class, got shape {w.shape}")
    k = w.shape[0]
    names = [str(t) for t in (titles if titles is not None else range(k))]
    if len(names) != k:
        raise InputError(f"titles has {len(names)} entries for {k} templates")
    limit = float(np.max(np.abs(w))) or 1.0
    ncols = min(k, 5)
    nrows = math.ceil(k / ncols)
    with _style():
        fig = _figure(aspect)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        im = None
        for idx, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if idx >= k:
                ax.set_visible(False)
                continue
            for spine in ax.spines.values():
                spine.set_visible(False)
            im = ax.imshow(w[idx].reshape(h, wd), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(names[idx])
        fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def decision_boundary(predict_fn: Callable[[np.ndarray], Any], X: Any, y: Any, path: str | Path,
                      resolution: int = 300, title: str | None = None,
                      class_names: Sequence[str] | None = None, aspect: str = "4:3") -> tuple[Path, Path]:
    """The regions a 2-D classifier assigns to each class, with the data on top.

    ``predict_fn`` takes points (M, 2) and returns labels (M,) or class scores (M, k) (then
    the arg-max is the label). The plane is sampled on a ``resolution``² grid over the data's
    range plus a 5 % margin; class borders are outlined.
    """
    from matplotlib.colors import ListedColormap, to_rgb

    pts = np.asarray(X, dtype=float)
    labels = np.asarray(y)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise InputError(f"X must be (N, 2) points, got shape {pts.shape}")
    if labels.shape != (pts.shape[0],):
        raise InputError(f"y must be (N,) = ({pts.shape[0]},) labels, got shape {labels.shape}")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    out = np.asarray(predict_fn(np.column_stack([gx.ravel(), gy.ravel()])))
    if out.ndim == 2:
        out = out.argmax(axis=1)
    if out.shape != (gx.size,):
        raise InputError(f"predict_fn must return (M,) labels or (M, k) scores for M = {gx.size} points, "
                         f"got shape {out.shape}")
    z = out.astype(int).reshape(gx.shape)
    classes = np.unique(np.concatenate([np.unique(labels.astype(int)), np.unique(z)]))
    k = int(classes.max()) + 1
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) < k:
        raise InputError(f"class_names has {len(names)} entries for {k} classes")
    light = ListedColormap([tuple(0.65 + 0.35 * c for c in to_rgb(f"C{i % 10}")) for i in range(k)])
    with _style():
        fig = _figure(aspect)
        ax = fig.add_subplot()
        ax.imshow(z, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap=light, vmin=-0.5,
                  vmax=k - 0.5, aspect="auto", interpolation="nearest")
        for c in np.unique(z):  # each class's outline: a border between two classes is drawn once per side
            if np.any(z != c):
                ax.contour(gx, gy, (z == c).astype(float), levels=[0.5], colors="k", linewidths=1.2)
        for c in np.unique(labels.astype(int)):
            sel = labels.astype(int) == c
            ax.scatter(pts[sel, 0], pts[sel, 1], color=f"C{c % 10}", marker=_MARKERS[c % 8], s=60,
                       edgecolors="k", linewidths=0.8, label=names[c])
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.legend(framealpha=0.85)
        if title:
            ax.set_title(title)
        return _save(fig, path)
