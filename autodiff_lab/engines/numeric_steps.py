"""Finite-difference formulas and step-size rules for the numeric engine.

A :class:`Stencil` says where a method evaluates ``f`` (offsets in units of the step ``h``
along one coordinate or direction) and how the values combine into a derivative and an
error estimate. Keeping the formulas here, apart from the batching machinery in
``numeric.py``, lets each formula be read (and checked against a textbook) on its own.

Step rules balance truncation error (grows with h) against round-off error (grows as
eps/h): a method of order p has its best step near ``eps ** (1 / (p + 1))`` times the scale
of x, which is where the rules below come from. Steps are rounded to a power of two and
then adjusted so that ``(x + h) - x == h`` exactly: the step the formula divides by is the
step that was really taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

#: rounding a single evaluation of f costs a few units of eps relative to |f|;
#: the round-off part of every error estimate uses this many units (a safety factor).
ROUND_UNITS = 2.0

#: truncation estimates compare two steps and assume the asymptotic regime (error ∝ h^p);
#: far from it (h ~ 0.1) they can be short by tens of percent, hence a safety factor
TRUNCATION_SAFETY = 2.0

#: number of central-difference levels in the Richardson tableau (steps h, h/2, h/4, h/8)
RICHARDSON_LEVELS = 4

#: the complex step: no subtraction happens, so h can be tiny (its h² truncation vanishes)
COMPLEX_STEP = 1e-20

Values = Mapping[float, np.ndarray]
Combine = Callable[[Values, Values, np.ndarray, float, bool],
                   tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class Stencil:
    """One finite-difference method.

    ``offsets`` are the multiples of h where f is needed for the derivative (0.0 is the
    unperturbed point, which the engine evaluates anyway); ``estimate_offsets`` are the
    extra points needed only for the error estimate. ``combine(f, abs_f, h, eps, estimate)``
    receives the (projected) values and their magnitudes by offset and returns the
    derivative and, if ``estimate``, its error estimate.
    """

    name: str
    offsets: tuple[float, ...]
    estimate_offsets: tuple[float, ...]
    combine: Combine
    #: step rule: h = step_power-th power of eps times max(|x|, 1) (None: fixed COMPLEX_STEP)
    step_power: float | None
    order: int
    imaginary: bool = False
    description: str = ""

    def points(self, estimate: bool) -> tuple[float, ...]:
        """Non-zero offsets to evaluate (the base point is counted separately)."""
        pts = self.offsets + (self.estimate_offsets if estimate else ())
        return tuple(m for m in pts if m != 0.0)

    @property
    def needs_base(self) -> bool:
        return 0.0 in self.offsets


def _roundoff(abs_f: Values, coeffs: Mapping[float, float], h: np.ndarray, eps: float) -> np.ndarray:
    """Round-off error of sum(c * f(x + m h)) / h when each f carries a relative error eps."""
    total = sum(abs(c) * abs_f[m] for m, c in coeffs.items())
    return ROUND_UNITS * eps * total / h


# --- the formulas -------------------------------------------------------------------------

def _forward(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    d = (f[1.0] - f[0.0]) / h
    if not estimate:
        return d, None
    d_2h = (f[2.0] - f[0.0]) / (2 * h)  # error 2·(h f''/2): the difference is d's own error
    return d, TRUNCATION_SAFETY * np.abs(d - d_2h) + _roundoff(a, {1.0: 1, 0.0: 1}, h, eps)


def _backward(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    d = (f[0.0] - f[-1.0]) / h
    if not estimate:
        return d, None
    d_2h = (f[0.0] - f[-2.0]) / (2 * h)
    return d, TRUNCATION_SAFETY * np.abs(d - d_2h) + _roundoff(a, {-1.0: 1, 0.0: 1}, h, eps)


def _central_at(f: Values, m: float, h: np.ndarray) -> np.ndarray:
    return (f[m] - f[-m]) / (2 * m * h)


def _central(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    d = _central_at(f, 1.0, h)
    if not estimate:
        return d, None
    # error a·h² + O(h⁴): at 2h it is 4 a h², so (d - d_2h) / 3 estimates d's error
    trunc = TRUNCATION_SAFETY * np.abs(d - _central_at(f, 2.0, h)) / 3
    return d, trunc + _roundoff(a, {1.0: 0.5, -1.0: 0.5}, h, eps)


def _five_point_at(f: Values, m: float, h: np.ndarray) -> np.ndarray:
    return (f[-2 * m] - 8 * f[-m] + 8 * f[m] - f[2 * m]) / (12 * m * h)


def _five_point(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    d = _five_point_at(f, 1.0, h)
    if not estimate:
        return d, None
    trunc = TRUNCATION_SAFETY * np.abs(d - _five_point_at(f, 2.0, h)) / 15  # fourth order: error ratio 16
    coeffs = {-2.0: 1 / 12, -1.0: 8 / 12, 1.0: 8 / 12, 2.0: 1 / 12}
    return d, trunc + _roundoff(a, coeffs, h, eps)


def _richardson(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    """Central differences at h, h/2, h/4, h/8 extrapolated to h → 0 (a Neville tableau).

    Each entry T[k][j] removes the h^(2j) error term; its error is estimated as in Ridders'
    method by its distance to the two entries it was built from, plus the round-off of the
    smallest step it used, amplified by the extrapolation weights. Per component the entry
    with the smallest estimate wins, so a badly scaled component picks a lower order.
    """
    levels = [2.0 ** -k for k in range(RICHARDSON_LEVELS)]
    rows: list[list[np.ndarray]] = []
    candidates, errors = [], []
    for k, m in enumerate(levels):
        row = [_central_at(f, m, h)]
        noise = _roundoff(a, {m: 0.5, -m: 0.5}, m * h, eps)
        amplification = 1.0
        for j in range(1, k + 1):
            factor = 4.0 ** j
            row.append(row[j - 1] + (row[j - 1] - rows[k - 1][j - 1]) / (factor - 1))
            amplification *= (factor + 1) / (factor - 1)
            gap = np.maximum(np.abs(row[j] - row[j - 1]), np.abs(row[j] - rows[k - 1][j - 1]))
            candidates.append(row[j])
            errors.append(gap + noise * amplification)
        rows.append(row)
    err = np.stack(errors)
    best = np.argmin(err, axis=0)[None]
    d = np.take_along_axis(np.stack(candidates), best, axis=0)[0]
    return d, np.take_along_axis(err, best, axis=0)[0]


def _complex(f: Values, a: Values, h: np.ndarray, eps: float, estimate: bool):
    """Im f(x + ih) / h: ``f`` holds the imaginary parts of the evaluations."""
    d = f[1.0] / h
    if not estimate:
        return d, None
    # truncation -h² f'''/6: at 2h it is four times larger, so the gap / 3 estimates it;
    # no cancellation between evaluations, so round-off is a few ulps; but a component
    # that is a sum of larger terms (a weight's gradient over a batch) is only accurate
    # to ulps of those terms, so the floor is relative to the largest component
    trunc = TRUNCATION_SAFETY * np.abs(d - f[2.0] / (2 * h)) / 3
    scale = np.abs(d) + np.max(np.abs(d), axis=0, keepdims=True)
    return d, trunc + ROUND_UNITS * eps * scale


STENCILS: dict[str, Stencil] = {s.name: s for s in (
    Stencil("forward", (0.0, 1.0), (2.0,), _forward, 1 / 2, 1,
            description="(f(x+h) − f(x)) / h, error O(h)"),
    Stencil("backward", (0.0, -1.0), (-2.0,), _backward, 1 / 2, 1,
            description="(f(x) − f(x−h)) / h, error O(h)"),
    Stencil("central", (1.0, -1.0), (2.0, -2.0), _central, 1 / 3, 2,
            description="(f(x+h) − f(x−h)) / 2h, error O(h²)"),
    Stencil("five_point", (-2.0, -1.0, 1.0, 2.0), (4.0, -4.0), _five_point, 1 / 5, 4,
            description="(f(x−2h) − 8f(x−h) + 8f(x+h) − f(x+2h)) / 12h, error O(h⁴)"),
    Stencil("richardson",
            tuple(s * 2.0 ** -k for k in range(RICHARDSON_LEVELS) for s in (1.0, -1.0)), (),
            _richardson, 1 / 7, 2 * RICHARDSON_LEVELS,
            description=f"central differences at {RICHARDSON_LEVELS} steps h/2^k, "
                        "extrapolated (Richardson/Ridders), error estimate per component"),
    Stencil("complex", (1.0,), (2.0,), _complex, None, 2, imaginary=True,
            description="Im f(x + ih) / h, no cancellation: machine precision"),
)}

METHODS = tuple(STENCILS)


def default_step(stencil: Stencil, x: np.ndarray, eps: float) -> np.ndarray:
    """The rule-of-thumb step for each component of ``x`` (before it is made exact)."""
    if stencil.step_power is None:
        return np.full(x.shape, COMPLEX_STEP)
    return eps ** stencil.step_power * np.maximum(np.abs(x), 1.0)


def power_of_two(h: np.ndarray) -> np.ndarray:
    """The nearest power of two: multiples and halves of it are exact in binary."""
    return np.exp2(np.round(np.log2(h)))


def exact_step(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The step actually taken from x: ``(x + h) - x``, so that x + h lands on h exactly.

    The subtraction is exact (Sterbenz) because x + h and x are close. Components whose
    step vanishes (h below the spacing of x) come back as 0; callers decide what to do.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return (x + h) - x


def one_sided_second_order(f0: np.ndarray, f1: np.ndarray, f2: np.ndarray, h: np.ndarray,
                           a: tuple[np.ndarray, np.ndarray, np.ndarray], eps: float):
    """(−3 f(x) + 4 f(x+h) − f(x+2h)) / 2h (h may be negative): the fall-back when one side
    of x is outside f's domain. Error estimate: distance to the first-order formula."""
    d = (-3 * f0 + 4 * f1 - f2) / (2 * h)
    first = (f1 - f0) / h
    noise = ROUND_UNITS * eps * (3 * a[0] + 4 * a[1] + a[2]) / (2 * np.abs(h))
    return d, np.abs(d - first) + noise
