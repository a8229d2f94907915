"""``fit``: one training loop for every engine, resumable bit for bit.

::

    from autodiff_lab import nn
    model = nn.InpaintingMLP(784, 256, dtype=np.float32, rng=0)
    opt = nn.Adam(model.parameters(), lr=1e-3)
    history = nn.fit(model, nn.MSELoss(), opt, (X, Y), (Xv, Yv), epochs=5, batch_size=64,
                     out="runs/mlp")           # checkpoint.npz, metrics.json, loss.png/.svg, model.npz
    history = nn.fit(..., resume="runs/mlp")  # continue (after Ctrl-C, a time limit, more epochs)

Each step gathers a mini-batch (a row permutation drawn once per epoch from the run's
generator, or a :class:`Sampler`), applies the optional ``transform``, runs the compiled
step of :func:`~autodiff_lab.nn.compile_step` (traced once per batch shape: the last,
smaller batch of an epoch just works), then the optimiser. After each epoch the validation
loss and the ``metrics`` are computed in evaluation mode.

What makes a run resumable exactly: the run owns every source of randomness (the data
order, the transform's draws, each Dropout layer's masks, seeded from ``seed``) and the
checkpoint stores their exact generator states, the optimiser's and schedule's state, the
model's parameters and buffers, the counters and, mid-epoch, the epoch's permutation and
the position in it. A run resumed from any checkpoint ends with the same bits as one that
was never stopped. ``health_every`` uses a generator of its own and changes nothing.

Ctrl-C is deferred while a step updates the model or a checkpoint is written (a second
Ctrl-C is not), so the state is always that of a step boundary: the checkpoint is written,
and :class:`~autodiff_lab.errors.TrainingInterrupted` (a ``KeyboardInterrupt``) carries the
history out. NaN or Inf in the loss or a gradient stops the run with
:class:`~autodiff_lab.errors.TrainingDiverged` naming the step and the first non-finite
layer; the last good checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from autodiff_lab.errors import (
    CheckpointError,
    EvaluationLimitError,
    InputError,
    NonFiniteError,
    TrainingDiverged,
    TrainingInterrupted,
)
from autodiff_lab.kernels import tiered
from autodiff_lab.nn.checkpoint import (
    atomic_write,
    generator_state,
    read_checkpoint,
    restore_generator,
    write_checkpoint,
)
from autodiff_lab.nn.dropout import Dropout
from autodiff_lab.nn.health import directional_check, locate_nonfinite
from autodiff_lab.nn.module import Module
from autodiff_lab.nn.optim import Optimizer
from autodiff_lab.nn.step import CompiledStep, compile_step, evaluate

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
LOSS_FIGURE = "loss"
MODEL = "model.npz"
ENGINES = ("tape", "symbolic", "numeric")
#: how often the progress bar's text (loss, health) is refreshed, in seconds
POSTFIX_INTERVAL = 0.5
#: configuration a resumed run must share with its checkpoint to continue the same run
_RESUME_KEYS = ("data", "n_train", "batch_size", "steps_per_epoch", "drop_last", "shuffle",
                "schedule_per", "seed")


# --------------------------------------------------------------------------------------
# what fit returns, and the objects it takes
# --------------------------------------------------------------------------------------

@dataclass
class History:
    """What a training run recorded (``fit`` returns it; ``metrics.json`` holds it).

    Per step: ``step_loss``. Per epoch: ``epoch`` (1-based numbers), ``train_loss`` (mean
    of the epoch's step losses), ``val_loss``, ``metrics`` ({name: values}), ``lr`` (the
    first group's learning rate during the epoch) and ``epoch_end_step`` (the step count at
    the end of each epoch). ``health``: (step, relative error) of each directional gradient
    check. ``step_time``: median seconds per step; ``wall_time``: seconds of training
    (summed over resumed parts); ``steps``: steps taken; ``engine``; ``stopped``:
    ``"completed"``, ``"time_limit"``, ``"interrupted"`` or ``"diverged"``.
    """

    step_loss: list[float] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    health: list[tuple[int, float]] = field(default_factory=list)
    step_time: float = float("nan")
    wall_time: float = 0.0
    steps: int = 0
    engine: str = ""
    stopped: str = ""
    lr: list[float] = field(default_factory=list)
    epoch_end_step: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and strings (JSON-ready)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "health":
                value = [[int(s), float(e)] for s, e in value]
            elif f.name == "metrics":
                value = {k: [float(x) for x in v] for k, v in value.items()}
            elif isinstance(value, list):
                value = list(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """The inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "health" in kwargs:
            kwargs["health"] = [(int(s), float(e)) for s, e in kwargs["health"]]
        if kwargs.get("step_time") is None:
            kwargs["step_time"] = float("nan")
        for k in ("step_loss", "epoch", "train_loss", "val_loss", "lr", "epoch_end_step"):
            if k in kwargs:
                kwargs[k] = list(kwargs[k])
        if "metrics" in kwargs:
            kwargs["metrics"] = {k: list(v) for k, v in kwargs["metrics"].items()}
        return cls(**kwargs)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda f: f.write(text.encode()))

    def plot(self, path: str | Path, title: str | None = None) -> tuple[Path, Path]:
        """The training loss per step and the validation loss at the end of each epoch,
        as PNG and SVG (:func:`autodiff_lab.figures.loss_curves`)."""
        from autodiff_lab.figures import loss_curves
        if not self.step_loss:
            raise InputError("the history has no steps to plot")
        steps = np.arange(1, len(self.step_loss) + 1)
        val = None
        if self.val_loss and len(self.val_loss) == len(self.epoch_end_step):
            val = {"train": (np.asarray(self.epoch_end_step), np.asarray(self.val_loss))}
        return loss_curves({"train": (steps, np.asarray(self.step_loss))}, path, val=val,
                           title=title or f"training loss ({self.engine})")

    def __repr__(self) -> str:
        last = f", loss {self.step_loss[-1]:.4g}" if self.step_loss else ""
        val = f", val {self.val_loss[-1]:.4g}" if self.val_loss else ""
        return (f"History({self.engine}, {len(self.epoch)} epoch(s), {self.steps} step(s){last}{val}, "
                f"stopped={self.stopped!r})")


