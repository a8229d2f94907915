"""Training with each engine: the same model, the same initial weights, the same batches.

::

    from autodiff_lab import compare, nn
    result = compare.training(lambda seed: nn.SigmoidNeuron(2, dtype=np.float64, rng=seed),
                              nn.MSELoss(), (X, Y), engines=("tape", "symbolic", "numeric"),
                              steps=40, batch_size=20,
                              optimizer=lambda params: nn.Adam(params, lr=0.1))
    result.row("symbolic").losses          # the loss at every step
    result.max_loss_difference             # max |Δloss| between the engines over all steps

Every engine gets a fresh model from ``model_factory(seed)`` (so the same initial weights),
a fresh optimiser from ``optimizer(model.parameters())`` and the same sequence of batches
(drawn from ``seed``: a new row order every epoch, the optional ``transform`` applied
with the same generator), and runs :func:`~autodiff_lab.nn.compile_step` and the
optimiser step after step. The numeric engine is refused before its first step when one
step needs more forward evaluations than ``max_numeric_evaluations`` (the row says how
many); an engine that cannot compile the model (e.g. a symbolic expression too large) is a
refusal row with its reason.

Also :func:`model_case`: an nn model, its loss and one batch as the ``(graph, values)``
that :func:`~autodiff_lab.compare.accuracy` and :func:`~autodiff_lab.compare.speed` take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from autodiff_lab.compare.results import ResultTable
from autodiff_lab.errors import AutodiffError, GraphError, InputError, ShapeError, TraceError

#: default largest number of forward evaluations one numeric training step may take
MAX_NUMERIC_EVALUATIONS = 10_000
TRAINING_ENGINES = ("tape", "symbolic", "numeric")


@dataclass
class TrainingRow:
    """One engine's training run (or its refusal)."""

    engine: str
    status: str                        #: "ok" or "refused"
    steps: int = 0
    compile_s: float | None = None     #: tracing + compiling + the first step
    step_s: float | None = None        #: median seconds per step (gradient + optimiser)
    step_min_s: float | None = None
    step_max_s: float | None = None
    vs_tape: float | None = None       #: step_s ÷ the tape's step_s
    first_loss: float | None = None
    final_loss: float | None = None
    val_loss: float | None = None      #: the loss on val_data after training
    metric: float | None = None        #: metric(model) after training
    max_abs_dloss: float | None = None  #: max over steps of |loss − the first engine's loss|
    evaluations: int | None = None     #: forward evaluations one step needs (numeric)
    note: str = ""
    refused_value: float | None = None
    refused_limit: float | None = None
    refused_unit: str = ""
    losses: list[float] = field(default_factory=list)


@dataclass
class TrainingResult(ResultTable):
    """The same training run by every engine: loss curves, time per step, agreement."""

    ROW = TrainingRow
    case: str
    rows: list[TrainingRow]
    model: str = ""
    parameters: int = 0
    steps: int = 0
    batch_size: int = 0
    optimizer: str = ""
    seed: int = 0
    metric_name: str = ""
    #: max |Δloss| over all steps and all pairs of engines that trained
    max_loss_difference: float | None = None
    load_average: list[float] = field(default_factory=list)

    def row(self, engine: str) -> TrainingRow:
        """The row of ``engine``."""
        for r in self.rows:
            if r.engine == engine:
                return r
        raise InputError(f"no row for engine {engine!r}; rows: {[r.engine for r in self.rows]}")

    def trained(self) -> list[TrainingRow]:
        """The rows of the engines that trained."""
        return [r for r in self.rows if r.status == "ok"]


def _batches(X: np.ndarray, Y: np.ndarray, steps: int, batch_size: int, seed: int,
             transform: Callable[..., tuple[Any, Any]] | None) -> Iterator[tuple[Any, Any]]:
    """``steps`` batches: a new permutation of the rows every epoch, from ``seed``."""
    rng = np.random.default_rng(seed)
    n = len(X)
    done = 0
    while done < steps:
        perm = rng.permutation(n)
        for start in range(0, n, batch_size):
            if done == steps:
                return
            idx = perm[start:start + batch_size]
            xb, yb = X[idx], Y[idx]
            if transform is not None:
                xb, yb = transform(rng, xb, yb)
            yield xb, yb
            done += 1


