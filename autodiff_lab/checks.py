"""Gradient checks and Jacobians: the advice every course gives, one call each.

* :func:`gradcheck` -- the reverse-mode tape against central finite differences, in
  float64. Small graphs are checked entry by entry (every derivative); big ones with a few
  random projections vᵀJu (the derivative along a random direction u, two forward passes
  each, against the tape's gradient dotted with u), as PyTorch's fast gradcheck does.
  Tolerances are PyTorch's: ``|tape − numeric| ≤ atol + rtol·|numeric|`` with
  ``atol=1e-5, rtol=1e-3``. A failure names the input, the index, the expected (numeric)
  and the got (tape) values.
* :func:`jacobian` -- the full Jacobian of a vector output by reverse mode, one backward
  pass per output entry (one forward pass in all), in "output × input" layout: for
  y ∈ R^M and x ∈ R^N, dy/dx is M × N (generally ``y.shape + x.shape``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.engines import engine as make_engine
from autodiff_lab.engines.base import resolve_output, resolve_wrt
from autodiff_lab.errors import AutodiffError
from autodiff_lab.graph.evaluate import check_values
from autodiff_lab.graph.graph import Graph

#: up to this many derivatives in all, gradcheck compares every one of them
FULL_CHECK_LIMIT = 2000


class GradcheckError(AutodiffError, AssertionError):
    """The tape's gradient and the finite-difference estimate disagree."""


@dataclass
class GradcheckResult:
    """What :func:`gradcheck` compared and found (``ok`` is False only when not raising)."""

    ok: bool
    mode: str  # "full" or "projection"
    checked: int  # derivatives compared (full) or directions (projection)
    max_abs_error: float
    max_rel_error: float
    message: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = "gradcheck passed" if self.ok else "gradcheck FAILED"
        text = (f"{head}: {self.mode} check of {self.checked} "
                f"{'derivatives' if self.mode == 'full' else 'random directions'}, "
                f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}")
        return text + (f"\n{self.message}" if self.message else "")

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#cf222e"
        head = "gradcheck passed" if self.ok else "gradcheck FAILED"
        what = "derivatives" if self.mode == "full" else "random directions"
        body = (f"<b style='color:{colour}'>{'✔' if self.ok else '✘'} {head}</b>: {self.mode} "
                f"check of {self.checked} {what}, max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g}")
        if self.message:
            message = self.message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            body += f"<br><code>{message}</code>"
        return f"<div>{body}</div>"


