"""Every op's ``batched`` rule against its own forward, copy by copy.

The numeric engine evaluates many perturbed copies in one call: every value carries
``lead`` extra leading axes (the copies) in front of its own shape, and an operand that
was not perturbed carries them with size 1. A batched rule must then give exactly what
stacking ``op.forward`` over the copies gives, whatever the operands' own ranks and batch
axes are. That is easy to get wrong (a matmul that lets numpy line up the copies' axis with
the user's batch axis mixes copies silently), so this file sweeps every op in the op table:
each op with a ``batched`` rule must have sample cases in ``SAMPLES`` (a new op without one
fails ``test_every_batched_op_has_sample_cases``), the cases cover user batch axes, size-1
broadcast axes, operands of different ranks and every attribute, and each case runs with
lead = 1 and 2 and with several operands carrying size-1 lead axes.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.graph.optable import OPS


@dataclass(frozen=True)
class Case:
    """Operand shapes (None: an optional operand left out) and attributes of one call."""

    shapes: tuple[tuple[int, ...], ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    #: operands that must be positive (log, sqrt, a variance, a divisor)
    positive: tuple[int, ...] = ()
    #: integer operands: index -> number of classes (labels are drawn below it)
    labels: dict[int, int] = field(default_factory=dict)


BINARY = [
    Case(((3, 4), (3, 4)), positive=(1,)),
    Case(((2, 3, 4), (4,)), positive=(1,)),
    Case(((4,), (2, 3, 4)), positive=(1,)),
    Case(((), (3,)), positive=(1,)),
    Case(((2, 3), ()), positive=(1,)),
    Case(((3, 1), (1, 4)), positive=(1,)),
    Case(((2, 1, 4), (3, 1)), positive=(1,)),
    Case(((1, 3, 4), (4,)), positive=(1,)),
    Case(((5,), (2, 1, 5)), positive=(1,)),
]
UNARY_SHAPES = [(), (3,), (2, 3, 4), (1, 3, 1)]
POSITIVE_UNARY = {"log", "sqrt", "reciprocal"}


def _unary(name: str, attr_sets: list[dict[str, Any]] | None = None,
           positive: bool = False) -> list[Case]:
    return [Case((s,), dict(a), positive=(0,) if positive else ())
            for s in UNARY_SHAPES for a in (attr_sets or [{}])]


def _reductions() -> list[Case]:
    cases = [Case(((),), {"axes": (), "keepdims": k}) for k in (False, True)]
    for shape, axes_list in (((5,), [(-1,)]),
                             ((2, 3, 4), [(-1,), (-2,), (-3,), (-3, -1), (-3, -2, -1)]),
                             ((1, 3, 1), [(-3,), (-2,), (-3, -2, -1)])):
        for axes in axes_list:
            for keepdims in (False, True):
                cases.append(Case((shape,), {"axes": axes, "keepdims": keepdims}))
    return cases


def _key(*items: Any) -> tuple:
    out = []
    for item in items:
        if item is None:
            out.append(("newaxis",))
        elif isinstance(item, slice):
            out.append(("slice", item.start, item.stop, item.step))
        else:
            out.append(("int", item))
    return tuple(out)


SAMPLES: dict[str, list[Case]] = {
    **{name: BINARY for name in ("add", "sub", "mul", "div", "maximum", "minimum")},
    **{name: _unary(name, positive=name in POSITIVE_UNARY)
       for name in ("neg", "reciprocal", "exp", "log", "sqrt", "sin", "cos", "tanh", "sigmoid",
                    "relu", "abs")},
    "leaky_relu": _unary("leaky_relu", [{"alpha": 0.01}, {"alpha": 0.3}]),
    "pow": _unary("pow", [{"exponent": 2.0}, {"exponent": 3.0}, {"exponent": -1.0},
                          {"exponent": 0.5}, {"exponent": 0.0}], positive=True),
    "sum": _reductions(), "mean": _reductions(), "max": _reductions(),
    "reshape": [Case(((2, 3, 4),), {"shape": (6, 4)}), Case(((4,),), {"shape": (2, 2)}),
                Case(((1, 3),), {"shape": (3,)}), Case(((),), {"shape": (1, 1)}),
                Case(((2, 6),), {"shape": (3, 1, 4)}), Case(((1,),), {"shape": ()})],
    "transpose": [Case(((2, 3, 4),), {"axes": (2, 0, 1)}), Case(((3, 4),), {"axes": (1, 0)}),
                  Case(((1, 3, 4),), {"axes": (1, 2, 0)}), Case(((3,),), {"axes": (0,)}),
                  Case(((2, 1, 3, 4),), {"axes": (3, 1, 0, 2)})],
    "broadcast_to": [Case(((4,),), {"shape": (2, 3, 4)}), Case(((3, 1),), {"shape": (3, 4)}),
                     Case(((),), {"shape": (2, 2)}), Case(((1, 4),), {"shape": (2, 3, 4)}),
                     Case(((2, 1, 4),), {"shape": (2, 3, 4)}), Case(((3,),), {"shape": (3,)})],
    "index": [Case(((3, 4),), {"key": _key(1)}),
              Case(((2, 3, 4),), {"key": _key(slice(None), -1)}),
              Case(((2, 3, 4),), {"key": _key(None, 0, slice(1, None, 2))}),
              Case(((5,),), {"key": _key(slice(None, None, -2))}),
              Case(((1, 3, 4),), {"key": _key(0, slice(None), None)}),
              Case(((3,),), {"key": _key(2)})],
    "concatenate": [Case(((2, 3), (2, 1)), {"axis": -1}),
                    Case(((2, 3), (1, 3), (4, 3)), {"axis": -2}),
                    Case(((2, 2, 3), (1, 2, 3)), {"axis": -3}),
                    Case(((3,),), {"axis": -1}),
                    Case(((1, 2, 3), (1, 2, 2)), {"axis": -1})],
    "matmul": [Case(s) for s in (
        ((3, 4), (4,)), ((1, 3, 4), (4,)), ((2, 3, 4), (4,)), ((2, 1, 3, 4), (4,)),
        ((4,), (4, 3)), ((4,), (2, 4, 3)), ((4,), (1, 4, 3)), ((4,), (4,)),
        ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 5)),
        ((2, 1, 3, 4), (3, 4, 2)), ((2, 3, 4), (2, 4, 1)), ((1, 4), (4, 1)))],
    "conv2d": [
        Case(((2, 3, 5, 5), (4, 3, 3, 3), (4,))),
        Case(((2, 3, 5, 5), (4, 3, 3, 3)),
             {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 1}),
        Case(((1, 4, 6, 5), (6, 2, 2, 3), (6,)),
             {"stride": (1, 2), "padding": (0, 1), "dilation": (2, 1), "groups": 2}),
        Case(((2, 3, 4, 4), (3, 1, 3, 3)), {"padding": (1, 1), "groups": 3}),
    ],
    "conv_transpose2d": [
        Case(((2, 4, 3, 3), (4, 3, 3, 3), (3,))),
        Case(((2, 4, 3, 3), (4, 3, 3, 3)),
             {"stride": (2, 2), "padding": (1, 0), "output_padding": (1, 0),
              "dilation": (1, 1), "groups": 1}),
        Case(((1, 4, 3, 2), (4, 2, 2, 3), (4,)),
             {"stride": (1, 2), "padding": (0, 1), "output_padding": (0, 1),
              "dilation": (2, 1), "groups": 2}),
    ],
    "max_pool2d": [Case(((2, 3, 5, 5),), {}),
                   Case(((1, 2, 5, 6),), {"kernel": (3, 3), "stride": (1, 2), "padding": (1, 1)}),
                   Case(((2, 1, 4, 4),), {"kernel": (2, 1), "stride": (2, 1), "padding": (1, 0)})],
    "avg_pool2d": [Case(((2, 3, 5, 5),), {}),
                   Case(((1, 2, 5, 6),), {"kernel": (3, 3), "stride": (1, 2), "padding": (1, 1)}),
                   Case(((2, 1, 4, 4),), {"kernel": (2, 1), "stride": (2, 1), "padding": (1, 0)})],
    "upsample": [Case(((2, 3, 4, 4),), {"scale": (2, 2)}), Case(((3, 2),), {"scale": (1, 3)}),
                 Case(((2, 1, 2, 3),), {"scale": (3, 1)})],
    "upsample_bilinear": [Case(((2, 3, 4, 4),), {"scale": (2, 2)}),
                          Case(((3, 2),), {"scale": (1, 3)}),
                          Case(((2, 1, 1, 3),), {"scale": (3, 2)}),
                          Case(((1, 2, 3, 1),), {"scale": (4, 1)})],
    "batch_stats": [Case(((4, 3),)), Case(((2, 3, 4, 4),))],
    "batch_norm": [
        Case(((4, 3), (3,), (3,)), {"training": True, "eps": 1e-5}),
        Case(((2, 3, 4, 4), (3,), (3,)), {"training": True, "eps": 0.1}),
        Case(((1, 2, 3, 3), (2,), (2,)), {"training": True, "eps": 1e-5}),
        Case(((4, 3), (3,), (3,), (3,), (3,)), {"training": False, "eps": 1e-5},
             positive=(4,)),
        Case(((2, 3, 2, 2), (3,), (3,), (3,), (3,)), {"training": False, "eps": 0.1},
             positive=(4,)),
    ],
    "softmax": [Case(((3, 4),), {"axis": -1}), Case(((3, 4),), {"axis": -2}),
                Case(((2, 3, 4),), {"axis": -2}), Case(((5,),), {"axis": -1}),
                Case(((1, 3, 1),), {"axis": -3})],
    "log_softmax": [Case(((3, 4),), {"axis": -1}), Case(((3, 4),), {"axis": -2}),
                    Case(((2, 3, 4),), {"axis": -2}), Case(((5,),), {"axis": -1}),
                    Case(((1, 3, 1),), {"axis": -3})],
    "softmax_cross_entropy": [
        Case(((4, 5), (4,)), {"reduction": red}, labels={1: 5}) for red in ("mean", "sum")
    ] + [Case(((2, 3, 5), (2, 3)), {"reduction": "mean"}, labels={1: 5}),
         Case(((5,), ()), {"reduction": "sum"}, labels={1: 5}),
         Case(((1, 3, 2), (1, 3)), {"reduction": "mean"}, labels={1: 2})],
    "dropout": [Case(((3, 4), (3, 4)), {"p": p}, labels={1: 2}) for p in (0.5, 0.2)]
    + [Case(((2, 3, 4, 4), (1, 3, 1, 1)), {"p": 0.5}, labels={1: 2}),
       Case(((1, 3, 2), (1, 3, 2)), {"p": 0.0}, labels={1: 2})],
    "mse": [Case(((3, 4), (3, 4)), {"reduction": red}) for red in ("sum", "mean")]
    + [Case(((), ()), {"reduction": "sum"}), Case(((2, 1, 3), (2, 1, 3)), {"reduction": "mean"})],
    "l1": [Case(((3, 4), (3, 4)), {"reduction": red}) for red in ("sum", "mean")]
    + [Case(((), ()), {"reduction": "sum"}), Case(((2, 1, 3), (2, 1, 3)), {"reduction": "mean"})],
}

#: the copies' axes: lead = 1 and lead = 2, and the size-1 forms an unperturbed operand has
LEADS = {1: [(3,), (1,)], 2: [(2, 3), (1, 1), (1, 3), (2, 1)]}


def _batched_ops() -> list[str]:
    return [name for name, op in OPS.items() if op.batched is not None]


def _operands(case: Case, rng: np.random.Generator, complex_step: bool) -> list[np.ndarray]:
    xs = []
    for i, s in enumerate(case.shapes):
        if i in case.labels:
            xs.append(rng.integers(0, case.labels[i], size=s))
            continue
        x = rng.standard_normal(s)
        if i in case.positive:
            x = np.abs(x) + 0.5
        if complex_step:
            x = x + 1e-3j * rng.standard_normal(s)
        xs.append(x)
    return xs


def _lead_patterns(lead: int, n: int) -> list[tuple[tuple[int, ...], ...]]:
    """Which lead shape each of n operands carries: all full, all size 1, and every
    operand in turn with each size-1 form while the others are full (and the reverse)."""
    full, *ones = LEADS[lead]
    patterns = {(full,) * n, (ones[0],) * n}
    for i in range(n):
        for small in ones:
            patterns.add(tuple(small if j == i else full for j in range(n)))
            patterns.add(tuple(full if j == i else small for j in range(n)))
    return sorted(patterns)


def _stack(x: np.ndarray, lead_shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Copies of x along ``lead_shape``, each slightly different (as perturbed copies are)."""
    copies = np.broadcast_to(x, lead_shape + x.shape).copy()
    if x.dtype.kind in "fc" and int(np.prod(lead_shape)) > 1:
        copies = copies + 1e-2 * rng.standard_normal(copies.shape) * np.abs(copies)
    return copies


