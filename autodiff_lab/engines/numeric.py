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
from a second step plus a round-off bound). Bad input is handled the way a careful person
would: points where an op has a kink give a :class:`KinkWarning` naming the op, a perturbed
evaluation that leaves f's domain is reported (:class:`NonFiniteStepWarning`) and retried
one-sided with a smaller step, a step the user gives that is beyond the region where the
estimate holds gives a :class:`StepSizeWarning` (see :func:`numeric_steps.regime_check`), and
a gradient that would take more evaluations than ``max_evaluations`` is refused up front,
saying how many it needs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from autodiff_lab.engines.base import (
    Engine,
    GradientResult,
    Program,
    resolve_output,
    resolve_seed,
    resolve_wrt,
)
from autodiff_lab.engines.numeric_steps import (
    COMPLEX_STEP,
    METHODS,
    STENCILS,
    RegimeCheck,
    Stencil,
    check_step,
    default_step,
    exact_step,
    one_sided_second_order,
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
    calls: int = 0


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
        self.path = _path_nodes(graph, [graph.inputs[n] for n in wrt], self.out_node)
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
        ``f(x + t·v)`` at the method's offsets: 2 evaluations with central differences.

        With ``return_error=True`` also an error estimate (which costs the estimate's
        extra points). Details of the last call are in ``program.last_directional``.
        """
        stencil = _stencil(method or self.engine.method)
        g = self.graph
        arrays = check_values(g, values)
        dtype = working_dtype(g, arrays)
        eps = float(np.finfo(dtype).eps)
        dirs = self._check_direction(direction, arrays, dtype)
        path = _path_nodes(g, [g.inputs[n] for n in dirs], self.out_node)
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
        out = self._forward_copies(base_arrays, copies, len(offsets), run_dtype, counter)
        vals, mags = target.project(out)
        if not np.all(np.isfinite(vals)):
            bad = [m for m, ok in zip(offsets, np.isfinite(vals)) if not ok]
            raise NonFiniteError(f"directional derivative: f(x + m·t·v) is not finite for "
                                 f"m = {bad} (t = {t:.3g}); the step leaves f's domain, try "
                                 "a smaller step=... or a one-sided method")
        f = {m: vals[i] for i, m in enumerate(offsets)}
        a = {m: mags[i] for i, m in enumerate(offsets)}
        if stencil.needs_base or regime:
            base = run_forward(g, arrays, keep=[self.out_node])[self.out_node]
            counter.evaluations += 1
            b_val, b_mag = target.project(base[None])
            f[0.0], a[0.0] = b_val[0], b_mag[0]
        t_arr = np.asarray(t, dtype=dtype)
        d, err = stencil.combine(f, a, t_arr, eps, return_error)
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
                                 "method": stencil.name, "step_warning": suspect}
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
        return SubsetCheck(entries, info["evaluations"], stencil.name)

    # --- the machinery --------------------------------------------------------------------
    def _run(self, arrays: dict[str, np.ndarray], comps: dict[str, np.ndarray], target: _Target,
             stencil: Stencil, force_estimate: bool = False
             ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray | None]], dict]:
        """Base evaluation, kink check, then every component's derivative and estimate."""
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
        kinks = self._warn_kinks(base)
        base_val, base_mag = target.project(base[self.out_node][None])
        run_dtype = _complex_dtype(dtype) if stencil.imaginary else dtype
        run_arrays = _cast_floats(g, arrays, run_dtype)
        steps: dict[str, np.ndarray] = {}
        parts: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        nonfinite: list[dict[str, Any]] = []
        suspects: list[dict[str, Any]] = []
        total = needed - 1
        show = eng.progress if eng.progress is not None else total >= PROGRESS_THRESHOLD
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
                vals, mags = self._perturbed(run_arrays, name, idx, h, points[name], stencil,
                                             target, counter, bar, run_dtype)
                parts[name] = self._combine(run_arrays, arrays, name, idx, h, points[name], vals,
                                            mags, (base_val[0], base_mag[0]), stencil, target,
                                            counter, estimate, eps, nonfinite,
                                            suspects if regime[name] else None)
        for report in suspects:
            warnings.warn(report.pop("message"), StepSizeWarning, stacklevel=3)
        info = {
            "method": stencil.name, "steps": steps, "evaluations": counter.evaluations,
            "evaluations_for_estimate": counter.estimate_evaluations,
            "forward_calls": counter.calls, "kinks": kinks, "nonfinite": nonfinite,
            "step_warnings": suspects, "seconds": time.perf_counter() - started,
            "outputs": {n: base[v] for n, v in g.outputs.items()},
        }
        return base[self.out_node], parts, info

    def _combine(self, run_arrays: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
                 name: str, idx: np.ndarray, h: np.ndarray, points: tuple[float, ...],
                 vals: np.ndarray, mags: np.ndarray, base: tuple[np.ndarray, np.ndarray],
                 stencil: Stencil, target: _Target, counter: _Counter, estimate: bool,
                 eps: float, nonfinite: list[dict[str, Any]],
                 suspects: list[dict[str, Any]] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """The formula applied to one input's perturbed values; components whose points
        were not finite are recomputed one-sided (and reported in ``nonfinite``). With
        ``suspects`` (a user's step), the regime check widens the estimate to the change
        seen between h/2 and h and reports components beyond the estimate's region."""
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
        if check is not None:
            if stencil.regime_bounds:
                err = np.maximum(err, check.estimate)
            flagged = check.suspect.reshape(len(idx), -1).any(axis=1) & ~bad
            if flagged.any():
                suspects.append(self._regime_report(name, arrays[name], idx, h, check, flagged,
                                                    stencil))
        if not bad.any():
            return d, err
        d, err = np.array(d), None if err is None else np.array(err)
        for k in np.flatnonzero(bad):
            d[k], e_k, report = self._retry(run_arrays, arrays, name, int(idx[k]), float(h[k]),
                                            points, vals[:, k], stencil, target, base[0],
                                            base[1], counter, eps)
            if err is not None:
                err[k] = e_k
            nonfinite.append(report)
        return d, err

    def _perturbed(self, arrays: dict[str, np.ndarray], name: str, idx: np.ndarray,
                   h: np.ndarray, points: tuple[float, ...], stencil: Stencil, target: _Target,
                   counter: _Counter, bar: Any, run_dtype: np.dtype
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Projected f(x + m·h_j·e_j) for every offset m and component j: arrays of shape
        (len(points), len(idx), *tail), evaluated in chunks of copies."""
        x = arrays[name].ravel()
        shape = arrays[name].shape
        offsets = np.array(points)
        n_points = len(idx) * len(points)
        # point p is component p // len(points) at offset points[p % len(points)]
        comp_of = np.repeat(np.arange(len(idx)), len(points))
        off_of = np.tile(offsets, len(idx))
        chunk = self.engine.batch_size or max(1, BATCH_ELEMENTS // max(self.largest_node, x.size, 1))
        vals_list, mags_list = [], []
        for start in range(0, n_points, chunk):
            sel = slice(start, min(start + chunk, n_points))
            cj, m = comp_of[sel], off_of[sel]
            shift = m * h[cj]
            copies = np.repeat(x[None, :], len(cj), axis=0)
            copies[np.arange(len(cj)), idx[cj]] += 1j * shift if stencil.imaginary else shift
            out = self._forward_copies(arrays, {name: copies.reshape((len(cj),) + shape)},
                                       len(cj), run_dtype, counter)
            v, a = target.project(out)
            vals_list.append(v)
            mags_list.append(a)
            bar.update(len(cj))
        est = set(points) - set(stencil.offsets)
        counter.estimate_evaluations += int(sum(1 for m in off_of if m in est))
        vals = np.concatenate(vals_list).reshape((len(idx), len(points)) + vals_list[0].shape[1:])
        mags = np.concatenate(mags_list).reshape(vals.shape)
        return np.moveaxis(vals, 1, 0), np.moveaxis(mags, 1, 0)

    def _forward_copies(self, arrays: dict[str, np.ndarray], copies: dict[str, np.ndarray],
                        n: int, run_dtype: np.dtype, counter: _Counter) -> np.ndarray:
        """The output for ``n`` copies of the inputs (``copies`` carry a leading axis of n):
        one batched call, or one call per copy when ``batch_size=1`` (the slow reference)."""
        g = self.graph
        counter.evaluations += n
        with np.errstate(all="ignore"):  # non-finite copies are found and reported by callers
            if self.engine.batch_size == 1:
                outs = []
                for i in range(n):
                    single = {**arrays, **{k: c[i] for k, c in copies.items()}}
                    outs.append(run_forward(g, single, keep=[self.out_node], check_finite=False,
                                            dtype=run_dtype)[self.out_node])
                    counter.calls += 1
                return np.stack(outs)
            out = run_forward(g, {**arrays, **copies}, lead=1, keep=[self.out_node],
                              check_finite=False, dtype=run_dtype)[self.out_node]
        counter.calls += 1
        # an output that does not depend on the perturbed input keeps a copy axis of size 1
        return np.broadcast_to(out, (n,) + self.out_shape)

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
                out = self._forward_copies(run_arrays,
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

    def _warn_kinks(self, base: dict[int, np.ndarray]) -> list[str]:
        """Warn once per op on the differentiation path whose inputs sit on a kink."""
        found = []
        for v in self.kink_nodes:
            d = self.graph.node(v)
            op = OPS[d["op"]]
            if op.kink(*(base[u] for u in self.graph.operands(v)), **d["attrs"]):
                where = self.graph.describe(v)
                found.append(where)
                warnings.warn(f"{where}: its inputs sit on a kink (a non-differentiable point, "
                              f"e.g. relu or abs at 0, or a tie of a max); finite differences "
                              "there straddle two slopes and will not match the engines' "
                              "one-sided convention", KinkWarning, stacklevel=4)
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
    """

    name = "numeric"

    def __init__(self, method: str = "central", step: Any = None, *, estimate_error: bool = True,
                 batch_size: int | None = None, max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
                 progress: bool | None = None) -> None:
        _stencil(method)
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.method = method
        self.step = check_step(step)
        self.estimate_error = estimate_error
        self.batch_size = batch_size
        self.max_evaluations = int(max_evaluations)
        self.progress = progress

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


def _path_nodes(graph: Graph, sources: list[int], target: int) -> list[int]:
    """Nodes on a path from one of ``sources`` to ``target``, in graph order."""
    downstream = set(sources)
    for v in graph.order:
        if any(u in downstream for u in graph.operands(v)):
            downstream.add(v)
    upstream = {target}
    for v in reversed(graph.order):
        if v in upstream:
            upstream.update(graph.operands(v))
    return [v for v in graph.order if v in downstream and v in upstream]


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
