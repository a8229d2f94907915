"""Finite differences (level 1 of the three): gradients from forward evaluations only.

The engine perturbs one coordinate at a time, ``x + m·h·e_j`` for the offsets ``m`` of the
chosen formula (``numeric_steps.STENCILS``: forward, backward, central, five_point,
richardson, complex), evaluates the shared graph with the op table's forward rules and
combines the outputs. Many perturbed copies run in one call: the perturbed input gets an
extra leading axis of copies and :func:`~autodiff_lab.graph.evaluate.run_forward` pushes
it through every op's batched rule, so a gradient of a few thousand parameters takes a
handful of Python calls, not thousands.

Every result says what it cost (``evaluations``, one per perturbed copy plus the base
point) and how wrong it may be (``error_estimate`` per component: a truncation estimate
from a second step plus a round-off bound). Kinks are seen, not assumed away: every
stencil point also evaluates the kink coordinates of relu, abs, max, max pooling … (the op
table's ``kink_coord``, read during the same batched calls), a component whose stencil
straddles a kink is recomputed one-sided on the side free of kinks, and a point on a kink
gets both one-sided derivatives, the engines' convention where the op table gives one and
a :class:`KinkWarning` naming the op (see :mod:`~autodiff_lab.engines.numeric_kinks` and
``result.info["kink_components"]``). Bad input is handled the way a careful person
would: a perturbed evaluation that leaves f's domain is reported (:class:`NonFiniteStepWarning`) and retried
one-sided with a smaller step, a step the user gives that is beyond the region where the
estimate holds gives a :class:`StepSizeWarning` (see :func:`numeric_steps.regime_check`), and
a gradient that would take more evaluations than ``max_evaluations`` is refused up front,
saying how many it needs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.engines.base import (
    Engine,
    GradientResult,
    Program,
    resolve_output,
    resolve_seed,
    resolve_wrt,
)
from autodiff_lab.engines.numeric_kinks import (
    REACH_MARGIN,
    KinkStats,
    KinkWatch,
    SidePlan,
    convention_side,
    plan_sides,
)
from autodiff_lab.engines.numeric_steps import (
    COMPLEX_STEP,
    METHODS,
    ONE_SIDED_POINTS,
    ONE_SIDED_STEP_POWER,
    STENCILS,
    RegimeCheck,
    Stencil,
    check_step,
    complex_shared_roundoff,
    default_step,
    exact_step,
    one_sided_second_order,
    one_sided_with_estimate,
    power_of_two,
    regime_check,
    step_for,
)
from autodiff_lab.errors import (
    EvaluationLimitError,
    InputError,
    NonFiniteError,
    NotDifferentiableError,
)
from autodiff_lab.graph.evaluate import check_values, run_forward, working_dtype
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS

#: a gradient needing more forward evaluations than this is refused (raise it per engine)
DEFAULT_MAX_EVALUATIONS = 100_000
#: show a progress bar from this many evaluations on
PROGRESS_THRESHOLD = 5_000
#: elements of the largest node times copies per batched call (~32 MB of float64)
BATCH_ELEMENTS = 2 ** 22
#: one-sided retries after a non-finite evaluation: steps shrink 16-fold each time
RETRIES = 6
#: rounds of one-sided retries around a kink (each shrinks the step at least 4-fold)
KINK_ROUNDS = 8


class KinkWarning(UserWarning):
    """The point sits on a non-differentiable point of an op (relu at 0, ties of a max)."""


class NonFiniteStepWarning(RuntimeWarning):
    """A perturbed evaluation gave NaN/Inf; the component was retried one-sided."""


class StepSizeWarning(UserWarning):
    """A user's step is beyond the region where the error estimate holds (the formula at
    h/2, h and 2h does not behave like error ∝ h^order); the estimate is only a guess."""


@dataclass
class _Counter:
    evaluations: int = 0
    estimate_evaluations: int = 0
    kink_evaluations: int = 0
    calls: int = 0


@dataclass
class _OneSided:
    """One-sided derivatives of a batch of requests (see ``NumericProgram._one_sided``):
    ``ok`` where the step found keeps every point on x's side of every kink."""

    sides: np.ndarray
    ok: np.ndarray
    d: np.ndarray
    e: np.ndarray
    step: np.ndarray
    counts: np.ndarray  # KinkStats.counts at the accepted points, per request (4 each)


