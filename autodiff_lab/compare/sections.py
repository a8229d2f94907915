"""The standard sections of a case: the graph, accuracy, speed, error against time, scaling,
and the step sweep. Each is ``builder(ctx) -> Section`` (see :mod:`.cases`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from autodiff_lab.compare import plots
from autodiff_lab.compare.cases import SECTIONS, CaseContext, Section, TableRef
from autodiff_lab.compare.measure import (
    AccuracyResult,
    SpeedResult,
    estimate_bounds,
    measure,
    resolve_reference,
)

ACCURACY_LEGEND = [
    ("engine", "the way the gradient is computed (each with its options)"),
    ("status", "ok: the full gradient; sampled k/N: refused in full (see the note), measured "
               "on k random coordinates; refused: see the note"),
    ("rel. error", "‖g − g_ref‖∞ / ‖g_ref‖∞ over all parameters; “< u” when below the "
                   "reference's own uncertainty u (not resolved); 0 when bit-identical"),
    ("own estimate", "the engine's own error estimate on the same scale (finite differences "
                     "only). It is a bound: every component's error is at most its estimate, "
                     "so “own estimate” ≥ “rel. error”; a row where the measured error exceeds "
                     "it (beyond the reference's uncertainty) is marked ⚠"),
    ("checked", "coordinates compared"),
]
SPEED_LEGEND = [
    ("compile ms", "engine.compile(graph): building the program (SymPy work, planning)"),
    ("first call ms", "the first call, including any JIT compilation"),
    ("per call ms", "median of repeated calls (min – max beside it); “~” marks a time "
                    "projected from a timed sample of coordinates (not run in full)"),
    ("× forward", "per call ÷ one forward pass (the cost in forward passes)"),
    ("f-evals", "forward evaluations one gradient needs"),
    ("memory", "peak bytes allocated during one gradient (tracemalloc, numpy reference "
                  "kernels; finite differences: one batch of perturbed copies)"),
]


def fmt_error(v: float | None, unresolved_below: float = 0.0) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if v <= unresolved_below:
        return f"< {unresolved_below:.0e}"
    return f"{v:.1e}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def fmt_ms(s: float | None, projected: bool = False) -> str:
    if s is None:
        return "—"
    ms = s * 1e3
    text = f"{ms:.3g}" if ms < 1e5 else f"{ms:.2e}"
    return "~" + text if projected else text


def _text_table(columns: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]) -> str:
    import textwrap
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                             for i, (x, w) in enumerate(zip(r, widths))))
    for i, n in enumerate(notes, 1):
        out.append(textwrap.fill(n, 110, initial_indent=f"[{i}] ", subsequent_indent="    "))
    return "\n".join(out)


def accuracy_table(result: AccuracyResult, files: Sequence[str] = ()) -> TableRef:
    """The accuracy table of the page (and the terminal)."""
    columns = ["engine", "status", "rel. error", "own estimate", "checked"]
    rows, notes, classes = [], [], []
    u = result.reference_uncertainty
    for r in result.rows:
        status = r.status
        if r.status == "sampled":
            status = f"sampled {r.checked}/{result.parameters:,}"
        if r.note:
            notes.append(f"{r.label}: {r.note}")
            status += f" [{len(notes)}]"
        est = fmt_error(r.est_error)
        if not estimate_bounds(r.rel_error, r.est_error, u):
            notes.append(f"{r.label}: ⚠ the measured error is above the engine's own estimate, "
                         "which should bound it")
            est += f" ⚠ [{len(notes)}]"
        rows.append([r.label, status, fmt_error(r.rel_error, u), est,
                     f"{r.checked:,}" if r.checked else "—"])
        classes.append(r.status)
    return TableRef(f"Accuracy against the reference ({result.reference_kind})", columns, rows,
                    ACCURACY_LEGEND, list(files), notes, classes,
                    _text_table(columns, rows, notes))


def speed_table(result: SpeedResult, files: Sequence[str] = ()) -> TableRef:
    """The speed table of the page (and the terminal)."""
    columns = ["engine", "compile ms", "first call ms", "per call ms", "min – max ms",
               "× forward", "f-evals", "memory"]
    rows, notes, classes = [], [], []
    for r in result.rows:
        label = r.label
        if r.status != "ok":
            from autodiff_lab.compare.plots import refusal_text
            notes.append(refusal_text(r.label, r.refused_value, r.refused_limit,
                                      r.refused_unit, r.note)
                         + (" (per call: projected)" if r.projected else ""))
            label += f" — refused [{len(notes)}]"
        spread = "—" if r.call_min_s is None else \
            f"{fmt_ms(r.call_min_s)} – {fmt_ms(r.call_max_s)} ({r.repeats}×)"
        rows.append([label, fmt_ms(r.compile_s), fmt_ms(r.first_call_s),
                     fmt_ms(r.call_s, r.projected), spread,
                     "—" if r.per_forward is None else f"{r.per_forward:.3g}",
                     "—" if r.evaluations is None else f"{r.evaluations:,}",
                     fmt_bytes(r.memory_bytes)])
        classes.append(r.status)
    title = (f"Time and memory per gradient (one forward pass: {fmt_ms(result.forward_s)} ms, "
             f"{result.forward_how})")
    return TableRef(title, columns, rows, SPEED_LEGEND, list(files), notes, classes,
                    _text_table(columns, rows, notes))


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------

def graph_section(ctx: CaseContext) -> Section:
    """The graph drawn with its forward values and gradients (or a summary drawing)."""
    from autodiff_lab.errors import AutodiffError
    from autodiff_lab.render import MAX_NODES, render

    ex = ctx.example
    sec = Section("graph", "The graph")
    shapes = {n: tuple(ex.graph.node(ex.graph.inputs[n])["shape"]) for n in ctx.wrt}
    scalars = sum(int(np.prod(s)) for s in shapes.values())
    sec.paragraphs.append(f"{len(ex.graph):,} nodes; parameters: "
                          + ", ".join(f"{n} {s}" for n, s in shapes.items())
                          + f" ({scalars:,} scalars).")
    values = ex.values
    if len(ex.graph) <= MAX_NODES and values is not None:
        drawn = []
        variants = [(False, "graph")] + ([(True, "graph_primitive")] if ctx.spec.primitive else [])
        for primitive, stem in variants:
            if primitive and "sigmoid" not in {ex.graph.node(v)["op"] for v in ex.graph.order
                                              if ex.graph.node(v)["role"] == "op"}:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    graph = ex.graph
                    if primitive:
                        from autodiff_lab.render.annotate import composite_ops
                        graph = graph.expand(composite_ops(graph))
                    grads = _drawing_grads(graph, values)
                    for suffix in ("svg", "png"):
                        render(graph, values, grads, path=ctx.path(f"{stem}.{suffix}"),
                               title=None, rankdir="TB" if _has_tensors(ex) else "LR")
                drawn.append((primitive, stem))
            except AutodiffError as exc:
                sec.paragraphs.append(f"(Not drawn: {exc})")
        for primitive, stem in drawn:
            png, svg = ctx.path(f"{stem}.png"), ctx.path(f"{stem}.svg")
            title = "at primitive level (σ written out)" if primitive else \
                ("one node per layer" if len(ex.graph) > 40 or _has_tensors(ex) else "as traced")
            sec.figures.append(ctx.figure(
                f"The graph {title}", (png, svg),
                "forward values in green beside each edge, gradients of the output in red"
                + (" (tensors: mean [min, max])" if _has_tensors(ex) else "")))
    else:
        paths = plots.ops_summary_plot(ex.graph, ctx.path("graph_summary"), ex.name)
        sec.paragraphs.append(f"The graph has {len(ex.graph):,} nodes, more than the "
                              f"{MAX_NODES:,} drawn node by node; its ops by kind instead.")
        sec.figures.append(ctx.figure("Ops by kind", paths))
    return sec


def _has_tensors(ex: Any) -> bool:
    return any(ex.graph.node(v)["shape"] != () for v in ex.graph.inputs.values())


def _drawing_grads(graph: Any, values: dict[str, Any]) -> Any:
    """Every node's gradient of the graph's scalar output, computed here with the tape (the
    drawing code only draws numbers it is given); ``None`` when there is no scalar output."""
    from autodiff_lab.engines import engine
    outputs = list(graph.outputs.items())
    if len(outputs) != 1 or tuple(graph.node(outputs[0][1])["shape"]) != ():
        return None
    return engine("tape", keep_all=True).compile(graph, output=outputs[0][0])(values)


def _measured(ctx: CaseContext) -> tuple[AccuracyResult, SpeedResult]:
    if "accuracy" not in ctx.results:
        ex = ctx.example
        ctx.progress(f"{ex.name}: reference gradient")
        ref = resolve_reference(ex.graph, ex.values, ctx.wrt, ctx.reference_kind,
                                ctx.spec.miniature)
        ctx.results["reference"] = ref
        acc, spd = measure(ex.graph, ex.values, engines=ctx.engines, reference=ref,
                           wrt=ctx.wrt, name=ex.name, budget_s=ctx.budget_s,
                           timing_s=0.1 if ctx.quick else 0.3, sample=8 if ctx.quick else 16,
                           progress=ctx.progress, miniature=ctx.spec.miniature)
        ctx.results["accuracy"], ctx.results["speed"] = acc, spd
    return ctx.results["accuracy"], ctx.results["speed"]


def accuracy_section(ctx: CaseContext) -> Section:
    """Each engine's error against a reference that no engine under test produced."""
    acc, _ = _measured(ctx)
    files = [ctx.rel(acc.save_csv(ctx.path("accuracy.csv"))),
             ctx.rel(acc.save_json(ctx.path("accuracy.json")))]
    sec = Section("accuracy", "Accuracy")
    text = (f"<b>Reference: {acc.reference}.</b> {acc.reference_trust} Its own uncertainty: "
            f"{acc.reference_uncertainty:.1g} relative. {acc.reference_validation}")
    sec.paragraphs.append(text.strip())
    sec.tables.append(accuracy_table(acc, files))
    ctx.echo(sec.tables[-1].text)
    return sec


