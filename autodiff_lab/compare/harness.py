"""The engines a comparison runs, how they are named, and how they are timed.

Every configuration has a key (``tape``, ``symbolic-matrix``, ``numeric-central`` ...) that
``--engines`` and ``engines=`` accept, alone, by its short name (``matrix``, ``central``) or
by family (``symbolic``, ``numeric``). Accuracy is the norm-wise relative error
``‖g − g_ref‖∞ / ‖g_ref‖∞`` over all wanted inputs together, computed in long double so a
float64 gradient's own rounding is not hidden by rounding the reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError


@dataclass(frozen=True)
class EngineConfig:
    """An engine name, its options, the key ``--engines`` uses and the label tables show."""

    engine: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    key: str = ""

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        extra = ", ".join(f"{v}" for v in self.options.values())
        return f"{self.engine} ({extra})" if extra else self.engine

    @property
    def family(self) -> str:
        return self.engine

    @property
    def method(self) -> str | None:
        """The finite-difference method (numeric engines only)."""
        return self.options.get("method") if self.engine == "numeric" else None

    def make(self, **extra: Any) -> Any:
        """The engine object, with ``extra`` options on top of this configuration's."""
        from autodiff_lab.engines import engine as make_engine
        return make_engine(self.engine, **{**self.options, **extra})


def _numeric(method: str, label: str) -> EngineConfig:
    # the report shows its own progress, so no bar per call
    return EngineConfig("numeric", {"method": method, "progress": False}, label,
                        f"numeric-{method.replace('_', '-')}")


#: every configuration a comparison can run, in the order tables show them
ENGINES: dict[str, EngineConfig] = {c.key: c for c in (
    EngineConfig("tape", {}, "tape (reverse mode)", "tape"),
    EngineConfig("symbolic", {"mode": "matrix"}, "symbolic matrix", "symbolic-matrix"),
    EngineConfig("symbolic", {"mode": "expanded"}, "symbolic expanded", "symbolic-expanded"),
    _numeric("forward", "numeric forward"),
    _numeric("central", "numeric central"),
    _numeric("five_point", "numeric five-point"),
    _numeric("richardson", "numeric Richardson"),
    _numeric("complex", "numeric complex step"),
)}
#: what the comparison runs by default: everything
DEFAULT_CONFIGS: tuple[EngineConfig, ...] = tuple(ENGINES.values())
FAMILIES = {"tape": ["tape"],
            "symbolic": ["symbolic-matrix", "symbolic-expanded"],
            "numeric": [k for k in ENGINES if k.startswith("numeric-")]}


def engine_choices() -> str:
    """The names ``--engines`` accepts, for help texts and errors."""
    short = [k.split("-", 1)[1] for k in ENGINES if "-" in k]
    return (f"families {', '.join(FAMILIES)}; engines {', '.join(ENGINES)}; short names "
            f"{', '.join(short)}")


def _lookup(name: str) -> list[str]:
    key = name.strip().lower().replace("_", "-").replace(":", "-").replace(" ", "-")
    if key in FAMILIES:
        return FAMILIES[key]
    if key in ENGINES:
        return [key]
    for k in ENGINES:
        if "-" in k and k.split("-", 1)[1] == key:
            return [k]
    if key in ("reverse", "reverse-mode", "autodiff"):
        return ["tape"]
    raise InputError(f"unknown engine {name.strip()!r}; choose from {engine_choices()}")


def parse_engines(spec: str | Iterable[str | EngineConfig] | None) -> list[EngineConfig]:
    """Engine configurations from ``"tape,symbolic,central"`` (or a list of names or
    configurations); ``None`` means all. Each is listed once, in table order."""
    if spec is None:
        return list(DEFAULT_CONFIGS)
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    configs: list[EngineConfig] = []
    keys: list[str] = []
    for item in items:
        if isinstance(item, EngineConfig):
            configs.append(item)
            continue
        if not str(item).strip():
            continue
        keys += _lookup(str(item))
    if not keys and not configs:
        raise InputError(f"no engine given; choose from {engine_choices()}")
    ordered = [ENGINES[k] for k in ENGINES if k in keys]
    return ordered + [c for c in configs if c not in ordered]


# --------------------------------------------------------------------------------------------
# accuracy and timing
# --------------------------------------------------------------------------------------------

def _inf_norm(arrays: Iterable[np.ndarray]) -> np.longdouble:
    return max((np.max(np.abs(np.asarray(a, dtype=np.longdouble)), initial=np.longdouble(0))
                for a in arrays), default=np.longdouble(0))


def rel_error(grads: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """‖g − g_ref‖∞ / ‖g_ref‖∞ over every input of ``reference`` together (in long double)."""
    diff = _inf_norm([np.asarray(grads[k], dtype=np.longdouble)
                      - np.asarray(reference[k], dtype=np.longdouble) for k in reference])
    scale = _inf_norm(reference.values())
    return float(diff / scale) if scale > 0 else float(diff)


def rel_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """‖a‖∞ / ‖g_ref‖∞: an error estimate on the scale of :func:`rel_error`."""
    scale = _inf_norm(reference.values())
    value = _inf_norm([arrays[k] for k in reference if k in arrays])
    return float(value / scale) if scale > 0 else float(value)


@dataclass
class Timing:
    """Seconds per call: the median of ``repeats`` calls, and the spread (min, max)."""

    median: float
    low: float
    high: float
    repeats: int


def time_calls(fn: Callable[[], Any], *, min_repeats: int = 3, budget_s: float = 0.5,
               max_repeats: int = 1000) -> Timing:
    """Time ``fn()`` at least ``min_repeats`` times, more while the budget lasts."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget_s
                                       and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(float(np.median(times)), float(min(times)), float(max(times)), len(times))


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated while ``fn()`` runs, by Python's tracemalloc, with every op on
    the numpy reference kernels (the Numba kernels allocate outside tracemalloc's view)."""
    import tracemalloc

    from autodiff_lab.kernels import dispatch

    was_tracing = tracemalloc.is_tracing()
    enabled = dispatch.enabled
    dispatch.enabled = False
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        dispatch.enabled = enabled
        if not was_tracing:
            tracemalloc.stop()


def parameter_count(graph: Any, wrt: Sequence[str]) -> int:
    """Scalars differentiated: the sum of the sizes of ``wrt``."""
    return int(sum(int(np.prod(graph.node(graph.inputs[n])["shape"], dtype=np.int64)) for n in wrt))


def set_blas_threads(n: int) -> bool:
    """Limit numpy's OpenBLAS to ``n`` threads (at run time, through its C API); False when
    no OpenBLAS is found. Timings on a shared machine are steadier with one thread: idle
    OpenBLAS threads spin and compete with other processes for the cores."""
    import ctypes
    import glob
    import os

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            candidates = sorted({line.split()[-1] for line in fh if "openblas" in line.lower()})
    except OSError:
        pass
    root = os.path.dirname(np.__file__)
    candidates += glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*"))
    candidates += glob.glob(os.path.join(root, ".dylibs", "*openblas*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                       "openblas_set_num_threads", "scipy_openblas_set_num_threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(int(n))
                return True
    return False