@dataclass
class _Target:
    """What a perturbed output is reduced to before the formulas combine it.

    For a gradient, the output contracted with the seed (a scalar per copy); for a
    Jacobian, the whole output. ``imaginary`` takes the imaginary part (complex step).
    """

    seed: np.ndarray | None
    imaginary: bool

    def project(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = out.imag if self.imaginary else out
        mag = np.abs(out.real) if self.imaginary else np.abs(out)
        if self.seed is None:
            return np.asarray(part), mag
        axes = (tuple(range(1, out.ndim)), tuple(range(self.seed.ndim)))
        return (np.tensordot(part, self.seed, axes=axes),
                np.tensordot(mag, np.abs(self.seed), axes=axes))


@dataclass
class SubsetCheck:
    """Derivatives at a random subset of coordinates, optionally against a reference."""

    entries: list[dict[str, Any]]
    evaluations: int
    method: str
    #: components of the sample whose stencil crossed or sat on a kink (and were recomputed)
    kink_components: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every compared entry is within its error estimate (plus round-off)."""
        return all(e.get("ok", True) for e in self.entries)

    def report(self) -> str:
        """A text table: input, index, numeric value, estimate, reference, verdict."""
        lines = [f"random-subset check ({self.method}, {len(self.entries)} coordinates, "
                 f"{self.evaluations} evaluations)"]
        for e in self.entries:
            line = (f"  {e['input']}{list(e['index'])}: numeric {e['numeric']:+.12e} "
                    f"± {e['error_estimate']:.1e}")
            if "reference" in e:
                line += (f"  reference {e['reference']:+.12e}  |diff| {e['difference']:.1e}  "
                         f"{'ok' if e['ok'] else 'DISAGREE'}")
            lines.append(line)
        return "\n".join(lines)


class NumericProgram(Program):
    """A compiled finite-difference program (see the module docstring)."""

    def __init__(self, graph: Graph, wrt: list[str], output: str, engine: NumericEngine) -> None:
        self.graph, self.wrt, self.output = graph, wrt, output
        self.engine = engine
        self.stencil = STENCILS[engine.method]
        self.out_node = graph.outputs[output]
        self.out_shape = tuple(graph.node(self.out_node)["shape"])
        self.path = graph.path_nodes([graph.inputs[n] for n in wrt], self.out_node)
        self.kink_nodes = [v for v in self.path if graph.node(v)["role"] == "op"
                           and OPS[graph.node(v)["op"]].kink is not None]
        if self.stencil.imaginary:
            self._check_complex_safe(self.path)
        # the largest value any node holds: bounds how many copies fit in one call
        self.largest_node = max((int(np.prod(graph.node(v)["shape"], dtype=np.int64))
                                 for v in graph.order), default=1)
        check_step_names(graph, engine.step)
        for name in wrt:  # a step that cannot fit an input is refused before any evaluation
            step_for(engine.step, name, tuple(graph.node(graph.inputs[name])["shape"]))
        self.last_directional: dict[str, Any] = {}

    # --- public entry points --------------------------------------------------------------
    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        """Value of the output and its gradient (seedᵀJ for a vector output with a seed)."""
        arrays = check_values(self.graph, values)
        dtype = working_dtype(self.graph, arrays)
        target = _Target(resolve_seed(self.graph, self.output, seed, dtype),
                         self.stencil.imaginary)
        comps = {n: np.arange(arrays[n].size) for n in self.wrt}
        value, parts, info = self._run(arrays, comps, target, self.stencil)
        grads = {n: parts[n][0].reshape(arrays[n].shape).astype(dtype) for n in self.wrt}
        errs = None
        if parts and all(parts[n][1] is not None for n in self.wrt):
            errs = {n: parts[n][1].reshape(arrays[n].shape).astype(dtype) for n in self.wrt}
        outputs = info.pop("outputs")
        return GradientResult(value=value, grads=grads, engine="numeric", output=self.output,
                              evaluations=info["evaluations"], error_estimate=errs, info=info,
                              outputs=outputs)

    def jacobian(self, values: Mapping[str, Any]) -> GradientResult:
        """d output / d input for each input in ``wrt``, laid out output × input: the block
        for input x has shape ``output.shape + x.shape`` (for y ∈ R^M, x ∈ R^N: M × N)."""
        arrays = check_values(self.graph, values)
        dtype = working_dtype(self.graph, arrays)
        comps = {n: np.arange(arrays[n].size) for n in self.wrt}
        value, parts, info = self._run(arrays, comps, _Target(None, self.stencil.imaginary),
                                       self.stencil)

        def layout(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
            cols = d.reshape((int(np.prod(shape, dtype=np.int64)),) + self.out_shape)
            return np.moveaxis(cols, 0, -1).reshape(self.out_shape + shape).astype(dtype)

        grads = {n: layout(parts[n][0], arrays[n].shape) for n in self.wrt}
        errs = None
        if all(parts[n][1] is not None for n in self.wrt):
            errs = {n: layout(parts[n][1], arrays[n].shape) for n in self.wrt}
        info["jacobian"] = True
        outputs = info.pop("outputs")
        return GradientResult(value=value, grads=grads, engine="numeric", output=self.output,
                              evaluations=info["evaluations"], error_estimate=errs, info=info,
                              outputs=outputs)

    def directional(self, values: Mapping[str, Any], direction: Mapping[str, Any], *,
                    method: str | None = None, seed: Any = None,
                    return_error: bool = False) -> float | tuple[float, float]:
        """vᵀ∇f: the derivative of the (scalar, or seed-weighted) output along ``direction``
        ({input name: array of its shape}; inputs left out do not move), from
        ``f(x + t·v)`` at the method's offsets: 2 evaluations with central differences
        (plus one at x on a graph with kinks, to see whether x ± t·v crosses one; a
        stencil that does is recomputed one-sided, as for gradients).

        With ``return_error=True`` also an error estimate (which costs the estimate's
        extra points). Details of the last call are in ``program.last_directional``.
        """
        stencil = _stencil(method or self.engine.method)
        g = self.graph
        arrays = check_values(g, values)
        dtype = working_dtype(g, arrays)
        eps = float(np.finfo(dtype).eps)
        dirs = self._check_direction(direction, arrays, dtype)
        path = g.path_nodes([g.inputs[n] for n in dirs], self.out_node)
        if stencil.imaginary:
            self._check_complex_safe(path)
        v_max = max((float(np.max(np.abs(v), initial=0.0)) for v in dirs.values()), default=0.0)
        if v_max == 0.0:
            self.last_directional = {"evaluations": 0, "step": 0.0, "error_estimate": 0.0}
            return (0.0, 0.0) if return_error else 0.0
        t, user_step = self._direction_step(stencil, arrays, dirs, v_max, eps)
        regime = return_error and user_step
        target = _Target(resolve_seed(g, self.output, seed, dtype), stencil.imaginary)
        counter = _Counter()
        offsets = stencil.points(return_error, regime)
        run_dtype = _complex_dtype(dtype) if stencil.imaginary else dtype
        base_arrays = _cast_floats(g, arrays, run_dtype)
        copies = {}
        ms = np.array(offsets, dtype=dtype)
        for name, v in dirs.items():
            shift = (ms * t).reshape((-1,) + (1,) * v.ndim) * v
            copies[name] = base_arrays[name] + (1j * shift if stencil.imaginary else shift)
        watch = None
        kink_path = [v for v in self.kink_nodes if v in set(path)] if self.engine.kinks else []
        if kink_path:  # the kink coordinates at x, to compare the copies' with
            keep = {u for v in kink_path for u in g.operands(v)}
            watch = KinkWatch(g, kink_path, run_forward(g, arrays, keep=keep))
            counter.evaluations += 1
        out, stats = self._forward_copies(base_arrays, copies, len(offsets), run_dtype, counter,
                                          watch)
        vals, mags = target.project(out)
        if not np.all(np.isfinite(vals)):
            bad = [m for m, ok in zip(offsets, np.isfinite(vals)) if not ok]
            raise NonFiniteError(f"directional derivative: f(x + m·t·v) is not finite for "
                                 f"m = {bad} (t = {t:.3g}); the step leaves f's domain, try "
                                 "a smaller step=... or a one-sided method")
        f = {m: vals[i] for i, m in enumerate(offsets)}
        a = {m: mags[i] for i, m in enumerate(offsets)}
        plan = plan_sides(stats.reshape(len(offsets), 1), offsets, np.array([t])) if watch else None
        kinked = plan is not None and bool(plan.flagged[0]) and not stencil.imaginary
        if stencil.needs_base or regime or kinked:
            base = run_forward(g, arrays, keep=[self.out_node])[self.out_node]
            counter.evaluations += 1
            b_val, b_mag = target.project(base[None])
            f[0.0], a[0.0] = b_val[0], b_mag[0]
        t_arr = np.asarray(t, dtype=dtype)
        d, err = stencil.combine(f, a, t_arr, eps, return_error)
        kink_record = None
        if kinked:
            d, err_k, kink_record = self._directional_kink(base_arrays, dirs, t, v_max, plan,
                                                           (f[0.0], a[0.0]), d, err, target,
                                                           counter, eps, watch)
            err = err_k if return_error else None
            regime = False  # the stencil was replaced
        suspect = False
        if regime:
            # t·|v_j| is coordinate j's step: flag t beyond the scale of the tightest one
            scale = min(float(np.min(np.maximum(np.abs(arrays[n][v != 0]), 1.0) / np.abs(v[v != 0])))
                        for n, v in dirs.items() if np.any(v != 0))
            check = regime_check(stencil, f, a, t_arr, eps, scale)
            if stencil.regime_bounds:
                err = np.maximum(err, check.estimate)
            suspect = bool(np.any(check.suspect))
            if suspect:
                why = _regime_why(stencil, bool(np.all(check.beyond_scale)),
                                  float(np.max(check.change_small)),
                                  float(np.max(check.change_large)),
                                  f"{scale:.3g}, beyond which a coordinate moves by more than "
                                  "its scale max(|x|, 1)")
                warnings.warn(f"numeric {stencil.name}: the directional step t = {t:.3g} is "
                              f"beyond the region where the error estimate holds: {why}",
                              StepSizeWarning, stacklevel=2)
        self.last_directional = {"evaluations": counter.evaluations, "step": t,
                                 "error_estimate": None if err is None else float(err),
                                 "method": stencil.name, "step_warning": suspect,
                                 "kink": kink_record}
        return (float(d), float(err)) if return_error else float(d)

    def check_subset(self, values: Mapping[str, Any], n: int = 16, *,
                     reference: GradientResult | Mapping[str, Any] | None = None,
                     rng: int | np.random.Generator = 0, method: str | None = None
                     ) -> SubsetCheck:
        """Derivatives at ``n`` coordinates drawn at random from all of ``wrt`` (cost: the
        method's points for those coordinates only), compared with ``reference`` gradients
        when given: an entry is ok when it is within its error estimate plus round-off."""
        stencil = _stencil(method or self.engine.method)
        if stencil.imaginary:
            self._check_complex_safe(self.path)
        arrays = check_values(self.graph, values)
        dtype = working_dtype(self.graph, arrays)
        sizes = [arrays[name].size for name in self.wrt]
        total = int(sum(sizes))
        rng = np.random.default_rng(rng)
        picked = np.sort(rng.choice(total, size=min(n, total), replace=False))
        starts = np.cumsum([0] + sizes)
        comps = {name: picked[(picked >= starts[i]) & (picked < starts[i + 1])] - starts[i]
                 for i, name in enumerate(self.wrt)}
        comps = {k: v for k, v in comps.items() if v.size}
        target = _Target(resolve_seed(self.graph, self.output, None, dtype), stencil.imaginary)
        _, parts, info = self._run(arrays, comps, target, stencil, force_estimate=True)
        ref = reference.grads if isinstance(reference, GradientResult) else reference
        eps = float(np.finfo(dtype).eps)
        entries = []
        for name, idx in comps.items():
            d, err = parts[name]
            for k, flat in enumerate(idx):
                index = tuple(int(i) for i in np.unravel_index(int(flat), arrays[name].shape))
                entry = {"input": name, "index": index,
                         "numeric": float(d[k]), "error_estimate": float(err[k])}
                if ref is not None:
                    r = float(np.asarray(ref[name]).ravel()[flat])
                    entry.update(reference=r, difference=abs(r - float(d[k])))
                    entry["ok"] = entry["difference"] <= float(err[k]) + 16 * eps * max(abs(r), 1.0)
                entries.append(entry)
        return SubsetCheck(entries, info["evaluations"], stencil.name, info["kink_components"])

    # --- the machinery --------------------------------------------------------------------
    def _run(self, arrays: dict[str, np.ndarray], comps: dict[str, np.ndarray], target: _Target,
             stencil: Stencil, force_estimate: bool = False
             ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray | None]], dict]:
        """Base evaluation, then every component's derivative and estimate; components
        whose stencil straddles a kink, or whose point sits on one, are recomputed."""
        g, eng = self.graph, self.engine
        started = time.perf_counter()
        estimate = eng.estimate_error or force_estimate or stencil.name == "richardson"
        # a user's step gets the regime check (its points at h/2) with the estimate
        regime = {n: estimate and step_for(eng.step, n, arrays[n].shape) is not None
                  for n in comps}
        points = {n: stencil.points(estimate, regime[n]) for n in comps}
        needed = 1 + sum(len(idx) * len(points[n]) for n, idx in comps.items())
        if needed > eng.max_evaluations:
            raise EvaluationLimitError(self._limit_message(comps, points, needed))
        dtype = working_dtype(g, arrays)
        eps = float(np.finfo(dtype).eps)
        keep = {self.out_node} | {u for v in self.kink_nodes for u in g.operands(v)}
        keep |= set(g.outputs.values())  # auxiliary outputs come back too
        base = run_forward(g, arrays, keep=keep)
        counter = _Counter(evaluations=1, calls=1)
        watch = KinkWatch(g, self.kink_nodes if eng.kinks else [], base)
        base_val, base_mag = target.project(base[self.out_node][None])
        run_dtype = _complex_dtype(dtype) if stencil.imaginary else dtype
        run_arrays = _cast_floats(g, arrays, run_dtype)
        steps: dict[str, np.ndarray] = {}
        parts: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        nonfinite: list[dict[str, Any]] = []
        suspects: list[dict[str, Any]] = []
        kinked: list[dict[str, Any]] = []
        total = needed - 1
        show = eng.progress if eng.progress is not None else total >= PROGRESS_THRESHOLD
        from tqdm.auto import tqdm  # imported here: about 40 ms, and only for a bar
        with tqdm(total=total, disable=not show, desc=f"numeric {stencil.name}", unit="eval",
                  leave=False) as bar:
            for name, idx in comps.items():
                x = arrays[name].ravel()
                steps[name] = h = self._steps(name, arrays[name].shape, x, idx, stencil, eps,
                                              dtype, points[name])
                if idx.size == 0:  # an empty input has an empty gradient
                    empty = np.zeros((0,) + base_val.shape[1:], dtype=dtype)
                    parts[name] = (empty, empty.copy() if estimate else None)
                    continue
                vals, mags, stats = self._perturbed(run_arrays, name, idx, h, points[name],
                                                    stencil, target, counter, bar, run_dtype,
                                                    watch)
                parts[name] = self._combine(run_arrays, arrays, name, idx, h, points[name], vals,
                                            mags, stats, (base_val[0], base_mag[0]), stencil,
                                            target, counter, estimate, eps, nonfinite, kinked,
                                            watch, suspects if regime[name] else None)
        if stencil.imaginary and estimate and parts:
            shared = complex_shared_roundoff([p[1] for p in parts.values() if p[1] is not None],
                                             self.largest_node)
            parts = {n: (d, None if e is None else e + shared) for n, (d, e) in parts.items()}
        for report in suspects:
            warnings.warn(report.pop("message"), StepSizeWarning, stacklevel=3)
        kinks = self._warn_kinks(kinked, stencil)
        info = {
            "method": stencil.name, "steps": steps, "evaluations": counter.evaluations,
            "evaluations_for_estimate": counter.estimate_evaluations,
            "evaluations_for_kinks": counter.kink_evaluations,
            "forward_calls": counter.calls, "kinks": kinks, "kink_components": kinked,
            "kink_flagged": {n: sum(1 for r in kinked if r["input"] == n) for n in comps},
            "nonfinite": nonfinite, "step_warnings": suspects,
            "seconds": time.perf_counter() - started,
            "outputs": {n: base[v] for n, v in g.outputs.items()},
        }
        return base[self.out_node], parts, info

    def _combine(self, run_arrays: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                 name: str, idx: np.ndarray, h: np.ndarray, points: tuple[float, ...],
                 vals: np.ndarray, mags: np.ndarray, stats: KinkStats,
                 base: tuple[np.ndarray, np.ndarray], stencil: Stencil, target: _Target,
                 counter: _Counter, estimate: bool, eps: float, nonfinite: list[dict[str, Any]],
                 kinked: list[dict[str, Any]], watch: KinkWatch,
                 suspects: list[dict[str, Any]] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """The formula applied to one input's perturbed values. Components whose points
        were not finite are recomputed one-sided (reported in ``nonfinite``), and so are
        those whose stencil straddles a kink or whose x sits on one (reported in
        ``kinked``, see :meth:`_fix_kinks`). With ``suspects`` (a user's step), the regime
        check widens the estimate to the change seen between h/2 and h and reports
        components beyond the estimate's region."""
        tail = (1,) * (vals.ndim - 2)
        f = {m: vals[i] for i, m in enumerate(points)}
        a = {m: mags[i] for i, m in enumerate(points)}
        f[0.0] = np.broadcast_to(base[0], vals.shape[1:])
        a[0.0] = np.broadcast_to(base[1], vals.shape[1:])
        hh = h.reshape((-1,) + tail)
        with np.errstate(all="ignore"):
            d, err = stencil.combine(f, a, hh, eps, estimate)
            check = None if suspects is None else regime_check(
                stencil, f, a, hh, eps, np.maximum(np.abs(arrays[name].ravel()[idx]), 1.0)
                .reshape((-1,) + tail))
        finite = np.isfinite(vals) & np.isfinite(mags)
        bad = ~finite.reshape(len(points), len(idx), -1).all(axis=(0, 2))
        plan = plan_sides(stats, points, h) if watch else None
        kinks = np.zeros(len(idx), dtype=bool) if plan is None else plan.flagged & ~bad
        if check is not None:
            if stencil.regime_bounds:
                err = np.maximum(err, check.estimate)
            # a kink explains a failed regime check, and the component is recomputed anyway
            flagged = check.suspect.reshape(len(idx), -1).any(axis=1) & ~bad & ~kinks
            if flagged.any():
                suspects.append(self._regime_report(name, arrays[name], idx, h, check, flagged,
                                                    stencil))
        if not (bad.any() or kinks.any()):
            return d, err
        d, err = np.array(d), None if err is None else np.array(err)
        if kinks.any():
            self._fix_kinks(run_arrays, arrays, name, idx, h, plan, kinks, d, err, base, stencil,
                            target, counter, eps, watch, kinked)
        for k in np.flatnonzero(bad):
            d[k], e_k, report = self._retry(run_arrays, arrays, name, int(idx[k]), float(h[k]),
                                            points, vals[:, k], stencil, target, base[0],
                                            base[1], counter, eps)
            if err is not None:
                err[k] = e_k
            nonfinite.append(report)
        return d, err

    def _directional_kink(self, base_arrays: dict[str, np.ndarray], dirs: dict[str, np.ndarray],
                          t: float, v_max: float, plan: SidePlan, base: tuple[Any, Any],
                          d: Any, err: Any, target: _Target, counter: _Counter, eps: float,
                          watch: KinkWatch) -> tuple[float, float, dict[str, Any]]:
        """The directional stencil straddles a kink (or x sits on one along v): the same
        one-sided recomputation as :meth:`_fix_kinks`, along v."""
        on = bool(plan.on_kink[0])
        rule, floor = eps ** ONE_SIDED_STEP_POWER / v_max, eps ** 0.5 / v_max
        first = 1.0 if plan.reach[0, 0] >= plan.reach[1, 0] else -1.0
        base_v = (np.asarray(base[0]), np.asarray(base[1]))
        by_side: dict[float, tuple[_OneSided, int]] = {}
        for side in (first, -first):
            if not on and by_side and by_side[first][0].ok[0]:
                break  # a crossing needs one good side
            reach = plan.reach[0 if side > 0 else 1, 0]
            r = self._one_sided(base_arrays, None, np.zeros(1, dtype=np.int64), np.array([side]),
                                np.array([min(rule, reach / ONE_SIDED_POINTS[-1])]),
                                np.array([floor]), base_v, target, counter, eps, watch,
                                direction=dirs)
            by_side[side] = (r, 0)
        d_new, e_new, record = self._resolve(np.asarray(d), None if err is None else np.asarray(err),
                                             by_side, on)
        record.update(step=t, node=int(plan.node[0]) if plan.node[0] >= 0 else None)
        if not record["differentiable"]:
            where = self.graph.describe(record["node"]) if record["node"] is not None else "an op"
            warnings.warn(f"numeric directional derivative: x + t·v meets a kink of {where} "
                          f"at t = 0 or on both sides; reported: {record['resolution']}",
                          KinkWarning, stacklevel=3)
        return float(d_new), float(e_new), record

    def _fix_kinks(self, run_arrays: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                   name: str, idx: np.ndarray, h: np.ndarray, plan: SidePlan, kinks: np.ndarray,
                   d: np.ndarray, err: np.ndarray | None, base: tuple[np.ndarray, np.ndarray],
                   stencil: Stencil, target: _Target, counter: _Counter, eps: float,
                   watch: KinkWatch, kinked: list[dict[str, Any]]) -> None:
        """Recompute (in place in ``d`` and ``err``) the components ``kinks`` marks.

        A stencil that straddles a kink is replaced by the one-sided formula of
        :func:`~autodiff_lab.engines.numeric_steps.one_sided_with_estimate` on the side
        free of kinks (the farther-reaching side first, then the other), with a step small
        enough that none of its points crosses one; a point on a kink gets both one-sided
        derivatives: where they agree the point is differentiable after all, where they do
        not the value follows the engines' convention when the op table gives one, else it
        is their mean with an error estimate that covers the jump. The complex step never
        crosses a kink (it does not move real parts) and on one it takes the branch the
        forward takes, which is the
        convention: its components are only reported.
        """
        ks = np.flatnonzero(kinks)
        shape = arrays[name].shape
        if stencil.imaginary:
            for k in ks:
                kinked.append(self._kink_record(name, shape, int(idx[k]), float(h[k]), plan, k,
                                                kind="on_kink", differentiable=False,
                                                resolution="complex step: the branch the forward "
                                                "takes, the engines' convention"))
            return
        x = arrays[name].ravel()[idx[ks]]
        scale = np.maximum(np.abs(x), 1.0)
        rule, floor = eps ** ONE_SIDED_STEP_POWER * scale, eps ** 0.5 * scale
        on = plan.on_kink[ks]
        reach = plan.reach[:, ks]
        first = np.where(reach[0] >= reach[1], 1.0, -1.0)
        # requests: a crossing tries its farther-reaching side; a point on a kink both sides
        req = np.concatenate([np.arange(len(ks)), np.flatnonzero(on)])
        sides = np.concatenate([first, -first[on]])
        res = self._one_sided(run_arrays, name, idx[ks][req], sides,
                              self._start(rule[req], reach, req, sides), floor[req], base,
                              target, counter, eps, watch)
        retry = np.flatnonzero(~res.ok[:len(ks)] & ~on)  # a crossing whose side failed
        res2 = None
        if retry.size:
            res2 = self._one_sided(run_arrays, name, idx[ks][retry], -first[retry],
                                   self._start(rule[retry], reach, retry, -first[retry]),
                                   floor[retry], base, target, counter, eps, watch)
        second = {int(i): r for r, i in enumerate(np.flatnonzero(on))}
        again = {int(i): r for r, i in enumerate(retry)}
        for i, k in enumerate(ks):
            tries = [(res, i)] + ([(res, len(ks) + second[i])] if on[i] else []) + \
                    ([(res2, again[i])] if i in again else [])
            by_side = {float(r.sides[j]): (r, j) for r, j in tries}
            value, estimate, record = self._resolve(d[k], None if err is None else err[k],
                                                    by_side, bool(on[i]))
            d[k] = value
            if err is not None:
                err[k] = estimate
            kinked.append(self._kink_record(name, shape, int(idx[k]), float(h[k]), plan, k,
                                            **record))

    @staticmethod
    def _start(rule: np.ndarray, reach: np.ndarray, req: np.ndarray, sides: np.ndarray
               ) -> np.ndarray:
        """First one-sided step: the second-order rule's, or less so that its farthest point
        (4 steps) stays within the side's reach."""
        side_reach = np.where(sides > 0, reach[0][req], reach[1][req])
        return np.minimum(rule, side_reach / ONE_SIDED_POINTS[-1])

    @staticmethod
    def _resolve(d: np.ndarray, err: np.ndarray | None, by_side: dict[float, tuple[Any, int]],
                 on_kink: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Value, estimate and report of one recomputed component from its one-sided
        results ``by_side`` {±1.0: (result, row)}."""
        ok = {s: (r.d[j], r.e[j]) for s, (r, j) in by_side.items() if r.ok[j]}
        steps = {s: float(r.step[j]) for s, (r, j) in by_side.items()}
        if not on_kink and ok:
            side = next(iter(ok))
            dv, ev = ok[side]
            return dv, ev, {"kind": "crossing", "differentiable": True, "side": side,
                            "retried_step": steps[side], "resolution": "one-sided"}
        if on_kink and len(ok) == 2:
            (dp, ep), (dm, em) = ok[1.0], ok[-1.0]
            jump = np.abs(dp - dm)
            record: dict[str, Any] = {"kind": "on_kink", "retried_step": steps[1.0],
                                      "one_sided": (_scalar(dm), _scalar(dp))}
            if np.all(jump <= ep + em):
                record.update(differentiable=True, resolution="both one-sided derivatives agree")
                return (dp + dm) / 2, np.maximum(ep, em) + jump / 2, record
            rule = convention_side(by_side[1.0][0].counts[by_side[1.0][1]],
                                   by_side[-1.0][0].counts[by_side[-1.0][1]])
            record["differentiable"] = False
            if rule in (1.0, -1.0):
                record["resolution"] = ("the engines' convention: the derivative on the "
                                        f"x {'+' if rule > 0 else '−'} h side")
                return (dp, ep, record) if rule > 0 else (dm, em, record)
            if rule == "mean":
                record["resolution"] = "the engines' convention: the mean of both sides"
                return (dp + dm) / 2, (ep + em) / 2, record
            record["resolution"] = ("the mean of both sides (no single convention applies); "
                                    "the error estimate covers the jump")
            return (dp + dm) / 2, jump / 2 + np.maximum(ep, em), record
        # no side could be freed of kinks: keep the formula's value, with an estimate that
        # covers every one-sided slope seen
        seen = [np.abs(d - r.d[j]) + r.e[j] for r, j in by_side.values()
                if np.all(np.isfinite(r.d[j]))]
        estimate = np.maximum(np.zeros_like(d) if err is None else err,
                              np.max(seen, axis=0) if seen else np.full_like(d, np.inf))
        return d, estimate, {"kind": "on_kink" if on_kink else "crossing", "differentiable": False,
                             "retried_step": min(abs(s) for s in steps.values()) if steps else None,
                             "resolution": "unresolved: kinks on both sides closer than the "
                                           "smallest step tried"}

    def _kink_record(self, name: str, shape: tuple[int, ...], j: int, h: float, plan: SidePlan,
                     k: int, **fields: Any) -> dict[str, Any]:
        node = int(plan.node[k])
        record = {"input": name, "index": tuple(int(i) for i in np.unravel_index(j, shape)),
                  "step": h, "node": node if node >= 0 else None,
                  "op": self.graph.node(node)["op"] if node >= 0 else None}
        record.update(fields)
        return record

    def _one_sided(self, run_arrays: dict[str, np.ndarray], name: str | None, comps: np.ndarray,
                   sides: np.ndarray, start: np.ndarray, floor: np.ndarray,
                   base: tuple[np.ndarray, np.ndarray], target: _Target, counter: _Counter,
                   eps: float, watch: KinkWatch,
                   direction: dict[str, np.ndarray] | None = None) -> _OneSided:
        """The one-sided formula for flat components ``comps`` of ``name`` on ``sides``
        (or, with ``direction`` and ``name=None``, along that direction: one request),
        every request in the same batched calls: a step that lets a point cross a kink
        (or gives a non-finite value) is shrunk, to the interpolated distance of the
        crossing or 4-fold, until it is clean or below ``floor``."""
        x = run_arrays[name].ravel() if name is not None else \
            np.zeros(1, dtype=next(iter(direction.values())).dtype)
        n = len(comps)
        tail = np.shape(base[0])
        out = _OneSided(sides=np.asarray(sides, dtype=np.float64), ok=np.zeros(n, dtype=bool),
                        d=np.full((n,) + tail, np.nan), e=np.full((n,) + tail, np.inf),
                        step=np.zeros(n), counts=np.zeros((n, 4), dtype=np.int64))
        h1 = np.maximum(start, floor)
        done = np.zeros(n, dtype=bool)
        ms = np.array(ONE_SIDED_POINTS)
        for _ in range(KINK_ROUNDS):
            pend = np.flatnonzero(~done)
            if not pend.size:
                break
            stp = exact_step(x[comps[pend]], sides[pend] * np.exp2(np.floor(np.log2(h1[pend]))))
            if np.any(stp == 0):
                done[pend[stp == 0]] = True
                pend, stp = pend[stp != 0], stp[stp != 0]
                if not pend.size:
                    break
            shift = (stp[:, None] * ms).reshape(-1)
            if direction is None:
                vals, mags, st = self._eval_shifts(run_arrays, name,
                                                   np.repeat(comps[pend], len(ms)), shift,
                                                   target, counter, x.dtype, watch)
            else:
                vals, mags, st = self._eval_copies(
                    run_arrays, lambda sel, shift=shift: {
                        k: run_arrays[k] + shift[sel].reshape((-1,) + (1,) * v.ndim) * v
                        for k, v in direction.items()},
                    len(shift), 1, target, counter, x.dtype, watch)
            counter.kink_evaluations += len(shift)
            vals = vals.reshape((len(pend), len(ms)) + tail)
            mags = mags.reshape(vals.shape)
            st = st.reshape(len(pend), len(ms))
            hh = stp.reshape((-1,) + (1,) * len(tail))
            f = np.concatenate([np.broadcast_to(base[0], vals[:, :1].shape), vals], axis=1)
            fa = np.concatenate([np.broadcast_to(base[1], mags[:, :1].shape), mags], axis=1)
            with np.errstate(all="ignore"):
                dv, ev = one_sided_with_estimate(np.moveaxis(f, 1, 0), np.moveaxis(fa, 1, 0), hh,
                                                 eps)
            out.d[pend], out.e[pend], out.step[pend] = dv, ev, stp
            finite = np.isfinite(vals).reshape(len(pend), -1).all(axis=1) & \
                np.isfinite(mags).reshape(len(pend), -1).all(axis=1)
            counts = st.counts
            steady = (counts == counts[..., :1]).all(axis=(0, 2))
            clean = finite & ~st.crossed.any(axis=1) & steady
            out.ok[pend[clean]] = True
            out.counts[pend[clean]] = counts[:, clean, 0].T
            done[pend[clean]] = True
            rest = ~clean
            crossing = np.min(np.where(st.crossed, st.frac * ms, np.inf), axis=1) * np.abs(stp)
            shrunk = np.minimum(h1[pend] / 4, REACH_MARGIN * crossing)
            give_up = rest & (shrunk < floor[pend])
            done[pend[give_up]] = True
            h1[pend[rest]] = shrunk[rest]
        return out

    def _perturbed(self, arrays: dict[str, np.ndarray], name: str, idx: np.ndarray,
                   h: np.ndarray, points: tuple[float, ...], stencil: Stencil, target: _Target,
                   counter: _Counter, bar: Any, run_dtype: np.dtype, watch: KinkWatch
                   ) -> tuple[np.ndarray, np.ndarray, KinkStats]:
        """Projected f(x + m·h_j·e_j) for every offset m and component j: arrays of shape
        (len(points), len(idx), *tail), and what the kink coordinates did at each point."""
        n_points = len(idx) * len(points)
        # point p is component p // len(points) at offset points[p % len(points)]
        comp_of = np.repeat(np.arange(len(idx)), len(points))
        off_of = np.tile(np.array(points), len(idx))
        shift = off_of * h[comp_of]
        vals, mags, stats = self._eval_shifts(arrays, name, idx[comp_of],
                                              1j * shift if stencil.imaginary else shift,
                                              target, counter, run_dtype, watch, bar)
        est = set(points) - set(stencil.offsets)
        counter.estimate_evaluations += int(sum(1 for m in off_of if m in est))
        vals = vals.reshape((len(idx), len(points)) + vals.shape[1:])
        mags = mags.reshape(vals.shape)
        stats = stats.reshape(len(idx), len(points)).transpose()
        assert n_points == stats.frac.size
        return np.moveaxis(vals, 1, 0), np.moveaxis(mags, 1, 0), stats

    def _eval_shifts(self, arrays: dict[str, np.ndarray], name: str, comp_of: np.ndarray,
                     shift_of: np.ndarray, target: _Target, counter: _Counter,
                     run_dtype: np.dtype, watch: KinkWatch, bar: Any = None
                     ) -> tuple[np.ndarray, np.ndarray, KinkStats]:
        """Projected outputs at copies of the inputs where flat component ``comp_of[i]`` of
        input ``name`` moved by ``shift_of[i]`` (imaginary for the complex step), with the
        copies' kink statistics; evaluated in chunks of as many copies as fit in memory."""
        x = arrays[name].ravel()
        shape = arrays[name].shape

        def make(sel: slice) -> dict[str, np.ndarray]:
            cj = comp_of[sel]
            copies = np.repeat(x[None, :], len(cj), axis=0)
            copies[np.arange(len(cj)), cj] += shift_of[sel]
            return {name: copies.reshape((len(cj),) + shape)}

        return self._eval_copies(arrays, make, len(comp_of), x.size, target, counter, run_dtype,
                                 watch, bar)

    def _eval_copies(self, arrays: dict[str, np.ndarray],
                     make: Callable[[slice], dict[str, np.ndarray]], n: int, width: int,
                     target: _Target, counter: _Counter, run_dtype: np.dtype, watch: KinkWatch,
                     bar: Any = None) -> tuple[np.ndarray, np.ndarray, KinkStats]:
        """``n`` perturbed copies, ``make(rows)`` building the inputs of copies ``rows``
        (each ``width`` elements), in chunks: projected outputs and kink statistics."""
        chunk = self.engine.batch_size or max(1, BATCH_ELEMENTS // max(self.largest_node, width, 1))
        vals_list, mags_list, stats_list = [], [], []
        for start in range(0, n, chunk):
            sel = slice(start, min(start + chunk, n))
            out, st = self._forward_copies(arrays, make(sel), sel.stop - sel.start, run_dtype,
                                           counter, watch)
            v, a = target.project(out)
            vals_list.append(v)
            mags_list.append(a)
            stats_list.append(st)
            if bar is not None:
                bar.update(sel.stop - sel.start)
        return (np.concatenate(vals_list), np.concatenate(mags_list),
                KinkStats.concat(stats_list))

    def _forward_copies(self, arrays: dict[str, np.ndarray], copies: dict[str, np.ndarray],
                        n: int, run_dtype: np.dtype, counter: _Counter,
                        watch: KinkWatch | None = None) -> tuple[np.ndarray, KinkStats]:
        """The output for ``n`` copies of the inputs (``copies`` carry a leading axis of n):
        one batched call, or one call per copy when ``batch_size=1`` (the slow reference);
        with ``watch``, what the copies' kink coordinates did (read while the call runs)."""
        g = self.graph
        counter.evaluations += n
        stats = KinkStats.empty(n)
        imaginary = np.issubdtype(run_dtype, np.complexfloating)

        def observers(rows: slice) -> Any:
            return watch.observers(stats, rows, imaginary) if watch else None

        with np.errstate(all="ignore"):  # non-finite copies are found and reported by callers
            if self.engine.batch_size == 1:
                outs = []
                for i in range(n):
                    single = {**arrays, **{k: c[i] for k, c in copies.items()}}
                    outs.append(run_forward(g, single, keep=[self.out_node], check_finite=False,
                                            dtype=run_dtype, observe=observers(slice(i, i + 1))
                                            )[self.out_node])
                    counter.calls += 1
                return np.stack(outs), stats
            out = run_forward(g, {**arrays, **copies}, lead=1, keep=[self.out_node],
                              check_finite=False, dtype=run_dtype,
                              observe=observers(slice(0, n)))[self.out_node]
        counter.calls += 1
        # an output that does not depend on the perturbed input keeps a copy axis of size 1
        return np.broadcast_to(out, (n,) + self.out_shape), stats

    def _steps(self, name: str, shape: tuple[int, ...], x: np.ndarray, idx: np.ndarray,
               stencil: Stencil, eps: float, dtype: np.dtype, points: tuple[float, ...]
               ) -> np.ndarray:
        """The step of each selected component: the method's rule, or the user's step (a
        number or an array of the input's shape), made exact (x + h lands on h) and, for
        rule steps, a power of two. A user's step is made exact at the stencil's smallest
        point (h/8 for Richardson, h/2 with the regime check) and scaled back up by that
        power of two, so every point x + m·h is a whole number of that exact step."""
        xs = x[idx]
        user = step_for(self.engine.step, name, shape)
        if user is None:
            h = default_step(stencil, xs, eps).astype(dtype)
            if stencil.imaginary:
                return h
            return exact_step(xs, power_of_two(h))
        h = user.reshape(-1)[idx].astype(dtype)
        if not np.all(h > 0):  # positive in float64, but below the dtype's range
            k = int(np.flatnonzero(~(h > 0))[0])
            raise InputError(f"step {float(user.reshape(-1)[idx[k]]):.3g} for {name!r} at flat "
                             f"index {int(idx[k])} underflows to 0 in {np.dtype(dtype).name}")
        if stencil.imaginary:
            return h
        smallest = min((abs(m) for m in points), default=1.0)
        exact = exact_step(xs, h * smallest)
        if np.any(exact == 0):
            k = int(np.flatnonzero(exact == 0)[0])
            at = "" if smallest == 1.0 else f" (the method's smallest point is h·{smallest:g})"
            raise InputError(f"step {float(h[k]):.3g} for {name!r} at flat index {int(idx[k])} is "
                             f"below the spacing of x = {float(xs[k])!r} "
                             f"({float(np.spacing(xs[k])):.3g}){at}: x + h == x")
        return exact / smallest

    def _retry(self, run_arrays: dict[str, np.ndarray], arrays: dict[str, np.ndarray], name: str,
               j: int, h: float, points: tuple[float, ...], vals: np.ndarray, stencil: Stencil,
               target: _Target, f0: np.ndarray, a0: np.ndarray, counter: _Counter, eps: float
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Recompute component j one-sided, on the side whose points stayed finite first,
        with steps shrinking from min(h/4, eps^(1/3)·|x_j|)."""
        x = arrays[name].ravel()
        where = f"{name}{[int(i) for i in np.unravel_index(j, arrays[name].shape)]}"
        finite = np.isfinite(vals).reshape(len(points), -1).all(axis=1)
        bad_offsets = [float(m) for m, ok in zip(points, finite) if not ok]
        report: dict[str, Any] = {"input": name, "index": j, "step": h, "offsets": bad_offsets}
        message = (f"numeric {stencil.name}: perturbing {where} = {float(x[j])!r} by "
                   f"{', '.join(f'{m * h:+.3g}' for m in bad_offsets)} gave a non-finite output")
        if stencil.imaginary:
            raise NonFiniteError(message + "; the complex step cannot be retried one-sided "
                                 "(try method='central')")
        bad_sides = {np.sign(m) for m in bad_offsets}
        sides = [s for s in (1.0, -1.0) if s not in bad_sides] + [s for s in (1.0, -1.0)
                                                                   if s in bad_sides]
        start = min(abs(h) / 4, eps ** (1 / 3) * abs(float(x[j]))) if x[j] != 0 else abs(h) / 4
        tried = []
        for side in sides:
            trial = start
            for _ in range(RETRIES):
                step = float(exact_step(x[j], side * power_of_two(np.asarray(trial))))
                trial /= 16
                if step == 0:
                    break
                tried.append(step)
                copies = np.repeat(run_arrays[name].ravel()[None, :], 2, axis=0)
                copies[:, j] += np.array([step, 2 * step])
                out, _ = self._forward_copies(run_arrays,
                                              {name: copies.reshape((2,) + arrays[name].shape)},
                                              2, copies.dtype, counter)
                v, a = target.project(out)
                if np.all(np.isfinite(v)):
                    d, err = one_sided_second_order(f0, v[0], v[1], np.asarray(step), (a0, a[0], a[1]),
                                                    eps)
                    report.update(retried_step=step)
                    warnings.warn(f"{message}; retried one-sided with step {step:+.3g}",
                                  NonFiniteStepWarning, stacklevel=5)
                    return d, err, report
        raise NonFiniteError(f"{message}; one-sided retries with steps "
                             f"{', '.join(f'{s:+.3g}' for s in tried)} were not finite either")

    def _regime_report(self, name: str, x: np.ndarray, idx: np.ndarray, h: np.ndarray,
                       check: RegimeCheck, flagged: np.ndarray, stencil: Stencil
                       ) -> dict[str, Any]:
        """What a :class:`StepSizeWarning` says about one input: the first flagged
        component, how many there are, and the changes the regime check saw."""
        k = int(np.flatnonzero(flagged)[0])
        where = f"{name}{[int(i) for i in np.unravel_index(int(idx[k]), x.shape)]}"
        small = float(np.max(check.change_small.reshape(len(idx), -1)[k]))
        large = float(np.max(check.change_large.reshape(len(idx), -1)[k]))
        n = int(flagged.sum())
        more = f" (and {n - 1} more of its {len(idx)} components)" if n > 1 else ""
        x_k = float(x.ravel()[int(idx[k])].real)
        scale = bool(np.all(check.beyond_scale.reshape(len(idx), -1)[k]))
        why = _regime_why(stencil, scale, small, large,
                          f"the scale of x, max(|x|, 1) = {max(abs(x_k), 1.0):.3g}")
        message = (f"numeric {stencil.name}: step {float(h[k]):.3g} for {where} = {x_k:.6g}"
                   f"{more} is beyond the region where the error estimate holds: {why}")
        return {"input": name, "index": int(idx[k]), "step": float(h[k]), "components": n,
                "change_small": small, "change_large": large, "message": message}

    def _warn_kinks(self, kinked: list[dict[str, Any]], stencil: Stencil) -> list[str]:
        """One :class:`KinkWarning` per op node where a component sits on a kink it is not
        differentiable at, or straddles kinks no step could avoid; returns those nodes."""
        by_node: dict[Any, list[dict[str, Any]]] = {}
        for r in kinked:
            if not r["differentiable"]:
                by_node.setdefault(r["node"], []).append(r)
        found = []
        for node, records in by_node.items():
            where = self.graph.describe(node) if node is not None else "an op with a kink"
            found.append(where)
            r = records[0]
            first = f"{r['input']}{list(r['index'])}"
            more = f" (and {len(records) - 1} more components)" if len(records) > 1 else ""
            if r["kind"] == "on_kink" and "one_sided" in r and r["one_sided"][0] is not None:
                left, right = r["one_sided"]
                what = (f"sits on a kink of {where}, where it is not differentiable: the "
                        f"one-sided derivatives are {left:.6g} (x − h) and {right:.6g} (x + h)")
            elif r["kind"] == "on_kink":
                what = f"sits on a kink of {where}, where it is not differentiable"
            else:
                what = f"has kinks of {where} on both sides, closer than any step tried"
            warnings.warn(f"numeric {stencil.name}: {first}{more} {what}; reported: "
                          f"{r['resolution']} (details in result.info['kink_components'])",
                          KinkWarning, stacklevel=4)
        return found

    def _check_complex_safe(self, path: Iterable[int]) -> None:
        """Refuse the complex step through an op that is not marked complex-safe."""
        for v in path:
            d = self.graph.node(v)
            if d["role"] == "op" and not OPS[d["op"]].complex_safe:
                raise NotDifferentiableError(
                    f"the complex step needs every op between the inputs and the output to be "
                    f"complex-safe (real-analytic); {self.graph.describe(v)} is not (op "
                    f"{d['op']!r}: its op-table entry has complex_safe=False, so evaluated on complex "
                    "numbers it need not give Im f(x+ih)/h)."
                    " Use method='central', 'five_point' or 'richardson' instead")

    def _check_direction(self, direction: Mapping[str, Any], arrays: dict[str, np.ndarray],
                         dtype: np.dtype) -> dict[str, np.ndarray]:
        if not isinstance(direction, Mapping):
            raise InputError("direction must be a dict {input name: array of that input's shape}")
        check_step_names(self.graph, self.engine.step)
        out = {}
        for name, v in direction.items():
            if name not in self.graph.inputs:
                raise InputError(f"direction names {name!r}, which is not an input of the graph "
                                 f"(inputs: {', '.join(self.graph.inputs)})")
            v = np.asarray(v, dtype=dtype)
            if v.shape != arrays[name].shape:
                raise InputError(f"direction for {name!r} has shape {v.shape}; the input has "
                                 f"shape {arrays[name].shape}")
            if not np.all(np.isfinite(v)):
                raise NonFiniteError(f"direction for {name!r} has NaN or Inf")
            out[name] = v
        return out

    def _direction_step(self, stencil: Stencil, arrays: dict[str, np.ndarray],
                        dirs: dict[str, np.ndarray], v_max: float, eps: float
                        ) -> tuple[float, bool]:
        """t for x + t·v, and whether a user's step set it. The method's rule moves the
        largest coordinate by its step; with user steps (per input, per element) t is the
        largest for which no coordinate moves by more than its own step."""
        if stencil.imaginary:
            t_rule = COMPLEX_STEP / v_max
        else:
            x_max = max(float(np.max(np.abs(arrays[n][v != 0]), initial=0.0))
                        for n, v in dirs.items())
            t_rule = float(power_of_two(np.asarray(eps ** stencil.step_power * max(x_max, 1.0)
                                                   / v_max)))
        ts, user_given = [], False
        for name, v in dirs.items():
            moving = v != 0
            if not moving.any():
                continue
            h = step_for(self.engine.step, name, arrays[name].shape)
            if h is None:
                ts.append(t_rule)
            else:
                user_given = True
                ts.append(float(np.min(h[moving] / np.abs(v[moving]))))
        return (min(ts), True) if user_given else (t_rule, False)

    def _limit_message(self, comps: dict[str, np.ndarray], points: dict[str, tuple[float, ...]],
                       needed: int) -> str:
        sizes = ", ".join(f"{n} ({len(i)})" for n, i in comps.items())
        counts = sorted({len(points[n]) for n in comps})
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        return (f"the numeric gradient of {self.output!r} with respect to {sizes} needs "
                f"{needed:,} forward evaluations with method {self.stencil.name!r} "
                f"({per} per coordinate + 1), more than max_evaluations="
                f"{self.engine.max_evaluations:,}. Stopped before evaluating. Raise the limit "
                f"(adl.engine('numeric', max_evaluations={needed})), use estimate_error=False "
                "for fewer points, or check cheaply with program.directional(values, v) or "
                "program.check_subset(values, n)")


class NumericEngine(Engine):
    """Finite differences with ``method`` in forward, backward, central, five_point,
    richardson, complex.

    ``step``: None for each method's rule (eps^(1/2), eps^(1/3), eps^(1/5), eps^(1/7) times
    max(|x|, 1) for forward/backward, central, five-point, Richardson's first step; 1e-20 for
    the complex step), or a step in x's units: a number (every component of every input),
    an array of steps per element (broadcast to the shape of each differentiated input,
    so it suits one input) or a dict {input name: None, number or array broadcasting to that
    input's shape} (inputs left out use the rule). Every step must be positive and finite
    (an :class:`~autodiff_lab.errors.InputError` names the value otherwise); a step below the
    spacing of x (x + h == x) is refused. ``program.directional`` moves x + t·v with the
    largest t that moves no coordinate by more than its step.
    ``estimate_error``: also evaluate the points the error estimate needs (Richardson always
    has one). With a user's step the estimate also evaluates the formula at h/2 (2 more
    points per coordinate for central, 1 for forward, backward and complex, 2 for
    five-point, none for Richardson): the estimate becomes the larger of the (h, 2h) and
    (h/2, h) truncation estimates, and a :class:`StepSizeWarning` says when the three
    steps show that the step is beyond the region where any such estimate holds.
    ``batch_size``: copies per forward call (None: as many as fit in memory; 1: one
    call per copy, the slow reference). ``max_evaluations``: refuse bigger gradients up front.
    ``progress``: tqdm bar (None: from 5000 evaluations on).
    ``kinks``: watch the kink coordinates of relu, abs, max, max pooling … at every stencil
    point and recompute one-sided the components whose stencil straddles a kink (see
    :mod:`~autodiff_lab.engines.numeric_kinks`); ``False`` gives the plain formulas, for
    comparison.
    """

    name = "numeric"

    def __init__(self, method: str = "central", step: Any = None, *, estimate_error: bool = True,
                 batch_size: int | None = None, max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
                 progress: bool | None = None, kinks: bool = True) -> None:
        _stencil(method)
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.method = method
        self.step = check_step(step)
        self.estimate_error = estimate_error
        self.batch_size = batch_size
        self.max_evaluations = int(max_evaluations)
        self.progress = progress
        self.kinks = bool(kinks)

    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> NumericProgram:
        output = resolve_output(graph, output)
        return NumericProgram(graph, resolve_wrt(graph, wrt), output, self)


def jacobian(graph: Graph, values: Mapping[str, Any], wrt: Iterable[str] | None = None,
             output: str | None = None, **options: Any) -> GradientResult:
    """Finite-difference Jacobian blocks (output × input layout) in one call."""
    return NumericEngine(**options).compile(graph, wrt=wrt, output=output).jacobian(values)


# --- helpers --------------------------------------------------------------------------------

def _stencil(method: str) -> Stencil:
    if method not in STENCILS:
        raise InputError(f"unknown numeric method {method!r}; choose one of {', '.join(METHODS)}")
    return STENCILS[method]


def _regime_why(stencil: Stencil, beyond_scale: bool, small: float, large: float,
                scale: str) -> str:
    """Why a step failed the regime check, for a :class:`StepSizeWarning`."""
    if beyond_scale:
        why = (f"it is larger than {scale}, and no samples can show that f does not vary "
               "faster than that")
    else:
        p = stencil.weights_order or stencil.order
        lo, mid, hi = stencil.regime_levels
        why = (f"the formula at steps {lo:g}h, {mid:g}h and {hi:g}h changed by {small:.3g} and "
               f"then {large:.3g}: halving the step should shrink the change about "
               f"{2 ** p}-fold (order {p}), and the curvature should grow with the step")
    return (why + ". The estimate is only a guess there; use a smaller step (step=None picks "
            "the method's rule)")


def check_step_names(graph: Graph, step: Any) -> None:
    """A step dict may only name inputs of the graph."""
    if isinstance(step, Mapping):
        unknown = [n for n in step if n not in graph.inputs]
        if unknown:
            raise InputError(f"numeric step given for {', '.join(map(repr, unknown))}, which the "
                             f"graph does not have; its inputs are: {', '.join(graph.inputs)}")


def _scalar(a: np.ndarray) -> float | None:
    """A one-element array as a float (None for a Jacobian's blocks)."""
    return float(a) if np.size(a) == 1 else None


def _complex_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.complex64 if dtype == np.float32 else np.complex128)


def _cast_floats(graph: Graph, arrays: dict[str, np.ndarray], dtype: np.dtype
                 ) -> dict[str, np.ndarray]:
    """Float inputs in the run's dtype (complex for the complex step); labels stay integer."""
    if not np.issubdtype(dtype, np.complexfloating):
        return arrays
    return {n: a.astype(dtype) if a.dtype.kind == "f" else a for n, a in arrays.items()}


__all__ = ["EvaluationLimitError", "KinkWarning", "NonFiniteStepWarning", "NumericEngine",
           "NumericProgram", "StepSizeWarning", "SubsetCheck", "jacobian"]
