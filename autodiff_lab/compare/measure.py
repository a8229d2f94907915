"""Accuracy and speed of every engine on one graph: :func:`accuracy`, :func:`speed`, :func:`measure`.

``measure`` runs each engine once for both tables (finite differences on a real network take
seconds to minutes, so they are not run twice):

* compile time apart from the time per call (the median of repeated calls, with min and max);
  the first call apart too (it includes any JIT work);
* the time of one forward pass beside them, so each gradient's cost reads as a multiple of
  the forward (reverse mode: a small constant; finite differences: grows with parameters);
* peak memory per gradient (:func:`~autodiff_lab.compare.harness.peak_memory`);
* the relative error against a reference no engine under test produced
  (:mod:`autodiff_lab.compare.reference`), next to the engine's own error estimate.

An engine that refuses is a row, not a gap: the expanded symbolic engine at its size guard
(the operations it would need and its limit), finite differences over their evaluation
limit or over the time budget (the evaluations needed, or the time projected from a timed
sample of coordinates). A finite-difference method refused on the full gradient is still
measured on a random sample of coordinates (``status="sampled"``), so its accuracy is shown.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.compare.harness import (
    EngineConfig,
    Timing,
    parameter_count,
    parse_engines,
    peak_memory,
    rel_error,
    rel_norm,
    time_calls,
)
from autodiff_lab.compare.reference import Reference, compute_reference, given_reference, scale_of
from autodiff_lab.compare.results import ResultTable
from autodiff_lab.errors import AutodiffError, InputError, SymbolicSizeError
from autodiff_lab.graph.graph import Graph
from autodiff_lab.kernels import tiered

#: seconds a single gradient may take before finite differences are refused (projected)
DEFAULT_BUDGET_S = 30.0
#: coordinates timed to project a finite-difference gradient's time (and sampled for accuracy)
SAMPLE_COORDINATES = 16


@dataclass
class AccuracyRow:
    """One engine's error against the reference."""

    engine: str
    label: str
    #: ok (full gradient), sampled (refused in full, measured on a sample), refused
    status: str
    rel_error: float | None = None
    #: the engine's own error estimate on the same scale (finite differences): a bound
    est_error: float | None = None
    #: coordinates compared (all of them, or the sample)
    checked: int | None = None
    value: float | None = None
    note: str = ""
    #: the number that made the engine refuse, its limit and unit
    refused_value: float | None = None
    refused_limit: float | None = None
    refused_unit: str = ""


@dataclass
class AccuracyResult(ResultTable):
    """Relative errors ‖g − g_ref‖∞ / ‖g_ref‖∞ of every engine on one graph."""

    ROW = AccuracyRow
    case: str
    rows: list[AccuracyRow]
    parameters: int = 0
    reference_kind: str = ""
    reference: str = ""
    reference_trust: str = ""
    reference_uncertainty: float = 0.0
    reference_validation: str = ""
    reference_seconds: float = 0.0

    def row(self, engine: str) -> AccuracyRow:
        return next(r for r in self.rows if r.engine == engine)

    def unbounded(self) -> list[AccuracyRow]:
        """Rows whose measured error exceeds the engine's own estimate (which is meant as a
        bound) by more than the reference's own uncertainty: there should be none."""
        return [r for r in self.rows if not estimate_bounds(r.rel_error, r.est_error,
                                                            self.reference_uncertainty)]


def estimate_bounds(error: float | None, estimate: float | None, uncertainty: float = 0.0
                    ) -> bool:
    """Whether an engine's estimate bounds its measured error: ``error ≤ estimate +
    uncertainty`` (the reference's own uncertainty: a smaller excess is not resolved).
    True where either number is missing (nothing to compare)."""
    if error is None or estimate is None:
        return True
    return error <= estimate + uncertainty


@dataclass
class SpeedRow:
    """One engine's cost: compile, first call, median call, memory, forward evaluations."""

    engine: str
    label: str
    status: str
    compile_s: float | None = None
    first_call_s: float | None = None
    call_s: float | None = None
    call_min_s: float | None = None
    call_max_s: float | None = None
    repeats: int | None = None
    #: call time ÷ the forward pass's time
    per_forward: float | None = None
    evaluations: int | None = None
    memory_bytes: int | None = None
    #: the call time is projected from a timed sample of coordinates
    projected: bool = False
    note: str = ""
    refused_value: float | None = None
    refused_limit: float | None = None
    refused_unit: str = ""


