"""The case studies end to end through ``autodiff-lab train`` (in --quick mode), the
``denoise`` command, the run-folder policy and the one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, one_line

from autodiff_lab import nn
from autodiff_lab.cli import main
from autodiff_lab.studies.common import finite_numbers


def metrics_of(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    assert finite_numbers(m) == []
    return m


def figures_written(folder: Path, *stems: str) -> None:
    for stem in stems:
        for suffix in (".png", ".svg"):
            p = folder / f"{stem}{suffix}"
            assert p.is_file() and p.stat().st_size > 500, p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One quick run of each study, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("neuron", "inpainting", "denoiser", "classifier"):
        status = main(["train", name, "--quick", "--quiet", "--out", str(root / name)])
        assert status == 0
        out[name] = root / name
    return out


# --- each study end to end -----------------------------------------------------------------

def test_neuron_three_engines_agree(runs):
    d = runs["neuron"]
    m = metrics_of(d)
    assert m["engines_agree"] is True
    assert set(m["max_loss_difference"]) == {"symbolic", "numeric"}
    assert max(m["max_loss_difference"].values()) <= m["tolerance"] <= 1e-6
    for engine in ("tape", "symbolic", "numeric"):
        e = m["engines"][engine]
        assert e["training"]["engine"] == engine and e["training"]["steps"] > 0
        assert math.isfinite(e["final_loss"])
    figures_written(d, "loss", "boundary", "neuron", "neuron_primitive")
    assert "digraph" in (d / "neuron.dot").read_text()
    model = nn.load(d / "model.npz")
    assert isinstance(model, nn.SigmoidNeuron)
    assert nn.predict(model, np.zeros((3, 2))).shape == (3, 1)


def test_inpainting_quick(runs):
    d = runs["inpainting"]
    m = metrics_of(d)
    psnr = m["psnr"]
    for key in ("masked_input_db", "prediction_db", "pasted_db", "pasted_mean_per_image_db",
                "gain_pasted_db", "definition"):
        assert key in psnr
    assert m["engine"] == "tape" and m["training"]["steps"] > 0
    figures_written(d, "loss", "panel", "filters")
    model = nn.load(d / "model.npz")
    assert isinstance(model, nn.InpaintingMLP)
    assert nn.predict(model, np.zeros((2, 784), np.float32)).shape == (2, 784)


def test_inpainting_tape_and_symbolic_give_the_same_loss_curve():
    from autodiff_lab.studies import inpainting as S
    x_train, _, _, _ = S.load(quick=True, seed=0)
    curves = {}
    for engine in ("tape", "symbolic"):
        model, opt = S.build(seed=0)
        h = nn.fit(model, nn.MSELoss(), opt, (x_train[:96], x_train[:96]), engine=engine, epochs=2,
                   batch_size=32, transform=S.BlockMasks(S.BLOCK), seed=3, progress=False)
        curves[engine] = np.asarray(h.step_loss)
    assert curves["tape"].size == 6
    np.testing.assert_allclose(curves["symbolic"], curves["tape"], rtol=1e-5)


def test_classifier_quick(runs):
    d = runs["classifier"]
    m = metrics_of(d)
    assert set(m["test_accuracy"]) == {"linear", "mlp"}
    for kind in ("linear", "mlp"):
        r = m["models"][kind]
        assert 0 <= r["test_accuracy"] <= 1
        assert np.asarray(r["confusion_matrix"]).shape == (10, 10)
        model = nn.load(d / f"{kind}.npz")
        assert nn.predict(model, np.zeros((2, 784), np.float32)).shape == (2, 10)
    assert isinstance(nn.load(d / "model.npz"), nn.MLPClassifier)
    figures_written(d, "confusion_linear", "confusion_mlp", "templates", "loss")


def test_denoiser_quick(runs):
    d = runs["denoiser"]
    m = metrics_of(d)
    assert set(m["psnr"]) == {"camera", "coins", "text"}
    for s in m["psnr"].values():
        assert {"noisy_db", "gaussian_db", "network_db", "gain_over_gaussian_db"} <= set(s)
    t = m["training"]
    assert t["steps"] == t["planned_steps"] > 0 and t["steps_per_s"] > 0
    figures_written(d, "panel", "crops", "loss")
    model = nn.load(d / "model.npz")
    assert isinstance(model, nn.DnCNN)
    assert model.denoise(np.zeros((13, 17), np.float32)).shape == (13, 17)  # any size


# --- the denoise command -------------------------------------------------------------------

def test_denoise_grey_and_colour(runs, tmp_path, capsys):
    from autodiff_lab.data import read_image, write_image
    rng = np.random.default_rng(0)
    model = str(runs["denoiser"] / "model.npz")
    write_image(tmp_path / "grey.png", np.clip(0.5 + 0.1 * rng.standard_normal((21, 34)), 0, 1))
    write_image(tmp_path / "rgb.png", rng.random((16, 12, 3)))
    status, err = cli(capsys, "denoise", str(tmp_path / "grey.png"), "-o", str(tmp_path / "g.png"),
                      "--model", model)
    assert status == 0 and "wrote" in err
    assert read_image(tmp_path / "g.png").shape == (21, 34)
    status, err = cli(capsys, "denoise", str(tmp_path / "rgb.png"), "-o", str(tmp_path / "c.png"),
                      "--model", str(runs["denoiser"]))  # a run folder works too
    assert status == 0 and "colour" in err
    assert read_image(tmp_path / "c.png").shape == (16, 12, 3)


def test_denoise_bad_input(runs, tmp_path, capsys):
    from autodiff_lab.data import write_image
    model = str(runs["denoiser"] / "model.npz")
    good = tmp_path / "in.png"
    write_image(good, np.full((8, 8), 0.5))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "exists.png").write_bytes(good.read_bytes())
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([str(tmp_path / "missing.png"), "-o", str(tmp_path / "o1.png"), "--model", model], "missing.png"),
        ([str(tmp_path / "text.png"), "-o", str(tmp_path / "o2.png"), "--model", model], "text.png"),
        ([str(good), "-o", str(tmp_path / "o3.png"), "--model", str(runs["neuron"] / "model.npz")],
         "not a denoiser"),
        ([str(good), "-o", str(tmp_path / "o4.png"), "--model", str(tmp_path / "nope.npz")], "nope.npz"),
        ([str(good), "-o", str(tmp_path / "exists.png"), "--model", model], "--force"),
        ([str(good), "-o", str(tmp_path / "a_file" / "o.png"), "--model", model], "a_file"),
        ([str(good), "-o", str(tmp_path / "o5.jpg"), "--model", model], ".png"),
        ([str(good), "--model", model], "-o"),
    ]
    for args, word in cases:
        status, err = cli(capsys, "denoise", *args)
        assert status in (1, 2), args
        assert word in one_line(err), (args, err)
    status, _ = cli(capsys, "denoise", str(good), "-o", str(tmp_path / "exists.png"), "--model", model,
                    "--force")
    assert status == 0


# --- run folders, resuming, bad input ----------------------------------------------------------

def test_a_folder_holding_a_run_is_never_overwritten(runs, tmp_path, capsys, monkeypatch):
    import shutil
    monkeypatch.chdir(tmp_path)
    shutil.copytree(runs["neuron"], "runs/neuron")  # a finished run in the default folder
    first = Path("runs/neuron/metrics.json")
    before = first.read_bytes()
    status, err = cli(capsys, "train", "neuron", "--quick", "--quiet", "--seed", "1")
    assert status == 0 and "runs/neuron already holds a run" in err
    assert first.read_bytes() == before
    beside = [p for p in Path("runs").iterdir() if re.fullmatch(r"neuron-\d{8}-\d{6}(-\d+)?", p.name)]
    assert len(beside) == 1 and (beside[0] / "model.npz").is_file()
    assert str(beside[0]) in err
    assert json.loads((beside[0] / "run.json").read_text())["seed"] == 1
    status, err = cli(capsys, "train", "neuron", "--quick", "--quiet", "--force", "--seed", "2",
                      "--out", str(beside[0]))
    assert status == 0 and "already holds" not in err
    assert json.loads((beside[0] / "run.json").read_text())["seed"] == 2
    assert len(list(Path("runs").iterdir())) == 2


def test_interrupted_training_is_resumable(tmp_path, capsys, monkeypatch):
    from autodiff_lab.studies import inpainting as S
    calls = {"n": 0}
    original = S.BlockMasks.__call__

    def interrupting(self, rng, xb, yb):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, rng, xb, yb)

    monkeypatch.setattr(S.BlockMasks, "__call__", interrupting)
    out = tmp_path / "inp"
    status, err = cli(capsys, "train", "inpainting", "--quick", "--quiet", "--out", str(out))
    assert status == 130
    assert f"--resume {out}" in one_line(err)
    assert (out / "training" / "checkpoint.npz").is_file() and not (out / "metrics.json").exists()
    monkeypatch.setattr(S.BlockMasks, "__call__", original)
    status, err = cli(capsys, "train", "inpainting", "--resume", str(out), "--quiet")
    assert status == 0, err
    m = metrics_of(out)
    assert m["training"]["steps"] == 4 and m["training"]["stopped"] == "completed"


@pytest.mark.parametrize("args, words", [
    (["train", "nope"], ["unknown study", "neuron, inpainting, denoiser, classifier"]),
    (["train", "neuron", "--engine", "jax"], ["--engine", "tape, symbolic, numeric"]),
    (["train", "neuron", "--epochs", "0"], ["--epochs"]),
    (["train", "neuron", "--epochs", "two"], ["--epochs", "integer"]),
    (["train", "neuron", "--seed", "-1"], ["--seed"]),
    (["train", "classifier", "--minutes", "3"], ["--minutes", "denoiser"]),
    (["train", "denoiser", "--minutes", "0"], ["--minutes"]),
    (["train", "denoiser", "--config", "huge"], ["--config", "default, long"]),
    (["train", "neuron", "--resume", "no/such/run"], ["--resume", "no/such/run"]),
    (["train", "neuron", "--wat"], ["unrecognized arguments: --wat"]),
])
def test_bad_train_input_is_one_line(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = cli(capsys, *args)
    assert status in (1, 2)
    line = one_line(err)
    for w in words:
        assert w in line, line
    assert not Path("runs").exists()


@pytest.mark.parametrize("name", ["inpainting", "classifier", "denoiser"])
def test_numeric_engine_is_refused_before_training(name, tmp_path, capsys):
    out = tmp_path / name
    status, err = cli(capsys, "train", name, "--quick", "--engine", "numeric", "--out", str(out))
    assert status == 1
    line = one_line(err)
    assert "forward evaluations" in line and "health_every" in line  # the only line, not --quiet
    assert not out.exists()


def test_examples_call_the_studies():
    root = Path(__file__).resolve().parents[2] / "examples"
    for name in ("neuron", "inpainting", "denoiser", "classifier"):
        text = (root / f"train_{name}.py").read_text()
        assert f'"{name}"' in text and "main" in text
    assert os.path.isfile(root / "train_neuron.py")
