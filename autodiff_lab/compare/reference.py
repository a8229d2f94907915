"""Reference gradients: what every engine is measured against, and why it can be trusted.

No engine under test is its own reference. Three kinds, best first:

* ``mpmath`` -- the expanded SymPy derivative evaluated with mpmath at 50 significant
  digits (:func:`~autodiff_lab.engines.symbolic.reference_gradient`): exact to far below
  float64's resolution. Possible where the expanded expressions stay small (the scalar
  examples).
* ``extended`` -- the matrix-mode program (the generated numpy code) run on the values
  converted to long double (80-bit extended precision on x86: 64-bit mantissa, eps 1.1e-19,
  about 2000 times finer than float64's 2.2e-16). Its arithmetic is not the arithmetic of any
  engine under test: every engine computes in float64. With long double the numpy reference
  kernels run (BLAS and the Numba kernels take only float32/float64). Where a miniature of
  the same network is given, the extended evaluation is checked against mpmath on it.
* ``consensus`` -- where long double is no wider than float64 (some platforms) or matrix
  mode cannot take the graph: the mean of two independent float64 computations (the tape
  and matrix mode, or the tape and the complex step), with their disagreement shown as the
  reference's own uncertainty: errors below it are not resolved.

Gradients are kept in long double (``grads``), so an engine's rounding error is measured,
not hidden by rounding the reference to float64 first.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.compare.harness import _inf_norm, rel_error
from autodiff_lab.errors import AutodiffError, InputError
from autodiff_lab.graph.graph import Graph

KINDS = ("auto", "mpmath", "extended", "consensus")
#: the mpmath reference is tried up to this many gradient operations (it is slow beyond)
MPMATH_MAX_OPS = 2e5
LONGDOUBLE_EPS = float(np.finfo(np.longdouble).eps)
FLOAT64_EPS = float(np.finfo(np.float64).eps)


@dataclass
class Reference:
    """Reference gradients with what they are and how far they can be trusted."""

    kind: str
    grads: dict[str, np.ndarray]
    #: one line: what was computed
    description: str
    #: why it can be trusted
    trust: str
    #: its own relative uncertainty (same scale as the errors): smaller errors are unresolved
    uncertainty: float
    seconds: float = 0.0
    #: the check of an extended reference against mpmath on a miniature, when made
    validation: str = ""
    validation_error: float | None = None
    value: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for a report: what, why, uncertainty and validation."""
        text = f"{self.description}. {self.trust}"
        text += f" Uncertainty of the reference: {self.uncertainty:.1g} (relative)."
        if self.validation:
            text += f" {self.validation}"
        return text


def _as_float(values: Mapping[str, Any], graph: Graph) -> dict[str, Any]:
    return {n: np.asarray(values[n]) for n in graph.inputs if n in values}


def longdouble_is_extended() -> bool:
    """Whether long double has more precision than float64 on this machine."""
    return LONGDOUBLE_EPS < FLOAT64_EPS / 16


def mpmath_reference(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str],
                     digits: int = 50, max_ops: float = MPMATH_MAX_OPS) -> Reference:
    """The expanded derivative evaluated with mpmath at ``digits`` digits (refused above
    ``max_ops`` operations with the expanded engine's size error)."""
    from autodiff_lab.engines.symbolic import reference_gradient

    t0 = time.perf_counter()
    result = reference_gradient(graph, values, wrt=wrt, digits=digits, max_tree_size=max_ops)
    mp = result.info.get("mp_grads") or {}
    grads = {}
    for n in wrt:
        if n in mp:
            arr = np.asarray(mp[n], dtype=object)
            grads[n] = np.array([np.longdouble(str(v)) for v in arr.ravel()],
                                dtype=np.longdouble).reshape(np.shape(result.grads[n]))
        else:
            grads[n] = np.asarray(result.grads[n], dtype=np.longdouble)
    return Reference(
        "mpmath", grads,
        f"the expanded SymPy derivative evaluated with mpmath at {digits} significant digits",
        "It is the exact derivative of the graph's formula at the exact binary values of the "
        "inputs, rounded once at the end: no float64 arithmetic is involved.",
        uncertainty=LONGDOUBLE_EPS, seconds=time.perf_counter() - t0,
        value=float(result.value))


def extended_reference(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str],
                       miniature: Callable[[], tuple[Graph, dict[str, Any]]] | None = None
                       ) -> Reference:
    """Matrix mode's generated program run in long double (see the module docstring)."""
    from autodiff_lab.engines.symbolic_matrix import MatrixProgram
    from autodiff_lab.graph.evaluate import check_values, constant_value

    if not longdouble_is_extended():
        raise InputError("long double is float64 on this machine: no extended precision")
    t0 = time.perf_counter()
    grads, value = _run_longdouble(graph, values, wrt, MatrixProgram, check_values, constant_value)
    largest = max(int(np.prod(graph.node(v)["shape"], dtype=np.int64)) for v in graph.order)
    # sums of n terms: rounding grows like √n·eps in practice (n·eps at worst)
    uncertainty = max(LONGDOUBLE_EPS * math.sqrt(largest), LONGDOUBLE_EPS)
    ref = Reference(
        "extended", grads,
        "the symbolic matrix-mode program (generated numpy code) evaluated in long double "
        f"(eps {LONGDOUBLE_EPS:.1e}, with the numpy reference kernels)",
        "Every engine under test computes in float64 (eps 2.2e-16); the reference's rounding "
        f"is about {FLOAT64_EPS / LONGDOUBLE_EPS:.0f} times finer, so its distance to an "
        "engine is that engine's error.",
        uncertainty=uncertainty, seconds=time.perf_counter() - t0, value=value)
    if miniature is not None:
        try:
            mg, mv = miniature()
            mwrt = list(mg.parameters) or None
            names = mwrt or [n for n in mg.inputs]
            exact = mpmath_reference(mg, mv, names, max_ops=2e6)
            ext, _ = _run_longdouble(mg, mv, names, MatrixProgram, check_values, constant_value)
            err = rel_error(ext, exact.grads)
            ref.validation_error = err
            ref.validation = (f"Checked against 50-digit mpmath on a miniature of the same "
                              f"network ({_size(mg, names)} parameters): relative error "
                              f"{err:.1e}.")
            ref.uncertainty = max(ref.uncertainty, err)
        except (AutodiffError, MemoryError) as exc:
            ref.validation = f"(Not checked against mpmath: {str(exc).split('.')[0]}.)"
    return ref


