"""compile_step: one trace per batch shape, every engine, gradients set on the parameters,
prediction and evaluation in evaluation mode; and the brief's trace + gradient example."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn

RNG = np.random.default_rng(5)


def test_the_state_dict_example_works_with_every_engine():
    """g = adl.trace(loss(model(x), y)); adl.gradient(g, {**state_dict, x, y}) for each engine,
    BN in training mode included (its running statistics are not read, but may be given)."""
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, rng=1))
    loss = nn.MSELoss()
    X, Y = RNG.random((5, 3)), RNG.random((5, 2))
    g = adl.trace(lambda x, y: loss(model(x), y), x=X, y=Y)
    results = {E: adl.gradient(g, {**model.state_dict(), "x": X, "y": Y}, engine=E)
               for E in ("tape", "symbolic", "numeric")}
    names = {n for n, _ in model.named_parameters()}
    for E, r in results.items():
        assert names <= set(r.grads), E
        assert set(r.outputs) == {"out", "1.batch_mean", "1.batch_var"}
        for n in names:
            np.testing.assert_allclose(r.grads[n], results["tape"].grads[n], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("engine,options", [("tape", {}), ("tape", {"anomaly": False}),
                                            ("symbolic", {}), ("numeric", {})])
def test_step_sets_grads_and_retraces_per_batch_shape(engine, options):
    nn.manual_seed(0)
    model = nn.MLPClassifier(6, 4, 3)
    step = nn.compile_step(model, nn.CrossEntropyLoss(), RNG.random((8, 6)),
                           RNG.integers(0, 3, 8), engine=engine, **options)
    X, Y = RNG.random((11, 6)), RNG.integers(0, 3, 11)
    out_full = step(X[:8], Y[:8])
    out_last = step(X[8:], Y[8:])  # the smaller last batch of an epoch
    assert len(step.graphs) == 2
    assert out_full.batch_size == 8 and out_last.batch_size == 3
    assert isinstance(out_full.loss, float)
    assert set(out_last.grads) == {p.name for p in model.parameters()}
    for p in model.parameters():
        assert p.grad is out_last.grads[p.name] and p.grad.shape == p.shape
    reference = adl.gradient(step.graph_for(X[8:], Y[8:]),
                             {**model.state_dict(), "x": X[8:], "y": Y[8:]}, engine="tape")
    for name, grad in out_last.grads.items():
        np.testing.assert_allclose(grad, reference.grads[name], rtol=1e-6, atol=1e-9)
    step(X[:8], Y[:8])
    assert len(step.graphs) == 2  # cached


def test_parameters_are_read_at_every_call():
    model = nn.Linear(2, 1, bias=False)
    step = nn.compile_step(model, nn.MSELoss("sum"), np.ones((1, 2)), np.zeros((1, 1)))
    model.weight.data[...] = [[1.0, 2.0]]  # in place, as optimisers do
    assert step(np.ones((1, 2)), np.zeros((1, 1))).loss == pytest.approx(4.5)
    model.load_state_dict({"weight": np.array([[0.0, 1.0]])})
    out = step(np.ones((1, 2)), np.zeros((1, 1)))
    assert out.loss == pytest.approx(0.5)
    np.testing.assert_allclose(model.weight.grad, [[1.0, 1.0]])


def test_float32_model_casts_batches():
    model = nn.InpaintingMLP(8, 4, dtype="float32")
    step = nn.compile_step(model, nn.MSELoss(), RNG.random((4, 8)), RNG.random((4, 8)))
    out = step(RNG.random((4, 8)), RNG.random((4, 8)))  # float64 from the loaders
    assert all(g.dtype == np.float32 for g in out.grads.values())
    assert step.predict(RNG.random((3, 8))).dtype == np.float32


def test_predict_and_evaluate_use_evaluation_mode_and_restore_it():
    model = nn.Sequential(nn.Linear(3, 3, rng=0), nn.BatchNorm1d(3), nn.Dropout(0.5, rng=0))
    model(RNG.random((6, 3)))  # some running statistics
    step = nn.compile_step(model, nn.MSELoss())
    X, Y = RNG.random((10, 3)), RNG.random((10, 3))
    before = model.state_dict()
    pred = step.predict(X, batch_size=4)
    model.eval()
    np.testing.assert_allclose(pred, model(X), rtol=1e-12)
    full = float(nn.MSELoss()(model(X), Y))
    model.train()
    assert model.training and model[2].training
    assert step.evaluate(X, Y, batch_size=3) == pytest.approx(full, rel=1e-12)
    summed = nn.compile_step(model, nn.MSELoss("sum")).evaluate(X, Y, batch_size=3)
    model.eval()
    assert summed == pytest.approx(float(nn.MSELoss("sum")(model(X), Y)), rel=1e-12)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # evaluation changes no statistics


def test_bad_batches_are_our_errors():
    model = nn.MLPClassifier(4, 3, 2)
    step = nn.compile_step(model, nn.CrossEntropyLoss())
    with pytest.raises(adl.InputError, match="label 2 is out of range for 2 classes"):
        step(RNG.random((3, 4)), np.array([0, 2, 1]))
    with pytest.raises(adl.ShapeError, match=r"layer 'fc1'.*expects input \(N, 4\), got \(3, 5\)"):
        step(RNG.random((3, 5)), np.array([0, 1, 1]))
    with pytest.raises(adl.InputError, match="array of numbers"):
        step(np.array(["a", "b"]), np.array([0, 1]))
    with pytest.raises(adl.NotDifferentiableError, match="scalar"):
        nn.compile_step(nn.Linear(2, 2), lambda p, t: p - t)(np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(adl.InputError, match="unknown engine"):
        nn.compile_step(model, nn.CrossEntropyLoss(), engine="magic")


def test_a_plain_function_as_loss_and_specs_as_examples():
    model = nn.Linear(3, 1, rng=0)
    step = nn.compile_step(model, lambda p, t: adl.sum((p - t) ** 2), adl.spec((4, 3)), (4, 1))
    assert len(step.graphs) == 1
    out = step(np.ones((4, 3)), np.zeros((4, 1)))
    pred = np.ones((4, 3)) @ model.weight.data.T + model.bias.data
    assert out.loss == pytest.approx(float(np.sum(pred ** 2)))
