"""How the cost of one gradient grows with the number of parameters, per engine.

:func:`scaling` builds a family of graphs (MLP widths, DnCNN depths ...), and for each member
times one gradient per engine, next to one forward pass, and measures its peak memory.
Finite differences cost one or more forward passes per parameter, so their time per
gradient grows like parameters × forward; reverse mode (tape) and the matrix-level symbolic
engine stay a small multiple of the forward; the expanded symbolic engine is refused at its
size guard (the rows keep the operations it would need). Finite differences projected over
the time budget are not run: their rows keep the projected time (``status="projected"``).
:meth:`ScalingResult.slopes` fits log(time) against log(parameters) per engine.

Times here are the fastest of the repeated calls (and of the forward passes): on a shared
machine the fastest call is the one least disturbed by other processes, so the trend with
size shows through the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autodiff_lab.compare.harness import EngineConfig, parameter_count, parse_engines
from autodiff_lab.compare.measure import default_wrt, forward_time, run_engine
from autodiff_lab.compare.results import ResultTable
from autodiff_lab.errors import InputError
from autodiff_lab.examples import Example

#: the engines a scaling study runs by default (one finite-difference method stands for all)
SCALING_ENGINES = "tape,symbolic-matrix,symbolic-expanded,numeric-central"


@dataclass
class ScalingPoint:
    """One engine on one member of the family."""

    size: int
    engine: str
    label: str
    #: ok (measured), projected (refused over the time budget: time projected), refused
    status: str
    parameters: int
    call_s: float | None = None
    forward_s: float | None = None
    per_forward: float | None = None
    memory_bytes: int | None = None
    evaluations: int | None = None
    note: str = ""
    refused_value: float | None = None
    refused_limit: float | None = None
    refused_unit: str = ""


@dataclass
class ScalingResult(ResultTable):
    """Time and memory per gradient over a family of graphs."""

    ROW = ScalingPoint
    family: str
    rows: list[ScalingPoint]
    #: what ``size`` counts (hidden units, convolution layers ...)
    size_name: str = "size"
    description: str = ""
    notes: list[str] = field(default_factory=list)

    def engines(self) -> list[str]:
        return list(dict.fromkeys(r.engine for r in self.rows))

    def label(self, engine: str) -> str:
        return next(r.label for r in self.rows if r.engine == engine)

    def slopes(self, what: str = "call_s") -> dict[str, float]:
        """Least-squares slope of log(``what``) against log(parameters), per engine, over the
        measured points (at least two); ``"forward"`` for the forward pass."""
        out: dict[str, float] = {}
        for engine in self.engines() + ["forward"]:
            pts = [(r.parameters, r.forward_s if engine == "forward" else getattr(r, what))
                   for r in self.rows if r.status == "ok"
                   and (engine == "forward" or r.engine == engine)]
            pts = list({p: v for p, v in pts if v and v > 0}.items())
            if len(pts) >= 2 and len({p for p, _ in pts}) >= 2:
                x = np.log([p for p, _ in pts])
                y = np.log([v for _, v in pts])
                out[engine] = float(np.polyfit(x, y, 1)[0])
        return out

    def table(self) -> str:
        """A text table: one line per member, one column per engine (ms per gradient)."""
        engines = self.engines()
        sizes = sorted({r.size for r in self.rows})
        head = f"{self.size_name:>14} {'parameters':>11} {'forward ms':>11} " + " ".join(
            f"{self.label(e)[:20]:>20}" for e in engines)
        lines = [head, "-" * len(head)]
        for s in sizes:
            rows = {r.engine: r for r in self.rows if r.size == s}
            any_row = next(iter(rows.values()))
            cells = []
            for e in engines:
                r = rows.get(e)
                if r is None:
                    cells.append(f"{'—':>20}")
                elif r.status == "ok":
                    cells.append(f"{r.call_s * 1e3:>20.3g}")
                elif r.status == "projected":
                    cells.append(f"{'~' + format(r.call_s * 1e3, '.3g') + ' (not run)':>20}")
                else:
                    cells.append(f"{'refused':>20}")
            fwd = any_row.forward_s * 1e3 if any_row.forward_s else float("nan")
            lines.append(f"{s:>14} {any_row.parameters:>11,} {fwd:>11.3g} " + " ".join(cells))
        slopes = self.slopes()
        if slopes:
            lines.append("slopes of log(time) against log(parameters): " + ", ".join(
                f"{'forward pass' if e == 'forward' else self.label(e)} {v:.2f}"
                for e, v in slopes.items()))
        return "\n".join(lines)


def scaling(build: Callable[[int], Example], sizes: Iterable[int], *,
            engines: str | Iterable[str | EngineConfig] | None = SCALING_ENGINES,
            family: str = "family", size_name: str = "size", description: str = "",
            budget_s: float = 10.0, timing_s: float = 0.2, memory: bool = True,
            progress: Callable[[str], None] | None = None,
            wrt: Callable[[Example], Sequence[str]] | None = None) -> ScalingResult:
    """Time (and memory) per gradient of each engine on ``build(size)`` for every size."""
    sizes = list(sizes)
    if not sizes:
        raise InputError("scaling needs at least one size")
    if budget_s <= 0 or not math.isfinite(budget_s):
        raise InputError(f"budget_s must be a positive number of seconds, got {budget_s}")
    configs = parse_engines(engines)
    rows: list[ScalingPoint] = []
    for size in sizes:
        ex = build(size)
        names = list(wrt(ex)) if wrt else default_wrt(ex.graph)
        params = parameter_count(ex.graph, names)
        fwd = forward_time(ex.graph, ex.values, timing_s, fastest=True)
        for config in configs:
            if progress:
                progress(f"{family} {size_name} {size}: {config.title}")
            _, spd = run_engine(ex.graph, ex.values, names, config, None, fwd,
                                budget_s=budget_s, timing_s=timing_s, memory=memory, sample=8)
            status = spd.status
            if status == "refused" and spd.projected:
                status = "projected"
            call = spd.call_min_s if spd.call_min_s is not None else spd.call_s
            rows.append(ScalingPoint(size, spd.engine, spd.label, status, params, call,
                                     fwd, call / fwd if call and fwd else None,
                                     spd.memory_bytes, spd.evaluations,
                                     spd.note, spd.refused_value, spd.refused_limit,
                                     spd.refused_unit))
    return ScalingResult(family, rows, size_name, description)


def mlp_family(hidden: Sequence[int], *, batch: int = 16, side: int = 14) -> tuple[
        Callable[[int], Example], list[int]]:
    """The inpainting MLP at several widths (``side``² inputs and outputs, real digits)."""
    from autodiff_lab.examples import inpainting
    return (lambda h: inpainting(hidden=h, batch=batch, side=side)), list(hidden)


def dncnn_family(depths: Sequence[int], *, channels: int = 8, batch: int = 2,
                 size: int = 16) -> tuple[Callable[[int], Example], list[int]]:
    """The DnCNN-style denoiser at several depths (number of 3×3 convolutions)."""
    from autodiff_lab.examples import denoiser
    return (lambda d: denoiser(depth=d, channels=channels, batch=batch, size=size)), list(depths)
