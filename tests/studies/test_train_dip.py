"""``autodiff-lab train dip``: a quick run through the command line, the run-folder rules,
Ctrl-C, and a one-line error for every kind of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, one_line
from PIL import Image

from autodiff_lab.errors import InputError
from autodiff_lab.studies import dip


def test_quick_run_through_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = cli(capsys, "train", "dip", "--quick", "--steps", "6", "--ema", "0.9",
                      "--quiet", "--image", "camera")
    assert status == 0, err
    out = Path("runs/dip")
    assert f"dip: wrote {out} (metrics.json, 2 PNG figures" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 6 and m["stopped"] == "completed" and m["shape"] == [1, 64, 64]
    assert "ema_best_psnr" in m and 1 <= m["ema_best_step"] <= 6
    settings = json.loads((out / "run.json").read_text())
    assert settings["study"] == "dip" and settings["steps"] == 6 and settings["ema"] == 0.9
    for name in ("dip_curve.png", "dip_panel.png", "dip_best.png", "images.npz"):
        assert (out / name).is_file()
    # a folder holding a run is kept: the next run goes beside it, or over it with --force
    before = (out / "metrics.json").read_bytes()
    status, err = cli(capsys, "train", "dip", "--quick", "--steps", "2", "--quiet")
    assert status == 0 and "runs/dip already holds a run" in err
    assert (out / "metrics.json").read_bytes() == before
    beside = [p for p in Path("runs").iterdir() if re.fullmatch(r"dip-\d{8}-\d{6}(-\d+)?", p.name)]
    assert len(beside) == 1 and json.loads((beside[0] / "metrics.json").read_text())["steps"] == 2
    status, err = cli(capsys, "train", "dip", "--quick", "--steps", "3", "--quiet", "--force")
    assert status == 0 and json.loads((out / "metrics.json").read_text())["steps"] == 3
    # a user's image is cut to its largest centred square the U-Net takes (no --crop here)
    odd = _png(tmp_path / "odd.png", np.zeros((36, 40, 3), np.uint8))
    status, err = cli(capsys, "train", "dip", "--quick", "--steps", "2", "--quiet", "--image", odd,
                      "--out", "runs/odd")
    assert status == 0, err
    assert json.loads(Path("runs/odd/metrics.json").read_text())["shape"] == [3, 32, 32]


def test_ctrl_c_keeps_the_steps_done_and_exits_130(tmp_path, capsys, monkeypatch):
    from autodiff_lab.nn import optim
    calls = {"n": 0}
    original = optim.Adam.step

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(optim.Adam, "step", interrupting)
    out = tmp_path / "run"
    status, err = cli(capsys, "train", "dip", "--quick", "--steps", "20", "--quiet", "--out", str(out))
    assert status == 130
    line = one_line(err)
    assert "interrupted at step 3 of 20" in line and str(out) in line and "--resume" not in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] == "interrupted" and m["steps"] == 3 and m["curve"]["step"][-1] == 3
    assert len({len(v) for v in m["curve"].values()}) == 1
    assert (out / "dip_panel.png").is_file()


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alpha = np.zeros((64, 64, 4), dtype=np.uint8)
    alpha[..., 3] = np.arange(64, dtype=np.uint8)[None]
    (tmp_path / "text.png").write_text("not an image")
    cases = [
        (["--steps", "0"], ["--steps must be at least 1, got 0"]),
        (["--steps", "-2"], ["--steps must be at least 1, got -2"]),
        (["--steps", "many"], ["--steps must be an integer, got 'many'"]),
        (["--ema", "1"], ["--ema must be in [0, 1)", "'1'"]),
        (["--ema", "x"], ["--ema must be a number"]),
        (["--epochs", "3"], ["counts Adam steps", "--steps"]),
        (["--resume", "runs/dip"], ["cannot be resumed"]),
        (["--minutes", "0"], ["--minutes"]),
        (["--engine", "numeric"], ["numeric engine would need", "forward evaluations"]),
        (["--image", "nope"], ["'nope' is neither a built-in image", "camera"]),
        (["--image", "no/such.png"], ["no image file at 'no/such.png'"]),
        (["--image", str(tmp_path)], ["it is a directory"]),
        (["--image", "text.png"], ["'text.png' is not an image file"]),
        (["--image", _png(tmp_path / "alpha.png", alpha, "RGBA")],
         ["4 channels with a transparent alpha", "grey (H, W) or RGB (H, W, 3)"]),
        (["--image", _png(tmp_path / "small.png", np.zeros((8, 8), np.uint8))],
         ["too small for depth 3", "deepest level would be 1×1"]),
    ]
    for extra, words in cases:
        status, err = cli(capsys, "train", "dip", "--quick", "--quiet", *extra)
        assert status in (1, 2), (extra, err)
        line = one_line(err)
        for w in words:
            assert w in line, (extra, line)
        assert not Path("runs").exists(), extra
    for args, words in ((["neuron", "--image", "camera"], ["--image applies to dip only"]),
                        (["classifier", "--steps", "3", "--ema", "0.5"],
                         ["--steps and --ema apply to dip only"])):
        status, err = cli(capsys, "train", *args)
        assert status == 2 and all(w in one_line(err) for w in words)


def _config(tmp_path, image, **kw):
    return dip.DIPConfig.quick(image=image, crop=0, depth=2, steps=2, every=1,
                               out=str(tmp_path / "run"), **kw)


def test_image_arrays_and_alpha(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.random((16, 16))
    assert dip.load_clean_image(_config(tmp_path, grey)).shape == (1, 16, 16)
    u8 = (grey * 255).astype(np.uint8)
    assert np.allclose(dip.load_clean_image(_config(tmp_path, u8))[0], u8 / 255.0)
    rgb = rng.random((16, 16, 3))
    assert dip.load_clean_image(_config(tmp_path, rgb)).shape == (3, 16, 16)
    # an opaque alpha channel carries nothing: the image is read as RGB
    rgba = np.concatenate([(rgb * 255).astype(np.uint8), np.full((16, 16, 1), 255, np.uint8)], 2)
    assert dip.load_clean_image(_config(tmp_path, _png(tmp_path / "o.png", rgba, "RGBA"))).shape \
        == (3, 16, 16)
    m = dip.run(_config(tmp_path, u8))
    assert m["image"] == "array 16×16" and m["config"]["image"] == "array 16×16"
    bad = [
        (grey > 0.5, "dtype bool; the Deep Image Prior takes uint8, uint16 or floating"),
        (grey.astype(np.int64), "dtype int64"),
        (grey + 0j, "dtype complex128"),
        (grey * 255, r"values in \[0\.\d+, 25\d\.?\d*\]; a floating-point image must lie in \[0, 1\]"),
        (np.full((16, 16), np.nan), "holds NaN or Inf"),
        (rng.random((16, 16, 5)), r"shape \(16, 16, 5\) \(5 channels\)"),
        (rng.random((2, 16, 16, 3)), "4 dimensions"),
        (rng.random((16, 16, 4)), "4 channels with a transparent alpha"),
    ]
    for image, message in bad:
        with pytest.raises(InputError, match=message):
            dip.run(_config(tmp_path, image))
    with pytest.raises(InputError, match="a built-in name, a path or an array, got int"):
        dip.run(_config(tmp_path, 3))