def _numeric_evaluations(step: Any, model: Any) -> tuple[int, int]:
    """(forward evaluations one step needs, evaluations per parameter)."""
    from autodiff_lab.engines.numeric_steps import STENCILS
    eng = step.engine
    stencil = STENCILS[eng.method]
    points = stencil.points(bool(eng.estimate_error) or stencil.name == "richardson")
    n = int(sum(p.size for p in model.parameters() if p.requires_grad))
    return 1 + n * len(points), len(points)


def _engine_options(engine: str, limit: int) -> dict[str, Any]:
    if engine == "tape":
        return {"anomaly": False}
    if engine == "numeric":
        return {"estimate_error": False, "max_evaluations": limit, "progress": False}
    return {}


def training(model_factory: Callable[[int], Any], loss: Callable[[Any, Any], Any],
             train_data: tuple[Any, Any], *, engines: Sequence[str] = ("tape", "symbolic"),
             steps: int = 50, batch_size: int = 64,
             optimizer: Callable[[Any], Any] | None = None, seed: int = 0,
             val_data: tuple[Any, Any] | None = None,
             metric: Callable[[Any], float] | None = None, metric_name: str = "",
             transform: Callable[[np.random.Generator, Any, Any], tuple[Any, Any]] | None = None,
             max_numeric_evaluations: int = MAX_NUMERIC_EVALUATIONS, name: str = "model",
             progress: Callable[[str], None] | None = None,
             models: dict[str, Any] | None = None) -> TrainingResult:
    """Train the same model with each engine; see the module docstring.

    ``model_factory(seed)`` builds the model (the same weights for the same seed);
    ``optimizer(params)`` builds its optimiser (default: ``nn.Adam(params, lr=1e-3)``);
    ``train_data``: ``(X, Y)`` arrays, rows = samples. ``val_data``: the final validation
    loss; ``metric(model) -> float`` (named ``metric_name``): a final score, e.g. accuracy.
    ``transform(rng, Xb, Yb)`` damages or augments each batch (the same draws for every
    engine). ``models``: a dict to receive each engine's trained model. Returns a
    :class:`TrainingResult` with one row per engine.
    """
    from autodiff_lab import nn

    if not callable(model_factory):
        raise InputError("training: model_factory must be a function seed -> nn.Module")
    for what, v, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
                         ("max_numeric_evaluations", max_numeric_evaluations, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InputError(f"training: {what} must be an integer ≥ {low}, got {v!r}")
    engines = list(engines)
    for e in engines:
        if e not in TRAINING_ENGINES:
            raise InputError(f"training: unknown engine {e!r}; choose from "
                             f"{', '.join(TRAINING_ENGINES)}")
    if not engines:
        raise InputError("training: no engines given")
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2):
        raise InputError("training: train_data must be a pair (X, Y) of arrays")
    X, Y = np.asarray(train_data[0]), np.asarray(train_data[1])
    if len(X) != len(Y) or len(X) == 0:
        raise InputError(f"training: X and Y need the same, non-zero number of rows, got "
                         f"{len(X)} and {len(Y)}")
    make_opt = optimizer or (lambda params: nn.Adam(params, lr=1e-3))
    say = progress or (lambda message: None)

    rows: list[TrainingRow] = []
    probe = model_factory(seed)
    n_params = int(probe.num_parameters)
    opt_repr = repr(make_opt(probe.parameters()))
    for engine in engines:
        say(f"{name}: training with {engine} ({steps} steps)")
        model = model_factory(seed)
        opt = make_opt(model.parameters())
        model.train()
        batches = _batches(X, Y, steps, batch_size, seed, transform)
        xb, yb = next(batches)
        row = TrainingRow(engine, "ok")
        t0 = time.perf_counter()
        try:
            step = nn.compile_step(model, loss, engine=engine,
                                   **_engine_options(engine, max_numeric_evaluations))
            if engine == "numeric":
                needed, per = _numeric_evaluations(step, model)
                row.evaluations = needed
                if needed > max_numeric_evaluations:
                    rows.append(TrainingRow(
                        engine, "refused", evaluations=needed, refused_value=float(needed),
                        refused_limit=float(max_numeric_evaluations),
                        refused_unit="forward evaluations per step",
                        note=(f"one step needs {needed:,} forward evaluations ({per} per parameter × "
                              f"{n_params:,} + 1), more than the limit "
                              f"{max_numeric_evaluations:,}")))
                    continue
            step.compile(xb, yb)
            out = step(xb, yb)
        except (InputError, ShapeError, TraceError, GraphError):
            raise  # the model, the loss or the data are wrong, not the engine
        except AutodiffError as exc:
            rows.append(TrainingRow(engine, "refused", note=f"{type(exc).__name__}: {exc}"))
            continue
        opt.step()
        row.compile_s = time.perf_counter() - t0
        losses, times = [out.loss], []
        for xb, yb in batches:
            t = time.perf_counter()
            out = step(xb, yb)
            opt.step()
            times.append(time.perf_counter() - t)
            losses.append(out.loss)
        row.steps, row.losses = len(losses), [float(v) for v in losses]
        row.first_loss, row.final_loss = row.losses[0], row.losses[-1]
        if times:
            row.step_s = float(np.median(times))
            row.step_min_s, row.step_max_s = float(min(times)), float(max(times))
        if val_data is not None:
            row.val_loss = float(nn.evaluate(model, loss, val_data[0], val_data[1]))
        if metric is not None:
            row.metric = float(metric(model))
            model.train()
        if models is not None:
            models[engine] = model
        rows.append(row)

    ok = [r for r in rows if r.status == "ok"]
    tape = next((r for r in ok if r.engine == "tape"), None)
    worst: float | None = None
    if ok:
        base = np.asarray(ok[0].losses)
        for r in ok:
            if tape is not None and tape.step_s and r.step_s is not None:
                r.vs_tape = r.step_s / tape.step_s
            d = float(np.max(np.abs(np.asarray(r.losses) - base)))
            r.max_abs_dloss = d
        if len(ok) > 1:
            curves = np.array([r.losses for r in ok])
            worst = float(np.max(curves.max(axis=0) - curves.min(axis=0)))
    return TrainingResult(name, rows, model=type(probe).__name__, parameters=n_params,
                          steps=steps, batch_size=batch_size, optimizer=opt_repr, seed=seed,
                          metric_name=metric_name, max_loss_difference=worst,
                          load_average=[round(v, 2) for v in os.getloadavg()])


