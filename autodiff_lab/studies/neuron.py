"""Case study 1: the sigmoid neuron f = σ(w·x + b), trained with each of the three engines.

A 2-input :class:`~autodiff_lab.nn.SigmoidNeuron` is fitted to a small, linearly separable
2-D point set (generated from the seed: points on both sides of a random line, none closer
to it than a margin) with the loss ½(ŷ − y)² averaged over the batch and Adam. The same
initial weights and the same batch order are trained three times, with the tape (reverse
mode), symbolic (SymPy, matrix mode) and numeric (central differences) engines: the three
loss curves must be equal to float tolerance (checked here; the largest difference goes to
metrics.json). Writes:

* ``model.npz``               -- the neuron trained with ``engine`` (tape by default);
* ``loss.png``/``.svg``       -- the three loss curves on one plot;
* ``neuron.dot/.png/.svg``    -- the traced loss graph of the trained neuron on one training
  point, with its forward values and its gradients (one fused σ node);
* ``neuron_primitive.*``      -- the same at primitive level (mul, add, −x, exp, +1, 1/x);
* ``boundary.png``/``.svg``   -- the decision boundary ŷ = ½ with the data;
* ``metrics.json``.
"""

from __future__ import annotations

import numpy as np

from autodiff_lab.errors import AutodiffError
from autodiff_lab.studies.common import (
    ALL_ENGINES,
    STUDY_MAX_NUMERIC,
    RunFolder,
    StudyOptions,
    StudyResult,
    check_engine,
    positive_int,
    say,
    training_record,
)

NAME = "neuron"
SUMMARY = ("a 2-input sigmoid neuron fitted with each engine (tape, symbolic, numeric): equal "
           "loss curves, the trained graph with values and gradients, the decision boundary")
ENGINES = ALL_ENGINES
DEFAULT_ENGINE = "tape"
#: largest allowed difference between two engines' loss at any step (absolute; losses are ~0.1)
TOLERANCE = 1e-8

POINTS, QUICK_POINTS = 100, 40
EPOCHS, QUICK_EPOCHS = 60, 8
BATCH = 20
LR = 0.1
MARGIN = 0.3


class AgreementError(AutodiffError, AssertionError):
    """The engines' loss curves differ by more than the tolerance."""


