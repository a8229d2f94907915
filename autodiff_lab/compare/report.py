"""The comparison report: every engine on the built-in examples, accuracy and cost side by side.

``autodiff-lab compare`` runs it. The examples span the case studies at sizes that run in
seconds: the sigmoid neuron and the scalar chain (where a 50-digit mpmath evaluation of the
symbolic gradient is the truth), an inpainting MLP on real handwritten digits and a
DnCNN-style denoiser on patches of natural images (where the float64 tape is the reference
and every other engine is measured against it). It prints a table per example and writes
``report.md``, ``report.json`` and an error-versus-time figure to the output folder.
"""

from __future__ import annotations

import json
import platform
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autodiff_lab.compare.harness import DEFAULT_CONFIGS, EngineConfig, Row, compare_engines
from autodiff_lab.data import add_gaussian_noise, extract_patches, load_digits, load_gray_images, mask_pixels
from autodiff_lab.engines import gradient
from autodiff_lab.examples import Example, dncnn, mlp, scalar_chain, sigmoid_neuron


@dataclass
class ReportCase:
    """An example plus where its reference gradient comes from."""

    example: Example
    reference: str  # "mpmath-50" or "tape-float64"


def inpainting_mlp_case(hidden: int = 16, batch: int = 16, seed: int = 0) -> Example:
    """The inpainting MLP on real digits, down-sampled to 14×14, half the pixels masked."""
    rng = np.random.default_rng(seed)
    images, _ = load_digits("train")
    pick = images[rng.choice(len(images), batch, replace=False)]
    small = pick.reshape(batch, 14, 2, 14, 2).mean(axis=(2, 4))  # 2×2 average pooling
    masked, _ = mask_pixels(small, 0.5, rng)
    d = 14 * 14
    ex = mlp(d_in=d, hidden=hidden, batch=batch, seed=seed)
    ex.values.update(x=masked.reshape(batch, d).T.copy(), y=small.reshape(batch, d).T.copy())
    ex.name = "inpainting_mlp"
    ex.description = f"inpainting MLP {d}-{hidden}-{d} on {batch} MNIST digits (14×14, 50% masked)"
    return ex


def denoiser_case(batch: int = 2, size: int = 16, channels: int = 4, depth: int = 3,
                  seed: int = 0) -> Example:
    """A small DnCNN-style denoiser on patches of a natural image with σ = 25 noise."""
    rng = np.random.default_rng(seed)
    image = load_gray_images(("brick",))["brick"]
    clean = extract_patches(image, size, batch, rng)[:, None]
    ex = dncnn(batch=batch, size=size, channels=channels, depth=depth, seed=seed)
    ex.values.update(clean=clean, noisy=add_gaussian_noise(clean, 25 / 255, rng))
    ex.name = "dncnn_denoiser"
    ex.description = (f"DnCNN-style denoiser, {depth} conv 3×3 ({channels} channels, BN) on {batch} "
                      f"{size}×{size} patches of a natural image, σ = 25")
    return ex


def default_cases() -> list[ReportCase]:
    """The examples ``autodiff-lab compare`` runs."""
    return [
        ReportCase(sigmoid_neuron(), "mpmath-50"),
        ReportCase(scalar_chain(), "mpmath-50"),
        ReportCase(inpainting_mlp_case(), "tape-float64"),
        ReportCase(denoiser_case(), "tape-float64"),
    ]


def reference_gradients(case: ReportCase, wrt: list[str] | None = None) -> dict[str, np.ndarray]:
    """The gradients every engine is measured against (see :class:`ReportCase`)."""
    ex = case.example
    if case.reference == "mpmath-50":
        from autodiff_lab.engines.symbolic import reference_gradient
        grads = reference_gradient(ex.graph, ex.values, wrt=wrt, digits=50).grads
        return {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()}
    return gradient(ex.graph, ex.values, engine="tape", wrt=wrt).grads


def _fmt(v: float | None, spec_: str) -> str:
    width = int(spec_.split(".")[0].rstrip("def") or 0)
    return f"{'—':>{width}}" if v is None else format(v, spec_)


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width text table of one example's rows; refusals become numbered notes below."""
    head = f"{'engine':<24} {'rel. error':>10} {'own est.':>9} {'compile s':>9} " \
           f"{'1st call ms':>11} {'warm ms':>9} {'f-evals':>8}"
    lines, notes = [head, "-" * len(head)], []
    for r in rows:
        if not r.ok:
            notes.append(r.note)
            lines.append(f"{r.engine:<24} {'refused [' + str(len(notes)) + ']':>10}")
            continue
        lines.append(f"{r.engine:<24} {_fmt(r.rel_error, '10.1e')} {_fmt(r.est_error, '9.1e')} "
                     f"{_fmt(r.compile_s, '9.3f')} {_fmt(r.first_call_ms, '11.3f')} "
                     f"{_fmt(r.warm_call_ms, '9.3f')} {_fmt(r.evaluations, '8d')}")
    for i, note in enumerate(notes, 1):
        lines.append(textwrap.fill(note, 100, initial_indent=f"[{i}] ", subsequent_indent="    "))
    return "\n".join(lines)


