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

A step the user chooses can be far from that optimum, where the error estimate's premise
(error ∝ h^p) fails: :func:`regime_check` compares the formula at h/2, h and 2h and says
which components are outside the region where the estimate holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError

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

#: the complex step's shared round-off: every component's estimate also gets this many times
#: log2(n) of the largest estimate of the call (n: elements of the largest node), see
#: :func:`complex_shared_roundoff`
COMPLEX_SHARED_UNITS = 0.5

#: regime check: in the asymptotic regime halving the step divides the change of the
#: derivative by 2^order; a component whose change shrinks by less than this fraction of
#: that (or whose curvature does not grow about 4-fold with the step) is flagged
REGIME_SLACK = 0.5
#: regime check: differences below this many round-off bounds say nothing about the regime
REGIME_NOISE = 8.0
#: regime check: a step beyond this fraction of the scale of x, max(|x|, 1), is flagged
#: whatever the samples show. Samples of f at a few points cannot rule out that f varies
#: on a shorter scale than the step (sin sampled at multiples of its period looks flat);
#: the step rules assume f varies on the scale of x, and so does this limit
STEP_SCALE_LIMIT = 1.0

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
    #: the plain formula at step m·h as weights {offset: w}: d(m) = Σ w·f(offset) / (m·h)
    weights: Callable[[float], dict[float, float]] | None = None
    #: the three steps (multiples of h) the regime check compares, small to large
    regime_levels: tuple[float, float, float] = (0.5, 1.0, 2.0)
    #: the formula uses f at ±m alike, so its even part (the curvature) can be checked too
    symmetric: bool = False
    #: order of the plain formula ``weights`` (None: ``order``; Richardson's is central's 2)
    weights_order: int | None = None
    #: the regime check's (h/2, h) estimate also bounds this method's error (not so for an
    #: extrapolation, far more accurate than the plain formula it starts from)
    regime_bounds: bool = True

    def points(self, estimate: bool, regime: bool = False) -> tuple[float, ...]:
        """Non-zero offsets to evaluate (the base point is counted separately); with
        ``regime`` also the points :func:`regime_check` needs."""
        pts = self.offsets + (self.estimate_offsets if estimate else ())
        if regime:
            pts = pts + tuple(o for o in self.regime_offsets if o not in pts)
        return tuple(m for m in pts if m != 0.0)

    @property
    def regime_offsets(self) -> tuple[float, ...]:
        """Every offset the formula touches at the regime check's three steps."""
        out: list[float] = []
        for m in self.regime_levels:
            for o in (self.weights(m) if self.weights else {}):
                if o not in out:
                    out.append(o)
        return tuple(out)

    @property
    def needs_base(self) -> bool:
        return 0.0 in self.offsets


def _roundoff(abs_f: Values, coeffs: Mapping[float, float], h: np.ndarray, eps: float) -> np.ndarray:
    """Round-off error of sum(c * f(x + m h)) / h when each f carries a relative error eps."""
    total = sum(abs(c) * abs_f[m] for m, c in coeffs.items())
    return ROUND_UNITS * eps * total / h


@dataclass
class RegimeCheck:
    """What :func:`regime_check` found, per component (arrays of the derivative's shape).

    ``estimate``: the truncation error at h judged from the (h/2, h) pair, the "observed
    change" (plus the round-off of the formula at h); ``suspect``: the component is outside
    the region where error estimates from step ratios hold; ``ratio``: the observed
    |d(2h) − d(h)| / |d(h) − d(h/2)| (2^order in the asymptotic regime).
    """

    estimate: np.ndarray
    suspect: np.ndarray
    ratio: np.ndarray
    change_small: np.ndarray
    change_large: np.ndarray
    #: the part of ``suspect`` due to a step beyond the scale of x alone
    beyond_scale: np.ndarray


