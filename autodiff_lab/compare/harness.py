"""Run several engines on one graph and measure them side by side.

Accuracy is the norm-wise relative error ``‖g − g_ref‖∞ / ‖g_ref‖∞`` over all wanted
inputs together; cost is compile time, the first call (which includes any JIT work) and
the median of warm calls, plus the forward evaluations each gradient needed. An engine that
refuses a graph (the symbolic size guard, the complex step on a non-analytic op) is a
result worth showing, not a crash: its row records the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.engines import engine as make_engine
from autodiff_lab.errors import AutodiffError
from autodiff_lab.graph.graph import Graph


@dataclass(frozen=True)
class EngineConfig:
    """An engine name, its options and the label the report shows."""

    engine: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        extra = ", ".join(f"{v}" for v in self.options.values())
        return f"{self.engine} ({extra})" if extra else self.engine


#: the configurations the comparison report runs by default
DEFAULT_CONFIGS: tuple[EngineConfig, ...] = (
    EngineConfig("tape", label="tape (reverse mode)"),
    EngineConfig("symbolic", {"mode": "expanded"}, "symbolic expanded"),
    EngineConfig("symbolic", {"mode": "matrix"}, "symbolic matrix"),
    # the report shows its own progress, so no bar per repeated timing call
    EngineConfig("numeric", {"method": "forward", "progress": False}, "numeric forward"),
    EngineConfig("numeric", {"method": "central", "progress": False}, "numeric central"),
    EngineConfig("numeric", {"method": "five_point", "progress": False}, "numeric five-point"),
    EngineConfig("numeric", {"method": "richardson", "progress": False}, "numeric Richardson"),
    EngineConfig("numeric", {"method": "complex", "progress": False}, "numeric complex step"),
)


@dataclass
class Row:
    """One engine on one example."""

    example: str
    engine: str
    ok: bool
    value: float | None = None
    rel_error: float | None = None
    #: the engine's own error estimate, relative like ``rel_error`` (numeric methods)
    est_error: float | None = None
    compile_s: float | None = None
    first_call_ms: float | None = None
    warm_call_ms: float | None = None
    evaluations: int | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inf_norm(arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float:
    items = arrays.values() if isinstance(arrays, Mapping) else arrays
    return max((float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0)) for a in items),
               default=0.0)


def rel_error(grads: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """‖g − g_ref‖∞ / ‖g_ref‖∞ over every input together."""
    diff = _inf_norm([np.asarray(grads[k], dtype=np.float64) - np.asarray(reference[k], dtype=np.float64)
                      for k in reference])
    scale = _inf_norm(reference)
    return diff / scale if scale > 0 else diff


def time_calls(fn: Callable[[], Any], *, min_repeats: int = 3, budget_s: float = 0.5) -> float:
    """Median seconds of ``fn()`` over at least ``min_repeats`` calls (more while cheap)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget_s and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_config(name: str, graph: Graph, values: Mapping[str, np.ndarray], config: EngineConfig,
               reference: Mapping[str, np.ndarray] | None, wrt: Sequence[str] | None = None,
               budget_s: float = 0.5) -> Row:
    """Compile and run one engine configuration; errors of ours become a 'refused' row."""
    try:
        t0 = time.perf_counter()
        program = make_engine(config.engine, **config.options).compile(graph, wrt=wrt)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = program(values)
        first = time.perf_counter() - t0
        warm = time_calls(lambda: program(values), budget_s=budget_s) if first < 2.0 else first
    except (AutodiffError, NotImplementedError) as exc:
        return Row(name, config.title, ok=False, note=" ".join(str(exc).split()))
    err = rel_error(result.grads, reference) if reference is not None else None
    est = None
    if result.error_estimate is not None and reference is not None and _inf_norm(reference) > 0:
        est = _inf_norm([result.error_estimate[k] for k in reference]) / _inf_norm(reference)
    return Row(name, config.title, ok=True, value=float(np.asarray(result.value)), rel_error=err,
               est_error=est, compile_s=compile_s, first_call_ms=first * 1e3, warm_call_ms=warm * 1e3,
               evaluations=result.evaluations)


def compare_engines(name: str, graph: Graph, values: Mapping[str, np.ndarray],
                    configs: Sequence[EngineConfig] = DEFAULT_CONFIGS,
                    reference: Mapping[str, np.ndarray] | None = None,
                    wrt: Sequence[str] | None = None, budget_s: float = 0.5,
                    progress: Callable[[str], None] | None = None) -> list[Row]:
    """Every configuration on one graph, measured against ``reference`` gradients."""
    rows = []
    for config in configs:
        if progress:
            progress(f"{name}: {config.title}")
        rows.append(run_config(name, graph, values, config, reference, wrt, budget_s))
    return rows
