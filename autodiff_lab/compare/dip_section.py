"""The ``dip`` case of the comparison report: the Deep Image Prior.

Two sections:

* ``dip_run`` -- a Deep Image Prior run (:func:`autodiff_lab.studies.dip.run` with a small
  U-Net, :func:`run_config`) on a centre crop of ``camera`` with σ = 25/255: its PSNR curve
  (rise, peak, decline), its panel of images and a table of the numbers (noisy input, best
  Gaussian filter, best step, moving average, final step). The report's run is a 128×128
  crop for :data:`FULL_STEPS` steps (``--quick``: 64×64, :data:`QUICK_STEPS` steps); the
  documented 256×256 run of ten minutes is ``autodiff-lab train dip``.
* ``dip_agreement`` -- one gradient of a small U-Net of the same kind (bilinear
  up-sampling, stride-2 convolutions, batch norm, projected skips) by every engine that
  can take it: the tape as reference, the symbolic engine's matrix mode on the full
  gradient, and the numeric engine along random directions
  (:func:`autodiff_lab.nn.agreement.engine_agreement`).

The case's example (what the report builds for every case) is that small U-Net's loss.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np

from autodiff_lab.compare.cases import CASES, SECTIONS, CaseContext, CaseSpec, Section, TableRef

#: the report's Deep Image Prior run (full report and --quick)
FULL_CROP, FULL_STEPS = 128, 1500
QUICK_CROP, QUICK_STEPS = 64, 120
#: the small U-Net of the agreement table: (depth, width, batch, side)
AGREEMENT_NET = (2, 2, 2, 8)

RUN_LEGEND = [
    ("image", "what is compared with the clean image: f(z + noise) is the step's output (the "
              "code with that step's input noise, what the loss sees), f(z) the output for the "
              "code alone (one more forward pass, every tenth step), the moving average that of "
              "the steps' outputs"),
    ("PSNR dB", "10·log10(1/MSE) against the clean image, images in [0, 1]"),
    ("vs Gaussian", "PSNR − the best Gaussian filter's (its σ chosen with the clean image)"),
    ("step", "the Adam step of that image (best: chosen with the clean image, an oracle "
             "stopping time as in the paper's curves)"),
]
AGREEMENT_LEGEND = [
    ("engine", "the engine differentiating ½‖f(x) − y‖² of the small U-Net (float64)"),
    ("compared", "what is compared with the tape: every partial derivative, or vᵀ∇L along "
                 "random directions v (two forward passes each, instead of two per parameter)"),
    ("rel. error", "‖g − g_tape‖ / ‖g_tape‖ (directional: the worst direction)"),
    ("seconds", "compile and evaluate"),
]


def _agreement_model() -> tuple[Any, np.ndarray, np.ndarray]:
    from autodiff_lab import nn
    depth, width, batch, side = AGREEMENT_NET
    model = nn.UNet(1, 1, depth=depth, width=width, up="bilinear", down="conv",
                    skip_channels=2, output="sigmoid", rng=0)
    rng = np.random.default_rng(0)
    return model, rng.random((batch, 1, side, side)), rng.random((batch, 1, side, side))


def build_example(quick: bool) -> Any:
    """The case's example: the small U-Net's loss ½‖f(x) − y‖² with its weights."""
    import autodiff_lab as adl
    from autodiff_lab.examples import Example
    from autodiff_lab.graph import functions as F

    model, x, y = _agreement_model()
    model.double()
    graph = adl.trace(lambda x, y: F.mse_loss(model(x), y, reduction="sum"), x=x, y=y)
    depth, width, batch, side = AGREEMENT_NET
    return Example("dip", graph, {**model.state_dict(), "x": x, "y": y},
                   f"Deep Image Prior: a random U-Net fitted to one noisy image and stopped "
                   f"early; the engines on a U-Net of depth {depth} ({model.num_parameters:,} "
                   f"parameters, {batch} images {side}×{side})")


def _write_table(ctx: CaseContext, stem: str, columns: list[str], rows: list[list[str]],
                 data: Any) -> list[str]:
    csv_path, json_path = ctx.path(f"{stem}.csv"), ctx.path(f"{stem}.json")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return [ctx.rel(csv_path), ctx.rel(json_path)]


def run_config(ctx: CaseContext) -> Any:
    """The configuration of the report's run: a small U-Net (depth 4, 8, 16, 32, 32, 32
    channels, 4-channel skips, an 8-channel code, constant lr) on a smaller crop, a few
    minutes; the study's own default, the paper's larger hourglass, takes ten."""
    from autodiff_lab.studies import dip
    crop, steps = (QUICK_CROP, QUICK_STEPS) if ctx.quick else (FULL_CROP, FULL_STEPS)
    return dip.DIPConfig(crop=crop, steps=steps, every=5 if ctx.quick else 10,
                         architecture="unet", depth=4, skip_channels=4, code_channels=8,
                         lr_decay_start=None, weight_ema=0.0,
                         ema=0.9 if ctx.quick else 0.99, out=str(ctx.folder / "run"),
                         progress=False).validate()


def dip_run_section(ctx: CaseContext) -> Section:
    """The Deep Image Prior run: curve, panel, numbers."""
    from autodiff_lab.compare.sections import _text_table
    from autodiff_lab.studies import dip

    config = run_config(ctx)
    _, h, _ = dip.load_clean_image(config).shape
    ctx.progress(f"dip: fitting the U-Net, {config.steps} steps on {h}×{h}")
    m = dip.run(config)
    ctx.results["dip_run"] = m
    gauss = m["gaussian_psnr"]
    rows = [["noisy input", f"{m['noisy_psnr']:.2f}", f"{m['noisy_psnr'] - gauss:+.2f}", ""],
            [f"best Gaussian filter (σ = {m['gaussian_sigma']:g} px)", f"{gauss:.2f}", "+0.00", ""],
            ["DIP, best step (f(z + noise))", f"{m['best_psnr']:.2f}", f"{m['best_psnr'] - gauss:+.2f}",
             str(m["best_step"])]]
    if "code_best_psnr" in m:
        rows.append(["DIP, f(z) without the input noise, best", f"{m['code_best_psnr']:.2f}",
                     f"{m['code_best_psnr'] - gauss:+.2f}", str(m["code_best_step"])])
    if "ema_best_psnr" in m:
        rows.append([f"DIP, moving average ({config.ema:g}), best", f"{m['ema_best_psnr']:.2f}",
                     f"{m['ema_best_psnr'] - gauss:+.2f}", str(m["ema_best_step"])])
    rows.append(["DIP, final step", f"{m['final_psnr']:.2f}", f"{m['final_psnr'] - gauss:+.2f}",
                 str(m["steps"])])
    if "ema_final_psnr" in m:
        rows.append(["DIP, moving average, final step", f"{m['ema_final_psnr']:.2f}",
                     f"{m['ema_final_psnr'] - gauss:+.2f}", str(m["steps"])])
    columns = ["image", "PSNR dB", "vs Gaussian", "step"]
    notes = [f"{m['parameters']:,} parameters, {m['steps']} steps in {m['train_seconds']:.0f} s "
             f"({m['steps_per_second']:.2f} steps/s, tape engine, float32)"]
    files = _write_table(ctx, "dip_run", columns, rows,
                         {k: v for k, v in m.items() if k != "curve"})
    text = _text_table(columns, rows, notes)
    ctx.echo(text)
    folder = ctx.folder / "run"
    decline = m["best_psnr"] - m["final_psnr"]
    paragraphs = [
        f"A randomly initialised U-Net f (depth 4, 8 to 32 channels, {m['parameters']:,} parameters) "
        f"is fitted by Adam to one noisy image y ({h}×{h} centre of camera, σ = 25/255) from a "
        "fixed random code z, minimising ½‖f(z) − y‖², with no training set. It reproduces the "
        "image before the noise: the PSNR against the clean image rises, peaks and declines "
        f"({decline:.2f} dB from the peak to the last step here) while the PSNR against the "
        "noisy target keeps rising.",
        "The documented run (the paper's larger hourglass network, 256×256, ten minutes) is "
        "`autodiff-lab train dip`; this one is smaller so the report stays within its time."]
    return Section("dip_run", "Deep Image Prior: the fit", paragraphs,
                   tables=[TableRef("PSNR against the clean image", columns, rows, RUN_LEGEND,
                                    files, notes, text=text)],
                   figures=[ctx.figure("PSNR against the step",
                                       (folder / "dip_curve.png", folder / "dip_curve.svg"),
                                       "f(z) against the clean image and the noisy target; "
                                       "the peak starred"),
                            ctx.figure("the references and f(z) during the fit",
                                       (folder / "dip_panel.png", folder / "dip_panel.svg"))],
                   files=files)


def dip_agreement_section(ctx: CaseContext) -> Section:
    """Every engine on one U-Net gradient (tape, matrix mode, numeric directional)."""
    from autodiff_lab.compare.sections import _text_table
    from autodiff_lab.nn.agreement import engine_agreement

    model, x, y = _agreement_model()
    ctx.progress("dip: the engines on a small U-Net")
    got = engine_agreement(model, x, y, directions=3)
    ctx.results["dip_agreement"] = got
    columns = ["engine", "compared", "rel. error", "seconds"]
    rows = [[r["engine"], r["check"], "0 (reference)" if r["engine"] == "tape"
             else f"{r['relative_error']:.1e}", f"{r['seconds']:.2f}"] for r in got]
    depth, width, batch, side = AGREEMENT_NET
    notes = [f"nn.UNet(1, 1, depth={depth}, width={width}, up='bilinear', down='conv', "
             f"skip_channels=2), {model.num_parameters:,} parameters, {batch} images "
             f"{side}×{side}, float64"]
    files = _write_table(ctx, "dip_agreement", columns, rows, got)
    text = _text_table(columns, rows, notes)
    ctx.echo(text)
    return Section("dip_agreement", "Deep Image Prior: every engine on a U-Net gradient",
                   ["The U-Net's ops (bilinear up-sampling, stride-2 convolutions, "
                    "concatenation, batch normalisation) differentiated by reverse mode, by the "
                    "symbolic engine at matrix level, and by finite differences along random "
                    "directions."],
                   tables=[TableRef("engines against the tape", columns, rows, AGREEMENT_LEGEND,
                                    files, notes, text=text)], files=files)


SECTIONS["dip_run"] = dip_run_section
SECTIONS["dip_agreement"] = dip_agreement_section
CASES["dip"] = CaseSpec("dip", build_example, ["dip_run", "dip_agreement"])

__all__ = ["build_example", "dip_agreement_section", "dip_run_section", "run_config"]