#: below this, a relative error is drawn on the floor line "exact"
_FLOOR = 1e-17


def plot_error_vs_time(results: dict[str, list[Row]], path: Path) -> None:
    """One panel per example: relative error against warm time; one colour per engine,
    the same in every panel, and one legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(r.engine for rows in results.values() for r in rows))
    colours = plt.get_cmap("tab10")
    markers = {"tape": "s", "symbolic": "D", "numeric": "o"}
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results) + 2.2, 3.8), squeeze=False,
                             sharey=True)
    for ax, (name, rows) in zip(axes[0], results.items()):
        for r in rows:
            if r.ok and r.rel_error is not None and r.warm_call_ms:
                family = r.engine.split()[0]
                ax.loglog(r.warm_call_ms, max(r.rel_error, _FLOOR), markers.get(family, "o"),
                          color=colours(engines.index(r.engine) % 10), markersize=7,
                          label=r.engine, alpha=0.85)
        ax.axhline(_FLOOR, color="grey", lw=0.6, ls=":")
        ax.text(0.98, 0.07, "floor: 0 (exact)", transform=ax.transAxes, fontsize=7, color="grey",
                ha="right")
        ax.axhline(np.finfo(np.float64).eps, color="grey", lw=0.6, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("time per gradient (ms)")
        ax.set_ylim(_FLOOR / 3, 1.0)
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, hi / 20), hi)  # at least a decade and a bit, so ticks are labelled
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("relative error vs reference")
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.6 * len(results) + 2.2), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_report(out_dir: str | Path = "autodiff_lab_report", cases: Sequence[ReportCase] | None = None,
               configs: Sequence[EngineConfig] = DEFAULT_CONFIGS, budget_s: float = 0.3,
               echo: Callable[[str], None] = print, plot: bool = True) -> dict[str, list[Row]]:
    """Run every configuration on every case, print the tables and write the report files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = list(default_cases() if cases is None else cases)
    results: dict[str, list[Row]] = {}
    md = ["# autodiff_lab comparison report", "",
          f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}.", "",
          "Relative error is ‖g − g_ref‖∞ / ‖g_ref‖∞ over the parameters; *own est.* is the "
          "engine's own error estimate on the same scale (finite differences only); times are per "
          "gradient (warm = median of repeated calls; the first call includes JIT compilation); "
          "f-evals counts forward evaluations.", "",
          "What to look for: reverse mode and the matrix-level symbolic engine agree with the "
          "reference to round-off at the cost of about one forward pass; finite differences "
          "cost one or more forward passes *per parameter* and lose digits to truncation and "
          "round-off, except the complex step; the expanded symbolic engine is refused, with the "
          "size it would reach, once the tensors are more than toys. On ReLU networks the "
          "higher-order finite-difference formulas use larger steps, which can straddle the "
          "kinks of ReLU: the numeric engine sees every stencil that does and recomputes those "
          "components one-sided, so the estimate still bounds the error.", ""]
    start = time.perf_counter()
    for i, case in enumerate(cases, 1):
        ex = case.example
        echo(f"[{i}/{len(cases)}] {ex.name}: {ex.description} (reference: {case.reference})")
        wrt = list(ex.graph.parameters) or None  # the weights, as in training
        reference = reference_gradients(case, wrt)
        rows = compare_engines(ex.name, ex.graph, ex.values, configs, reference, wrt=wrt,
                               budget_s=budget_s,
                               progress=lambda msg: print(f"    … {msg}", file=sys.stderr, flush=True))
        results[ex.name] = rows
        table = format_table(rows)
        echo(table + "\n")
        md += [f"## {ex.name}", "", f"{ex.description}; reference: {case.reference}.", "",
               "```", table, "```", ""]
    md.append(f"Total time {time.perf_counter() - start:.1f} s.")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(
        {name: [r.as_dict() for r in rows] for name, rows in results.items()}, indent=1))
    if plot:
        plot_error_vs_time(results, out / "error_vs_time.png")
    echo(f"wrote {out / 'report.md'}, {out / 'report.json'}"
         + (f", {out / 'error_vs_time.png'}" if plot else ""))
    return results