def make_points(n: int, seed: int, margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (n, 2) in [−3, 3]² and labels (n,) in {0, 1}: the side of a random line
    through the middle of the square, with no point closer to it than ``margin`` (so a
    single neuron separates them). Half of each class when n is even."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    offset = rng.uniform(-0.5, 0.5)
    per_class = [n // 2, n - n // 2]
    chosen: list[list[np.ndarray]] = [[], []]
    while any(len(c) < k for c, k in zip(chosen, per_class)):
        cand = rng.uniform(-3, 3, size=(4 * n, 2))
        s = cand @ normal - offset
        for label, sel in ((1, s >= margin), (0, s <= -margin)):
            need = per_class[label] - len(chosen[label])
            chosen[label].extend(cand[sel][:max(need, 0)])
    X = np.concatenate([np.array(chosen[0]), np.array(chosen[1])])
    y = np.concatenate([np.zeros(per_class[0], np.int64), np.ones(per_class[1], np.int64)])
    order = rng.permutation(n)
    return X[order], y[order]


def _train(engine: str, X: np.ndarray, Y: np.ndarray, epochs: int, seed: int, folder: RunFolder,
           options: StudyOptions):
    """One neuron from the seed's initial weights, trained with ``engine``."""
    from autodiff_lab import nn
    model = nn.SigmoidNeuron(2, dtype=np.float64, rng=seed)
    optimizer = nn.Adam(model.parameters(), lr=LR)
    history = nn.fit(model, nn.MSELoss(), optimizer, (X, Y), engine=engine, epochs=epochs,
                     batch_size=BATCH, seed=seed, out=folder.training(engine),
                     resume=folder.checkpoint(engine), checkpoint_every=10,
                     max_numeric_evaluations=STUDY_MAX_NUMERIC, progress=not options.quiet, plot=False)
    return model, history


def _draw_graph(model, X: np.ndarray, Y: np.ndarray, folder: RunFolder) -> dict:
    """The trained neuron's loss graph on the training point nearest the boundary (where
    the gradient is largest), with values and gradients: DOT, PNG and SVG."""
    import autodiff_lab as adl
    from autodiff_lab import nn

    w, b = model.weight.data[0], float(model.bias.data[0])
    i = int(np.argmin(np.abs(X @ w + b)))
    x1, y1 = X[i:i + 1], Y[i:i + 1]
    loss = nn.MSELoss()
    graph = adl.trace(lambda x, y: loss(model(x), y), x=x1, y=y1)
    values = {**model.state_dict(), "x": x1, "y": y1}
    title = (f"trained neuron on the training point x = ({x1[0, 0]:.3f}, {x1[0, 1]:.3f}), "
             f"y = {int(y1[0, 0])}: forward values (green), gradients of ½(ŷ − y)² (red)")
    for stem, primitive in (("neuron", False), ("neuron_primitive", True)):
        for suffix in ("dot", "svg", "png"):
            path = folder.file(f"{stem}.{suffix}")
            adl.render(graph, values, grads=True, path=path, primitive=primitive, title=title)
            folder.record(path)
    result = adl.gradient(graph, values, engine="tape")
    return {"point_index": i, "x": x1[0], "y": int(y1[0, 0]), "loss": float(result.value),
            "grads": {k: v for k, v in result.grads.items()}}


def _num(v: float) -> str:
    return f"{v:.2f}".replace("-", "−")


def _signed(v: float) -> str:
    return f"{'+' if v >= 0 else '−'} {abs(v):.2f}"


def run(options: StudyOptions, folder: RunFolder) -> StudyResult:
    """Train the neuron with every engine, check they agree, draw it (module docstring)."""
    from autodiff_lab import figures, nn

    engine = check_engine(NAME, options.engine, ENGINES, DEFAULT_ENGINE)
    epochs = positive_int("--epochs", options.epochs) if options.epochs is not None else (
        QUICK_EPOCHS if options.quick else EPOCHS)
    n = QUICK_POINTS if options.quick else POINTS
    X, labels = make_points(n, options.seed)
    Y = labels[:, None].astype(np.float64)
    folder.write_settings(NAME, options, {"points": n, "batch": BATCH, "lr": LR})

    models, histories = {}, {}
    for name in ALL_ENGINES:
        say(options, f"training the neuron with the {name} engine ({epochs} epochs of "
                     f"{-(-n // BATCH)} steps)")
        models[name], histories[name] = _train(name, X, Y, epochs, options.seed, folder, options)

    curves = {k: np.asarray(h.step_loss) for k, h in histories.items()}
    reference = curves["tape"]
    differences = {}
    for name in ("symbolic", "numeric"):
        c = curves[name]
        if c.shape != reference.shape:
            raise AgreementError(f"the {name} engine took {c.size} steps, the tape {reference.size}")
        differences[name] = float(np.max(np.abs(c - reference))) if c.size else 0.0
    tape = models["tape"]
    weight_differences = {name: float(max(np.max(np.abs(models[name].weight.data - tape.weight.data)),
                                          np.max(np.abs(models[name].bias.data - tape.bias.data))))
                          for name in ("symbolic", "numeric")}
    worst = max(differences, key=differences.get)
    if differences[worst] > TOLERANCE:
        raise AgreementError(f"the {worst} engine's loss curve differs from the tape's by "
                             f"{differences[worst]:.3g} (tolerance {TOLERANCE:g})")

    model = models[engine]
    folder.save_model(model)
    folder.record(figures.loss_curves(
        {f"{k} ({'reverse mode' if k == 'tape' else 'SymPy' if k == 'symbolic' else 'finite differences'})": v
         for k, v in curves.items()},
        folder.file("loss"), xlabel="training step", ylabel="loss ½(ŷ − y)², batch mean",
        title=f"the same neuron trained with each engine (largest difference "
              f"{differences[worst]:.1e})"))
    drawn = _draw_graph(model, X, Y, folder)
    w, b = model.weight.data[0], float(model.bias.data[0])
    folder.record(figures.decision_boundary(
        lambda P: (nn.predict(model, P)[:, 0] >= 0.5).astype(int), X, labels, folder.file("boundary"),
        class_names=["y = 0", "y = 1"],
        title=f"σ({_num(w[0])}·x₁ {_signed(w[1])}·x₂ {_signed(b)}) = ½"))

    per_engine = {}
    for name, m in models.items():
        pred = nn.predict(m, X)[:, 0]
        per_engine[name] = {
            "training": training_record(histories[name]),
            "final_loss": float(histories[name].step_loss[-1]),
            "train_accuracy": float(np.mean((pred >= 0.5) == (labels == 1))),
            "weight": m.weight.data[0], "bias": float(m.bias.data[0]),
        }
    metrics = {
        "study": NAME,
        "engine": engine,
        "data": {"points": n, "seed": options.seed, "margin": MARGIN, "separable": True},
        "model": {"class": "SigmoidNeuron", "parameters": model.num_parameters, "dtype": "float64"},
        "optimizer": {"name": "Adam", "lr": LR, "batch": BATCH, "epochs": epochs},
        "loss": "½(ŷ − y)² averaged over the batch (nn.MSELoss)",
        "engines": per_engine,
        "max_loss_difference": differences,
        "max_weight_difference": weight_differences,
        "tolerance": TOLERANCE,
        "engines_agree": True,
        "drawn_point": drawn,
    }
    folder.write_metrics(metrics)
    summary = (f"final loss {per_engine[engine]['final_loss']:.4g}, train accuracy "
               f"{100 * per_engine[engine]['train_accuracy']:.0f} %; loss curves: symbolic − tape "
               f"{differences['symbolic']:.1e}, numeric − tape {differences['numeric']:.1e}")
    return StudyResult(NAME, folder.path, metrics, folder.files, [summary])


__all__ = ["AgreementError", "make_points", "run"]
