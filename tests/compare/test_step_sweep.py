"""The step sweep: the V of finite differences, the flat complex step, tables and plot."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.compare import step_sweep
from autodiff_lab.compare.step_sweep import SweepResult, plot_step_sweep
from autodiff_lab.examples import sigmoid_neuron

EXACT = 4.053427893898620658


@pytest.fixture(scope="module")
def squire_trapp_sweep() -> SweepResult:
    g = adl.trace(lambda x: adl.exp(x) / adl.sqrt(adl.sin(x) ** 3 + adl.cos(x) ** 3), x=())
    return step_sweep(g, {"x": 1.5}, exact=EXACT, name="Squire–Trapp")


def test_sweep_covers_1e_1_to_1e_16_for_every_method(squire_trapp_sweep):
    r = squire_trapp_sweep
    assert r.steps[0] == pytest.approx(1e-1) and r.steps[-1] == pytest.approx(1e-16)
    assert set(r.methods) == {"forward", "backward", "central", "five_point", "richardson",
                              "complex"}
    assert all(len(r.errors[m]) == len(r.steps) for m in r.methods)
    assert r.reference == "exact"


def test_finite_differences_draw_a_v(squire_trapp_sweep):
    r = squire_trapp_sweep
    for m in ("forward", "central", "five_point"):
        err = r.errors[m]
        best = int(np.nanargmin(err))
        assert 0 < best < len(err) - 2, m          # the bottom is inside the range
        assert err[0] > 100 * err[best] and np.nanmax(err[best:]) > 100 * err[best], m
    # below the spacing of x = 1.5 (2.2e-16) a real step cannot be taken: reported as NaN
    assert np.isnan(r.errors["central"][-1])


def test_complex_step_is_flat_at_machine_precision(squire_trapp_sweep):
    err = squire_trapp_sweep.errors["complex"]
    small = squire_trapp_sweep.steps <= 1e-8
    assert np.all(err[small] <= 1e-15)


def test_estimates_cover_the_errors_at_default_steps(squire_trapp_sweep):
    for m, d in squire_trapp_sweep.default.items():
        assert d["error"] <= d["estimate"], m
        assert d["evaluations"] >= 2


def test_tables_print_measured_and_estimated(squire_trapp_sweep):
    table = squire_trapp_sweep.table()
    assert "1e-08" in table and "[" in table and "five_point" in table
    summary = squire_trapp_sweep.summary()
    assert "richardson" in summary and "estimate" in summary


def test_tape_reference_and_plot(tmp_path):
    e = sigmoid_neuron()
    r = step_sweep(e.graph, e.values, methods=("central", "complex"), steps=[1e-2, 1e-5, 1e-8])
    assert r.reference == "tape engine"
    assert r.errors["central"][1] < 1e-9
    path = tmp_path / "sweep.png"
    fig = plot_step_sweep(r, path=path)
    assert path.stat().st_size > 1000
    assert len(fig.axes[0].lines) >= 4  # a line and a default-step star per method


def test_exact_for_several_inputs_needs_names():
    e = sigmoid_neuron()
    with pytest.raises(adl.InputError, match="input name"):
        step_sweep(e.graph, e.values, exact=0.1, steps=[1e-3])
