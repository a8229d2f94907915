"""The comparison's figures, slide-sized (16:9, 13.33 × 7.5 in) and lettered at 14 pt and more.

Every figure is saved twice, PNG (120 dpi) and SVG, by :func:`save`. The SVG's text is drawn
as paths (``svg.fonttype='path'``), so it looks the same on a machine that lacks the font
(DejaVu Sans, shipped with matplotlib). Each engine has one colour and marker in every figure.
Figures are :class:`matplotlib.figure.Figure` objects pyplot never sees: no window, no
global state, nothing left alive after the call.

* :func:`error_vs_time` -- relative error against time per gradient for one case. Errors
  below the reference's resolution (or exactly zero) cannot be told apart: they are drawn
  in a shaded band at the bottom, each engine at its own height so no marker hides another.
  Finite differences refused in full are drawn hollow at their projected time with the error
  measured on a sample; engines that refused with nothing to plot are listed under the axes
  with their reason's number.
* :func:`scaling_plot` -- time per gradient, time ÷ forward, and memory against the number of
  parameters, log-log, with fitted slopes in the legend; refusals annotated.
* :func:`step_sweep_plot` -- the V of finite differences (see :mod:`.step_sweep`).
* :func:`ops_summary_plot` -- a drawing for graphs too big to draw node by node: ops by kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SLIDE = (13.33, 7.5)
DPI = 120
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 16,
    "axes.titlesize": 20,
    "axes.labelsize": 18,
    "xtick.labelsize": 15,
    "ytick.labelsize": 15,
    "legend.fontsize": 14,
    "legend.title_fontsize": 14,
    "figure.titlesize": 22,
    "lines.linewidth": 2.5,
    "lines.markersize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "path",
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: one colour and marker per engine key, the same in every figure
ENGINE_STYLE: dict[str, tuple[str, str]] = {
    "tape": ("#1f77b4", "s"),
    "symbolic-matrix": ("#2ca02c", "D"),
    "symbolic-expanded": ("#ff7f0e", "P"),
    "numeric-forward": ("#d62728", "o"),
    "numeric-central": ("#9467bd", "o"),
    "numeric-five-point": ("#8c564b", "^"),
    "numeric-richardson": ("#e377c2", "v"),
    "numeric-complex": ("#7f7f7f", "h"),
    "forward": ("#000000", ""),
}
EPS = float(np.finfo(np.float64).eps)


def engine_style(key: str, index: int = 0) -> tuple[str, str]:
    """(colour, marker) of an engine; other engines get the tab10 colours in turn."""
    if key in ENGINE_STYLE:
        return ENGINE_STYLE[key]
    palette = ["#17becf", "#bcbd22", "#aec7e8", "#98df8a"]
    return palette[index % len(palette)], "X"


def new_figure(size: tuple[float, float] = SLIDE, **kwargs: Any) -> Any:
    """A slide-sized figure with the report's style (use inside :func:`styled`)."""
    from matplotlib.figure import Figure
    return Figure(figsize=size, dpi=DPI, layout="constrained", **kwargs)


def styled() -> Any:
    """Context manager: the report's matplotlib settings."""
    import matplotlib
    return matplotlib.rc_context(STYLE)


