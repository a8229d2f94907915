"""The comparison library on tiny graphs: engine names, references, accuracy, speed, scaling,
and the JSON/CSV round trip of every result."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.compare import (
    AccuracyResult,
    ScalingResult,
    SpeedResult,
    accuracy,
    measure,
    scaling,
    speed,
)
from autodiff_lab.compare.harness import EngineConfig, parse_engines, rel_error
from autodiff_lab.compare.reference import (
    compute_reference,
    consensus_reference,
    extended_reference,
    longdouble_is_extended,
)
from autodiff_lab.examples import mlp, scalar_chain, sigmoid_neuron


def test_engine_names_families_and_errors():
    keys = [c.key for c in parse_engines("tape,symbolic,central")]
    assert keys == ["tape", "symbolic-matrix", "symbolic-expanded", "numeric-central"]
    assert [c.key for c in parse_engines("numeric_complex, matrix")] == ["symbolic-matrix",
                                                                        "numeric-complex"]
    assert len(parse_engines(None)) == 8
    for bad in ("", " , ", "tape,hessian"):
        with pytest.raises(adl.InputError, match="choose from families tape, symbolic, numeric"):
            parse_engines(bad)


def test_accuracy_against_mpmath_on_the_neuron():
    ex = sigmoid_neuron()
    acc = accuracy(ex.graph, ex.values, engines="tape,matrix,expanded,central,complex",
                   timing_s=0.01)
    assert acc.reference_kind == "mpmath" and "50 significant digits" in acc.reference
    rows = {r.engine: r for r in acc.rows}
    assert all(r.status == "ok" for r in rows.values())
    # the reference is finer than float64: correctly rounded float64 shows a few 1e-17
    assert 0 < rows["tape"].rel_error < 2e-16 and rows["symbolic-matrix"].rel_error < 2e-16
    assert 1e-13 < rows["numeric-central"].rel_error <= rows["numeric-central"].est_error
    assert rows["numeric-complex"].rel_error < 1e-15


def test_speed_has_compile_call_and_forward_apart():
    ex = scalar_chain()
    spd = speed(ex.graph, ex.values, engines="tape,central", timing_s=0.01)
    assert spd.forward_s > 0
    for r in spd.rows:
        assert r.status == "ok" and r.compile_s >= 0 and r.call_s > 0 and r.repeats >= 3
        assert r.call_min_s <= r.call_s <= r.call_max_s
        assert r.per_forward == pytest.approx(r.call_s / spd.forward_s)
        assert r.memory_bytes is not None and r.memory_bytes > 0
    assert spd.row("numeric-central").evaluations > spd.row("tape").evaluations == 1


@pytest.mark.skipif(not longdouble_is_extended(), reason="long double is float64 here")
def test_extended_reference_agrees_with_mpmath_and_is_no_engine():
    ex = mlp(d_in=4, hidden=3, batch=2)
    wrt = list(ex.graph.parameters)
    exact = compute_reference(ex.graph, ex.values, wrt, "mpmath")
    ext = extended_reference(ex.graph, ex.values, wrt)
    assert ext.kind == "extended" and all(g.dtype == np.longdouble for g in ext.grads.values())
    assert rel_error(ext.grads, exact.grads) < 1e-17  # far below float64's 1e-16
    tape = adl.gradient(ex.graph, ex.values, wrt=wrt).grads
    assert 1e-18 < rel_error(tape, exact.grads) < 1e-15


def test_auto_reference_falls_back_and_says_why():
    ex = mlp(d_in=30, hidden=8, batch=4)
    wrt = list(ex.graph.parameters)
    ref = compute_reference(ex.graph, ex.values, wrt)
    assert ref.kind == ("extended" if longdouble_is_extended() else "consensus")
    assert any("mpmath" in n for n in ref.notes)
    cons = consensus_reference(ex.graph, ex.values, wrt)
    assert cons.kind == "consensus" and "tape and symbolic matrix mode" in cons.description
    assert 0 < cons.uncertainty < 1e-14


def test_refusals_are_rows_with_their_numbers():
    ex = mlp(d_in=30, hidden=8, batch=4)
    tight = EngineConfig("numeric", {"method": "central", "progress": False,
                                     "max_evaluations": 100}, "numeric central", "numeric-central")
    acc, spd = measure(ex.graph, ex.values, engines=["symbolic-expanded", tight],
                       reference="consensus", timing_s=0.01, sample=8)
    exp, fd = acc.row("symbolic-expanded"), acc.row("numeric-central")
    assert exp.status == "refused" and exp.refused_unit == "operations"
    assert exp.refused_value > exp.refused_limit == 2e6 and "max_tree_size" in exp.note
    assert fd.status == "sampled" and 8 <= fd.checked <= 24 and fd.refused_unit == "evaluations"
    assert fd.refused_value == 1 + 4 * acc.parameters and fd.refused_limit == 100
    assert fd.rel_error is not None and fd.rel_error < 1e-6
    assert spd.row("numeric-central").projected and spd.row("numeric-central").call_s > 0


def test_budget_refuses_finite_differences_with_the_projected_time():
    ex = mlp(d_in=30, hidden=8, batch=4)
    acc, spd = measure(ex.graph, ex.values, engines="central", reference="consensus",
                       budget_s=1e-6, timing_s=0.01, sample=8)
    row = acc.row("numeric-central")
    assert row.status == "sampled" and row.refused_unit == "s" and row.refused_limit == 1e-6
    assert "over the budget" in row.note and spd.row("numeric-central").call_s == row.refused_value
    with pytest.raises(adl.InputError, match="positive"):
        measure(ex.graph, ex.values, engines="tape", budget_s=-1)


def test_scaling_grows_with_parameters_and_fits_slopes():
    result = scaling(lambda h: mlp(d_in=6, hidden=h, batch=2), [1, 4],
                     engines="tape,central", family="mlp", size_name="hidden",
                     timing_s=0.01, memory=False)
    fd = sorted((r for r in result.rows if r.engine == "numeric-central"), key=lambda r: r.size)
    assert [r.status for r in fd] == ["ok", "ok"]
    assert fd[1].evaluations > fd[0].evaluations and fd[1].parameters > fd[0].parameters
    assert {"tape", "numeric-central", "forward"} <= set(result.slopes())
    assert "hidden" in result.table() and "slopes" in result.table()


def _roundtrip(result, tmp_path):
    cls = type(result)
    result.save_json(tmp_path / "r.json")
    result.save_csv(tmp_path / "r.csv")
    assert cls.load_json(tmp_path / "r.json") == result
    assert cls.load_csv(tmp_path / "r.csv", **result.meta()) == result


def test_results_round_trip_through_json_and_csv(tmp_path):
    ex = sigmoid_neuron()
    acc, spd = measure(ex.graph, ex.values, engines="tape,expanded,central", timing_s=0.01)
    assert isinstance(acc, AccuracyResult) and isinstance(spd, SpeedResult)
    _roundtrip(acc, tmp_path)
    _roundtrip(spd, tmp_path)
    refused = measure(mlp(d_in=30, hidden=8, batch=4).graph, mlp(d_in=30, hidden=8, batch=4).values,
                      engines="tape,expanded", reference="consensus", timing_s=0.01)[0]
    _roundtrip(refused, tmp_path)  # None cells and notes with commas survive the CSV
    sc = scaling(lambda h: mlp(d_in=4, hidden=h, batch=2), [1, 2], engines="tape,expanded",
                 timing_s=0.01, memory=False)
    assert isinstance(sc, ScalingResult)
    _roundtrip(sc, tmp_path)
