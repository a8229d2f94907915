"""Two sections of pictures: the network drawn layer by layer, and the case study's images.

* ``layers`` (inpainting, denoiser, classifier): the case's network as the matching
  :mod:`autodiff_lab.nn` model (:class:`~autodiff_lab.nn.InpaintingMLP`,
  :class:`~autodiff_lab.nn.DnCNN`, :class:`~autodiff_lab.nn.LinearClassifier`) with the
  case's sizes and weights, drawn one box per module, each edge labelled with its shape, its
  forward value and its gradient (mean ± std), each box with its parameters' gradient norms.
  The numbers come from one tape gradient of the model's loss computed here; the drawing
  code only formats them. The paragraph says how far that gradient is from the case graph's
  own (the same weights: equal to rounding).
* ``case_study``: the neuron's sigmoid with the point the example evaluates and its tangent
  σ(1 − σ), and the decision boundary of the neuron the training section trained; the
  denoiser's test crop clean / noisy / denoised / the removed noise with PSNRs; the
  classifier's test digits with predicted and true labels, the wrong ones marked. Every
  trained model is the training section's (``ctx.results["trained_models"]``), never
  trained again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.compare import plots
from autodiff_lab.compare import training_section as _training  # noqa: F401  (training first)
from autodiff_lab.compare.cases import CASES, SECTIONS, CaseContext, Section, add_section

# --------------------------------------------------------------------------------------------
# the nn model of each network case, with the case's weights
# --------------------------------------------------------------------------------------------


def _load(model: Any, state: dict[str, np.ndarray]) -> Any:
    model.load_state_dict({k: np.asarray(v, dtype=model.dtype) for k, v in state.items()},
                          strict=False)
    return model


def inpainting_model(values: dict[str, np.ndarray]) -> tuple[Any, Any, Any, Any, dict[str, str]]:
    """InpaintingMLP with the case's W1, b1, W2, b2; the loss ½‖ŷ − y‖² summed, as the
    case's; rows are images (the case's columns). Returns (model, loss, x, y, names) with
    names mapping the case's parameters to the model's."""
    from autodiff_lab import nn
    hidden, d = values["W1"].shape
    dtype = values["W1"].dtype
    model = nn.InpaintingMLP(d, hidden, dtype=dtype, rng=0)
    names = {"W1": "fc1.weight", "b1": "fc1.bias", "W2": "fc2.weight", "b2": "fc2.bias"}
    state = {names[k]: (values[k][:, 0] if k.startswith("b") else values[k])
             for k in names if k in values}
    _load(model, state)
    return model, nn.MSELoss(reduction="sum"), values["x"].T, values["y"].T, names


def denoiser_model(values: dict[str, np.ndarray]) -> tuple[Any, Any, Any, Any, dict[str, str]]:
    """DnCNN with the case's convolutions and batch-norm scales; the case's last convolution
    has no bias, the model's is set to 0. The model predicts the noise, so its loss is the
    mean ½(noise − (noisy − clean))², the same number as the case's ½(noisy − noise − clean)²."""
    from autodiff_lab import nn
    depth = sum(1 for k in values if k.startswith("w") and k[1:].isdigit())
    channels = values["w0"].shape[0]
    model = nn.DnCNN(depth, channels, 1, dtype=values["w0"].dtype, rng=0)
    names = {"w0": "layers.0.weight", "b0": "layers.0.bias"}
    for i in range(1, depth - 1):
        conv = 2 + 3 * (i - 1)
        names[f"w{i}"] = f"layers.{conv}.weight"
        names[f"gamma{i}"] = f"layers.{conv + 1}.weight"
        names[f"beta{i}"] = f"layers.{conv + 1}.bias"
    last = 2 + 3 * (depth - 2)
    names[f"w{depth - 1}"] = f"layers.{last}.weight"
    state = {names[k]: values[k] for k in names if k in values}
    state[f"layers.{last}.bias"] = np.zeros(1)
    _load(model, state)
    return (model, nn.MSELoss(reduction="mean"), values["noisy"],
            values["noisy"] - values["clean"], names)