def _size(graph: Graph, names: Sequence[str]) -> int:
    return int(sum(np.prod(graph.node(graph.inputs[n])["shape"], dtype=np.int64) for n in names))


def _run_longdouble(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str], program_cls: Any,
                    check_values: Any, constant_value: Any
                    ) -> tuple[dict[str, np.ndarray], float]:
    output = next(iter(graph.outputs))
    program = program_cls(graph, list(wrt), output, check_finite=False)
    arrays = check_values(graph, values, check_finite=False)
    ld = np.dtype(np.longdouble)
    args = [np.asarray(arrays[n], dtype=ld) if np.asarray(arrays[n]).dtype.kind == "f"
            else arrays[n] for n in graph.inputs]
    args += [constant_value(graph, v, ld) for v in program.constant_leaves]
    if not program.scalar_output:
        raise InputError("the output is not a scalar: no gradient to compare")
    with np.errstate(all="ignore"):
        value, grads = program._fn(*args)
    out: dict[str, np.ndarray] = {}
    for n, g in zip(wrt, grads):
        shape = graph.node(graph.inputs[n])["shape"]
        arr = np.asarray(g)
        if arr.dtype != ld:
            raise InputError(f"the long-double evaluation fell back to {arr.dtype} for {n!r}")
        out[n] = np.broadcast_to(arr, shape).astype(ld) if arr.shape != shape else arr
    return out, float(value)


def consensus_reference(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str]) -> Reference:
    """The mean of two independent float64 gradients, their disagreement its uncertainty."""
    from autodiff_lab.engines import engine

    t0 = time.perf_counter()
    tape = engine("tape").compile(graph, wrt=wrt)(values)
    second, name = None, ""
    for label, make in (("symbolic matrix mode", lambda: engine("symbolic", mode="matrix")),
                        ("the complex step", lambda: engine("numeric", method="complex",
                                                            progress=False))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                second = make().compile(graph, wrt=wrt)(values)
            name = label
            break
        except AutodiffError:
            continue
    if second is None:
        raise InputError("no second independent engine takes this graph: no reference besides "
                         "the tape, which is never its own reference")
    grads = {n: (np.asarray(tape.grads[n], dtype=np.longdouble)
                 + np.asarray(second.grads[n], dtype=np.longdouble)) / 2 for n in wrt}
    spread = rel_error(tape.grads, {n: np.asarray(second.grads[n], np.longdouble) for n in wrt})
    return Reference(
        "consensus", grads,
        f"the mean of the tape and {name}, both in float64",
        "Two independent computations (different code, different order of operations); "
        "their disagreement bounds what this reference can resolve, so it is shown as the "
        "reference's own uncertainty.",
        uncertainty=max(spread, FLOAT64_EPS), seconds=time.perf_counter() - t0,
        value=float(np.asarray(tape.value)))


def given_reference(grads: Mapping[str, Any], description: str = "gradients given by the user"
                    ) -> Reference:
    """Gradients the caller supplies (e.g. known in closed form)."""
    arrays = {n: np.asarray(v, dtype=np.longdouble) for n, v in grads.items()}
    return Reference("given", arrays, description, "Supplied by the caller.",
                     uncertainty=LONGDOUBLE_EPS)


def compute_reference(graph: Graph, values: Mapping[str, Any], wrt: Sequence[str],
                      kind: str = "auto",
                      miniature: Callable[[], tuple[Graph, dict[str, Any]]] | None = None
                      ) -> Reference:
    """The reference of ``kind``; ``auto`` takes mpmath where the expanded expressions stay
    small, else extended precision, else the consensus (each fallback says why)."""
    if kind not in KINDS:
        raise InputError(f"unknown reference {kind!r}; choose from {', '.join(KINDS)}")
    notes: list[str] = []
    if kind in ("auto", "mpmath"):
        try:
            return mpmath_reference(graph, values, wrt)
        except AutodiffError as exc:
            if kind == "mpmath":
                raise
            notes.append(f"mpmath: {_first_sentence(exc)}")
    if kind in ("auto", "extended"):
        try:
            ref = extended_reference(graph, values, wrt, miniature)
            ref.notes = notes
            return ref
        except (AutodiffError, TypeError, ValueError) as exc:
            if kind == "extended":
                raise
            notes.append(f"extended precision: {_first_sentence(exc)}")
    ref = consensus_reference(graph, values, wrt)
    ref.notes = notes
    return ref


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cut = text.find(". ")
    return text if cut < 0 else text[:cut + 1]


def scale_of(reference: Reference) -> float:
    """‖g_ref‖∞."""
    return float(_inf_norm(reference.grads.values()))