def _copy_by_copy(op: Any, lead: int, stacked: list[np.ndarray], attrs: dict[str, Any]
                  ) -> np.ndarray:
    batch = np.broadcast_shapes(*(a.shape[:lead] for a in stacked))
    outs = []
    for idx in np.ndindex(batch):
        picked = [a[tuple(i if s > 1 else 0 for i, s in zip(idx, a.shape[:lead]))] for a in stacked]
        outs.append(np.asarray(op.forward(*picked, **attrs)))
    return np.stack(outs).reshape(batch + outs[0].shape)


def _check_case(name: str, case: Case, complex_step: bool) -> int:
    op = OPS[name]
    op.shape(*case.shapes, **case.attrs)  # the sample case itself must be a valid call
    rng = np.random.default_rng(zlib.crc32(repr((name, case, complex_step)).encode()))
    base = _operands(case, rng, complex_step)
    checked = 0
    for lead in LEADS:
        patterns = _lead_patterns(lead, len(base))
        if complex_step:  # the complex step runs the same rules: a few patterns suffice
            patterns = patterns[:2]
        for pattern in patterns:
            stacked = [_stack(x, p, rng) for x, p in zip(base, pattern)]
            expected = _copy_by_copy(op, lead, stacked, case.attrs)
            where = (f"{name}{case.shapes} attrs={case.attrs} lead={lead} "
                     f"lead shapes={pattern} complex={complex_step}")
            try:
                got = np.asarray(op.batched(lead, *(a.copy() for a in stacked), **case.attrs))
            except NotImplementedError:
                continue  # documented fallback: the interpreter loops over the copies
            assert got.shape == expected.shape, f"{where}: shape {got.shape}, expected {expected.shape}"
            np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12, err_msg=where)
            checked += 1
    return checked


