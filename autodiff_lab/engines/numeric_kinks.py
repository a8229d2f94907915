"""Kinks in finite differences: seeing when a stencil straddles a non-differentiable point.

A finite-difference formula assumes f is smooth on the whole span of its stencil. A ReLU
network is only piecewise smooth: when x ± m·h lands on the other side of a relu, abs or
max than x itself, the formula mixes two slopes and its error estimate, which assumes
error ∝ h^p, is meaningless. The op table gives every op with a kink a *kink coordinate*
(``Op.kink_coord``): signed distances whose sign says which branch the op takes and which
are 0 exactly on a kink. The numeric engine evaluates them on the base point and, through
:func:`~autodiff_lab.graph.evaluate.run_forward`'s ``observe`` hook, on every perturbed copy
in the same batched calls that compute f, and compares signs here:

* a coordinate that changes sign between x and a stencil point is a *crossing*; linear
  interpolation between the two gives the distance from x to that kink along the step;
* a coordinate that is 0 at x and that the perturbation moves means x sits *on* a kink.

:class:`KinkStats` holds, per perturbed copy, the few numbers the engine needs from that
comparison (so nothing the size of a node is kept), :class:`KinkWatch` computes them, and
:func:`plan_sides` turns them into the safe reach on each side of every component.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import OPS, Op

#: a side whose first crossing was located by interpolation is trusted to this fraction of
#: the interpolated distance (coordinates are only piecewise linear in the step)
REACH_MARGIN = 0.5
#: coordinates within this many ulps of the largest coordinate of their op are "on the
#: kink within round-off": perturbed copies are not computed bit for bit like the base
#: point (a batched matmul or convolution sums in another order), so a sign change that
#: small says nothing, and which branch x is on is itself decided by rounding
NOISE_ULPS = 64.0


@dataclass
class KinkStats:
    """What the kink coordinates did at each perturbed copy, relative to the base point.

    ``frac``: the smallest t in (0, 1) at which a coordinate that changed sign crosses 0 on
    the segment from x to the copy (linear interpolation; inf: no coordinate changed sign),
    and ``node`` the node of that coordinate (-1: none). ``on_pos`` / ``on_neg``: coordinates
    that are 0 at x (on a kink) and positive / negative at the copy, of ops whose convention
    is ``"negative"`` (relu, leaky_relu); ``on_mean`` and ``on_other``: moved coordinates on
    a kink of ``"mean"`` ops and of ops without a convention, or within round-off of a kink
    without being exactly on it (see ``NOISE_ULPS``); ``on_node``: the first node with a
    moved coordinate on a kink (-1: none). For the complex step the sign of the imaginary
    part says which way the copy moved a coordinate on a kink; crossings cannot happen.
    """

    frac: np.ndarray
    node: np.ndarray
    on_pos: np.ndarray
    on_neg: np.ndarray
    on_mean: np.ndarray
    on_other: np.ndarray
    on_node: np.ndarray

    @classmethod
    def empty(cls, n: int) -> KinkStats:
        ints = {f.name: np.zeros(n, dtype=np.int64) for f in fields(cls)}
        ints.update(frac=np.full(n, np.inf), node=np.full(n, -1), on_node=np.full(n, -1))
        return cls(**ints)

    @classmethod
    def concat(cls, parts: Sequence[KinkStats]) -> KinkStats:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})

    def reshape(self, *shape: int) -> KinkStats:
        return KinkStats(**{f.name: getattr(self, f.name).reshape(shape) for f in fields(self)})

    def transpose(self) -> KinkStats:
        return KinkStats(**{f.name: getattr(self, f.name).T for f in fields(self)})

    @property
    def crossed(self) -> np.ndarray:
        return np.isfinite(self.frac)

    @property
    def on(self) -> np.ndarray:
        """Moved coordinates that sit on a kink at x."""
        return self.on_pos + self.on_neg + self.on_mean + self.on_other

    @property
    def counts(self) -> np.ndarray:
        """The four on-kink counts stacked along a new first axis."""
        return np.stack([self.on_pos, self.on_neg, self.on_mean, self.on_other])


@dataclass
class _Watched:
    node: int
    op: Op
    attrs: dict[str, Any]
    base: np.ndarray  # kink coordinates at x, flat
    far: np.ndarray   # bool: farther from the kink than round-off (a sign change counts)
    exact: np.ndarray  # indices of the coordinates exactly 0 (on a kink)
    near: np.ndarray  # indices of the others within round-off of 0
    noise: float      # the round-off level of this op's coordinates


class KinkWatch:
    """The kink coordinates of every kinked op on the differentiation path at the base
    point, and observers that compare the coordinates of perturbed copies with them."""

    def __init__(self, graph: Graph, nodes: Sequence[int], base: dict[int, np.ndarray]) -> None:
        self.watched: list[_Watched] = []
        for v in nodes:
            d = graph.node(v)
            op = OPS[d["op"]]
            coord = op.kink_coord(0, *(base[u] for u in graph.operands(v)), **d["attrs"])
            if coord is None:
                continue
            c0 = np.real(np.asarray(coord)).reshape(-1)
            finite = np.abs(c0[np.isfinite(c0)])
            eps = float(np.finfo(c0.dtype if c0.dtype.kind == "f" else np.float64).eps)
            noise = NOISE_ULPS * eps * float(finite.max(initial=0.0))
            far = np.abs(c0) > noise
            self.watched.append(_Watched(v, op, dict(d["attrs"]), c0, far,
                                         np.flatnonzero(c0 == 0),
                                         np.flatnonzero(~far & (c0 != 0)), noise))

    def __bool__(self) -> bool:
        return bool(self.watched)

    def observers(self, stats: KinkStats, rows: slice, imaginary: bool
                  ) -> dict[int, Callable[[list[np.ndarray], int], None]]:
        """``run_forward`` observers filling ``stats[rows]`` for the copies of one call."""
        n = rows.stop - rows.start

        def make(w: _Watched) -> Callable[[list[np.ndarray], int], None]:
            def observe(args: list[np.ndarray], lead: int) -> None:
                coord = w.op.kink_coord(lead, *args, **w.attrs)
                if coord is None:
                    return
                c = np.asarray(coord)
                if c.size == 0:
                    return
                c = c.reshape((1 if lead == 0 else c.shape[0], -1))
                if c.shape[0] != n:  # one copy for all: the perturbation does not reach it
                    return
                _update(stats, rows, w, c, imaginary)
            return observe

        return {w.node: make(w) for w in self.watched}


def _update(stats: KinkStats, rows: slice, w: _Watched, c: np.ndarray, imaginary: bool) -> None:
    if not imaginary:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            cross = ((w.base * c) < 0) & w.far
            if cross.any():
                t = np.where(cross, w.base / (w.base - c), np.inf)
                t = np.where(np.isnan(t), 0.5, t).min(axis=1)
                better = t < stats.frac[rows]
                stats.frac[rows] = np.where(better, t, stats.frac[rows])
                stats.node[rows] = np.where(better, w.node, stats.node[rows])
    for which in (w.exact, w.near):
        if not which.size:
            continue
        if imaginary:  # exact: a coordinate the perturbation does not reach has imaginary part 0
            moved = c[:, which].imag
            pos, neg = (moved > 0).sum(axis=1), (moved < 0).sum(axis=1)
        else:
            moved = c[:, which].real
            pos, neg = (moved > w.noise).sum(axis=1), (moved < -w.noise).sum(axis=1)
        # exactly on a kink the op's convention applies; within round-off of one, the side
        # x is on is decided by rounding, so no convention can be relied on
        convention = w.op.kink_convention if which is w.exact else None
        if convention == "negative":
            stats.on_pos[rows] += pos
            stats.on_neg[rows] += neg
        elif convention == "mean":
            stats.on_mean[rows] += pos + neg
        else:
            stats.on_other[rows] += pos + neg
        first = (stats.on_node[rows] < 0) & (pos + neg > 0)
        stats.on_node[rows] = np.where(first, w.node, stats.on_node[rows])


@dataclass
class SidePlan:
    """Per component: is the stencil clean, does it cross a kink, does x sit on one, and
    how far each side is known (or estimated) to be free of kinks."""

    crossed: np.ndarray   # bool: some stencil point is across a kink from x
    on_kink: np.ndarray   # bool: x sits on a kink this component moves
    reach: np.ndarray     # (2, n): safe distance on the + side [0] and the − side [1]
    node: np.ndarray      # the node to name (first crossing, or the kink x sits on)

    @property
    def flagged(self) -> np.ndarray:
        return self.crossed | self.on_kink


def plan_sides(stats: KinkStats, points: Sequence[float], h: np.ndarray) -> SidePlan:
    """Read the stencil's :class:`KinkStats` (arrays of shape (len(points), n)) for
    components with steps ``h`` (n,). A side with a crossing is safe up to
    ``REACH_MARGIN`` times the interpolated distance of its nearest crossing; a side whose
    points all stayed on x's side of every kink, or that the stencil does not visit
    (forward differences' − side), has no known limit (inf): the one-sided retry starts
    with its own rule's step there and shrinks it if the copies show a crossing."""
    pts = np.asarray(points, dtype=np.float64)
    dist = stats.frac * np.abs(pts)[:, None] * np.abs(h)[None, :]
    reach = np.full((2,) + h.shape, np.inf)
    for i, side in enumerate((1.0, -1.0)):
        on_side = np.sign(pts) == side
        if on_side.any():
            reach[i] = REACH_MARGIN * dist[on_side].min(axis=0)
    crossed = stats.crossed.any(axis=0)
    on_kink = stats.on.sum(axis=0) > 0
    first = np.argmin(stats.frac, axis=0)
    node = np.where(crossed, np.take_along_axis(stats.node, first[None], axis=0)[0], -1)
    on_node = np.max(stats.on_node, axis=0)
    node = np.where(on_kink, on_node, node)
    return SidePlan(crossed, on_kink, reach, node)


def convention_side(on_plus: np.ndarray, on_minus: np.ndarray) -> str | float:
    """Which value the engines' convention takes for a component on a kink, from the
    on-kink counts (``KinkStats.counts`` at the one-sided points of each side): +1.0 or −1.0
    (that side's derivative: every moved coordinate is of a ``"negative"`` op and negative
    on that side), ``"mean"`` (every moved coordinate is of a ``"mean"`` op) or ``""``
    (no single rule: a mixture, or an op without a convention)."""
    pos_p, neg_p, mean_p, other_p = (int(v) for v in on_plus)
    pos_m, neg_m, mean_m, other_m = (int(v) for v in on_minus)
    if other_p or other_m:
        return ""
    if not (pos_p or neg_p or pos_m or neg_m):
        return "mean" if (mean_p or mean_m) else ""
    if mean_p or mean_m:
        return ""
    if neg_p and not pos_p and pos_m and not neg_m:
        return 1.0
    if pos_p and not neg_p and neg_m and not pos_m:
        return -1.0
    return ""


__all__ = ["REACH_MARGIN", "KinkStats", "KinkWatch", "SidePlan", "convention_side", "plan_sides"]
