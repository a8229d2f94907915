"""The Deep Image Prior study: a quick run end to end, and every kind of bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from autodiff_lab import nn
from autodiff_lab.errors import CheckpointError, InputError
from autodiff_lab.studies import dip


def _quick(tmp_path, **kw):
    return dip.DIPConfig.quick(**{"steps": 6, "every": 2, "out": str(tmp_path / "run"), **kw})


def test_quick_run_end_to_end(tmp_path):
    dncnn = nn.DnCNN(depth=3, channels=4, rng=0)
    nn.save(dncnn, tmp_path / "model.npz")
    m = dip.run(_quick(tmp_path, ema=0.9, snapshots=(1, 3), dncnn=str(tmp_path / "model.npz")))
    out = tmp_path / "run"
    for name in ("dip_curve.png", "dip_curve.svg", "dip_panel.png", "dip_panel.svg",
                 "dip_best.png", "dip_final.png", "noisy.png", "metrics.json", "images.npz"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_psnr"] == m["best_psnr"] and saved["config"]["steps"] == 6
    assert m["curve"]["step"] == [1, 2, 4, 6] and len(m["curve"]["psnr_clean"]) == 4
    assert len(m["curve"]["psnr_ema"]) == 4
    assert m["steps"] == 6 and 1 <= m["best_step"] <= 6
    assert m["best_psnr"] + 1e-3 >= max(m["curve"]["psnr_clean"]) >= m["final_psnr"] - 1e-3
    assert abs(m["noisy_psnr"] - 20.2) < 0.5            # σ = 25/255 on [0, 1]
    assert m["gaussian_psnr"] > m["noisy_psnr"] and m["gaussian_sigma"] > 0
    assert m["dncnn_psnr"] is not None and m["steps_per_second"] > 0
    assert m["shape"] == [1, 64, 64] and m["dtype"] == "float32"
    with Image.open(out / "dip_best.png") as img:
        assert img.size == (64, 64)
    assert "DIP best" in dip.summary(m)
    with np.load(out / "images.npz") as images:
        assert {"clean", "noisy", "best", "final", "ema", "dncnn", "step_1", "step_3"} <= \
            set(images.files)


def test_rgb_image_from_a_file(tmp_path):
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    m = dip.run(dip.DIPConfig.quick(image=str(tmp_path / "rgb.png"), crop=0, depth=2, steps=2,
                                    every=1, out=str(tmp_path / "rgb")))
    assert m["shape"] == [3, 16, 16]


def test_command_line_options(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    dip.add_arguments(parser)
    args = parser.parse_args(["--quick", "--steps", "3", "--width", "2", "4", "8",
                              "--sigma", "50", "--out", str(tmp_path / "cli"), "--quiet"])
    config = dip.config_from_args(args)
    assert config.width == (2, 4, 8) and config.steps == 3 and config.crop == 64
    assert config.sigma == pytest.approx(50 / 255) and not config.progress
    assert dip.main(args) == 0
    assert "DIP best" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        dip._cli(["--quick", "--steps", "0", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: steps must be an integer >= 1, got 0"
    unet = dip.config_from_args(parser.parse_args(
        ["--quick", "--architecture", "unet", "--width", "2", "4", "8", "8"])).validate()
    assert unet.width == (2, 4, 8, 8) and unet.skip_channels == 4
    constant = dip.config_from_args(parser.parse_args(["--lr-decay-start", "off"]))
    assert constant.lr_decay_start is None
    assert dip.config_from_args(parser.parse_args(["--lr-decay-start", "900"])).lr_decay_start == 900
    with pytest.raises(SystemExit):
        parser.parse_args(["--lr-decay-start", "soon"])


def test_the_defaults_are_the_papers_hourglass_with_the_documented_schedule():
    """The documented ten-minute run: the hourglass with 16 ... 128 channels, the paper's
    skips and code, the late learning-rate decay, both averages; the skips and widths
    follow the depth, and the U-Net keeps its own."""
    c = dip.DIPConfig().validate()
    assert (c.architecture, c.depth, c.width, c.skip_channels, c.code_channels) == \
        ("hourglass", 5, (16, 32, 64, 128, 128), (0, 0, 0, 4, 4), 32)
    assert (c.lr, c.lr_decay_start, c.lr_decay_steps, c.lr_final) == (0.01, 1500, 800, 0.0005)
    assert (c.ema, c.weight_ema, c.crop, c.steps) == (0.99, 0.99, 256, 4000)
    assert dip.DIPConfig(depth=3).validate().skip_channels == (0, 4, 4)
    assert dip.DIPConfig(depth=3).validate().width == (16, 32, 64)
    unet = dip.DIPConfig(architecture="unet", depth=4).validate()
    assert unet.width == (8, 16, 32, 32, 32) and unet.skip_channels == 4
    assert dip.build_model(dip.DIPConfig(depth=3).validate(), 1).widths == (16, 32, 64)


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


@pytest.mark.parametrize("overrides,message", [
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(steps=-3), "steps must be an integer >= 1, got -3"),
    (dict(every=0), "every must be an integer >= 1, got 0"),
    (dict(lr=0.0), "lr must be a positive number, got 0.0"),
    (dict(ema=1.0), r"ema must be in \[0, 1\)"),
    (dict(lr_decay_start=-1), "lr_decay_start must be an integer >= 0, got -1"),
    (dict(lr_decay_start=2.5), "lr_decay_start must be an integer >= 0, got 2.5"),
    (dict(lr_decay_steps=0), "lr_decay_steps must be an integer >= 1, got 0"),
    (dict(lr_final=0.0), "lr_final must be a positive number, got 0.0"),
    (dict(input_noise_final=0.01, lr_decay_start=None), "input_noise_final needs lr_decay_start"),
    (dict(lr_decay_start=2, input_noise_final=-1.0), "input_noise_final must be a number >= 0"),
    (dict(lr_final=float("nan")), "lr_final must be a positive number, got nan"),
    (dict(snapshots=(0, 99)), r"snapshot steps must be integers in 1..6 .*\[0, 99\]"),
    (dict(width=(4, 8)), r"width needs depth = 3 counts \(one per level\), got 2"),
    (dict(architecture="unet", width=(4, 8)), r"width needs depth \+ 1 = 4 counts"),
    (dict(up="bicubic"), "up must be one of 'nearest', 'bilinear', 'transpose', got 'bicubic'"),
    (dict(crop=100), r"the image is 100×100, not a multiple of 2\*\*depth = 8 .*--crop 96"),
    (dict(crop=1000), r"crop 1000 is larger than the image 'camera' \(512×512\)"),
    (dict(crop=4), r"the image is 4×4, not a multiple of 2\*\*depth = 8.*a larger image"),
    (dict(crop=8), r"too small for depth 3: the network's deepest level would be 1×1"),
    (dict(image="no_such_picture"), "'no_such_picture' is neither a built-in image"),
    (dict(image="/no/such/file.png"), "no image file at '/no/such/file.png'"),
])
def test_bad_settings(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        dip.run(_quick(tmp_path, **overrides))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_bad_image_files(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    cases = {
        _png(tmp_path / "rgba.png", rgba, "RGBA"): "has 4 channels .*grey \\(H, W\\) or RGB",
        _png(tmp_path / "tiny.png", np.zeros((6, 6), dtype=np.uint8)):
            "the image is 6×6, not a multiple of 2\\*\\*depth = 8",
    }
    (tmp_path / "text.png").write_text("not an image at all")
    cases[str(tmp_path / "text.png")] = "not an image file"
    cases[str(tmp_path)] = "it is a directory"
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            dip.run(_quick(tmp_path, image=path, crop=0))


def test_bad_dncnn_files(tmp_path):
    nn.save(nn.Linear(2, 2), tmp_path / "linear.npz")
    with pytest.raises(InputError, match="holds a Linear, not a denoiser"):
        dip.run(_quick(tmp_path, dncnn=str(tmp_path / "linear.npz")))
    with pytest.raises(CheckpointError, match="no such file"):
        dip.run(_quick(tmp_path, dncnn=str(tmp_path / "missing.npz")))


def test_psnr_curves_refuses_bad_input(tmp_path):
    from autodiff_lab import figures
    with pytest.raises(InputError, match="non-empty"):
        figures.psnr_curves({}, tmp_path / "c")
    with pytest.raises(InputError, match="reference 'x' must be a number"):
        figures.psnr_curves({"a": [1.0, 2.0]}, tmp_path / "c", references={"x": "high"})


def test_the_guide_example_runs():
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "dip.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/dip.md", "exec"), namespace)
    assert namespace["model"].channels == [8, 16, 32, 64]
    # the hourglass of the page is the study's default network
    assert namespace["net"].num_parameters == dip.build_model(dip.DIPConfig().validate(),
                                                              1).num_parameters == 1_035_889


def test_late_learning_rate_decay(tmp_path):
    """lr up to lr_decay_start, a half cosine to lr_final over lr_decay_steps, then lr_final;
    the run's Adam steps use it (the curve records the rate of each recorded step)."""
    config = dip.DIPConfig(lr=0.01, lr_decay_start=10, lr_decay_steps=4, lr_final=0.001)
    rates = [dip.learning_rate(config, t) for t in range(1, 17)]
    assert rates[:10] == [0.01] * 10
    assert rates[11] == pytest.approx(0.0055)         # halfway: the mean of the two rates
    assert all(a > b for a, b in zip(rates[9:14], rates[10:14]))
    assert rates[13:] == [pytest.approx(0.001)] * 3
    assert dip.learning_rate(dip.DIPConfig(lr_decay_start=None), 10_000) == 0.01
    m = dip.run(_quick(tmp_path, steps=8, every=1, lr=0.01, lr_decay_start=3, lr_decay_steps=2,
                       lr_final=0.002))
    assert m["curve"]["lr"] == pytest.approx([0.01, 0.01, 0.01, 0.006, 0.002, 0.002, 0.002, 0.002])
    assert m["config"]["lr_decay_start"] == 3 and m["config"]["lr_final"] == 0.002
    parser = argparse.ArgumentParser()
    dip.add_arguments(parser)
    args = parser.parse_args(["--quick", "--lr-decay-start", "5", "--lr-decay-steps", "7",
                              "--lr-final", "0.0005"])
    c = dip.config_from_args(args)
    assert (c.lr_decay_start, c.lr_decay_steps, c.lr_final) == (5, 7, 0.0005)
    noisy = dip.DIPConfig(input_noise=0.03, lr_decay_start=10, lr_decay_steps=4,
                          input_noise_final=0.01)
    stds = [dip.input_noise_std(noisy, t) for t in range(1, 17)]
    assert stds[:10] == [0.03] * 10 and stds[11] == pytest.approx(0.02)
    assert stds[13:] == [pytest.approx(0.01)] * 3
    assert dip.input_noise_std(config, 16) == config.input_noise   # None: unchanged