def test_every_batched_op_has_sample_cases():
    missing = [name for name in _batched_ops() if not SAMPLES.get(name)]
    assert not missing, (f"op(s) {missing} have a batched rule but no sample case in "
                         "tests/engines/test_batched_rules.py::SAMPLES; add cases with user "
                         "batch axes, size-1 axes and every attribute")
    unknown = [name for name in SAMPLES if name not in OPS]
    assert not unknown, f"SAMPLES names ops the table does not have: {unknown}"


def test_sample_cases_cover_every_attribute():
    """Each attribute of an op takes at least two values across its cases (or its one
    possible value), so a rule that mishandles a non-default attribute is exercised."""
    thin = []
    for name in _batched_ops():
        for attr in OPS[name].attrs:
            seen = {repr(c.attrs.get(attr, OPS[name].attrs[attr])) for c in SAMPLES[name]}
            if len(seen) < 2:
                thin.append((name, attr, seen))
    assert not thin, f"attributes with a single value in the sample cases: {thin}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_batched_rule_equals_forward_copy_by_copy(name):
    if OPS[name].batched is None:
        pytest.skip(f"{name} has no batched rule (the interpreter loops)")
    checked = 0
    for case in SAMPLES[name]:
        checked += _check_case(name, case, complex_step=False)
        if OPS[name].complex_safe and not case.labels:
            _check_case(name, case, complex_step=True)
    assert checked, f"{name}: every case fell back to the loop; the batched rule never ran"