@runtime_checkable
class SamplerLike(Protocol):
    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[Any, Any]: ...


class Sampler:
    """Streaming training data: ``sample(rng, batch_size) -> (Xb, Yb)`` draws a fresh batch
    from the run's generator (e.g. random patches with fresh noise). Subclass it and
    override :meth:`sample`, or wrap a function: ``nn.Sampler(lambda rng, n: ...)``. Any
    object with such a ``sample`` method works too. ``fit`` needs ``steps_per_epoch``."""

    def __init__(self, fn: Callable[[np.random.Generator, int], tuple[Any, Any]] | None = None) -> None:
        if fn is not None and not callable(fn):
            raise InputError(f"Sampler needs a function (rng, batch_size) -> (Xb, Yb), got "
                             f"{type(fn).__name__}")
        self.fn = fn

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[Any, Any]:
        """One batch (Xb, Yb) of ``batch_size`` samples drawn from ``rng``."""
        if self.fn is None:
            raise NotImplementedError(f"{type(self).__name__} must override sample(rng, batch_size) "
                                      "or be given a function")
        return self.fn(rng, batch_size)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", None)
        return f"Sampler({name})" if name else f"{type(self).__name__}()"


class StepInfo(NamedTuple):
    """What ``callback`` receives after each step: the step count (1-based, over the whole
    run), the epoch and the batch within it (1-based), the step's loss and the history."""

    step: int
    epoch: int
    batch: int
    loss: float
    history: History


# --------------------------------------------------------------------------------------
# Ctrl-C: deferred while the state is being changed
# --------------------------------------------------------------------------------------

