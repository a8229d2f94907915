"""The error of every finite-difference method as the step h goes from 1e-1 to 1e-16.

The classic picture of numerical differentiation: on a log-log plot the error falls with h
(truncation, slope = the method's order) until round-off takes over and it rises again as
eps/h, a V whose bottom is where the default step rules aim. The complex step has no
subtraction, so its line stays flat at machine precision all the way down.

``step_sweep`` measures it against a reference (the exact derivative when given, else the
tape engine), together with each method's own error estimate, so the table shows whether
the estimates can be trusted; ``plot_step_sweep`` draws the V.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.engines import gradient
from autodiff_lab.engines.base import GradientResult
from autodiff_lab.engines.numeric import NumericEngine
from autodiff_lab.engines.numeric_steps import METHODS
from autodiff_lab.errors import InputError, NonFiniteError
from autodiff_lab.graph.graph import Graph

DEFAULT_STEPS = np.logspace(-1, -16, 16)


@dataclass
class SweepResult:
    """Relative errors (measured and estimated) of each method at each step."""

    name: str
    steps: np.ndarray
    methods: tuple[str, ...]
    #: max-norm relative error ‖g − ref‖∞ / ‖ref‖∞ per step (NaN: the step was unusable)
    errors: dict[str, np.ndarray]
    #: the method's own error estimate, relative in the same norm
    estimates: dict[str, np.ndarray]
    #: at the default step of each method: step, evaluations, error, estimate
    default: dict[str, dict[str, float]]
    reference: str
    eps: float = float(np.finfo(np.float64).eps)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Measured relative error with the method's estimate in brackets, one row per h."""
        width = 20
        head = f"{'h':>8}  " + "".join(f"{m:<{width}}" for m in self.methods)
        lines = [f"step sweep: {self.name} (reference: {self.reference}); relative error "
                 "measured [estimated]", head]
        for i, h in enumerate(self.steps):
            cells = [_cell(self.errors[m][i], self.estimates[m][i]) for m in self.methods]
            lines.append(f"{h:8.0e}  " + "".join(f"{c:<{width}}" for c in cells))
        return "\n".join(lines + self.notes)

    def summary(self) -> str:
        """The default steps: step, cost, measured error and estimate per method."""
        lines = [f"default steps: {self.name} (reference: {self.reference})",
                 f"{'method':<12}{'step':>10}{'evals':>8}{'rel. error':>12}{'estimate':>12}"]
        for m in self.methods:
            d = self.default[m]
            lines.append(f"{m:<12}{d['step']:>10.2e}{int(d['evaluations']):>8d}"
                         f"{d['error']:>12.1e}{d['estimate']:>12.1e}")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (method, step): the table's cells, NaN for unusable steps."""
        return [{"method": m, "step": float(h), "error": float(self.errors[m][i]),
                 "estimate": float(self.estimates[m][i])}
                for m in self.methods for i, h in enumerate(self.steps)]

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON types (arrays as lists, NaN as the string "nan")."""
        from autodiff_lab.compare.results import _jsonable
        return _jsonable({"name": self.name, "steps": list(map(float, self.steps)),
                          "methods": list(self.methods),
                          "errors": {m: list(map(float, v)) for m, v in self.errors.items()},
                          "estimates": {m: list(map(float, v)) for m, v in self.estimates.items()},
                          "default": self.default, "reference": self.reference, "eps": self.eps,
                          "notes": self.notes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepResult:
        """The inverse of :meth:`to_dict`."""
        def arr(v: Any) -> np.ndarray:
            return np.array([float(x) for x in v])
        return cls(data["name"], arr(data["steps"]), tuple(data["methods"]),
                   {m: arr(v) for m, v in data["errors"].items()},
                   {m: arr(v) for m, v in data["estimates"].items()},
                   {m: {k: float(x) for k, x in d.items()} for m, d in data["default"].items()},
                   data["reference"], float(data["eps"]), list(data.get("notes", [])))

    def save_json(self, path: str | Path) -> Path:
        import json
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> SweepResult:
        import json
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save_csv(self, path: str | Path) -> Path:
        """method, step, error, estimate: one line per method and step."""
        import csv
        path = Path(path)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method", "step", "error", "estimate"])
            for r in self.rows():
                w.writerow([r["method"], repr(r["step"]), repr(r["error"]), repr(r["estimate"])])
        return path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SweepResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """Draw the error-vs-h plot (see :func:`plot_step_sweep`)."""
        return plot_step_sweep(self, path=path, ax=ax)


def _cell(err: float, est: float) -> str:
    if np.isnan(err):
        return "—"
    return f"{err:.1e} [{est:.1e}]" if np.isfinite(est) else f"{err:.1e}"


def step_sweep(graph: Graph, values: Mapping[str, Any], *,
               methods: Sequence[str] = METHODS, steps: Iterable[float] | None = None,
               exact: Mapping[str, Any] | Any = None, wrt: Iterable[str] | None = None,
               output: str | None = None, name: str = "f") -> SweepResult:
    """Errors of each method against ``exact`` (gradients by input name, or one value when
    differentiating with respect to a single input) or else the tape engine, for every
    step in ``steps`` (default 1e-1 … 1e-16) and at each method's default step."""
    steps = DEFAULT_STEPS.copy() if steps is None else np.asarray(list(steps), dtype=float)
    if exact is None:
        ref = gradient(graph, values, engine="tape", wrt=wrt, output=output).grads
        reference = "tape engine"
    else:
        names = list(wrt) if wrt is not None else None
        ref = _reference(exact, graph, names)
        reference = "exact"
    wrt = list(ref)
    ref_flat = np.concatenate([np.ravel(ref[n]) for n in wrt]).astype(float)
    scale = float(np.max(np.abs(ref_flat))) or 1.0

    def measure(engine: NumericEngine) -> tuple[float, float, GradientResult | None]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiny steps are expected to misbehave here
                r = engine.compile(graph, wrt=wrt, output=output)(values)
        except (InputError, NonFiniteError):
            return np.nan, np.nan, None
        got = np.concatenate([np.ravel(r.grads[n]) for n in wrt])
        err = float(np.max(np.abs(got - ref_flat))) / scale
        est = np.nan if r.error_estimate is None else float(
            np.max(np.concatenate([np.ravel(r.error_estimate[n]) for n in wrt]))) / scale
        return err, est, r

    errors, estimates, default = {}, {}, {}
    for m in methods:
        rows = [measure(NumericEngine(m, step=float(h), progress=False))[:2] for h in steps]
        errors[m] = np.array([r[0] for r in rows])
        estimates[m] = np.array([r[1] for r in rows])
        err, est, r = measure(NumericEngine(m, progress=False))
        step = float(np.max(np.concatenate([np.ravel(s) for s in r.info["steps"].values()])))
        default[m] = {"step": step, "evaluations": r.evaluations, "error": err, "estimate": est}
    return SweepResult(name, steps, tuple(methods), errors, estimates, default, reference)


