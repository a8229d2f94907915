"""The "training" section: the case's model trained by each engine (:func:`.training`).

Shown for the neuron (tape, symbolic and numeric all train it), the inpainting MLP
784-64-784, the DnCNN denoiser (4 convolutions of 16 channels, on fresh noisy patches) and
the linear digit classifier (tape against symbolic matrix mode; numeric is a refusal row
with the forward evaluations one step would need). The trained models and the setup stay in
``ctx.results["trained_models"]`` / ``["training_setup"]`` for the pictures of
:mod:`.case_figures`. The figure overlays the
loss curves, each engine with its own line style and markers so coinciding curves stay
visible; the table gives the time per step, its ratio to the tape and the final loss and
metric. For inpainting a panel shows a few test digits masked, predicted and complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.compare import plots
from autodiff_lab.compare.cases import CASES, SECTIONS, CaseContext, Section, TableRef, add_section
from autodiff_lab.compare.training import TrainingResult, training

#: per engine of a training run: (colour key of plots.ENGINE_STYLE, line style, marker)
TRAINING_STYLE = {"tape": ("tape", "-", "s"), "symbolic": ("symbolic-matrix", "--", "D"),
                  "numeric": ("numeric-central", ":", "o")}
LABELS = {"tape": "tape (reverse mode)", "symbolic": "symbolic (matrix mode)",
          "numeric": "numeric (central differences)"}

TRAINING_LEGEND = [
    ("engine", "the engine computing each step's gradient (the optimiser is the same)"),
    ("per step ms", "median time of one step: gradient and optimiser update"),
    ("× tape", "per step ÷ the tape's per step"),
    ("first call ms", "tracing, compiling and the first step"),
    ("final loss", "the training loss of the last step"),
    ("max |Δloss|", "the largest difference to the first engine's loss at any step"),
]


def training_plot(result: TrainingResult, stem: str | Path, title: str | None = None
                  ) -> tuple[Path, Path]:
    """The loss per step of every engine that trained, overlaid (log scale), PNG and SVG."""
    with plots.styled():
        fig = plots.new_figure()
        ax = fig.add_subplot()
        ok = result.trained()
        for i, r in enumerate(ok):
            key, ls, marker = TRAINING_STYLE.get(r.engine, (r.engine, "-", "X"))
            colour, _ = plots.engine_style(key, i)
            steps = np.arange(1, len(r.losses) + 1)
            # markers every few steps, each engine shifted, so coinciding curves all show
            every = max(len(ok), len(steps) // 12)
            ax.plot(steps, r.losses, color=colour, linestyle=ls, marker=marker,
                    markevery=(i * every // len(ok), every),
                    fillstyle="none" if i else "full", label=LABELS.get(r.engine, r.engine))
        refused = [r for r in result.rows if r.status != "ok"]
        for r in refused:
            ax.plot([], [], " ", label=plots.refusal_text(
                LABELS.get(r.engine, r.engine), r.refused_value, r.refused_limit,
                "evaluations", r.note, short=True))
        low = min((min(r.losses) for r in ok), default=0.0)
        if low > 0 and max(max(r.losses) for r in ok) > 10 * low:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss of the batch")
        diff = result.max_loss_difference
        ax.set_title(title or f"{result.case}: training loss per step")
        if diff is not None:
            ax.text(0.99, 0.97, "the engines' losses are identical at every step" if diff == 0
                    else f"max |Δloss| between engines: {diff:.1e}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=15)
        ax.legend(loc="lower left")
        return plots.save(fig, stem)


def training_table(result: TrainingResult, files: list[str]) -> TableRef:
    """The table of the section (and the terminal)."""
    from autodiff_lab.compare.sections import _text_table, fmt_error, fmt_ms
    metric = result.metric_name
    columns = ["engine", "per step ms", "min – max ms", "× tape", "first call ms", "final loss"]
    columns += ["val. loss"] if any(r.val_loss is not None for r in result.rows) else []
    columns += [metric] if metric else []
    columns += ["max |Δloss|"]
    rows, notes, classes = [], [], []
    for r in result.rows:
        label = LABELS.get(r.engine, r.engine)
        if r.status != "ok":
            notes.append(plots.refusal_text(label, r.refused_value, r.refused_limit, "",
                                            r.note) if r.refused_value is None else
                         f"{label}: {r.note}")
            label += f" — refused [{len(notes)}]"
        cells = [label, fmt_ms(r.step_s),
                 "—" if r.step_min_s is None else f"{fmt_ms(r.step_min_s)} – {fmt_ms(r.step_max_s)}",
                 "—" if r.vs_tape is None else f"{r.vs_tape:.3g}", fmt_ms(r.compile_s),
                 "—" if r.final_loss is None else f"{r.final_loss:.6g}"]
        if "val. loss" in columns:
            cells.append("—" if r.val_loss is None else f"{r.val_loss:.6g}")
        if metric:
            cells.append("—" if r.metric is None else f"{r.metric:.4g}")
        cells.append(fmt_error(r.max_abs_dloss))
        rows.append(cells)
        classes.append(r.status)
    title = (f"Training {result.model} ({result.parameters:,} parameters): {result.steps} steps "
             f"of {result.batch_size}, {result.optimizer}")
    return TableRef(title, columns, rows, TRAINING_LEGEND, files, notes, classes,
                    _text_table(columns, rows, notes))


# --------------------------------------------------------------------------------------------
# what each case trains
# --------------------------------------------------------------------------------------------

def _neuron_setup(quick: bool) -> dict[str, Any]:
    from autodiff_lab import nn
    from autodiff_lab.studies.neuron import BATCH, LR, make_points
    X, y = make_points(40 if quick else 100, 0)
    return dict(model_factory=lambda s: nn.SigmoidNeuron(2, dtype=np.float64, rng=s),
                loss=nn.MSELoss(), train_data=(X, y[:, None].astype(np.float64)),
                engines=("tape", "symbolic", "numeric"), steps=40 if quick else 300,
                batch_size=BATCH, optimizer=lambda p: nn.Adam(p, lr=LR))


def _inpainting_setup(quick: bool) -> dict[str, Any]:
    from autodiff_lab import nn
    from autodiff_lab.studies.inpainting import BlockMasks, load
    x_train, x_test, masked, _ = load(True, 0)
    if not quick:
        from autodiff_lab.data import load_digits
        x_train = load_digits("train")[0][:2000].reshape(2000, -1).astype(np.float32)
    return dict(model_factory=lambda s: nn.InpaintingMLP(784, 64, dtype=np.float32, rng=s),
                loss=nn.MSELoss(), train_data=(x_train, x_train), transform=BlockMasks(),
                engines=("tape", "symbolic", "numeric"), steps=20 if quick else 300,
                batch_size=64, optimizer=lambda p: nn.Adam(p, lr=2e-3),
                val_data=(masked, x_test))


def _classifier_setup(quick: bool) -> dict[str, Any]:
    from autodiff_lab import nn
    from autodiff_lab.studies.classifier import accuracy, load
    x_train, y_train, x_test, y_test = load(True)
    if not quick:
        from autodiff_lab.data import load_digits
        x, y = load_digits("train")
        x_train, y_train = x[:3000].reshape(3000, -1).astype(np.float32), y[:3000]
    return dict(model_factory=lambda s: nn.LinearClassifier(784, 10, dtype=np.float32, rng=s),
                loss=nn.CrossEntropyLoss(), train_data=(x_train, y_train),
                engines=("tape", "symbolic", "numeric"), steps=20 if quick else 300,
                batch_size=64, optimizer=lambda p: nn.Adam(p, lr=1e-3),
                metric=lambda m: accuracy(m, x_test, y_test), metric_name="test accuracy")


class NoisyBatch:
    """Fresh Gaussian noise σ = 25/255 on each batch of clean patches: (noisy, noise), the
    DnCNN's residual target (the same draws for every engine)."""

    def __call__(self, rng: np.random.Generator, xb: np.ndarray, yb: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        from autodiff_lab.studies.denoiser import SIGMA
        noise = rng.normal(0.0, SIGMA, xb.shape).astype(xb.dtype)
        return xb + noise, noise


#: the denoiser's test picture: a centre crop of camera with fixed noise
DENOISER_TEST = ("camera", 128)


def denoiser_test_image() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) of the denoiser's test crop, with the studies' fixed noise seed."""
    from autodiff_lab.studies.denoiser import SIGMA, TEST_NOISE_SEED, test_images
    name, crop = DENOISER_TEST
    clean = test_images(crop)[name]
    noisy = clean + np.random.default_rng(TEST_NOISE_SEED).normal(0.0, SIGMA, clean.shape)
    return clean, noisy


def _denoiser_setup(quick: bool) -> dict[str, Any]:
    from autodiff_lab import nn
    from autodiff_lab.data import random_patches
    from autodiff_lab.studies.common import psnr_db
    from autodiff_lab.studies.denoiser import training_images

    clean = random_patches(training_images(), 40, 256 if quick else 1024,
                           np.random.default_rng(0)).astype(np.float64)
    test_clean, test_noisy = denoiser_test_image()

    def factory(seed: int) -> Any:
        # the case's sizes and dtype (4 convolutions of 16 channels, float64: the kernels the
        # case's sections already compiled); the last convolution starts at a tenth of its
        # scale, so the network starts close to "no noise" (as the study does)
        model = nn.DnCNN(4, 16, 1, dtype=np.float64, rng=seed)
        last = model.layers[len(model.layers) - 1]
        last.weight.data *= 0.1
        return model

    def psnr(model: Any) -> float:
        out = np.clip(np.asarray(model.denoise(test_noisy), dtype=np.float64), 0, 1)
        return psnr_db(out, test_clean)

    return dict(model_factory=factory, loss=nn.MSELoss(), train_data=(clean, clean),
                transform=NoisyBatch(), engines=("tape", "symbolic", "numeric"),
                steps=40 if quick else 300, batch_size=8,
                optimizer=lambda p: nn.Adam(p, lr=2e-3), metric=psnr,
                metric_name=f"PSNR dB ({DENOISER_TEST[0]})",
                # one step would need ~10,000 forward passes of a convolutional network
                max_numeric_evaluations=2000)


#: the training each case shows: setup(quick) -> keyword arguments of compare.training
SETUPS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "neuron": _neuron_setup,
    "inpainting": _inpainting_setup,
    "classifier": _classifier_setup,
    "denoiser": _denoiser_setup,
}


def _panel(model: Any, masked: np.ndarray, truth: np.ndarray, stem: Path, count: int = 6
           ) -> tuple[Path, Path]:
    from autodiff_lab import nn
    pred = np.clip(nn.predict(model, masked[:count]), 0, 1)
    with plots.styled():
        fig = plots.new_figure()
        axes = fig.subplots(3, count)
        for j in range(count):
            for i, (img, name) in enumerate(((masked, "masked"), (pred, "prediction"),
                                             (truth, "truth"))):
                ax = axes[i, j]
                ax.imshow(img[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if j == 0:
                    ax.set_ylabel(name)
        return plots.save(fig, stem)


def training_section(ctx: CaseContext) -> Section | None:
    """The case's model trained by each engine: loss curves, time per step, agreement."""
    setup = SETUPS.get(ctx.spec.name)
    if setup is None:
        return None
    kwargs = setup(ctx.quick)
    families = {c.engine for c in ctx.engines}
    kwargs["engines"] = [e for e in kwargs["engines"] if e in families] or ["tape"]
    models: dict[str, Any] = {}
    result = training(name=ctx.spec.name, progress=ctx.progress, models=models, **kwargs)
    ctx.results["training"] = result
    # what later sections show pictures of (the trained models and their data): not trained twice
    ctx.results["trained_models"] = models
    ctx.results["training_setup"] = kwargs
    files = [ctx.rel(result.save_csv(ctx.path("training.csv"))),
             ctx.rel(result.save_json(ctx.path("training.json")))]
    sec = Section("training", "Training with each engine")
    sec.paragraphs.append(
        f"The same {result.model} (the same initial weights, seed {result.seed}) trained "
        f"{result.steps} steps on the same batches of {result.batch_size} by each engine; only "
        "the engine computing the gradient differs. Equal curves mean equal gradients at every "
        "step; the time per step includes the optimiser update. Load average of the machine "
        f"at the end: {', '.join(map(str, result.load_average))}.")
    paths = training_plot(result, ctx.path("training"),
                          title=f"{ctx.spec.name}: training loss per step, by engine")
    sec.figures.append(ctx.figure("Training loss per step", paths,
                                  "one line style and marker per engine: where the curves "
                                  "coincide the markers of each still show"))
    sec.tables.append(training_table(result, files))
    ctx.echo(sec.tables[-1].text)
    if ctx.spec.name == "inpainting" and models:
        masked, truth = kwargs["val_data"]
        engine = "tape" if "tape" in models else next(iter(models))
        paths = _panel(models[engine], masked, truth, ctx.path("inpainting_panel"))
        sec.figures.append(ctx.figure(f"Test digits after these {result.steps} steps ({engine})", paths,
                                      "top: the input with a hidden 12×12 block; middle: the "
                                      "network's output; bottom: the complete digit"))
    return sec


SECTIONS["training"] = training_section
for _case in SETUPS:
    if _case in CASES:
        add_section(_case, "training")
