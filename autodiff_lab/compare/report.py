"""The comparison report: every engine on every case, written as one HTML page with its files.

``autodiff-lab compare`` runs :func:`run_report`. For each case (:mod:`.cases`) it builds the
sections (:mod:`.sections`: the graph, accuracy against a trusted reference, speed and
memory, error against time, scaling, the step sweep; :mod:`.training_section`: training
with each engine; :mod:`.case_figures`: the network layer by layer and the case study's
pictures), prints the tables, and writes into the output folder::

    report.html             the page (figures beside it, in one folder per case)
    report.json, report.md  every table (JSON), the text tables
    <case>/                 figures as PNG and SVG, tables as CSV and JSON

An existing folder is never overwritten: the run goes to a new timestamped folder beside it
(unless ``force``). The page is re-written after every section, so an interrupted run
(Ctrl-C) leaves the finished sections readable.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.compare import case_figures as _figures  # noqa: F401  (layers, pictures)
from autodiff_lab.compare import sections as _sections  # noqa: F401  (fills SECTIONS)
from autodiff_lab.compare import training_section as _training  # noqa: F401  (adds training)
from autodiff_lab.compare.cases import CASES, SECTIONS, CaseContext, CaseSpec, Section
from autodiff_lab.compare.harness import EngineConfig, parse_engines, set_blas_threads
from autodiff_lab.compare.measure import default_wrt
from autodiff_lab.errors import AutodiffError, InputError

DEFAULT_OUT = "autodiff_lab_report"
#: finite differences projected to take longer than this per gradient are refused
BUDGET_FULL_S = 30.0
BUDGET_QUICK_S = 3.0


@dataclass
class CaseReport:
    """What the page shows of one case."""

    name: str
    description: str
    sections: list[Section] = field(default_factory=list)
    error: str = ""


@dataclass
class ReportResult:
    """Where the report went and what it holds."""

    out_dir: Path
    page: Path
    cases: list[CaseReport]
    seconds: float
    interrupted: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def choose_output_dir(out: str | Path, force: bool = False) -> Path:
    """``out`` if it is free (or ``force``), else a new timestamped folder beside it. An
    existing file, or a folder that cannot be written, is an InputError."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {str(path)!r} is an existing file; give a folder (it is "
                         "created if missing)")
    if path.is_dir() and any(path.iterdir()) and not force:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        candidate = path.with_name(f"{path.name}-{stamp}")
        k = 2
        while candidate.exists():
            candidate = path.with_name(f"{path.name}-{stamp}-{k}")
            k += 1
        path = candidate
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write the report to {str(path)!r}: {exc.strerror or exc}") \
            from None
    return path


def _environment() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M')} · Python {platform.python_version()}, numpy "
            f"{np.__version__}, {platform.machine()}, {os.cpu_count()} cores, load average "
            f"{load}")


INTRO = ("The same gradient computed three ways on each case: finite differences (forward, "
         "central, five-point, Richardson, complex step), symbolic differentiation with SymPy "
         "(expanded: diff, cse, lambdify; matrix-level: on the shared graph), and reverse-mode "
         "automatic differentiation on a tape. Each case's accuracy is measured against a "
         "reference that none of the engines under test produced (it is named above each "
         "table), its cost against one forward pass. Engines that refuse a case are rows "
         "with their reason and the number behind it.")

OVERVIEW_LEGEND = [
    ("reference", "what the errors are measured against (see each case)"),
    ("tape / matrix error", "relative error ‖g − g_ref‖∞ / ‖g_ref‖∞ of reverse mode and of the "
                            "matrix-level symbolic engine"),
    ("best finite difference", "the most accurate finite-difference method and its error "
                               "(* on a sample of coordinates)"),
    ("tape × forward", "time of one reverse-mode gradient ÷ one forward pass (below 1 on the "
                       "scalar cases: the tape runs them as generated straight-line code, "
                       "faster than the general forward pass that is the unit)"),
    ("central differences", "time per gradient, or why it was refused"),
]


