"""``compare.training``: the same model trained by each engine; ``compare.model_case``."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff_lab import cli, compare, nn
from autodiff_lab.compare.training import TrainingResult
from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.studies.neuron import make_points


def _neuron_data(n: int = 40):
    X, y = make_points(n, 0)
    return X, y[:, None].astype(np.float64)


def _neuron(seed: int):
    return nn.SigmoidNeuron(2, dtype=np.float64, rng=seed)


@pytest.fixture(scope="module")
def neuron_result() -> TrainingResult:
    return compare.training(_neuron, nn.MSELoss(), _neuron_data(), engines=("tape", "symbolic", "numeric"),
                            steps=12, batch_size=20, optimizer=lambda p: nn.Adam(p, lr=0.1),
                            val_data=_neuron_data(10), metric=lambda m: 1.0, metric_name="one")


def test_three_engines_train_the_neuron_to_the_same_curve(neuron_result):
    r = neuron_result
    assert [row.status for row in r.rows] == ["ok", "ok", "ok"]
    curves = np.array([row.losses for row in r.rows])
    assert curves.shape == (3, 12)
    assert np.max(np.abs(curves - curves[0])) <= 1e-8
    assert r.max_loss_difference is not None and r.max_loss_difference <= 1e-8
    assert curves[0, -1] < curves[0, 0]  # it trains
    tape = r.row("tape")
    assert tape.vs_tape == 1.0 and tape.step_s > 0
    assert all(row.step_s > 0 and row.vs_tape > 0 for row in r.rows)
    assert all(row.val_loss is not None and row.metric == 1.0 for row in r.rows)
    assert r.parameters == 3 and r.model == "SigmoidNeuron"


def test_numeric_is_refused_with_the_number_of_evaluations_on_a_bigger_model():
    rng = np.random.default_rng(0)
    X = rng.random((16, 30))
    r = compare.training(lambda s: nn.Sequential(nn.Linear(30, 40, rng=s, dtype=np.float64),
                                                 nn.ReLU(), nn.Linear(40, 30, rng=s, dtype=np.float64)),
                         nn.MSELoss(), (X, X), engines=("tape", "numeric"), steps=3, batch_size=8,
                         max_numeric_evaluations=1000)
    row = r.row("numeric")
    params = 30 * 40 + 40 + 40 * 30 + 30
    assert row.status == "refused" and row.evaluations == 2 * params + 1
    assert row.refused_value == 2 * params + 1 and row.refused_limit == 1000
    assert f"{2 * params + 1:,}" in row.note
    assert r.row("tape").status == "ok" and r.max_loss_difference is None


def test_json_and_csv_round_trip(neuron_result, tmp_path):
    r = neuron_result
    assert TrainingResult.load_json(r.save_json(tmp_path / "t.json")) == r
    back = TrainingResult.load_csv(r.save_csv(tmp_path / "t.csv"), **r.meta())
    assert back == r
    assert back.rows[2].losses == r.rows[2].losses


def test_bad_arguments_are_our_errors():
    X, Y = _neuron_data()
    with pytest.raises(InputError, match="unknown engine"):
        compare.training(_neuron, nn.MSELoss(), (X, Y), engines=("jax",))
    with pytest.raises(InputError, match="steps"):
        compare.training(_neuron, nn.MSELoss(), (X, Y), steps=0)
    with pytest.raises(ShapeError):  # a wrong target shape is the data's fault, not a refusal
        compare.training(_neuron, nn.MSELoss(), (X, Y[:, 0]), steps=1, batch_size=4)


def test_model_case_feeds_accuracy_and_speed():
    model = nn.Sequential(nn.Linear(3, 4, rng=0, dtype=np.float64), nn.Tanh(),
                          nn.Linear(4, 2, rng=1, dtype=np.float64))
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 3)), rng.random((5, 2))
    case = compare.model_case(model, nn.MSELoss(), x, y)
    graph, values = case
    assert set(graph.parameters) == set(model.state_dict())
    acc = compare.accuracy(graph, values, engines="tape,matrix,central", reference="consensus")
    assert all(r.status == "ok" for r in acc.rows)
    spd = compare.speed(*case, engines="tape", timing_s=0.01)
    assert spd.rows[0].call_s > 0
    # the gradient is the one compile_step computes for training
    step = nn.compile_step(model, nn.MSELoss(), x, y)
    out = step(x, y)
    import autodiff_lab as adl
    g = adl.gradient(graph, values, engine="tape")
    for name, grad in out.grads.items():
        np.testing.assert_allclose(g.grads[name], grad, rtol=1e-12)
    with pytest.raises(InputError, match="nn.Module"):
        compare.model_case(lambda x: x, nn.MSELoss(), x, y)


def test_compare_neuron_quick_has_the_training_section(tmp_path):
    out = tmp_path / "out"
    assert cli.main(["compare", "neuron", "--quick", "--out", str(out), "--no-progress"]) == 0
    html = (out / "report.html").read_text()
    assert "Training with each engine" in html and "neuron/training.png" in html
    assert "per step ms" in html and "numeric (central differences)" in html
    assert (out / "neuron" / "training.svg").is_file()
    saved = TrainingResult.load_json(out / "neuron" / "training.json")
    assert [r.status for r in saved.rows] == ["ok", "ok", "ok"]
    assert saved.max_loss_difference <= 1e-8