def regime_check(stencil: Stencil, f: Values, a: Values, h: np.ndarray, eps: float,
                 x_scale: np.ndarray | float = 1.0) -> RegimeCheck:
    """Is the step inside the region where error ∝ h^order, the premise of every estimate?

    With d(m) the plain formula at step m·h, at the stencil's three levels (h/2, h, 2h for
    most), the asymptotic regime shrinks the change |d(2h) − d(h)| by 2^p when the step is
    halved, to |d(h) − d(h/2)|. A change that does not shrink (a period of f comparable to
    the step, a step beyond a singularity's distance) flags the component; so does, for a
    symmetric formula, a curvature (f(x+mh) + f(x−mh))/2 − f(x) that does not grow about
    four-fold from one level to the next. Differences within round-off carry no
    information and flag nothing. And a step larger than ``STEP_SCALE_LIMIT`` times
    ``x_scale`` (max(|x|, 1) per component, broadcasting against h) is always flagged:
    no finite set of samples can show that f does not vary faster than that. ``f`` and
    ``a`` must include the base point 0.0.
    """
    lo, mid, hi = stencil.regime_levels
    p = stencil.weights_order or stencil.order

    def d(m: float) -> np.ndarray:
        return sum(w * f[o] for o, w in stencil.weights(m).items()) / (m * h)

    def noise(m: float, dm: np.ndarray) -> np.ndarray:
        if stencil.imaginary:  # no cancellation: a few ulps of the derivative itself
            return ROUND_UNITS * eps * (np.abs(dm) + np.max(np.abs(dm), axis=0, keepdims=True))
        total = sum(abs(w) * a[o] for o, w in stencil.weights(m).items())
        return ROUND_UNITS * eps * (total / (m * np.abs(h)) + np.abs(dm))

    d_lo, d_mid, d_hi = d(lo), d(mid), d(hi)
    small, large = np.abs(d_mid - d_lo), np.abs(d_hi - d_mid)
    n_mid = noise(mid, d_mid)
    informative = small > REGIME_NOISE * (noise(lo, d_lo) + n_mid)
    suspect = informative & (large < REGIME_SLACK * 2.0 ** p * small)
    beyond_scale = np.broadcast_to(np.abs(h) > STEP_SCALE_LIMIT * np.asarray(x_scale), small.shape)
    suspect = suspect | beyond_scale
    if stencil.symmetric:
        curv = {m: (f[m] + f[-m]) / 2 - f[0.0] for m in (lo, mid, hi)}
        c_noise = {m: ROUND_UNITS * eps * ((a[m] + a[-m]) / 2 + a[0.0]) for m in (lo, mid, hi)}
        for m_small, m_large in ((lo, mid), (mid, hi)):
            seen = np.abs(curv[m_small]) > REGIME_NOISE * (c_noise[m_small] + c_noise[m_large])
            suspect = suspect | (seen & (np.abs(curv[m_large]) < 2.0 * np.abs(curv[m_small])))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(small > 0, large / np.where(small > 0, small, 1.0), np.inf)
    estimate = TRUNCATION_SAFETY * small * 2.0 ** p / (2.0 ** p - 1) + n_mid
    return RegimeCheck(estimate, suspect, ratio, small, large, beyond_scale)


# --- user steps -----------------------------------------------------------------------------

def check_step(step: Any, name: str | None = None) -> Any:
    """A user's step, validated: None, a positive finite number, an array of them, or (at
    the top level) a dict {input name: any of those}. Anything else is an InputError
    naming the offending value (a zero, negative, NaN or infinite step has no meaning)."""
    where = "numeric step" if name is None else f"numeric step for {name!r}"
    if step is None:
        return None
    if isinstance(step, Mapping):
        if name is not None:
            raise InputError(f"{where} must be a number or an array, not a nested dict")
        for key in step:
            if not isinstance(key, str):
                raise InputError(f"numeric step dict keys must be input names, got {key!r}")
        return {key: check_step(value, key) for key, value in step.items()}
    if isinstance(step, (bool, np.bool_)):
        raise InputError(f"{where} must be a positive number, got {step!r}")
    try:
        arr = np.asarray(step, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where} must be a positive number, an array of them or a dict "
                         f"{{input name: step}}; got {step!r}") from None
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        if arr.ndim == 0:
            raise InputError(f"{where} must be positive and finite, got {float(arr)!r}")
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{where} must be positive and finite everywhere; got {float(arr[idx])!r} "
                         f"at index {idx} ({int(bad.sum())} of {arr.size} entries are not)")
    return arr if arr.ndim else float(arr)


