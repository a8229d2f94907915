"""The comparison report: rows, reference, refusals and files."""

import json

import numpy as np

from autodiff_lab.compare.harness import EngineConfig, Row, rel_error, run_config
from autodiff_lab.compare.report import (
    ReportCase,
    denoiser_case,
    format_table,
    inpainting_mlp_case,
    run_report,
)
from autodiff_lab.examples import scalar_chain, sigmoid_neuron

CONFIGS = (EngineConfig("tape", label="tape"),
           EngineConfig("symbolic", {"mode": "expanded"}, "symbolic expanded"),
           EngineConfig("numeric", {"method": "central"}, "numeric central"),
           EngineConfig("numeric", {"method": "complex"}, "numeric complex step"))


def test_report_on_scalar_graphs_against_the_mpmath_truth(tmp_path):
    cases = [ReportCase(sigmoid_neuron(), "mpmath-50"), ReportCase(scalar_chain(), "mpmath-50")]
    lines = []
    results = run_report(tmp_path, cases, CONFIGS, budget_s=0.01, echo=lines.append)
    rows = {r.engine: r for r in results["sigmoid_neuron"]}
    assert all(r.ok for r in rows.values())
    assert rows["tape"].rel_error < 1e-15 and rows["symbolic expanded"].rel_error < 1e-15
    assert rows["numeric complex step"].rel_error < 1e-15
    assert 1e-13 < rows["numeric central"].rel_error < 1e-8  # inexact, but not wildly
    assert rows["numeric central"].est_error >= rows["numeric central"].rel_error
    assert rows["numeric central"].evaluations > rows["tape"].evaluations == 1
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) == {"sigmoid_neuron", "scalar_chain"}
    assert "numeric central" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "error_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("rel. error" in line for line in lines)


def test_refusals_become_notes_with_their_reason():
    ex = inpainting_mlp_case(hidden=4, batch=2)
    row = run_config(ex.name, ex.graph, ex.values, CONFIGS[1], None, wrt=list(ex.graph.parameters))
    assert not row.ok and "matrix" in row.note
    table = format_table([row, Row("x", "tape", True, 1.0, 0.0, None, 0.1, 1.0, 0.5, 1)])
    assert "refused [1]" in table and "[1] expanded symbolic" in table


def test_case_study_examples_use_real_data_and_parameters_only():
    mlp = inpainting_mlp_case(hidden=4, batch=3)
    assert set(mlp.graph.parameters) == {"W1", "b1", "W2", "b2"}
    assert mlp.values["y"].shape == (196, 3) and 0 <= mlp.values["y"].min() <= mlp.values["y"].max() <= 1
    den = denoiser_case(batch=1, size=8)
    noise = den.values["noisy"] - den.values["clean"]
    assert abs(noise.std() - 25 / 255) < 0.03


def test_rel_error_is_normwise_over_all_inputs():
    ref = {"a": np.array([1.0, -4.0]), "b": np.array(2.0)}
    got = {"a": np.array([1.0, -4.0]), "b": np.array(2.4)}
    assert abs(rel_error(got, ref) - 0.1) < 1e-15  # 0.4 / 4