def classifier_model(values: dict[str, np.ndarray]) -> tuple[Any, Any, Any, Any, dict[str, str]]:
    """LinearClassifier with the case's W and b; mean softmax cross-entropy, as the case's."""
    from autodiff_lab import nn
    classes, d = values["W"].shape
    model = nn.LinearClassifier(d, classes, dtype=values["W"].dtype, rng=0)
    names = {"W": "linear.weight", "b": "linear.bias"}
    _load(model, {names[k]: values[k] for k in names})
    return model, nn.CrossEntropyLoss(), values["x"], values["labels"], names


#: case -> the matching nn model built from the case's values
LAYER_MODELS: dict[str, Callable[[dict[str, np.ndarray]], tuple[Any, Any, Any, Any, dict[str, str]]]] = {
    "inpainting": inpainting_model,
    "denoiser": denoiser_model,
    "classifier": classifier_model,
}


def _relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                         names: dict[str, str]) -> float | None:
    """max |g_case − g_model| / max |g_case| over the parameters both have."""
    pairs = [(np.asarray(a[k], dtype=np.float64).ravel(), np.asarray(b[v], dtype=np.float64).ravel())
             for k, v in names.items() if k in a and v in b]
    if not pairs:
        return None
    scale = max(float(np.max(np.abs(x))) for x, _ in pairs) or 1.0
    return max(float(np.max(np.abs(x - y))) for x, y in pairs) / scale


def layers_section(ctx: CaseContext) -> Section | None:
    """The case's network as nn modules: one box per layer, with values and gradients."""
    from autodiff_lab import nn
    from autodiff_lab.engines import engine
    from autodiff_lab.render.layers import draw_layer_graph

    build = LAYER_MODELS.get(ctx.spec.name)
    ex = ctx.example
    if build is None or not all(n in ex.values for n in ctx.wrt):
        return None
    try:
        model, loss, x, y, names = build(ex.values)
    except (KeyError, IndexError, ValueError):
        return None  # a user's graph under a built-in name: not the network drawn here
    trace = nn.trace_modules(model, loss, x, y)
    ctx.progress(f"{ex.name}: the layer drawing's gradient")
    result = engine("tape", keep_all=True).compile(trace.graph, output="loss")(trace.values)
    case = engine("tape").compile(ex.graph, wrt=ctx.wrt)(ex.values)
    case_loss = float(np.asarray(case.value))
    diff = _relative_difference(case.grads, result.grads, names)
    title = f"{type(model).__name__} ({model.num_parameters:,} parameters) on {ex.description}"
    wrap = 7 if len(trace.layers.nodes) > 8 else None
    stem = ctx.path("layers")
    draw_layer_graph(trace.layers, stem, values=result.node_values, grads=result.node_grads,
                     wrap=wrap, title=f"{type(model).__name__}: one box per layer")
    sec = Section("layers", "The network layer by layer")
    extra = model.num_parameters - sum(int(np.prod(np.shape(ex.values[n]))) for n in ctx.wrt)
    if extra > 0:
        title += (f"; {extra} parameter{'s' if extra > 1 else ''} more than the case's graph "
                  "(the last convolution's bias, set to 0: the case's has none)"
                  if ctx.spec.name == "denoiser" else f"; {extra} parameters more than the case's")
    same = ("the same weights and data as the case's graph; its loss "
            f"{float(np.asarray(result.value)):.6g} (the case's: {case_loss:.6g}) and its "
            "gradient, whose largest difference to the case's tape gradient is "
            f"{diff:.1e} of the largest entry" if diff is not None else "the case's weights")
    sec.paragraphs.append(
        f"The case's network built from <code>autodiff_lab.nn</code> layers: {title}, with "
        f"{same}. The numbers on the drawing come from this model's own tape gradient "
        "(computed once for the drawing): on each edge the tensor's shape, its forward value "
        "and the gradient of the loss with respect to it, each as mean ± std over its "
        "elements; in each box the norm of the gradient of each parameter.")
    sec.figures.append(ctx.figure(
        "One box per nn module", (stem.with_name("layers.png"), stem.with_name("layers.svg")),
        "green: forward value, red: gradient ∂L/∂·, both mean ± std over the tensor; "
        "‖∂L/∂θ‖: each parameter's gradient norm. Numbers from the nn model's own gradient."))
    return sec


# --------------------------------------------------------------------------------------------
# the case study's pictures
# --------------------------------------------------------------------------------------------

def _trained(ctx: CaseContext) -> tuple[str, Any] | None:
    models = ctx.results.get("trained_models") or {}
    for engine in ("tape", *models):
        if engine in models:
            return engine, models[engine]
    return None