class ModelCase(NamedTuple):
    """A model's loss on one batch as a graph and its values: ``compare.accuracy(*case)``."""

    graph: Any
    values: dict[str, Any]


def model_case(model: Any, loss: Callable[[Any, Any], Any], x: Any, y: Any) -> ModelCase:
    """``loss(model(x), y)`` traced on this batch, with the model's current parameters and
    buffers (``model.state_dict()``), ``x``, ``y`` and fresh dropout masks as the values:
    what :func:`~autodiff_lab.compare.accuracy`, :func:`~autodiff_lab.compare.speed` and
    :func:`~autodiff_lab.compare.measure` take. The model's parameters are the graph's
    parameters, so those functions differentiate with respect to them by default."""
    from autodiff_lab import nn
    from autodiff_lab.graph.graph import trace

    if not isinstance(model, nn.Module):
        raise InputError(f"model_case needs a nn.Module, got {type(model).__name__}")
    if not callable(loss):
        raise InputError(f"model_case needs a loss (prediction, target) -> scalar, got "
                         f"{type(loss).__name__}")
    dtype = model.dtype or np.dtype(np.float64)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind == "f":
        x = x.astype(dtype)
    if y.dtype.kind == "f":
        y = y.astype(dtype)
    graph = trace(lambda x, y: loss(model(x), y), x=x, y=y)
    if tuple(graph.node(graph.output)["shape"]) != ():
        raise InputError(f"model_case: the loss must be a scalar, but loss(model(x), y) has "
                         f"shape {graph.node(graph.output)['shape']}")
    state = dict(model.state_dict())
    if isinstance(loss, nn.Module) and loss is not model:
        state.update(loss.state_dict())
    values: dict[str, Any] = {"x": x, "y": y}
    values.update(model.dropout_masks(graph))
    for n in graph.inputs:
        if n in values:
            continue
        if n not in state:
            raise InputError(f"model_case: the traced loss reads input {n!r}, which is neither a "
                             "parameter nor a buffer of the model or the loss")
        values[n] = np.asarray(state[n])
    return ModelCase(graph, values)


__all__ = ["ModelCase", "TrainingResult", "TrainingRow", "model_case", "training"]