def step_for(step: Any, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The (validated) user step of input ``name`` as an array of its shape (None: the
    rule's step); an InputError when the step's shape does not broadcast to the input's."""
    user = check_step(step.get(name) if isinstance(step, Mapping) else step, name)
    if user is None:
        return None
    arr = np.asarray(user, dtype=np.float64)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        hint = "" if isinstance(step, Mapping) else (
            "; a step array applies to every differentiated input, give a dict "
            "{input name: step} for inputs of different shapes")
        raise InputError(f"numeric step for {name!r} has shape {arr.shape}, which does not "
                         f"broadcast to the input's shape {shape} (give a number, or an array "
                         f"of shape {shape}){hint}") from None


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
    # truncation −h² f‴/6 is nine times larger at 3h, so the gap is 8 times d's truncation;
    # at the default step (1e-20) truncation vanishes and the gap is round-off alone: the
    # imaginary parts at h and 3h round differently (at 2h they would round exactly alike),
    # so twice the gap bounds both. The floor is a few ulps of the largest component: a
    # component that is a sum of larger terms (a weight's gradient over a batch) is only
    # accurate to ulps of those terms
    gap = np.abs(d - f[3.0] / (3 * h))
    scale = np.abs(d) + np.max(np.abs(d), axis=0, keepdims=True)
    return d, TRUNCATION_SAFETY * gap + ROUND_UNITS * eps * scale


def complex_shared_roundoff(errors: list[np.ndarray], largest_node: int) -> np.ndarray:
    """The part of the complex step's round-off that no single component's samples show.

    Im f(x + ih)/h is the derivative of f *as evaluated in floating point*: the rounding of
    the real parts (a batch mean, a long sum with cancellation) moves every component's
    derivative, and it is the same at h and 3h, so the gap between them misses it. It is a
    property of the whole evaluation, not of one component: measured on the comparison
    report's denoiser it reaches ~10–25 ulps of ‖∇f‖∞ on components whose own (h, 3h) gap
    says 1. The bound added to every component is therefore ``COMPLEX_SHARED_UNITS ·
    log2(n)`` times the largest per-component estimate of the call (``errors``: one array
    per input, components along axis 0; n: the largest node's elements; pairwise
    summation's error grows like log2(n)). Returns it per output element."""
    big = np.max(np.stack([np.max(e, axis=0) for e in errors if e.size]), axis=0) \
        if any(e.size for e in errors) else np.zeros(())
    return COMPLEX_SHARED_UNITS * np.log2(max(int(largest_node), 1)) * big


def _central_weights(m: float) -> dict[float, float]:
    return {m: 0.5, -m: -0.5}


STENCILS: dict[str, Stencil] = {s.name: s for s in (
    Stencil("forward", (0.0, 1.0), (2.0,), _forward, 1 / 2, 1,
            description="(f(x+h) − f(x)) / h, error O(h)",
            weights=lambda m: {m: 1.0, 0.0: -1.0}),
    Stencil("backward", (0.0, -1.0), (-2.0,), _backward, 1 / 2, 1,
            description="(f(x) − f(x−h)) / h, error O(h)",
            weights=lambda m: {0.0: 1.0, -m: -1.0}),
    Stencil("central", (1.0, -1.0), (2.0, -2.0), _central, 1 / 3, 2,
            description="(f(x+h) − f(x−h)) / 2h, error O(h²)",
            weights=_central_weights, symmetric=True),
    Stencil("five_point", (-2.0, -1.0, 1.0, 2.0), (4.0, -4.0), _five_point, 1 / 5, 4,
            description="(f(x−2h) − 8f(x−h) + 8f(x+h) − f(x+2h)) / 12h, error O(h⁴)",
            weights=lambda m: {-2 * m: 1 / 12, -m: -8 / 12, m: 8 / 12, 2 * m: -1 / 12},
            symmetric=True),
    Stencil("richardson",
            tuple(s * 2.0 ** -k for k in range(RICHARDSON_LEVELS) for s in (1.0, -1.0)), (),
            _richardson, 1 / 7, 2 * RICHARDSON_LEVELS,
            description=f"central differences at {RICHARDSON_LEVELS} steps h/2^k, "
                        "extrapolated (Richardson/Ridders), error estimate per component",
            weights=_central_weights, regime_levels=(0.25, 0.5, 1.0), symmetric=True,
            weights_order=2, regime_bounds=False),
    Stencil("complex", (1.0,), (3.0,), _complex, None, 2, imaginary=True,
            description="Im f(x + ih) / h, no cancellation: machine precision",
            weights=lambda m: {m: 1.0}),
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


#: one-sided points (multiples of the signed step) of :func:`one_sided_with_estimate`
ONE_SIDED_POINTS = (1.0, 2.0, 4.0, 8.0)
#: its step rule: eps^(1/4) (a third-order formula) times max(|x|, 1)
ONE_SIDED_STEP_POWER = 1 / 4


def one_sided_with_estimate(f: np.ndarray, a: np.ndarray, h: np.ndarray, eps: float
                            ) -> tuple[np.ndarray, np.ndarray]:
    """A one-sided derivative from f at x, x+h, x+2h, x+4h, x+8h (``f`` and its magnitudes
    ``a`` stacked in that order along the first axis; h may be negative).

    D(h) = (−3 f(x) + 4 f(x+h) − f(x+2h)) / 2h is second order, D(h) = f′ + c₂h² + c₃h³ + …;
    T(h) = (4 D(h) − D(2h)) / 3 removes the h² term, leaving −(4/3) c₃h³, eight times
    larger at 2h: a seventh of |T(2h) − T(h)| estimates T(h)'s truncation (doubled for
    safety), plus T(h)'s round-off bound. Per component the one of D(h) (estimate: a third
    of |D(2h) − D(h)|, doubled, plus round-off) and T(h) with the smaller estimate wins, as
    in a Richardson tableau: where the third derivative is large over 8h, the plain
    formula is the better one. Used where a kink rules out one side of x.
    """
    f0, f1, f2, f4, f8 = f
    a0, a1, a2, a4, a8 = a

    def d(fa: np.ndarray, fb: np.ndarray, step: np.ndarray) -> np.ndarray:
        return (-3 * f0 + 4 * fa - fb) / (2 * step)

    def noise(aa: np.ndarray, ab: np.ndarray, step: np.ndarray) -> np.ndarray:
        return ROUND_UNITS * eps * (3 * a0 + 4 * aa + ab) / (2 * np.abs(step))

    d1, d2, d4 = d(f1, f2, h), d(f2, f4, 2 * h), d(f4, f8, 4 * h)
    t1, t2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
    n1 = noise(a1, a2, h)
    e_t = TRUNCATION_SAFETY * np.abs(t2 - t1) / 7 + (4 * n1 + noise(a2, a4, 2 * h)) / 3
    e_d = TRUNCATION_SAFETY * np.abs(d2 - d1) / 3 + n1
    plain = e_d < e_t
    return np.where(plain, d1, t1) + 0.0, np.where(plain, e_d, e_t)  # + 0.0: no −0