def save(fig: Any, stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem``.png and ``stem``.svg; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    with styled():
        fig.savefig(png, dpi=DPI)
        fig.savefig(svg)
    return png, svg


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def _short_number(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    if unit == "s":
        from autodiff_lab.compare.measure import _seconds
        return _seconds(v)
    return f"{v:.2g} {unit}"


def refusal_text(label: str, value: float | None, limit: float | None, unit: str,
                 note: str, short: bool = False) -> str:
    """'symbolic expanded: 4.3e+11 operations > limit 2e+06' or the note's first clause;
    ``short``: two lines for a legend ('symbolic expanded refused:\n4.3e+11 operations > 2e+06')."""
    if value is not None and limit is not None:
        if short:
            return f"{label} refused:\n{_short_number(value, unit)} > {_short_number(limit, unit)}"
        return f"{label}: {_short_number(value, unit)} > limit {_short_number(limit, unit)}"
    first = note.split(";")[0].split(". ")[0]
    if short:
        import textwrap
        return f"{label} refused:\n" + "\n".join(textwrap.wrap(first, 34)[:3])
    return f"{label}: {first[:90]}"


def error_vs_time(accuracy: Any, speed: Any, stem: str | Path, title: str | None = None
                  ) -> tuple[Path, Path]:
    """Relative error against time per gradient for one case (see the module docstring)."""
    speed_rows = {r.engine: r for r in speed.rows}
    with styled():
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
        floor = max(accuracy.reference_uncertainty, 1e-19)
        band_low = floor / 1e3
        plotted, refused = [], []
        unresolved = [a.engine for a in accuracy.rows
                      if a.rel_error is not None and a.rel_error <= floor]
        for i, a in enumerate(accuracy.rows):
            s = speed_rows.get(a.engine)
            colour, marker = engine_style(a.engine, i)
            t = _ms(s.call_s) if s is not None else None
            if a.rel_error is None or t is None:
                refused.append(refusal_text(a.label, a.refused_value, a.refused_limit,
                                            a.refused_unit, a.note, short=True))
                continue
            resolved = a.engine not in unresolved
            if resolved:
                y = a.rel_error
            else:  # inside the band (3 decades), each engine at its own height
                k = unresolved.index(a.engine)
                y = band_low * 10 ** (0.6 + 1.8 * k / max(len(unresolved) - 1, 1))
            hollow = a.status != "ok" or (s is not None and s.projected)
            plotted.append((t, y, dict(marker=marker, color=colour, label=a.label,
                                       markerfacecolor="white" if hollow else colour)))
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.transforms import offset_copy

        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhspan(band_low, floor, color="#dddddd", alpha=0.7, zorder=1)
        ax.axhline(EPS, color="grey", lw=1.2, ls="--", zorder=2)
        ys = [p[1] for p in plotted] + [1e-2]
        ylo, yhi = band_low, max(1.0, max(ys) * 10)
        ax.set_ylim(ylo, yhi)
        first = math.ceil(math.log10(floor))  # no ticks inside the band: nothing is resolved there
        ax.set_yticks([10.0 ** k for k in range(first, int(math.log10(yhi)) + 1, 3)])
        ax.yaxis.set_minor_locator(__import__("matplotlib.ticker").ticker.NullLocator())
        xs = [p[0] for p in plotted]
        xlo, xhi = (1e-3, 1.0)
        if xs:
            lo, hi = min(xs), max(xs)
            xlo, xhi = lo / 3, (hi * 3 if hi / lo > 30 else lo * 100)
            ax.set_xlim(xlo, xhi)
        # markers that would cover one another are drawn a little higher (a drawing offset
        # of 16 points: the numbers are in the tables)
        placed: list[tuple[float, float]] = []
        for t, y, style in plotted:
            fx = math.log(t / xlo) / math.log(xhi / xlo)
            fy = math.log(y / ylo) / math.log(yhi / ylo)
            lift = 0
            while any(abs(fx - px) < 0.035 and abs(fy + lift * 0.03 - py) < 0.035
                      for px, py in placed):
                lift += 1
            placed.append((fx, fy + lift * 0.03))
            ax.plot([t], [y], linestyle="none", markersize=13, markeredgewidth=2.2, zorder=3,
                    transform=offset_copy(ax.transData, fig=fig, y=16 * lift, units="points"),
                    **style)
        ax.text(ax.get_xlim()[1], EPS * 1.5, "float64 machine epsilon ", ha="right",
                va="bottom", fontsize=14, color="grey")
        ax.set_xlabel("time per gradient (ms)")
        ax.set_ylabel(f"relative error vs reference ({accuracy.reference_kind})")
        ax.set_title(title or accuracy.case)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(color="#dddddd", label=f"unresolved (< {floor:.0e}) or exact"))
        if any(getattr(h, "get_markerfacecolor", lambda: "")() == "white" for h in handles):
            handles.append(Line2D([], [], ls="none", marker="o", markersize=13, color="black",
                                  markerfacecolor="white", markeredgewidth=2.2,
                                  label="hollow: time projected,\nerror on a sample"))
        for text in refused:
            handles.append(Line2D([], [], ls="none", marker="x", markersize=13, color="#a00000",
                                  markeredgewidth=2.5, label=text))
        legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           frameon=False, fontsize=14)
        for text in legend.get_texts()[len(handles) - len(refused):]:
            text.set_color("#a00000")
        return save(fig, stem)