def speed_section(ctx: CaseContext) -> Section:
    """Compile time, time per call, the multiple of a forward pass, memory."""
    _, spd = _measured(ctx)
    files = [ctx.rel(spd.save_csv(ctx.path("speed.csv"))),
             ctx.rel(spd.save_json(ctx.path("speed.json")))]
    sec = Section("speed", "Speed and memory")
    threads = "numpy's default number of BLAS threads" if ctx.threads is None else \
        f"{ctx.threads} BLAS thread{'s' if ctx.threads != 1 else ''}"
    sec.paragraphs.append(f"Measured with {threads}; load average of the machine at the end: "
                          f"{', '.join(map(str, spd.load_average))} (on a shared machine the "
                          "spread of repeated calls shows the noise).")
    sec.tables.append(speed_table(spd, files))
    ctx.echo(sec.tables[-1].text)
    return sec


def error_vs_time_section(ctx: CaseContext) -> Section:
    acc, spd = _measured(ctx)
    paths = plots.error_vs_time(acc, spd, ctx.path("error_vs_time"),
                                title=f"{ctx.example.name}: accuracy against cost")
    sec = Section("error_vs_time", "Error against time")
    sec.figures.append(ctx.figure("Relative error against time per gradient", paths,
                                  "lower left is better; hollow markers: refused in full, time "
                                  "projected and error measured on a sample; the grey band: "
                                  "errors below what the reference resolves"))
    return sec