def neuron_figure(ex_values: dict[str, Any], trained: Any, data: tuple[np.ndarray, np.ndarray],
                  stem: Path) -> tuple[Path, Path]:
    """Left: σ(z) with the example's point z₀ = w0·x0 + w1·x1 + w2 and its tangent of
    slope σ(z₀)(1 − σ(z₀)). Right: the trained neuron's σ(w·x + b) over the plane, its
    decision boundary σ = 0.5 and the training points."""
    v = {k: float(np.asarray(x)) for k, x in ex_values.items()}
    z0 = v["w0"] * v["x0"] + v["w1"] * v["x1"] + v["w2"]
    s0 = 1.0 / (1.0 + np.exp(-z0))
    slope = s0 * (1.0 - s0)
    with plots.styled():
        fig = plots.new_figure()
        left, right = fig.subplots(1, 2)
        z = np.linspace(min(-6.0, z0 - 2), max(6.0, z0 + 2), 400)
        left.plot(z, 1 / (1 + np.exp(-z)), color="#1f77b4", label="σ(z)")
        t = np.linspace(z0 - 2.5, z0 + 2.5, 2)
        left.plot(t, s0 + slope * (t - z0), "--", color="#b91c1c",
                  label=f"tangent, slope σ(1−σ) = {slope:.4f}")
        left.plot([z0], [s0], "o", color="#15803d", markersize=12, zorder=5,
                  label=f"z₀ = {z0:g}, σ(z₀) = {s0:.4f}")
        left.set_xlabel("z = w0·x0 + w1·x1 + w2")
        left.set_ylabel("f = σ(z)")
        left.set_ylim(-0.1, 1.1)
        left.set_title("What the neuron computes")
        left.legend(loc="upper left", fontsize=13)
        X, y = data
        if trained is not None:
            from autodiff_lab import nn
            pad = 0.5
            xs = np.linspace(X[:, 0].min() - pad, X[:, 0].max() + pad, 160)
            ys = np.linspace(X[:, 1].min() - pad, X[:, 1].max() + pad, 160)
            gx, gy = np.meshgrid(xs, ys)
            grid = np.column_stack([gx.ravel(), gy.ravel()])
            p = np.asarray(nn.predict(trained, grid)).reshape(gx.shape)
            image = right.contourf(gx, gy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r",
                                   alpha=0.6)
            right.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=2.5)
            fig.colorbar(image, ax=right, label="σ(w·x + b)")
        labels = np.asarray(y).ravel() > 0.5
        right.scatter(X[labels, 0], X[labels, 1], c="#b91c1c", marker="o", s=60,
                      edgecolors="k", label="class 1")
        right.scatter(X[~labels, 0], X[~labels, 1], c="#1f77b4", marker="s", s=60,
                      edgecolors="k", label="class 0")
        right.set_xlabel("x1")
        right.set_ylabel("x2")
        right.set_title("Trained neuron: boundary σ = 0.5")
        right.legend(loc="upper right", fontsize=13)
        right.grid(False)
        return plots.save(fig, stem)


def denoiser_figure(clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray,
                    stem: Path) -> tuple[Path, Path]:
    """clean / noisy / denoised / the noise removed (noisy − denoised), PSNR in the titles."""
    from autodiff_lab.studies.common import psnr_db
    removed = noisy - denoised
    panels = [(clean, "clean (reference)"), (noisy, f"noisy: {psnr_db(noisy, clean):.2f} dB"),
              (denoised, f"denoised: {psnr_db(denoised, clean):.2f} dB"),
              (removed, "noise removed")]
    with plots.styled():
        fig = plots.new_figure((13.33, 4.0))
        axes = fig.subplots(1, 4)
        for ax, (img, title) in zip(axes, panels):
            if img is removed:
                lim = float(np.max(np.abs(removed))) or 1.0
                ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=16)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        return plots.save(fig, stem)