def _overview(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    from autodiff_lab.compare.sections import fmt_error, fmt_ms
    rows = []
    for name, res in results.items():
        acc, spd = res.get("accuracy"), res.get("speed")
        if acc is None or spd is None:
            continue
        a = {r.engine: r for r in acc.rows}
        s = {r.engine: r for r in spd.rows}
        u = acc.reference_uncertainty

        def err(key: str) -> str:
            r = a.get(key)
            if r is None:
                return "—"
            return fmt_error(r.rel_error, u) if r.rel_error is not None else "refused"
        fd = [r for r in acc.rows if r.engine.startswith("numeric-") and r.rel_error is not None]
        best = min(fd, key=lambda r: r.rel_error, default=None)
        best_text = "—" if best is None else \
            f"{best.label.replace('numeric ', '')}: {fmt_error(best.rel_error, u)}" \
            + ("*" if best.status == "sampled" else "")
        tape = s.get("tape")
        central = s.get("numeric-central")
        central_text = "—"
        if central is not None:
            from autodiff_lab.compare.measure import _seconds
            central_text = (f"{fmt_ms(central.call_s)} ms" if central.call_s < 1 else
                            _seconds(central.call_s)) if central.status == "ok" else \
                "refused" + (f" (would take ~{_seconds(central.call_s)})" if central.call_s else "")
        rows.append([name, f"{acc.parameters:,}", acc.reference_kind, err("tape"),
                     err("symbolic-matrix"), best_text,
                     "—" if tape is None or tape.per_forward is None else f"{tape.per_forward:.2g}",
                     central_text])
    if not rows:
        return None
    return {"columns": ["case", "parameters", "reference", "tape error", "matrix error",
                        "best finite difference", "tape × forward", "central differences"],
            "rows": rows, "legend": OVERVIEW_LEGEND}


def write_page(out: Path, cases: Sequence[CaseReport], results: dict[str, dict[str, Any]],
               status: str = "") -> Path:
    """Render report.html, report.json and report.md from what is finished."""
    from importlib.resources import files

    import jinja2

    template = jinja2.Template(
        (files("autodiff_lab.compare") / "templates" / "report.html.j2").read_text("utf-8"),
        autoescape=True)
    html = template.render(title="autodiff_lab: three ways to a gradient, compared",
                           environment=_environment(), intro=INTRO, status=status,
                           overview=_overview(results), cases=cases)
    page = out / "report.html"
    page.write_text(html, encoding="utf-8")
    data = {name: {k: v.to_dict() for k, v in res.items() if hasattr(v, "to_dict")}
            for name, res in results.items()}
    (out / "report.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    md = ["# autodiff_lab comparison report", "", _environment(), ""]
    for case in cases:
        md += [f"## {case.name}", "", case.description, ""]
        for sec in case.sections:
            for t in sec.tables:
                md += [f"### {t.title}", "", "```", t.text, "```", ""]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return page


def run_report(cases: Sequence[str | CaseSpec] | None = None, out_dir: str | Path = DEFAULT_OUT,
               *, engines: str | Sequence[str | EngineConfig] | None = None, quick: bool = False,
               budget_s: float | None = None, force: bool = False, reference: str = "auto",
               threads: int | None = 1, echo: Callable[[str], None] | None = None,
               progress_bar: bool = True) -> ReportResult:
    """Run every section of every case and write the report (see the module docstring).

    ``cases``: names of :data:`~autodiff_lab.compare.cases.CASES` or :class:`CaseSpec` objects
    (default all). ``quick``: smaller scaling families, shorter sweeps and timings, a budget
    of 3 s per finite-difference gradient. ``threads``: BLAS threads while measuring (None:
    leave as is). A KeyboardInterrupt stops the run after writing what is finished
    (``result.interrupted``).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    specs = [CASES[c] if isinstance(c, str) else c for c in (cases or list(CASES))]
    configs = parse_engines(engines)
    budget = budget_s if budget_s is not None else (BUDGET_QUICK_S if quick else BUDGET_FULL_S)
    if not budget > 0 or not np.isfinite(budget):
        raise InputError(f"the budget must be a positive number of seconds, got {budget}")
    out = choose_output_dir(out_dir, force)
    if threads is not None:
        set_blas_threads(threads)
    total = sum(len(s.sections) for s in specs)
    bar = tqdm(total=total, desc="compare", unit="section", disable=not progress_bar,
               file=sys.stderr, dynamic_ncols=True)
    say = echo or (lambda text: tqdm.write(text))
    reports: list[CaseReport] = []
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    page = out / "report.html"
    from autodiff_lab.compare.sections import ACCURACY_LEGEND, SPEED_LEGEND
    say("Columns of the tables below:\n" + "\n".join(
        f"  {name:<14} {meaning}" for name, meaning in ACCURACY_LEGEND[1:] + SPEED_LEGEND))
    try:
        for spec in specs:
            bar.set_description_str(f"{spec.name}: building")
            example = spec.build(quick)
            report = CaseReport(spec.name, example.description)
            reports.append(report)
            say(f"\n== {spec.name}: {example.description}")
            ctx = CaseContext(spec, example, default_wrt(example.graph), out / spec.name, out,
                              quick, configs, budget, reference, threads,
                              progress=lambda m: bar.set_description_str(m[:70]), echo=say)
            results[spec.name] = ctx.results
            for key in spec.sections:
                try:
                    made = SECTIONS[key](ctx)
                except AutodiffError as exc:
                    report.error += f"{key}: {' '.join(str(exc).split())} "
                    made = None
                for sec in made if isinstance(made, list) else [made] if made else []:
                    report.sections.append(sec)
                page = write_page(out, reports, results)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        page = write_page(out, reports, results, status="Interrupted: the sections below are "
                                                        "the ones that finished.")
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if not interrupted:
        page = write_page(out, reports, results)
    return ReportResult(out, page, reports, seconds, interrupted, results)


def graph_case(path: str | Path, values: str | Path | None = None) -> CaseSpec:
    """A case for a graph saved as JSON (values from an .npz file, or random ones)."""
    from autodiff_lab.cli import load_graph
    from autodiff_lab.compare.cases import graph_file_case

    loaded = load_graph(str(path), str(values) if values else None)
    vals = loaded.values
    note = ""
    if vals is None:
        vals, note = random_values(loaded.graph), " (random values: none were given)"
    description = loaded.description or f"the graph in {Path(path).name}{note}"
    return graph_file_case(loaded.name, loaded.graph, vals, description)


def random_values(graph: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard normal floats and zero integers (label 0 exists for every class count)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in graph.inputs.items():
        d = graph.node(v)
        dtype = np.dtype(d["dtype"])
        shape = tuple(d["shape"])
        out[name] = np.zeros(shape, dtype) if dtype.kind in "iu" else \
            rng.standard_normal(shape).astype(dtype)
    return out


__all__ = ["CaseReport", "ReportResult", "choose_output_dir", "graph_case", "run_report",
           "write_page"]