def scaling_section(ctx: CaseContext) -> Section | None:
    """Time and memory as the network grows, per engine."""
    from autodiff_lab.compare.harness import FAMILIES
    from autodiff_lab.compare.scaling import scaling

    if ctx.spec.scaling is None:
        return None
    family, size_name, build, full, quick = ctx.spec.scaling
    wanted = {"tape", "symbolic-matrix", "symbolic-expanded", "numeric-central"}
    keys = [c.key for c in ctx.engines if c.key in wanted]
    if not keys:  # e.g. only other finite-difference methods asked for
        keys = [c.key for c in ctx.engines if c.key in FAMILIES["numeric"]][:1]
    result = scaling(build, quick if ctx.quick else full, engines=keys, family=family,
                     size_name=size_name, description=family,
                     budget_s=2 * ctx.budget_s,
                     timing_s=0.05 if ctx.quick else 0.2, progress=ctx.progress)
    ctx.results["scaling"] = result
    files = [ctx.rel(result.save_csv(ctx.path("scaling.csv"))),
             ctx.rel(result.save_json(ctx.path("scaling.json")))]
    paths = plots.scaling_plot(result, ctx.path("scaling"), title=f"Cost as the network grows: {family}")
    sec = Section("scaling", "Scaling")
    slopes = result.slopes("per_forward")
    if slopes:
        sec.paragraphs.append(
            "Fitted slopes of log(time ÷ forward) against log(parameters): "
            + ", ".join(f"{result.label(e) if e != 'forward' else 'forward'} {v:.2f}"
                        for e, v in slopes.items() if e != "forward")
            + ". Slope 1: the cost in forward passes grows in proportion to the parameters "
              "(finite differences); slope 0: a constant number of forward passes (reverse mode).")
    sec.figures.append(ctx.figure("Time, time ÷ forward and memory against parameters", paths,
                                  "hollow markers: projected over the time budget, not run"))
    text = result.table()
    sec.tables.append(TableRef("Time per gradient (ms) by size", ["table"], [], [],
                               files, [], [], text))
    ctx.echo(text)
    return sec