def classifier_figure(images: np.ndarray, predicted: np.ndarray, truth: np.ndarray,
                      stem: Path, columns: int = 10) -> tuple[Path, Path]:
    """A grid of test digits titled "predicted (true)"; wrong ones in red with a red frame."""
    count = len(images)
    rows = -(-count // columns)
    with plots.styled():
        fig = plots.new_figure((13.33, 1.55 * rows + 0.6))
        axes = np.atleast_2d(fig.subplots(rows, columns))
        for k, ax in enumerate(axes.ravel()):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if k >= count:
                ax.axis("off")
                continue
            ax.imshow(images[k].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            wrong = predicted[k] != truth[k]
            colour = "#b91c1c" if wrong else "#15803d"
            ax.set_title(f"{predicted[k]} ({truth[k]})" if wrong else f"{predicted[k]}",
                         color=colour, fontsize=16, fontweight="bold" if wrong else "normal")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour)
                spine.set_linewidth(3 if wrong else 0.8)
        return plots.save(fig, stem)


def case_study_section(ctx: CaseContext) -> Section | None:
    """The pictures of the case study, from the models the training section trained."""
    from autodiff_lab import nn

    name = ctx.spec.name
    trained = _trained(ctx)
    setup = ctx.results.get("training_setup") or {}
    result = ctx.results.get("training")
    steps = f"{result.steps} steps" if result is not None else "training"
    sec = Section("case_study", "The case study in pictures")
    if name == "neuron":
        data = setup.get("train_data")
        if data is None:
            from autodiff_lab.studies.neuron import make_points
            X, y = make_points(40, 0)
            data = (X, y)
        paths = neuron_figure(ctx.example.values, trained[1] if trained else None, data,
                              ctx.path("neuron_pictures"))
        sec.figures.append(ctx.figure(
            "The neuron: its sigmoid at the example's point, and the trained decision boundary",
            paths, "left: σ(z) with the example's point and its tangent (the local derivative "
            "dσ/dz = σ(1−σ) the backward pass multiplies by); right: the neuron after "
            f"{steps} ({trained[0] if trained else 'untrained'}), its output over the plane "
            "and the line where it is 0.5"))
    elif name == "denoiser":
        if trained is None:
            return None
        from autodiff_lab.compare.training_section import DENOISER_TEST, denoiser_test_image
        from autodiff_lab.data import best_gaussian_filter
        clean, noisy = denoiser_test_image()
        model = trained[1]
        denoised = np.clip(np.asarray(model.denoise(noisy.astype(model.dtype)),
                                      dtype=np.float64), 0, 1)
        _, sigma, gauss_db = best_gaussian_filter(noisy, clean)
        paths = denoiser_figure(clean, noisy, denoised, ctx.path("denoiser_panel"))
        sec.paragraphs.append(
            f"The network trained by the training section ({steps}, {trained[0]}) applied to a "
            f"{DENOISER_TEST[1]}×{DENOISER_TEST[1]} crop of {DENOISER_TEST[0]} with Gaussian "
            f"noise σ = 25/255 (fixed seed). For scale: the best Gaussian filter (σ = "
            f"{sigma:.2g} px, chosen with the clean image) reaches {gauss_db:.2f} dB; the "
            "DnCNN paper reports 29.23 dB on BSD68 after hours of training, a network trained "
            "for seconds is far from that. <code>autodiff-lab study denoiser</code> trains "
            "one for minutes.")
        sec.figures.append(ctx.figure(
            f"Denoising after {steps}", paths,
            "clean, noisy, the network's output and the noise it removed (noisy − denoised), "
            "PSNR against the clean crop in the titles"))
    elif name == "classifier":
        if trained is None:
            return None
        from autodiff_lab.studies.classifier import load
        _, _, x_test, y_test = load(True)
        count = 40
        logits = np.asarray(nn.predict(trained[1], x_test[:count]))
        predicted = logits.argmax(axis=1)
        truth = np.asarray(y_test[:count])
        wrong = int(np.sum(predicted != truth))
        paths = classifier_figure(x_test[:count], predicted, truth,
                                  ctx.path("classifier_digits"))
        sec.figures.append(ctx.figure(
            f"Test digits after {steps} ({trained[0]}): {count - wrong}/{count} right", paths,
            "each digit titled with the predicted class; wrong ones in red as “predicted "
            "(true)” with a red frame"))
    else:
        return None
    return sec


SECTIONS["layers"] = layers_section
SECTIONS["case_study"] = case_study_section
for _case in LAYER_MODELS:
    if _case in CASES:
        add_section(_case, "layers", CASES[_case].sections.index("graph") + 1
                    if "graph" in CASES[_case].sections else None)
for _case in ("neuron", "denoiser", "classifier"):
    if _case in CASES:
        add_section(_case, "case_study")
