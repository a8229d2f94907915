"""nn.fit: resume bit for bit, engines, refusal, divergence, health checks, checkpoints, outputs."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from autodiff_lab import nn
from autodiff_lab.errors import (
    CheckpointError,
    EvaluationLimitError,
    InputError,
    NonFiniteError,
    TrainingDiverged,
    TrainingInterrupted,
)
from autodiff_lab.nn import checkpoint as ckpt
from autodiff_lab.nn.health import directional_check

# --------------------------------------------------------------------------------------
# a small problem with every kind of state: BN running statistics, Dropout masks, Adam
# moments, a schedule, a transform drawing from the run's generator, a smaller last batch
# --------------------------------------------------------------------------------------

N, D, H, OUT, BS = 60, 4, 8, 2, 16  # 4 batches per epoch, the last one of 12 rows


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    Y = np.tanh(X @ rng.normal(size=(D, OUT)))
    return X, Y


def net(seed: int = 0) -> nn.Module:
    return nn.Sequential(nn.Linear(D, H, rng=seed), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.25),
                         nn.Linear(H, OUT, rng=seed + 1))


def noise(rng: np.random.Generator, xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return xb + 0.05 * rng.standard_normal(xb.shape), yb


def setup(seed: int = 0):
    model = net(seed)
    opt = nn.Adam(model.parameters(), lr=0.02)
    return model, opt, nn.StepLR(opt, step_size=1, gamma=0.7)


def train(out=None, epochs=3, resume=None, **kw):
    model, opt, sched = setup()
    X, Y = data()
    kw.setdefault("transform", noise)
    kw.setdefault("progress", False)
    kw.setdefault("plot", False)
    try:
        history = nn.fit(model, nn.MSELoss(), opt, (X, Y), (X[:20], Y[:20]), epochs=epochs,
                         batch_size=BS, scheduler=sched, out=out, resume=resume, **kw)
    except TrainingInterrupted as exc:
        return model, exc
    return model, history


def assert_same_run(model_a, hist_a, model_b, hist_b) -> None:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k
    assert hist_a.step_loss == hist_b.step_loss
    assert hist_a.train_loss == hist_b.train_loss
    assert hist_a.val_loss == hist_b.val_loss
    assert hist_a.lr == hist_b.lr
    assert hist_a.steps == hist_b.steps


@pytest.fixture(scope="module")
def reference():
    return train(epochs=3)


# --------------------------------------------------------------------------------------
# resuming ends with the same bits
# --------------------------------------------------------------------------------------

def test_resume_after_an_epoch_is_bit_identical(tmp_path, reference):
    ref_model, ref_hist = reference
    assert ref_hist.stopped == "completed" and ref_hist.steps == 12 and len(ref_hist.epoch) == 3
    _, first = train(tmp_path, epochs=1)
    assert first.steps == 4
    model, hist = train(tmp_path, epochs=3, resume=tmp_path)
    assert_same_run(ref_model, ref_hist, model, hist)


def test_resume_after_interrupt_in_a_transform_mid_epoch(tmp_path, reference):
    calls = {"n": 0}

    def transform(rng, xb, yb):
        calls["n"] += 1
        xb = xb + 0.05 * rng.standard_normal(xb.shape)  # draws first: the checkpoint must undo it
        if calls["n"] == 7:  # epoch 2, batch 3
            raise KeyboardInterrupt
        return xb, yb

    _, exc = train(tmp_path, transform=transform)
    assert isinstance(exc, TrainingInterrupted) and isinstance(exc, KeyboardInterrupt)
    assert exc.history.stopped == "interrupted" and exc.history.steps == 6
    assert exc.checkpoint == tmp_path / "checkpoint.npz"
    meta = ckpt.read_checkpoint(tmp_path).meta
    assert (meta["epoch"], meta["batch"]) == (1, 2) and meta["perm"].shape == (N,)
    model, hist = train(tmp_path, resume=tmp_path / "checkpoint.npz")
    assert_same_run(*reference, model, hist)


def test_resume_after_interrupt_in_a_callback_and_in_the_metrics(tmp_path, reference):
    def callback(info):
        if info.step == 5:
            raise KeyboardInterrupt

    _, exc = train(tmp_path / "a", callback=callback)
    assert exc.history.steps == 5
    model, hist = train(tmp_path / "a", resume=True)
    assert_same_run(*reference, model, hist)

    calls = {"n": 0}

    def metric(model):  # interrupted after the steps of epoch 2, before its validation
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return 0.0

    _, exc = train(tmp_path / "b", metrics={"m": metric})
    assert exc.history.steps == 8 and len(exc.history.epoch) == 1
    model, hist = train(tmp_path / "b", resume=True, metrics={"m": lambda m: 0.0})
    assert_same_run(*reference, model, hist)


def test_sigint_during_a_step_is_deferred_to_its_end(tmp_path, reference):
    class SignalOnLastBatch(nn.MSELoss):
        """Sends Ctrl-C to the process while the step traces the smaller last batch."""

        def forward(self, pred, target):
            if pred.shape[0] == N % BS:
                os.kill(os.getpid(), signal.SIGINT)
            return super().forward(pred, target)

    model, opt, sched = setup()
    X, Y = data()
    with pytest.raises(TrainingInterrupted) as info:
        nn.fit(model, SignalOnLastBatch(), opt, (X, Y), (X[:20], Y[:20]), epochs=3, batch_size=BS,
               scheduler=sched, transform=noise, out=tmp_path, progress=False, plot=False)
    assert info.value.history.steps == 4  # the step finished, then the interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    model, hist = train(tmp_path, resume=tmp_path)
    assert_same_run(*reference, model, hist)


def test_time_limit_stops_cleanly_and_resumes(tmp_path, reference):
    _, hist = train(tmp_path, time_limit=0)
    assert hist.stopped == "time_limit" and hist.steps == 1
    assert ckpt.read_checkpoint(tmp_path).meta["batch"] == 1
    model, hist = train(tmp_path, resume=tmp_path)
    assert hist.stopped == "completed"
    assert_same_run(*reference, model, hist)


def test_resume_refuses_another_run(tmp_path):
    train(tmp_path, epochs=1)
    model, opt, sched = setup()
    X, Y = data()
    with pytest.raises(CheckpointError, match="batch_size=16"):
        nn.fit(model, nn.MSELoss(), opt, (X, Y), epochs=2, batch_size=8, scheduler=sched,
               resume=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="schedule"):
        nn.fit(model, nn.MSELoss(), opt, (X, Y), epochs=2, batch_size=BS, resume=tmp_path,
               progress=False)


# --------------------------------------------------------------------------------------
# training, engines, refusal
# --------------------------------------------------------------------------------------

def test_loss_decreases_and_history_fields():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(128, 3))
    Y = X @ rng.normal(size=(3, 1))
    model = nn.Sequential(nn.Linear(3, 16, rng=0), nn.Tanh(), nn.Linear(16, 1, rng=1))
    h = nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.1, momentum=0.9), (X, Y), (X, Y),
               epochs=6, batch_size=32, progress=False)
    assert h.train_loss[-1] < 0.2 * h.train_loss[0] < 0.2 * h.step_loss[0]
    assert h.val_loss[-1] < 0.5 * h.val_loss[0]
    assert h.epoch == [1, 2, 3, 4, 5, 6] and h.epoch_end_step == [4, 8, 12, 16, 20, 24]
    assert len(h.step_loss) == h.steps == 24 and h.step_time > 0 and h.wall_time > 0
    assert h.engine == "tape" and h.stopped == "completed" and h.health == []
    assert json.loads(json.dumps(h.to_dict()))["steps"] == 24
    assert nn.History.from_dict(h.to_dict()).to_dict() == h.to_dict()


def neuron_run(engine: str) -> nn.History:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2))
    Y = (X[:, :1] - 0.5 * X[:, 1:] > 0).astype(np.float64)
    model = nn.SigmoidNeuron(2, dtype=np.float64, rng=0)
    return nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.5), (X, Y), (X, Y),
                  engine=engine, epochs=3, batch_size=10, progress=False)


def test_three_engines_train_the_neuron_alike():
    tape, symbolic, numeric = (neuron_run(e) for e in ("tape", "symbolic", "numeric"))
    assert tape.train_loss[-1] < tape.train_loss[0]
    np.testing.assert_allclose(symbolic.step_loss, tape.step_loss, rtol=1e-12)
    np.testing.assert_allclose(numeric.step_loss, tape.step_loss, rtol=1e-7)
    np.testing.assert_allclose(numeric.val_loss, tape.val_loss, rtol=1e-7)
    assert numeric.engine == "numeric"


def test_numeric_engine_is_refused_before_the_first_step(tmp_path):
    model = nn.Sequential(nn.Linear(20, 30, rng=0), nn.ReLU(), nn.Linear(30, 1, rng=1))  # 661 parameters
    before = model.state_dict()
    X, Y = np.ones((8, 20)), np.ones((8, 1))
    with pytest.raises(EvaluationLimitError, match=r"needs 1,323 forward evaluations.*health_every"):
        nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.1), (X, Y), engine="numeric",
               max_numeric_evaluations=1000, out=tmp_path, progress=False)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "checkpoint.npz").exists()


def test_bad_arguments_are_our_errors():
    model = nn.Linear(2, 1, rng=0)
    opt = nn.SGD(model.parameters(), lr=0.1)
    X, Y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(InputError, match="steps_per_epoch"):
        nn.fit(model, nn.MSELoss(), opt, nn.Sampler(lambda rng, n: (X[:n], Y[:n])), progress=False)
    with pytest.raises(InputError, match="3 rows of X but 4"):
        nn.fit(model, nn.MSELoss(), opt, (X[:3], Y), progress=False)
    with pytest.raises(InputError, match="unknown engine"):
        nn.fit(model, nn.MSELoss(), opt, (X, Y), engine="magic", progress=False)
    with pytest.raises(InputError, match="more than the 2 batches"):
        nn.fit(model, nn.MSELoss(), opt, (X, Y), batch_size=2, steps_per_epoch=3, progress=False)


# --------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------

def test_divergence_names_the_step_and_layer_and_keeps_the_checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(D, H, rng=0), nn.ReLU(), nn.Linear(H, OUT, rng=1))
    opt = nn.SGD(model.parameters(), lr=0.05)
    X, Y = data()

    def blow_up(info):  # after epoch 1 (checkpointed), a learning rate that explodes
        if info.step == 4:
            opt.param_groups[0]["lr"] = 1e150

    with pytest.raises(TrainingDiverged) as info:
        nn.fit(model, nn.MSELoss(), opt, (X, Y), epochs=5, batch_size=BS, out=tmp_path,
               callback=blow_up, progress=False, plot=False)
    e = info.value
    assert isinstance(e, NonFiniteError)
    assert e.step > 4 and f"step {e.step}" in str(e) and "learning rate" in str(e)
    assert e.layer in ("0", "2") and repr(e.layer) in str(e)
    assert e.history.stopped == "diverged" and len(e.history.step_loss) == e.step - 1
    assert all(np.isfinite(e.history.step_loss))
    assert e.checkpoint == tmp_path / "checkpoint.npz" and "last good checkpoint" in str(e)
    kept = ckpt.read_checkpoint(tmp_path)
    assert kept.meta["steps"] == 4 and all(np.all(np.isfinite(v)) for v in kept.model_state.values())
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped"] == "diverged"


def test_nan_in_a_batch_names_the_first_op_and_its_layer():
    model = nn.Sequential(nn.Linear(D, H, rng=0), nn.ReLU(), nn.Linear(H, OUT, rng=1))
    X, Y = data()

    def poison(rng, xb, yb):
        xb = xb.copy()
        xb[0, 1] = np.nan
        return xb, yb

    for engine in ("tape", "symbolic"):
        with pytest.raises(TrainingDiverged) as info:
            nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.1), (X, Y), batch_size=BS,
                   transform=poison, engine=engine, progress=False)
        e = info.value
        assert e.step == 1 and e.layer == "0" and "matmul" in e.node and "'x'" in str(e), engine


# --------------------------------------------------------------------------------------
# the health check
# --------------------------------------------------------------------------------------

def test_health_checks_are_logged_and_do_not_change_the_run(reference):
    model, hist = train(health_every=2)
    assert [s for s, _ in hist.health] == [2, 4, 6, 8, 10, 12]
    assert all(0 <= e < 1e-5 for _, e in hist.health)
    assert_same_run(*reference, model, hist)


def test_directional_check_catches_a_wrong_gradient():
    model = nn.Sequential(nn.Linear(3, 5, rng=0), nn.Tanh(), nn.Linear(5, 1, rng=1))
    X, Y = np.random.default_rng(0).normal(size=(6, 3)), np.ones((6, 1))
    step = nn.compile_step(model, nn.MSELoss(), X, Y)
    out = step(X, Y)
    names = [n for n, _ in step.last_compiled.trained]
    good = directional_check(step.last_compiled.graph, step.last_values, out.grads, names,
                             np.random.default_rng(0))
    assert good.relative_error < 1e-7 and good.evaluations == 2
    bad = {**out.grads, "0.weight": out.grads["0.weight"] * 1.1}
    wrong = directional_check(step.last_compiled.graph, step.last_values, bad, names,
                              np.random.default_rng(0))
    assert wrong.relative_error > 1e-3


def test_directional_check_steps_around_relu_kinks():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(3, 50, rng=0), nn.ReLU(), nn.Linear(50, 1, rng=1))
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    step = nn.compile_step(model, nn.MSELoss(), X, Y)
    out = step(X, Y)
    names = [n for n, _ in step.last_compiled.trained]
    # a large first step crosses kinks every time: they are seen and the step shrunk
    checks = [directional_check(step.last_compiled.graph, step.last_values, out.grads, names, rng,
                                step_power=0.15) for _ in range(5)]
    assert all(c.evaluations > 2 and not c.kinks_crossed for c in checks)
    assert max(c.relative_error for c in checks) < 1e-6


# --------------------------------------------------------------------------------------
# checkpoint files
# --------------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    train(tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.npz").read_bytes()

    def failing(f, arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_arrays", failing)
    with pytest.raises(OSError, match="disk full"):
        train(tmp_path, epochs=2, resume=tmp_path)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "metrics.json", "model.npz"]


def test_corrupt_truncated_or_foreign_checkpoints_are_our_error(tmp_path):
    train(tmp_path / "run", epochs=1)
    good = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    cases = {"truncated.npz": good[: len(good) // 2], "garbage.npz": b"not a zip file at all",
             "flipped.npz": good[:200] + bytes(b ^ 0xFF for b in good[200:400]) + good[400:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    nn.save(nn.Linear(2, 2, rng=0), tmp_path / "model_file.npz")
    for name in [*cases, "model_file.npz", "missing.npz"]:
        with pytest.raises(CheckpointError):
            train(epochs=2, resume=tmp_path / name)


def test_out_folder_files(tmp_path):
    model, opt, sched = setup()
    X, Y = data()
    h = nn.fit(model, nn.MSELoss(), opt, (X, Y), (X[:20], Y[:20]), epochs=2, batch_size=BS,
               scheduler=sched, out=tmp_path / "run", progress=False,
               metrics={"w_norm": lambda m: float(np.linalg.norm(m[0].weight.data))})
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"checkpoint.npz", "metrics.json", "loss.png", "loss.svg",
                                               "model.npz"}
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["stopped"] == "completed" and doc["engine"] == "tape" and doc["steps"] == 8
    assert doc["final"]["val_loss"] == h.val_loss[-1] and doc["final"]["w_norm"] == h.metrics["w_norm"][-1]
    assert doc["config"]["batch_size"] == BS and doc["wall_time"] > 0
    assert doc["history"]["step_loss"] == h.step_loss
    for path in (run / "model.npz", run / "checkpoint.npz"):
        again = nn.load(path)
        assert all(np.array_equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())
    assert ckpt.read_checkpoint(run).meta["complete"] is True


# --------------------------------------------------------------------------------------
# data paths, metrics, output
# --------------------------------------------------------------------------------------

def test_sampler_path_is_reproducible_and_resumable(tmp_path):
    X, Y = data()

    def draw(rng, n):
        idx = rng.integers(0, N, n)
        return X[idx] + 0.1 * rng.standard_normal((n, D)), Y[idx]

    def run(**kw):
        model = nn.Sequential(nn.Linear(D, H, rng=0), nn.ReLU(), nn.Linear(H, OUT, rng=1))
        try:
            h = nn.fit(model, nn.MSELoss(), nn.Adam(model.parameters(), lr=0.01), nn.Sampler(draw),
                       epochs=2, batch_size=8, steps_per_epoch=5, progress=False, plot=False, **kw)
        except TrainingInterrupted as exc:
            h = exc.history
        return model, h

    ref_model, ref = run()
    assert ref.steps == 10 and ref.train_loss[-1] < ref.train_loss[0]

    def stop(info):
        if info.step == 3:
            raise KeyboardInterrupt

    run(out=tmp_path, callback=stop)
    model, h = run(out=tmp_path, resume=True)
    assert_same_run(ref_model, ref, model, h)


def test_transform_uses_the_run_generator_and_only_training_batches():
    seen = []

    def mask(rng, xb, yb):
        seen.append(len(xb))
        keep = rng.random(xb.shape) > 0.3
        return xb * keep, yb

    a = train(epochs=1, transform=mask)[1]
    b = train(epochs=1, transform=mask)[1]
    c = train(epochs=1, transform=mask, seed=1)[1]
    assert seen == [16, 16, 16, 12] * 3  # training batches only, not the validation data
    assert a.step_loss == b.step_loss and a.step_loss != c.step_loss


def test_metrics_run_in_eval_mode_and_restore_train_mode():
    modes = []

    def metric(model):
        modes.append(model.training)
        return 1.5

    model, h = train(epochs=2, metrics={"m": metric})
    assert h.metrics == {"m": [1.5, 1.5]} and modes == [False, False] and model.training


def test_progress_false_prints_nothing(capfd):
    train(epochs=1, health_every=1)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    train(epochs=1, progress=True)
    assert "step" in capfd.readouterr().err


def test_seed_controls_dropout_and_data_order(reference):
    _, same = train(epochs=3)
    _, other = train(epochs=3, seed=7)
    assert same.step_loss == reference[1].step_loss and other.step_loss != same.step_loss