def _reference(exact: Any, graph: Graph, names: list[str] | None) -> dict[str, np.ndarray]:
    if isinstance(exact, Mapping):
        return {n: np.asarray(v, dtype=float) for n, v in exact.items()}
    floats = names or [n for n, v in graph.inputs.items()
                       if np.dtype(graph.node(v)["dtype"]).kind == "f"]
    if len(floats) != 1:
        raise InputError(f"give exact gradients as {{input name: array}}: the graph has inputs "
                         f"{', '.join(floats)}")
    return {floats[0]: np.asarray(exact, dtype=float)}


def plot_step_sweep(result: SweepResult, path: str | Path | None = None, ax: Any = None,
                    title: str | None = None, colors: Mapping[str, str] | None = None) -> Any:
    """The V-shaped log-log plot of relative error against h, one line per method, with a
    star at each method's default step. Errors below machine precision (a complex step can
    be exact) are drawn at eps/2 so the line stays on a log axis. Returns the figure."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")  # files, not windows: also works on machines without a display
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
    floor = result.eps / 2
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(result.methods):
        color = (colors or {}).get(m) or cycle[i % len(cycle)]
        err = np.maximum(result.errors[m], floor)
        ax.loglog(result.steps, err, "o-", ms=5, lw=2, color=color, label=m)
        d = result.default[m]
        ax.loglog([d["step"]], [max(d["error"], floor)], "*", ms=18, color=color,
                  markeredgecolor="black", markeredgewidth=0.5)
    ax.axhline(result.eps, color="grey", lw=0.8, ls=":")
    ax.text(result.steps.max(), result.eps * 1.6, "machine epsilon", ha="right", va="bottom",
            color="grey")
    ax.set_xlabel("step h")
    ax.set_ylabel("relative error")
    ax.set_title(title or f"{result.name} (reference: {result.reference})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="★ default step")
    fig = fig or ax.figure
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