@dataclass
class SpeedResult(ResultTable):
    """Time and memory per gradient of every engine on one graph."""

    ROW = SpeedRow
    case: str
    rows: list[SpeedRow]
    parameters: int = 0
    forward_s: float = 0.0
    forward_how: str = ("the tape's compiled forward pass, median of repeats (timed before and "
                        "after the engines, the faster)")
    load_average: list[float] = field(default_factory=list)

    def row(self, engine: str) -> SpeedRow:
        return next(r for r in self.rows if r.engine == engine)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _points(config: EngineConfig) -> int:
    from autodiff_lab.engines.numeric_steps import STENCILS
    return len(STENCILS[config.method].points(True, False))


def _sample(program: Any, values: Mapping[str, Any], reference: Reference | None, n: int,
            scale: float, params: int, min_seconds: float = 0.4
            ) -> tuple[float | None, float | None, int, float]:
    """Finite differences on random coordinates: (relative error, relative estimate,
    coordinates, projected seconds per coordinate).

    After an untimed warm-up (first calls compile the batched kernels), samples of ``n``,
    4n, 16n ... coordinates are timed until one takes ``min_seconds``; the last two give the
    cost per coordinate apart from the fixed cost of a call. The errors come from the
    largest sample (none without a reference)."""
    def timed(k: int, rng: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check = program.check_subset(values, n=k, rng=rng)
        return check, time.perf_counter() - t0

    limit = getattr(program.engine, "max_evaluations", None) or 10 ** 12
    points = len(program.stencil.points(True, False)) or 1
    cap = max(1, min(params, (limit - 1) // points))  # a sample the engine's limit allows
    timed(1, 2)
    k = min(max(1, n // 4), cap)
    history: list[tuple[int, float]] = []
    check = None
    while True:
        check, seconds = timed(k, len(history))
        history.append((len(check.entries), seconds))
        if seconds >= min_seconds or k >= cap or len(history) >= 6:
            break
        k = min(4 * k, cap)
    n_large, t_large = history[-1]
    per = t_large / max(n_large, 1)
    if len(history) >= 2:
        n_small, t_small = history[-2]
        if n_large > n_small and t_large > t_small:
            per = (t_large - t_small) / (n_large - n_small)
    if reference is None:
        return None, None, n_large, per
    err = est = 0.0
    for e in check.entries:
        ref = np.asarray(reference.grads[e["input"]])[tuple(e["index"])]
        err = max(err, float(abs(np.longdouble(e["numeric"]) - ref)))
        est = max(est, float(e["error_estimate"]))
    scale = scale or 1.0
    return err / scale, est / scale, n_large, per


def run_engine(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str], config: EngineConfig,
               reference: Reference | None, forward_s: float, *, budget_s: float = DEFAULT_BUDGET_S,
               timing_s: float = 0.3, sample: int = SAMPLE_COORDINATES,
               memory: bool = True) -> tuple[AccuracyRow, SpeedRow]:
    """Compile and run one configuration: its accuracy row and its speed row (without a
    ``reference`` the accuracy row has no errors: timing only)."""
    tiered.foreground()  # time the compiled kernels, never the reference path
    key, label = config.key or config.title, config.title
    params = parameter_count(graph, wrt)
    scale = scale_of(reference) if reference is not None else 1.0

    def refused(note: str, value: float | None = None, limit: float | None = None,
                unit: str = "", sampled: tuple[Any, Any, int, float] | None = None,
                compile_s: float | None = None, projected_s: float | None = None
                ) -> tuple[AccuracyRow, SpeedRow]:
        acc = AccuracyRow(key, label, "sampled" if sampled else "refused", note=note,
                          refused_value=value, refused_limit=limit, refused_unit=unit)
        if sampled:
            acc.rel_error, acc.est_error, acc.checked = sampled[0], sampled[1], sampled[2]
        spd = SpeedRow(key, label, "refused", compile_s=compile_s, note=note,
                       refused_value=value, refused_limit=limit, refused_unit=unit)
        if projected_s is not None:
            spd.call_s, spd.projected = projected_s, True
            spd.per_forward = projected_s / forward_s if forward_s > 0 else None
        return acc, spd

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = config.make().compile(graph, wrt=list(wrt))
    except SymbolicSizeError as exc:
        value = limit = None
        if config.options.get("mode") == "expanded" and "max_tree_size" in str(exc):
            from autodiff_lab.engines.symbolic import DEFAULT_MAX_TREE_SIZE
            from autodiff_lab.engines.symbolic_expanded import estimate_expansion
            est = estimate_expansion(graph, list(wrt), next(iter(graph.outputs)),
                                     DEFAULT_MAX_TREE_SIZE)
            value, limit = est.gradient_ops, float(DEFAULT_MAX_TREE_SIZE)
        return refused(_one_line(exc), value, limit, "operations" if value else "")
    except (AutodiffError, NotImplementedError) as exc:
        return refused(_one_line(exc))
    compile_s = time.perf_counter() - t0

    if config.engine == "numeric":
        needed = 1 + params * _points(config)
        limit = getattr(program.engine, "max_evaluations", None)
        over_limit = limit is not None and needed > limit
        sampled = projected = None
        if over_limit or params > 4 * sample:
            sampled = _try_sample(program, values, reference, sample, scale, params)
            if sampled is not None:
                projected = forward_s + sampled[3] * params
        what = f"accuracy measured on {sampled[2]} random coordinates" if sampled else ""
        if over_limit or (projected is not None and projected > budget_s):
            batch_memory = _memory(program, values, config, graph, params) if memory else None
        if over_limit:
            return _with_memory(batch_memory, *refused(
                f"needs {needed:,} forward evaluations ({_points(config)} per parameter + 1), "
                f"more than the engine's limit of {limit:,}"
                + (f" (about {_seconds(projected)})" if projected else "")
                + (f"; {what}" if what else ""),
                float(needed), float(limit), "evaluations", sampled, compile_s, projected))
        if projected is not None and projected > budget_s:
            return _with_memory(batch_memory, *refused(
                f"would take about {_seconds(projected)} ({needed:,} forward evaluations, "
                f"projected from {sampled[2]} timed coordinates), over the budget of "
                f"{_seconds(budget_s)} per gradient; {what}",
                projected, budget_s, "s", sampled, compile_s, projected))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            result = program(values)
            first = time.perf_counter() - t0
            timing = time_calls(lambda: program(values), budget_s=timing_s) if first < 1.0 \
                else Timing(first, first, first, 1)
            mem = None
            if memory and (config.engine == "numeric" or first < 5.0):  # (FD: small batches)
                mem = _memory(program, values, config, graph, params)
    except (AutodiffError, NotImplementedError) as exc:
        return refused(_one_line(exc), compile_s=compile_s)
    acc = AccuracyRow(key, label, "ok", checked=params, value=float(np.asarray(result.value)))
    if reference is not None:
        acc.rel_error = rel_error(result.grads, reference.grads)
    if result.error_estimate is not None and reference is not None:
        acc.est_error = rel_norm(result.error_estimate, reference.grads)
    spd = SpeedRow(key, label, "ok", compile_s=compile_s, first_call_s=first, call_s=timing.median,
                   call_min_s=timing.low, call_max_s=timing.high, repeats=timing.repeats,
                   per_forward=timing.median / forward_s if forward_s > 0 else None,
                   evaluations=result.evaluations, memory_bytes=mem)
    return acc, spd


def _with_memory(memory_bytes: int | None, acc: AccuracyRow, spd: SpeedRow
                 ) -> tuple[AccuracyRow, SpeedRow]:
    spd.memory_bytes = memory_bytes
    return acc, spd


def _try_sample(program: Any, values: Mapping[str, Any], reference: Reference | None, n: int,
                scale: float, params: int) -> tuple[float | None, float | None, int, float] | None:
    try:
        return _sample(program, values, reference, n, scale, params)
    except AutodiffError:
        return None


def _memory(program: Any, values: Mapping[str, Any], config: EngineConfig, graph: Graph,
            params: int) -> int | None:
    """Peak bytes of one gradient. Finite differences evaluate their perturbed copies batch
    after batch, so a full run peaks at one batch: measured on batches of 4 and 16
    coordinates (with the reference kernels, which are slow on big batches) and extrapolated
    linearly to a full batch."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if config.engine != "numeric":
                return peak_memory(lambda: program(values))
            from autodiff_lab.engines.numeric import BATCH_ELEMENTS
            per_batch = max(1, BATCH_ELEMENTS // max(program.largest_node, 1) // _points(config))
            full = min(per_batch, params)
            small, large = min(4, full), min(16, full)
            m_large = peak_memory(lambda: program.check_subset(values, n=large))
            if large >= full or small == large:
                return m_large
            m_small = peak_memory(lambda: program.check_subset(values, n=small))
            per = max(m_large - m_small, 0) / (large - small)
            return int(m_large + per * (full - large))
    except AutodiffError:
        return None


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 3 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} days"


def forward_time(graph: Graph, values: Mapping[str, Any], budget_s: float = 0.3,
                 fastest: bool = False) -> float:
    """Median (or ``fastest``) seconds of one forward pass (the tape's compiled forward, no
    gradient)."""
    from autodiff_lab.engines import engine
    program = engine("tape", anomaly=False).compile(graph)
    program.forward(values)
    timing = time_calls(lambda: program.forward(values), budget_s=budget_s)
    return timing.low if fastest else timing.median


def resolve_reference(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str],
                      reference: Reference | Mapping[str, Any] | str | None,
                      miniature: Callable[[], tuple[Graph, dict[str, Any]]] | None = None
                      ) -> Reference:
    """A :class:`Reference` from a kind name, given gradients, or one already computed."""
    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, Mapping):
        missing = [n for n in wrt if n not in reference]
        if missing:
            raise InputError(f"the reference gradients lack {missing}")
        return given_reference(reference)
    return compute_reference(graph, values, wrt, reference or "auto", miniature)


def default_wrt(graph: Graph) -> list[str]:
    """The parameters (as in training), or every float input when none is marked."""
    from autodiff_lab.engines.base import resolve_wrt
    return list(graph.parameters) or resolve_wrt(graph, None)


def measure(graph: Graph, values: Mapping[str, Any], *,
            engines: str | Iterable[str | EngineConfig] | None = None,
            reference: Reference | Mapping[str, Any] | str | None = "auto",
            wrt: Sequence[str] | None = None, name: str = "graph",
            budget_s: float = DEFAULT_BUDGET_S, timing_s: float = 0.3,
            sample: int = SAMPLE_COORDINATES, memory: bool = True,
            progress: Callable[[str], None] | None = None,
            miniature: Callable[[], tuple[Graph, dict[str, Any]]] | None = None
            ) -> tuple[AccuracyResult, SpeedResult]:
    """Run every engine once on ``graph`` at ``values``: the accuracy and the speed tables.

    ``engines``: names as ``--engines`` takes them (default all). ``reference``: ``"auto"``,
    ``"mpmath"``, ``"extended"``, ``"consensus"``, gradients by input name, or a
    :class:`Reference`. ``budget_s``: finite differences projected to take longer are
    refused (and measured on ``sample`` coordinates). ``timing_s``: seconds of repeated calls
    per timing.
    """
    import os

    if budget_s <= 0 or not np.isfinite(budget_s):
        raise InputError(f"budget_s must be a positive number of seconds, got {budget_s}")
    configs = parse_engines(engines)
    wrt = list(wrt) if wrt is not None else default_wrt(graph)
    if not wrt:
        raise InputError("the graph has no floating-point input to differentiate")
    if progress:
        progress(f"{name}: reference")
    ref = resolve_reference(graph, values, wrt, reference, miniature)
    fwd = forward_time(graph, values, timing_s)
    acc_rows, spd_rows = [], []
    for config in configs:
        if progress:
            progress(f"{name}: {config.title}")
        a, s = run_engine(graph, values, wrt, config, ref, fwd, budget_s=budget_s,
                          timing_s=timing_s, sample=sample, memory=memory)
        acc_rows.append(a)
        spd_rows.append(s)
    # the load of a shared machine changes: the forward is timed again, the faster counts
    again = forward_time(graph, values, timing_s)
    if again < fwd:
        for s in spd_rows:
            if s.per_forward is not None and s.call_s is not None:
                s.per_forward = s.call_s / again
        fwd = again
    params = parameter_count(graph, wrt)
    accuracy_result = AccuracyResult(
        name, acc_rows, params, ref.kind, ref.description, ref.trust, ref.uncertainty,
        ref.validation, ref.seconds)
    speed_result = SpeedResult(name, spd_rows, params, fwd,
                               load_average=[round(x, 2) for x in os.getloadavg()])
    return accuracy_result, speed_result


def accuracy(graph: Graph, values: Mapping[str, Any], engines: str | Iterable[Any] | None = None,
             reference: Reference | Mapping[str, Any] | str | None = "auto",
             **options: Any) -> AccuracyResult:
    """The accuracy table of :func:`measure` (see there for the options)."""
    return measure(graph, values, engines=engines, reference=reference, memory=False,
                   **options)[0]


def speed(graph: Graph, values: Mapping[str, Any], engines: str | Iterable[Any] | None = None,
          **options: Any) -> SpeedResult:
    """The speed table of :func:`measure` (see there for the options); the reference is the
    consensus of tape and matrix mode, as only the refusal samples need one."""
    options.setdefault("reference", "consensus")
    return measure(graph, values, engines=engines, **options)[1]