@pytest.mark.parametrize("a_shape", [(1, 3, 4), (2, 3, 4)])
def test_matmul_with_user_batch_axes_numeric_equals_tape(a_shape):
    g = adl.trace(lambda A, v: adl.sum(adl.tanh(A @ v)), A=a_shape, v=(4,))
    rng = np.random.default_rng(0)
    values = {"A": rng.standard_normal(a_shape), "v": rng.standard_normal(4)}
    tape = adl.gradient(g, values, engine="tape")
    for method in ("central", "complex"):
        r = adl.gradient(g, values, engine="numeric", method=method)
        for k in ("A", "v"):
            np.testing.assert_allclose(r.grads[k], tape.grads[k], rtol=1e-8, atol=1e-10,
                                       err_msg=f"{method} d/d{k}")
            assert np.all(np.abs(r.grads[k] - tape.grads[k]) <= r.error_estimate[k] + 1e-14)
    assert adl.gradcheck(g, values).ok


@pytest.mark.parametrize("fn, shapes", [
    (lambda a, b: adl.sum(adl.sin(b @ a)), {"a": (2, 4, 3), "b": (4,)}),
    (lambda a, b: adl.sum(adl.tanh(a @ b)), {"a": (2, 1, 3, 4), "b": (3, 4, 2)}),
    (lambda a, b: adl.sum(adl.exp(a * b) * 0.1), {"a": (2, 3, 4), "b": (4,)}),
    (lambda a, b: adl.sum(adl.softmax(adl.concatenate([a, b[None] * 2.0], axis=0), axis=0)
                          * a[0]), {"a": (2, 3), "b": (3,)}),
])
def test_mixed_rank_graphs_numeric_equals_tape(fn, shapes):
    g = adl.trace(fn, **shapes)
    rng = np.random.default_rng(1)
    values = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tape = adl.gradient(g, values, engine="tape")
    r = adl.gradient(g, values, engine="numeric", method="central")
    for k in shapes:
        np.testing.assert_allclose(r.grads[k], tape.grads[k], rtol=1e-7, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("perturbed", ["x", "w", "b"])
def test_conv_gradients_batched_equal_looped(perturbed):
    shapes = {"x": (2, 2, 4, 4), "w": (3, 2, 3, 3), "b": (3,)}
    def fn(x, w, b):
        y = adl.tanh(adl.conv2d(x, w, b, padding=1))                    # (2, 3, 4, 4)
        z = adl.conv_transpose2d(y, w, b[:2] * 0.5, stride=2, padding=1)  # (2, 2, 7, 7)
        return adl.sum(adl.sin(z))

    g = adl.trace(fn, **shapes)
    rng = np.random.default_rng(2)
    values = {k: rng.standard_normal(s) for k, s in shapes.items()}
    program = adl.engine("numeric", estimate_error=False).compile(g, wrt=[perturbed])
    looped = adl.engine("numeric", estimate_error=False, batch_size=1).compile(g, wrt=[perturbed])
    a, b = program(values), looped(values)
    assert a.info["forward_calls"] < b.info["forward_calls"]
    # the same copies, summed in another order: equal up to round-off of f / h (~1e-9)
    np.testing.assert_allclose(a.grads[perturbed], b.grads[perturbed], rtol=1e-7, atol=1e-8)
    tape = adl.gradient(g, values, engine="tape")
    np.testing.assert_allclose(a.grads[perturbed], tape.grads[perturbed], rtol=1e-6, atol=1e-8)


def test_lead_patterns_include_size_one_operands():
    pats = _lead_patterns(2, 2)
    assert ((2, 3), (1, 1)) in pats and ((1, 3), (2, 3)) in pats and ((2, 3), (2, 3)) in pats
    assert all(len(p) == 2 for p in pats)
    assert len(list(itertools.chain.from_iterable(SAMPLES.values()))) > 100


# --- kink coordinates (what the numeric engine compares to see a stencil cross a kink) ---

def _kinked_ops() -> list[str]:
    return sorted(name for name, op in OPS.items() if op.kink is not None)


def _coord_copy_by_copy(op: Any, lead: int, stacked: list[np.ndarray], attrs: dict[str, Any]
                        ) -> np.ndarray | None:
    batch = np.broadcast_shapes(*(a.shape[:lead] for a in stacked))
    outs = []
    for idx in np.ndindex(batch):
        picked = [a[tuple(i if s > 1 else 0 for i, s in zip(idx, a.shape[:lead]))] for a in stacked]
        c = op.kink_coord(0, *picked, **attrs)
        if c is None:
            return None
        outs.append(np.asarray(c))
    return np.stack(outs).reshape(batch + outs[0].shape)


@pytest.mark.parametrize("name", _kinked_ops())
def test_kink_coordinates_batched_equal_copy_by_copy(name):
    """The engine reads kink coordinates of perturbed copies in the batched call: with
    lead axes they must be the coordinates of each copy, stacked."""
    op = OPS[name]
    for case in SAMPLES[name]:
        rng = np.random.default_rng(zlib.crc32(repr((name, case, "kink")).encode()))
        base = _operands(case, rng, False)
        for lead in LEADS:
            for pattern in _lead_patterns(lead, len(base)):
                stacked = [_stack(x, p, rng) for x, p in zip(base, pattern)]
                expected = _coord_copy_by_copy(op, lead, stacked, case.attrs)
                got = op.kink_coord(lead, *(a.copy() for a in stacked), **case.attrs)
                where = f"{name}{case.shapes} attrs={case.attrs} lead={lead} lead shapes={pattern}"
                if expected is None:
                    assert got is None, where
                    continue
                got = np.asarray(got)
                assert got.shape == expected.shape, f"{where}: {got.shape} vs {expected.shape}"
                np.testing.assert_array_equal(got, expected, err_msg=where)


@pytest.mark.parametrize("name", _kinked_ops())
def test_kink_is_a_zero_kink_coordinate(name):
    """``kink`` (the inputs sit on a kink) and ``kink_coord`` (0 exactly on a kink) agree,
    on inputs with ties and zeros and on inputs without."""
    op = OPS[name]
    for case in SAMPLES[name]:
        rng = np.random.default_rng(zlib.crc32(repr((name, case, "zero")).encode()))
        for rounded in (False, True):
            xs = _operands(case, rng, False)
            if rounded:  # integers: zeros and ties everywhere
                xs = [np.round(x) if i not in case.positive else x for i, x in enumerate(xs)]
            coord = op.kink_coord(0, *xs, **case.attrs)
            on = False if coord is None else bool(np.any(np.asarray(coord) == 0))
            assert op.kink(*xs, **case.attrs) == on, (name, case, rounded)