def step_sweep_section(ctx: CaseContext) -> Section:
    """The error of every finite-difference method as the step goes from 1e-1 to 1e-16."""
    from autodiff_lab.compare.step_sweep import DEFAULT_STEPS, step_sweep

    ex = ctx.example
    acc, _ = _measured(ctx)
    ref = ctx.results.get("reference")
    wrt = ctx.spec.sweep_wrt or ctx.wrt
    exact = None
    if ref is not None:
        exact = {n: np.asarray(ref.grads[n], dtype=np.float64) for n in wrt}
    steps = DEFAULT_STEPS[::2] if ctx.quick else DEFAULT_STEPS
    result = step_sweep(ex.graph, ex.values, steps=steps, wrt=wrt, exact=exact, name=ex.name)
    if exact is not None:
        result.reference = acc.reference_kind
    files = [ctx.rel(result.save_csv(ctx.path("step_sweep.csv"))),
             ctx.rel(result.save_json(ctx.path("step_sweep.json")))]
    paths = plots.step_sweep_plot(result, ctx.path("step_sweep"),
                                  title=f"{ex.name}: error against the step h "
                                        f"(∂/∂{', '.join(wrt)}; reference: {result.reference})")
    sec = Section("step_sweep", "Finite differences: error against the step")
    sec.paragraphs.append("Truncation error falls with h at the method's order until "
                          "round-off (≈ eps/h) takes over: a V whose bottom is where each "
                          "method's default step (★) aims. The complex step has no "
                          "subtraction, so it stays at machine precision.")
    sec.figures.append(ctx.figure("Relative error against the step", paths))
    text = result.summary()
    sec.tables.append(TableRef("Default steps", ["table"], [], [], files, [], [], text))
    ctx.echo(text)
    return sec


SECTIONS.update({
    "graph": graph_section,
    "accuracy": accuracy_section,
    "speed": speed_section,
    "error_vs_time": error_vs_time_section,
    "scaling": scaling_section,
    "step_sweep": step_sweep_section,
})