def test_weight_averaging_and_skips_per_level(tmp_path):
    """--weight-ema records f(z) of the weight-averaged network at every recorded step and
    leaves the trained weights as they were; --skip-channels takes one count per level."""
    parser = argparse.ArgumentParser()
    dip.add_arguments(parser)
    args = parser.parse_args(["--quick", "--steps", "6", "--every", "2", "--weight-ema", "0.5",
                              "--skip-channels", "0", "0", "4", "--out", str(tmp_path / "w"),
                              "--quiet"])
    config = dip.config_from_args(args)
    assert config.weight_ema == 0.5 and config.skip_channels == (0, 0, 4)
    m = dip.run(config)
    assert len(m["curve"]["psnr_wavg"]) == len(m["curve"]["step"]) == 4
    assert m["wavg_best_psnr"] == pytest.approx(max(m["curve"]["psnr_wavg"]), abs=1e-3)
    assert 1 <= m["wavg_best_step"] <= 6
    # the averaged weights are put back: f(z) of the trained network is unchanged by it
    model = dip.build_model(config, 1)
    params = model.parameters()
    before = [p.data.copy() for p in params]
    z = np.random.default_rng(0).random((1, 8, 64, 64)).astype(np.float32)
    averaged = [np.zeros_like(p.data) for p in params]
    dip._averaged_output(model, params, averaged, z)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, params))
    assert dip.config_from_args(parser.parse_args(["--skip-channels", "0"])).skip_channels is None
    with pytest.raises(InputError, match=r"skip_channels needs one integer >= 0 per level"):
        dip.run(_quick(tmp_path, skip_channels=(4, 4)))
    with pytest.raises(InputError, match=r"weight_ema must be in \[0, 1\)"):
        dip.run(_quick(tmp_path, weight_ema=1.0))