class _InterruptGuard:
    """Installs a SIGINT handler (main thread, default handler only) that defers Ctrl-C
    inside :meth:`critical` sections to their end; a second Ctrl-C is not deferred. A
    KeyboardInterrupt escaping a critical section marks the state ``dirty`` (possibly half
    updated: no checkpoint is written from it)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.dirty = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.depth > 0 and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self, raise_pending: bool = True) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        except KeyboardInterrupt:
            self.dirty = True
            raise
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            if raise_pending:
                raise KeyboardInterrupt


class _DivergedError(Exception):
    """Internal: a non-finite loss or gradient at the current step."""

    def __init__(self, what: str, grads: Mapping[str, np.ndarray] | None) -> None:
        super().__init__(what)
        self.what, self.grads = what, grads


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

class _Run:
    """The state of one training run and the loop over it (``fit`` sets it up)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.history = History(engine=self.engine_name)
        self.epoch = 0          # index of the current (unfinished) epoch
        self.batch = 0          # steps done in the current epoch
        self.perm: np.ndarray | None = None
        self.step_times: list[float] = []
        self.wall_base = 0.0
        self.boundary: dict[str, Any] = {}
        self.bar: Any = None
        self.guard = _InterruptGuard()
        self.last_postfix = 0.0

    # --- fresh start and resume ------------------------------------------------------------
    def start_fresh(self) -> None:
        seq = np.random.SeedSequence(self.entropy)
        health_seq, dropout_seq = seq.spawn(2)
        self.rng = np.random.default_rng(self.entropy)
        self.health_rng = np.random.default_rng(health_seq)
        for (_, m), child in zip(self.dropouts, dropout_seq.spawn(len(self.dropouts))):
            m.generator = np.random.default_rng(child)

    def resume_from(self, path: Path) -> None:
        ck = read_checkpoint(path)
        meta = ck.meta
        where = f"checkpoint {str(ck.path)!r}: "
        try:
            saved = meta["config"]
            for key in _RESUME_KEYS:
                if key == "seed" and self.config["seed"] is None:
                    continue
                if saved.get(key) != self.config.get(key):
                    raise CheckpointError(
                        f"{where}it was written with {key}={saved.get(key)!r}, this call has "
                        f"{key}={self.config.get(key)!r}; resuming must continue the same run")
            if self.config["seed"] is None:
                self.entropy = saved["entropy"]
                self.config["seed"], self.config["entropy"] = saved["seed"], saved["entropy"]
            self.model.load_state_dict(ck.model_state)
            try:
                self.optimizer.load_state_dict(meta["optimizer"])
            except InputError as exc:
                raise CheckpointError(f"{where}the optimiser state does not fit: {exc}") from None
            if (meta["scheduler"] is None) != (self.scheduler is None):
                have = "has" if meta["scheduler"] is not None else "has no"
                raise CheckpointError(f"{where}it {have} a learning-rate schedule; pass the same "
                                      "scheduler= as the run it continues")
            if self.scheduler is not None:
                try:
                    self.scheduler.load_state_dict(meta["scheduler"])
                except InputError as exc:
                    raise CheckpointError(f"{where}the schedule does not fit: {exc}") from None
            self.rng = restore_generator(None, meta["rng"])
            self.health_rng = restore_generator(None, meta["health_rng"])
            saved_dropout = meta["dropout"]
            paths = [p for p, _ in self.dropouts]
            if sorted(saved_dropout) != sorted(paths):
                raise CheckpointError(f"{where}it has Dropout layers {sorted(saved_dropout)}, the "
                                      f"model {sorted(paths)}")
            for p, m in self.dropouts:
                m.generator = restore_generator(m.generator, saved_dropout[p])
            self.epoch, self.batch = int(meta["epoch"]), int(meta["batch"])
            perm = meta["perm"]
            self.perm = None if perm is None else np.asarray(perm)
            if self.perm is not None and self.perm.shape != (self.config["n_train"],):
                raise CheckpointError(f"{where}its epoch order has {self.perm.shape} entries, the "
                                      f"data {self.config['n_train']} rows")
            self.history = History.from_dict(meta["history"])
            self.history.engine = self.engine_name
            self.step_times = [float(t) for t in np.asarray(meta["step_times"]).ravel()]
            self.wall_base = float(meta["wall_time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}its metadata is incomplete or corrupt "
                                  f"({type(exc).__name__}: {exc})") from None
        if self.batch > self.steps_per_epoch:
            raise CheckpointError(f"{where}it stopped at batch {self.batch} of an epoch; this run has "
                                  f"{self.steps_per_epoch} steps per epoch")

    # --- checkpoints and output files -----------------------------------------------------------
    def meta(self, complete: bool) -> dict[str, Any]:
        return {
            "kind": "fit", "complete": complete, "epoch": self.epoch, "batch": self.batch,
            "steps": self.history.steps, "rng": self.boundary_state(),
            "health_rng": generator_state(self.health_rng),
            "dropout": {p: generator_state(m.generator) for p, m in self.dropouts},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "perm": self.perm, "history": self.history.to_dict(),
            "step_times": np.asarray(self.step_times, dtype=np.float64),
            "wall_time": self.wall_time(), "config": self.config,
        }

    def boundary_state(self) -> dict[str, Any]:
        return self.boundary or generator_state(self.rng)

    def wall_time(self) -> float:
        return self.wall_base + (time.perf_counter() - self.started)

    def save_checkpoint(self, complete: bool = False) -> Path | None:
        if self.out is None:
            return None
        self.finish_history()
        return write_checkpoint(self.out / CHECKPOINT, self.meta(complete), self.model.state_dict(),
                                self.architecture)

    def finish_history(self) -> None:
        h = self.history
        h.wall_time = self.wall_time()
        h.step_time = float(np.median(self.step_times)) if self.step_times else float("nan")

    def write_outputs(self, final: bool) -> None:
        """metrics.json and the loss figure (and model.npz at the end of a run)."""
        if self.out is None:
            return
        self.finish_history()
        h = self.history
        final_values: dict[str, Any] = {
            "train_loss": h.train_loss[-1] if h.train_loss else None,
            "val_loss": h.val_loss[-1] if h.val_loss else None,
            **{k: (v[-1] if v else None) for k, v in h.metrics.items()},
        }
        doc = {"stopped": h.stopped, "steps": h.steps, "epochs": len(h.epoch),
               "wall_time": h.wall_time, "step_time": h.to_dict()["step_time"],
               "engine": self.engine_name, "final": final_values, "config": self.config,
               "history": h.to_dict()}
        text = json.dumps(doc, indent=1, default=repr)
        atomic_write(self.out / METRICS, lambda f: f.write(text.encode()))
        if h.step_loss and self.plot:
            h.plot(self.out / LOSS_FIGURE)
        if final:
            from autodiff_lab.nn.serialize import save
            try:
                save(self.model, self.out / MODEL)
            except CheckpointError as exc:
                warnings.warn(f"model.npz not written: {exc}", RuntimeWarning, stacklevel=3)

    # --- the loop --------------------------------------------------------------------------------
    def batch_at(self, b: int) -> tuple[Any, Any]:
        if self.sampler is not None:
            xb, yb = self.sampler.sample(self.rng, self.batch_size)
        else:
            idx = self.perm[b * self.batch_size:(b + 1) * self.batch_size]
            xb, yb = self.X.take(idx, axis=0), self.Y.take(idx, axis=0)
        if self.transform is not None:
            xb, yb = self.transform(self.rng, xb, yb)
        return xb, yb

    def loop(self) -> str:
        """Train until ``epochs`` are done (``"completed"``) or the time limit passes."""
        h = self.history
        deadline = None if self.time_limit is None else time.perf_counter() + self.time_limit
        # the run's generator moves within an epoch only through a sampler or a transform
        draws_per_step = self.sampler is not None or self.transform is not None
        while self.epoch < self.epochs:
            if self.sampler is None and self.perm is None:
                self.perm = self.rng.permutation(self.n_train) if self.shuffle else \
                    np.arange(self.n_train)
            self.boundary = generator_state(self.rng)
            self.set_description()
            while self.batch < self.steps_per_epoch:
                xb, yb = self.batch_at(self.batch)
                with self.guard.critical():
                    t0 = time.perf_counter()
                    loss = self.one_step(xb, yb)
                    self.step_times.append(time.perf_counter() - t0)
                    if draws_per_step:
                        self.boundary = generator_state(self.rng)
                self.show_step(loss)
                if self.callback is not None:
                    self.callback(StepInfo(h.steps, self.epoch + 1, self.batch, loss, h))
                if deadline is not None and time.perf_counter() > deadline:
                    return "time_limit"
            self.end_epoch()
            if deadline is not None and time.perf_counter() > deadline and self.epoch < self.epochs:
                return "time_limit"
        return "completed"

    def one_step(self, xb: Any, yb: Any) -> float:
        h = self.history
        try:
            with np.errstate(all="ignore"):  # a NaN/Inf is reported below, with its step and layer
                out = self.step(xb, yb)
        except NonFiniteError as exc:  # the tape's anomaly mode, or NaN in the batch
            raise _DivergedError(str(exc).split(". Check the inputs")[0], None) from None
        loss = out.loss
        if not math.isfinite(loss):
            raise _DivergedError(f"the loss is {loss}", out.grads)
        if self.health_every and (h.steps + 1) % self.health_every == 0:
            compiled = self.step.last_compiled
            check = directional_check(compiled.graph, self.step.last_values, out.grads,
                                      [n for n, _ in compiled.trained], self.health_rng)
            h.health.append((h.steps + 1, check.relative_error))
        if not self.checks_gradients:
            for name in self.param_order:
                g = out.grads.get(name)
                if g is not None and not np.all(np.isfinite(g)):
                    raise _DivergedError(f"the gradient of {name!r} is not finite", out.grads)
        try:
            self.optimizer.step()
        except NonFiniteError as exc:
            raise _DivergedError(str(exc).replace("; the step was not taken", ""), out.grads) from None
        if self.scheduler is not None and self.schedule_per == "step":
            self.scheduler.step()
        h.step_loss.append(loss)
        h.steps += 1
        self.batch += 1
        return loss

    def end_epoch(self) -> None:
        h = self.history
        val = None
        if self.val is not None:
            val = evaluate(self.model, self.loss, self.val[0], self.val[1], self.val_batch_size)
        measured = {}
        if self.metrics:
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                for name, fn in self.metrics.items():
                    measured[name] = float(fn(self.model))
            finally:
                for m, mode in modes:
                    object.__setattr__(m, "training", mode)
        with self.guard.critical():
            n = self.steps_per_epoch
            h.epoch.append(self.epoch + 1)
            h.train_loss.append(float(np.mean(h.step_loss[-n:])) if h.step_loss else float("nan"))
            if val is not None:
                h.val_loss.append(float(val))
            for name, value in measured.items():
                h.metrics.setdefault(name, []).append(value)
            h.lr.append(float(self.optimizer.param_groups[0]["lr"]))
            h.epoch_end_step.append(h.steps)
            if self.scheduler is not None and self.schedule_per == "epoch":
                self.scheduler.step()
            self.epoch += 1
            self.batch = 0
            self.perm = None
            self.boundary = generator_state(self.rng)
            due = self.checkpoint_every and self.epoch % self.checkpoint_every == 0
            if due and self.epoch < self.epochs:
                self.save_checkpoint()
        self.show_epoch()

    # --- the progress bar ----------------------------------------------------------------------
    def open_bar(self) -> None:
        if not self.progress:
            return
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.epochs * self.steps_per_epoch, initial=self.history.steps,
                        unit="step", dynamic_ncols=True, leave=True,
                        desc=f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs}")

    def set_description(self) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {self.epoch + 1}/{self.epochs}", refresh=False)

    def postfix(self, loss: float | None) -> str:
        h = self.history
        parts = [] if loss is None else [f"loss {loss:.4g}"]
        if h.val_loss:
            parts.append(f"val {h.val_loss[-1]:.4g}")
        if h.health:
            parts.append(f"health {h.health[-1][1]:.1e}")
        return ", ".join(parts)

    def show_step(self, loss: float) -> None:
        bar = self.bar
        if bar is None:
            return
        now = time.perf_counter()
        if now - self.last_postfix > POSTFIX_INTERVAL:
            bar.set_postfix_str(self.postfix(loss), refresh=False)
            self.last_postfix = now
        bar.update(1)

    def show_epoch(self) -> None:
        if self.bar is not None:
            last = self.history.step_loss[-1] if self.history.step_loss else None
            self.bar.set_postfix_str(self.postfix(last), refresh=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --- divergence ----------------------------------------------------------------------------
    def diverged(self, d: _DivergedError) -> TrainingDiverged:
        h = self.history
        step, epoch, batch = h.steps + 1, self.epoch + 1, self.batch + 1
        compiled, values = self.step.last_compiled, self.step.last_values
        report = None
        if compiled is not None and values:
            try:
                report = locate_nonfinite(compiled.graph, values, self.param_order, d.grads)
            except Exception:  # the diagnosis must not hide the divergence itself
                report = None
        found = f"; {report.describe()}" if report is not None else ""
        ck = self.out / CHECKPOINT if self.out is not None and (self.out / CHECKPOINT).is_file() else None
        kept = f" The last good checkpoint is kept: {ck}." if ck is not None else ""
        lr = self.optimizer.param_groups[0].get("lr")
        message = (f"training diverged at step {step} (epoch {epoch}, batch {batch}): {d.what}{found}."
                   f"{kept} Lower the learning rate (now {lr!r}), normalise the data or clip the "
                   "gradients.")
        return TrainingDiverged(message, step=step, epoch=epoch,
                                layer=None if report is None else report.layer,
                                parameter=None if report is None else report.parameter,
                                node=None if report is None else report.node,
                                history=h, checkpoint=ck)

    # --- the whole run ---------------------------------------------------------------------------
    def run(self) -> History:
        h = self.history
        self.model.train()
        self.started = time.perf_counter()
        with self.guard:
            self.open_bar()
            try:
                h.stopped = self.loop()
                with self.guard.critical(raise_pending=False):
                    self.save_checkpoint(complete=h.stopped == "completed")
                    self.write_outputs(final=True)
            except _DivergedError as d:
                h.stopped = "diverged"
                error = self.diverged(d)
                self.close_bar()
                with self.guard.critical(raise_pending=False):
                    self.write_outputs(final=False)
                raise error from None
            except KeyboardInterrupt:
                h.stopped = "interrupted"
                self.close_bar()
                path = None
                with self.guard.critical(raise_pending=False):
                    if not self.guard.dirty:
                        path = self.save_checkpoint()
                    elif self.out is not None and (self.out / CHECKPOINT).is_file():
                        path = self.out / CHECKPOINT  # stopped mid-update: the last good one
                    self.write_outputs(final=False)
                where = f"; resume with resume={str(path)!r}" if path is not None else ""
                raise TrainingInterrupted(f"training interrupted at step {h.steps} (epoch "
                                          f"{self.epoch + 1}){where}", history=h,
                                          checkpoint=path) from None
            finally:
                self.close_bar()
        self.finish_history()
        return h


# --------------------------------------------------------------------------------------
# fit: checks and set-up
# --------------------------------------------------------------------------------------

def _int_option(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"fit: {name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _as_batch_array(a: Any, dtype: np.dtype, what: str, labels_ok: bool) -> np.ndarray:
    """The data as an array cast once (not per step) to the model's dtype; integer labels
    stay integer."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        raise InputError(f"fit: {what} must be an array whose rows are samples, got a scalar")
    kind = arr.dtype.kind
    if kind in "iu" and labels_ok:
        return arr
    if kind not in "fiub":
        raise InputError(f"fit: {what} must hold numbers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _pair(data: Any, what: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise InputError(f"fit: {what} must be a pair (X, Y) of arrays (rows = samples)"
                         + (" or a Sampler" if what == "train_data" else "")
                         + f", got {type(data).__name__}")
    X = _as_batch_array(data[0], dtype, f"{what} X", labels_ok=False)
    Y = _as_batch_array(data[1], dtype, f"{what} Y", labels_ok=True)
    if len(X) != len(Y):
        raise InputError(f"fit: {what} has {len(X)} rows of X but {len(Y)} of Y")
    if len(X) == 0:
        raise InputError(f"fit: {what} is empty")
    return X, Y


def _engine_options(engine: str, options: Mapping[str, Any] | None, max_numeric: int,
                    ) -> dict[str, Any]:
    opts = dict(options or {})
    if engine == "tape":
        # the loop checks the loss and the gradients itself and re-runs a failing batch to
        # name the op, so per-op checks would only cost time
        opts.setdefault("anomaly", False)
    elif engine == "numeric":
        opts.setdefault("estimate_error", False)  # error estimates double the cost, unused here
        opts.setdefault("max_evaluations", max_numeric)
        opts.setdefault("progress", False)        # fit has its own progress bar
    return opts


def _refuse_numeric(step: CompiledStep, model: Module, max_numeric: int, steps: int) -> None:
    """Refuse the numeric engine before the first step when one step costs too much."""
    from autodiff_lab.engines.numeric_steps import STENCILS
    eng = step.engine
    stencil = STENCILS[eng.method]
    points = stencil.points(bool(eng.estimate_error) or stencil.name == "richardson")
    n = int(sum(p.size for p in model.parameters() if p.requires_grad))
    needed = 1 + n * len(points)
    limit = min(int(max_numeric), int(eng.max_evaluations))
    if needed > limit:
        raise EvaluationLimitError(
            f"fit: the numeric engine needs {needed:,} forward evaluations per training step "
            f"({len(points)} per parameter with method {stencil.name!r} × {n:,} trained parameters "
            f"+ 1; {needed * steps:,} for the whole run), more than max_numeric_evaluations="
            f"{limit:,}. Train with engine='tape' or 'symbolic' and check their gradients by "
            "finite differences along the way with health_every=k (2 evaluations per check), "
            "or raise max_numeric_evaluations for a deliberately slow run.")


def _plain(value: Any) -> Any:
    """A JSON-ready copy of option values (others as their repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def fit(model: Module, loss: Callable[[Any, Any], Any], optimizer: Optimizer, train_data: Any,
        val_data: tuple[Any, Any] | None = None, *, engine: str = "tape",
        engine_options: Mapping[str, Any] | None = None, epochs: int = 1, batch_size: int = 64,
        steps_per_epoch: int | None = None, scheduler: Any = None, schedule_per: str = "epoch",
        transform: Callable[[np.random.Generator, Any, Any], tuple[Any, Any]] | None = None,
        metrics: Mapping[str, Callable[[Module], float]] | None = None, seed: int | None = 0,
        out: str | Path | None = None, checkpoint_every: int = 1, resume: str | Path | bool | None = None,
        health_every: int = 0, max_numeric_evaluations: int = 100_000, time_limit: float | None = None,
        progress: bool = True, shuffle: bool = True, drop_last: bool = False,
        val_batch_size: int = 256, callback: Callable[[StepInfo], Any] | None = None,
        plot: bool = True) -> History:
    """Train ``model`` on ``loss`` with ``optimizer``; returns the :class:`History`.

    ``train_data``: ``(X, Y)`` arrays (rows = samples; a new random order every epoch) or a
    :class:`Sampler` (needs ``steps_per_epoch``). ``val_data``: ``(X, Y)`` evaluated after
    each epoch in evaluation mode. ``engine``: ``"tape"``, ``"symbolic"`` or ``"numeric"``
    (``engine_options`` go to it; the tape runs without per-op NaN checks unless
    ``anomaly=True``, the numeric engine without error estimates). ``steps_per_epoch``:
    with arrays at most ceil(N / batch_size) (the default; N // batch_size with
    ``drop_last``). ``scheduler`` is stepped once per epoch, or per step with
    ``schedule_per="step"``. ``transform(rng, Xb, Yb) -> (Xb, Yb)`` damages or augments each
    training batch with the run's generator. ``metrics``: ``{name: f(model) -> float}``
    after each epoch, in evaluation mode. ``seed``: the run's generator (data order,
    transform, sampler) and each Dropout layer's mask generator are seeded from it.

    ``out``: a folder for ``checkpoint.npz`` (every ``checkpoint_every`` epochs, at the end,
    on Ctrl-C and at the time limit), ``metrics.json``, ``loss.png``/``.svg`` and, at the
    end, ``model.npz``. ``resume``: a checkpoint file or run folder to continue from
    (``True``: ``out``'s checkpoint if there is one); the same model, optimiser and
    schedule must be built and passed, and ``epochs`` may be raised. ``health_every=k``:
    every k steps a directional finite-difference check of the gradient (2 forward
    evaluations), logged in ``history.health``. ``max_numeric_evaluations``: the numeric
    engine is refused before the first step above this many evaluations per step.
    ``time_limit``: seconds; stop after the step that passes it (checkpointed).
    ``progress``: a tqdm bar. ``callback(StepInfo)`` runs after every step. ``shuffle``,
    ``drop_last``: the epoch order of arrays. ``plot=False`` skips the loss figure.

    Raises :class:`~autodiff_lab.errors.TrainingDiverged` on NaN/Inf,
    :class:`~autodiff_lab.errors.TrainingInterrupted` on Ctrl-C (the run is resumable),
    :class:`~autodiff_lab.errors.EvaluationLimitError` for a too costly numeric engine and
    :class:`~autodiff_lab.errors.CheckpointError` for a checkpoint that cannot be used.
    """
    tiered.foreground()  # a training run outlasts a background compile: compile now
    if not isinstance(model, Module):
        raise InputError(f"fit needs a nn.Module, got {type(model).__name__}")
    if not callable(loss):
        raise InputError(f"fit needs a loss (prediction, target) -> scalar, got {type(loss).__name__}")
    for attr in ("step", "state_dict", "load_state_dict", "param_groups"):
        if not hasattr(optimizer, attr):
            raise InputError(f"fit needs an optimiser (nn.SGD, nn.Adam, nn.AdamW ...), got "
                             f"{type(optimizer).__name__}")
    if engine not in ENGINES:
        raise InputError(f"fit: unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if schedule_per not in ("epoch", "step"):
        raise InputError(f"fit: schedule_per must be 'epoch' or 'step', got {schedule_per!r}")
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise InputError("fit: the scheduler was made for another optimiser")
    epochs = _int_option("epochs", epochs, 0)
    batch_size = _int_option("batch_size", batch_size, 1)
    checkpoint_every = _int_option("checkpoint_every", checkpoint_every, 0)
    health_every = _int_option("health_every", health_every, 0)
    max_numeric_evaluations = _int_option("max_numeric_evaluations", max_numeric_evaluations, 1)
    val_batch_size = _int_option("val_batch_size", val_batch_size, 1)
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit >= 0):
        raise InputError(f"fit: time_limit must be a number of seconds ≥ 0, got {time_limit!r}")
    if transform is not None and not callable(transform):
        raise InputError("fit: transform must be a function (rng, Xb, Yb) -> (Xb, Yb)")
    if callback is not None and not callable(callback):
        raise InputError("fit: callback must be a function of a StepInfo")
    metrics = dict(metrics or {})
    for name, fn in metrics.items():
        if not callable(fn):
            raise InputError(f"fit: metric {name!r} must be a function f(model) -> float")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InputError(f"fit: seed must be a non-negative integer (or None), got {seed!r}")

    dtype = model.dtype or np.dtype(np.float64)
    sampler = None
    X = Y = None
    if isinstance(train_data, SamplerLike) and not isinstance(train_data, (tuple, list)):
        sampler = train_data
        if steps_per_epoch is None:
            raise InputError("fit: a Sampler has no length; give steps_per_epoch")
        steps_per_epoch = _int_option("steps_per_epoch", steps_per_epoch, 1)
        n_train = None
    else:
        X, Y = _pair(train_data, "train_data", dtype)
        n_train = len(X)
        full = n_train // batch_size if drop_last else -(-n_train // batch_size)
        if full == 0:
            raise InputError(f"fit: drop_last with {n_train} rows and batch_size={batch_size} leaves "
                             "no batch")
        if steps_per_epoch is None:
            steps_per_epoch = full
        steps_per_epoch = _int_option("steps_per_epoch", steps_per_epoch, 1)
        if steps_per_epoch > full:
            raise InputError(f"fit: steps_per_epoch={steps_per_epoch} is more than the {full} batches "
                             f"of {batch_size} that {n_train} rows give")
    val = None if val_data is None else _pair(val_data, "val_data", dtype)

    opts = _engine_options(engine, engine_options, max_numeric_evaluations)
    step = compile_step(model, loss, engine=engine, **opts)
    if engine == "numeric":
        _refuse_numeric(step, model, max_numeric_evaluations, epochs * steps_per_epoch)

    out_path = None if out is None else Path(out)
    if out_path is not None:
        if out_path.exists() and not out_path.is_dir():
            raise InputError(f"fit: out={str(out_path)!r} is a file, not a folder")
        out_path.mkdir(parents=True, exist_ok=True)
    resume_path: Path | None = None
    if resume is True:
        if out_path is None:
            raise InputError("fit: resume=True continues from out's checkpoint; give out=...")
        resume_path = out_path / CHECKPOINT if (out_path / CHECKPOINT).is_file() else None
    elif resume not in (None, False):
        resume_path = Path(resume)

    try:
        from autodiff_lab.nn.serialize import describe_module
        architecture = json.dumps(describe_module(model))
    except CheckpointError:
        architecture = ""
    entropy = seed if seed is not None else int(np.random.SeedSequence().entropy)
    config = {
        "engine": engine, "engine_options": _plain(opts), "epochs": epochs, "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch, "data": "sampler" if sampler is not None else "arrays",
        "n_train": n_train, "n_val": None if val is None else len(val[0]), "shuffle": bool(shuffle),
        "drop_last": bool(drop_last), "schedule_per": schedule_per, "seed": seed, "entropy": entropy,
        "health_every": health_every, "checkpoint_every": checkpoint_every, "time_limit": time_limit,
        "max_numeric_evaluations": max_numeric_evaluations, "model": type(model).__name__,
        "parameters": model.num_parameters, "dtype": np.dtype(dtype).name,
        "loss": repr(loss), "optimizer": repr(optimizer),
        "scheduler": None if scheduler is None else repr(scheduler),
        "transform": None if transform is None else getattr(transform, "__name__", repr(transform)),
        "metrics": sorted(metrics),
    }
    param_order = [p.name for p in model.parameters() if p.requires_grad]
    run = _Run(model=model, loss=loss, optimizer=optimizer, scheduler=scheduler, step=step,
               engine_name=engine, X=X, Y=Y, sampler=sampler, val=val, n_train=n_train,
               batch_size=batch_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
               schedule_per=schedule_per, transform=transform, metrics=metrics,
               out=out_path, checkpoint_every=checkpoint_every, health_every=health_every,
               time_limit=time_limit, progress=bool(progress), shuffle=bool(shuffle),
               val_batch_size=val_batch_size, callback=callback, plot=bool(plot), config=config,
               entropy=entropy,
               architecture=architecture, param_order=param_order,
               checks_gradients=isinstance(optimizer, Optimizer),
               dropouts=[(p, m) for p, m in model.named_modules() if isinstance(m, Dropout)])
    if resume_path is not None:
        run.resume_from(resume_path)
    else:
        run.start_fresh()
    model.train()
    if X is not None and run.epoch < epochs:
        # trace and compile before the first step, so an engine that cannot handle the model
        # refuses before anything changed (the last, smaller batch compiles when it comes)
        step.compile(X[:batch_size], Y[:batch_size])
    return run.run()


__all__ = ["History", "Sampler", "StepInfo", "fit"]