def scaling_plot(result: Any, stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Time per gradient, its ratio to the forward, and memory against parameters."""
    slopes = result.slopes()
    ratio_slopes = result.slopes("per_forward")
    with styled():
        fig = new_figure()
        axes = fig.subplots(1, 3)
        panels = [("call_s", "time per gradient (ms)", 1e3, slopes),
                  ("per_forward", "time ÷ one forward pass", 1.0, ratio_slopes),
                  ("memory_bytes", "peak memory (MB)", 1e-6, {})]
        for ax, (field, ylabel, scale, fitted) in zip(axes, panels):
            for i, engine in enumerate(result.engines()):
                colour, marker = engine_style(engine, i)
                rows = sorted((r for r in result.rows if r.engine == engine),
                              key=lambda r: r.parameters)
                ok = [(r.parameters, getattr(r, field) * scale) for r in rows
                      if r.status == "ok" and getattr(r, field)]
                proj = [(r.parameters, getattr(r, field) * scale) for r in rows
                        if r.status == "projected" and getattr(r, field)]
                label = result.label(engine)
                if ok:
                    ax.loglog(*zip(*ok), marker=marker, color=colour, label=label)
                    if engine in fitted:
                        ax.annotate(f"slope {fitted[engine]:.2f}", ok[-1],
                                    xytext=(8, 12 if i % 2 == 0 else -12),
                                    textcoords="offset points", color=colour, fontsize=14,
                                    va="center")
                if proj:
                    joined = ok[-1:] + proj if field != "memory_bytes" else proj
                    ax.loglog(*zip(*joined), ls=":", color=colour)
                    ax.loglog(*zip(*proj), ls="none", marker=marker, color=colour,
                              markerfacecolor="white", markeredgewidth=2,
                              label=label + " (projected, not run)")
                    if field != "memory_bytes" and not ok and len({p for p, _ in proj}) >= 2:
                        slope = np.polyfit(np.log([p for p, _ in proj]),
                                           np.log([v for _, v in proj]), 1)[0]
                        ax.annotate(f"slope {slope:.2f}\n(projected)", proj[-1],
                                    xytext=(8, 0), textcoords="offset points", color=colour,
                                    fontsize=14, va="center")
            if field == "call_s":
                fwd = sorted({(r.parameters, r.forward_s * 1e3) for r in result.rows
                              if r.forward_s})
                if fwd:
                    ax.loglog(*zip(*fwd), color="black", ls="--", lw=2, label="one forward pass")
                    if "forward" in slopes:
                        ax.annotate(f"slope {slopes['forward']:.2f}", fwd[-1], xytext=(6, -4),
                                    textcoords="offset points", fontsize=14, va="top")
            ax.set_xlabel("parameters")
            ax.set_ylabel(ylabel)
            _plain_log_ticks(ax, dense_y=field == "memory_bytes")
            ax.margins(x=0.25)
        refused = [r for r in result.rows if r.status == "refused"]
        notes = []
        for engine in dict.fromkeys(r.engine for r in refused):
            rs = [r for r in refused if r.engine == engine]
            nums = [r.refused_value for r in rs if r.refused_value]
            if nums:
                notes.append(f"{rs[0].label}: refused at every size "
                             f"({min(nums):.2g} to {max(nums):.2g} {rs[0].refused_unit} "
                             f"> limit {rs[0].refused_limit:.2g})")
            else:
                notes.append(refusal_text(rs[0].label, None, None, "", rs[0].note))
        handles: dict[str, Any] = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=2,
                   frameon=False)
        fig.suptitle(title or result.description or result.family)
        if notes:
            fig.text(0.5, 0.0, "; ".join(notes), ha="center", va="bottom", fontsize=14,
                     color="#a00000")
        return save(fig, stem)


def _plain_log_ticks(ax: Any, dense_y: bool = False) -> None:
    """Decade ticks only on the x axis; numbers without exponents where they are short;
    ``dense_y``: 1-2-5 ticks on y (for data within a decade or two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10))
    if dense_y:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if 1e-3 <= v < 1e5 else f"1e{int(round(math.log10(v)))}"))


def step_sweep_plot(result: Any, stem: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """The error-vs-step V of every finite-difference method."""
    from autodiff_lab.compare.step_sweep import plot_step_sweep
    with styled():
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
        colours = {m: engine_style("numeric-" + m.replace("_", "-"))[0] for m in result.methods}
        colours["backward"] = "#ff9896"
        plot_step_sweep(result, ax=ax, title=title, colors=colours)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  title="★ default step")
        return save(fig, stem)


def ops_summary_plot(graph: Any, stem: str | Path, title: str) -> tuple[Path, Path]:
    """Ops by kind as horizontal bars, with the graph's inputs and size: the drawing for
    graphs too big to draw node by node."""
    from collections import Counter
    ops = Counter(graph.node(v)["op"] for v in graph.order if graph.node(v)["role"] == "op")
    names = [k for k, _ in ops.most_common(20)][::-1]
    with styled():
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(names, [ops[n] for n in names], color="#1f77b4")
        ax.set_xlabel("nodes")
        ax.set_title(f"{title}: {len(graph):,} nodes, {sum(ops.values()):,} ops "
                     f"({len(ops)} kinds)")
        ax.grid(axis="y", visible=False)
        return save(fig, stem)


def figure_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """Pixel sizes of PNG files (for the page's width/height attributes)."""
    from PIL import Image
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.size)
    return out