def _as_float64(graph: Graph, values: Mapping[str, Any]
                ) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph (a float64 copy if it has lower-precision floats) and the values in
    float64, warning when either was in single precision."""
    low = sorted(n for n, v in values.items()
                 if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f"
                 and v.dtype.itemsize < 8)
    low_graph = sorted(n for n, v in graph.inputs.items()
                       if np.dtype(graph.node(v)["dtype"]).kind == "f"
                       and np.dtype(graph.node(v)["dtype"]).itemsize < 8)
    if low or low_graph:
        names = sorted(set(low) | set(low_graph))
        dtype = (np.asarray(values[low[0]]).dtype if low
                 else np.dtype(graph.node(graph.inputs[low_graph[0]])["dtype"]))
        warnings.warn(f"gradcheck: input(s) {', '.join(names)} are {dtype}; finite differences "
                      "in single precision cannot reach the tolerances, so the check runs in "
                      "float64 (cast copies)", UserWarning, stacklevel=3)
    if low_graph:
        graph = graph.astype(np.float64)
    arrays = check_values(graph, values)
    return graph, arrays


def _close(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    return np.abs(got - expected) <= atol + rtol * np.abs(expected)


def gradcheck(graph: Graph, values: Mapping[str, Any], wrt: Iterable[str] | str | None = None,
              output: str | None = None, *, atol: float = 1e-5, rtol: float = 1e-3,
              mode: str = "auto", n_directions: int = 3, seed: Any = None, rng: int = 0,
              raise_exception: bool = True) -> GradcheckResult:
    """Check the tape engine's gradient against central finite differences (float64).

    An entry passes when ``|tape − numeric| ≤ atol + rtol·|numeric|`` (PyTorch's
    tolerances). A float32 graph or float32 values are checked on float64 copies, with a
    warning: finite differences in single precision cannot reach these tolerances.

    Args:
        graph: the traced graph.
        values: ``{input name: value}`` for every input.
        wrt: the inputs to check (default: every float input).
        output: the output to differentiate when there are several.
        atol: absolute tolerance.
        rtol: relative tolerance.
        mode: ``"full"`` (every derivative), ``"projection"`` (``n_directions`` random
            checks of vᵀJu, two forward passes each) or ``"auto"`` (full up to
            :data:`FULL_CHECK_LIMIT` derivatives, projections beyond).
        n_directions: random directions of the projection check.
        seed: for a non-scalar output y, the vector v of the checked gradient of vᵀy
            (default: random).
        rng: seed of the random directions and vectors.
        raise_exception: raise :class:`GradcheckError` on a mismatch (default); ``False``
            returns the failed result instead.

    Returns:
        A :class:`GradcheckResult`: true when it passed; ``str()`` says what was compared
        and the largest errors, and on failure the input, index, expected and got values.
        Jupyter shows the verdict.

    Examples:
        >>> g = adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]),
        ...               w=adl.param((3,)), x=(2,))
        >>> result = adl.gradcheck(g, {"w": np.array([2.0, -3.0, -3.0]), "x": np.array([-1.0, -2.0])})
        >>> print(str(result)[:45])
        gradcheck passed: full check of 5 derivatives
    """
    output = resolve_output(graph, output)
    wrt = resolve_wrt(graph, wrt)
    graph, arrays = _as_float64(graph, values)
    gen = np.random.default_rng(rng)
    out_shape = graph.node(graph.outputs[output])["shape"]
    if seed is None and out_shape != ():
        seed = gen.standard_normal(out_shape)
    tape = make_engine("tape").compile(graph, wrt=wrt, output=output)
    numeric = make_engine("numeric", method="central").compile(graph, wrt=wrt, output=output)
    got = tape(arrays, seed=seed).grads
    total = sum(arrays[n].size for n in wrt)
    if mode == "auto":
        mode = "full" if total <= FULL_CHECK_LIMIT else "projection"
    if mode == "full":
        expected = numeric(arrays, seed=seed).grads
        result = _compare_full(wrt, got, expected, atol, rtol, total)
    elif mode == "projection":
        result = _compare_projections(wrt, arrays, got, numeric, atol, rtol, n_directions,
                                      gen, seed)
    else:
        raise ValueError(f"mode must be 'auto', 'full' or 'projection', got {mode!r}")
    if not result.ok and raise_exception:
        raise GradcheckError(str(result))
    return result


def _compare_full(wrt: list[str], got: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                  atol: float, rtol: float, total: int) -> GradcheckResult:
    max_abs = max_rel = 0.0
    message, details = "", []
    for name in wrt:
        a, e = np.asarray(got[name], dtype=np.float64), np.asarray(expected[name], np.float64)
        diff = np.abs(a - e)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(e), 1e-300)).max()))
        bad = ~_close(a, e, atol, rtol)
        if bad.any() and not message:
            idx = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
            message = (f"input {name!r} index {idx}: expected {float(e[idx])!r} (central differences), "
                       f"got {float(a[idx])!r} (tape); |difference| {diff[idx]:.3g} > atol + rtol·|expected|"
                       f" = {atol + rtol * abs(e[idx]):.3g}; {int(bad.sum())} of {bad.size} "
                       f"entries of {name!r} disagree")
            details.append({"input": name, "index": idx, "expected": float(e[idx]),
                            "got": float(a[idx])})
    return GradcheckResult(not message, "full", total, max_abs, max_rel, message, details)


def _compare_projections(wrt: list[str], arrays: dict[str, np.ndarray],
                         got: dict[str, np.ndarray], numeric: Any, atol: float, rtol: float,
                         n_directions: int, gen: np.random.Generator, seed: Any
                         ) -> GradcheckResult:
    max_abs = max_rel = 0.0
    message, details = "", []
    for k in range(n_directions):
        direction = {n: gen.standard_normal(arrays[n].shape) for n in wrt}
        expected = float(numeric.directional(arrays, direction, seed=seed))
        tape_value = float(sum(np.vdot(got[n], direction[n]) for n in wrt))
        diff = abs(tape_value - expected)
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(abs(expected), 1e-300))
        details.append({"direction": k, "expected": expected, "got": tape_value})
        if diff > atol + rtol * abs(expected) and not message:
            message = (f"random direction {k} over inputs {', '.join(wrt)}: expected vᵀJu = "
                       f"{expected!r} (central differences), got {tape_value!r} (tape); "
                       f"|difference| {diff:.3g} > {atol + rtol * abs(expected):.3g}. "
                       "Run gradcheck(..., mode='full') on a smaller graph to find the entry")
    return GradcheckResult(not message, "projection", n_directions, max_abs, max_rel, message,
                           details)


def jacobian(graph: Graph, values: Mapping[str, Any], wrt: Iterable[str] | str | None = None,
             output: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
    """The Jacobian of ``output`` by reverse mode, in the "output × input" layout.

    For y ∈ R^M and x ∈ R^N, dy/dx is M × N (in general an array of shape
    ``y.shape + x.shape``): for y = W g, dy/dg = W; for h = f ⊙ g, dh/df = diag(g). One
    forward pass, then one backward pass per output entry.

    Args:
        graph: the traced graph.
        values: ``{input name: value}`` for every input.
        wrt: one input name (the array is returned) or several (a dict by name; default:
            every float input).
        output: the output when there are several.

    Examples:
        >>> g = adl.trace(lambda W, v: W @ v, W=(2, 3), v=(3,))
        >>> W = np.arange(6.0).reshape(2, 3)
        >>> print(adl.jacobian(g, {"W": W, "v": np.ones(3)}, wrt="v"))   # dy/dv = W
        [[0. 1. 2.]
         [3. 4. 5.]]
    """
    single = isinstance(wrt, str)
    output = resolve_output(graph, output)
    names = resolve_wrt(graph, wrt)
    program = make_engine("tape").compile(graph, wrt=names, output=output)
    state = program.forward(values)
    out_shape = tuple(graph.node(graph.outputs[output])["shape"])
    m = int(np.prod(out_shape, dtype=np.int64))
    blocks = {n: np.empty((m,) + tuple(graph.node(graph.inputs[n])["shape"]), dtype=state.dtype)
              for n in names}
    for row in range(m):
        seed = np.zeros(m, dtype=state.dtype)
        seed[row] = 1
        grads = program.backward(state, seed=seed.reshape(out_shape), retain=True)
        for n in names:
            blocks[n][row] = grads[n]
    result = {n: b.reshape(out_shape + b.shape[1:]) for n, b in blocks.items()}
    return result[names[0]] if single else result
