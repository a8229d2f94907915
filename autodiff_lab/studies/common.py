"""What every case study shares: its options, its run folder, its metrics file.

A study is a module of :mod:`autodiff_lab.studies` with ``NAME``, ``SUMMARY``, ``ENGINES``
(the engines it can train with) and ``run(options) -> StudyResult``. It writes into one run
folder (:class:`RunFolder`):

* ``model.npz``        -- the trained model (``nn.load`` rebuilds it);
* ``metrics.json``     -- settings, training record and results (only finite numbers);
* ``run.json``         -- the settings, written first, read back by ``--resume``;
* figures, each as PNG and SVG;
* ``training/`` (or ``training/<part>/`` for studies that train several models) -- what
  ``nn.fit`` writes: ``checkpoint.npz``, its own ``metrics.json`` and ``model.npz``.

An output folder that already holds a run is never overwritten: the new run goes into a
timestamped folder beside it (``DIR-YYYYmmdd-HHMMSS``) unless ``force`` is set.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import CheckpointError, InputError

#: every gradient engine a study may be asked to train with
ALL_ENGINES = ("tape", "symbolic", "numeric")
#: the settings a resumed run keeps from its run.json ...
SAVED_SETTINGS = ("quick", "engine", "epochs", "seed", "minutes", "config")
#: ... except these, which may be given again: more epochs to train on, a new time budget
RESUME_OVERRIDES = ("epochs", "minutes")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.npz"
CHECKPOINT_FILE = "checkpoint.npz"
TRAINING_DIR = "training"
#: ``nn.fit``'s limit on the forward evaluations of one numeric-engine step in the studies:
#: the neuron needs 7; anything near this many would take far longer than a study should
STUDY_MAX_NUMERIC = 1_000


@dataclass
class StudyOptions:
    """How to run a study: what ``autodiff-lab train`` passes (``None``: the study's default)."""

    quick: bool = False              #: tiny data and epochs: end to end in seconds (tests)
    engine: str | None = None        #: "tape" | "symbolic" | "numeric"; None: the study's default
    epochs: int | None = None        #: None: the study's default
    out: Path | None = None          #: run folder; None: runs/<name>
    force: bool = False              #: overwrite a folder that holds a run
    seed: int = 0                    #: seeds the data, the initial weights and the training run
    quiet: bool = False              #: no progress bars, no summary lines
    resume: Path | None = None       #: continue the run in this folder
    minutes: float | None = None     #: time budget of the training (denoiser)
    config: str | None = None        #: named configuration (denoiser: "default" | "long")
    image: str | None = None         #: dip: the image (a built-in name or a file)
    steps: int | None = None         #: dip: Adam steps
    ema: float | None = None         #: dip: moving average of the outputs (0 = off)

    def saved(self) -> dict[str, Any]:
        """The settings recorded in run.json."""
        return {k: getattr(self, k) for k in SAVED_SETTINGS}


@dataclass
class StudyResult:
    """What a study returns: where it wrote, its metrics, the files it wrote."""

    name: str
    folder: Path
    metrics: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      #: summary lines
    folder_note: str | None = None  #: why the run went to another folder than asked


def say(options: StudyOptions, text: str) -> None:
    """A progress line on standard error (unless ``quiet``)."""
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


def check_engine(name: str, engine: str | None, supported: tuple[str, ...], default: str) -> str:
    """The engine to train with: ``engine`` if it is one of ``ALL_ENGINES`` (engines a
    study cannot train with are refused by ``nn.fit`` before the first step, with the cost
    that makes them infeasible), else an error listing the valid ones."""
    if engine is None:
        return default
    if engine not in ALL_ENGINES:
        raise InputError(f"unknown engine {engine!r} for the {name} study; choose one of "
                         f"{', '.join(ALL_ENGINES)}")
    return engine


def refuse_infeasible_engine(engine: str, model: Any, loss: Any, data: Any, batch_size: int,
                             steps_per_epoch: int | None = None) -> None:
    """Let ``nn.fit`` refuse the numeric engine for ``model`` (with the forward evaluations
    one step would need) before the study prints or writes anything: a fit of 0 epochs,
    which compiles the step and changes nothing. Other engines pass at once."""
    if engine != "numeric":
        return
    from autodiff_lab import nn
    nn.fit(model, loss, nn.SGD(model.parameters(), lr=1.0), data, engine=engine, epochs=0,
           batch_size=batch_size, steps_per_epoch=steps_per_epoch,
           max_numeric_evaluations=STUDY_MAX_NUMERIC, progress=False)


def positive_int(what: str, value: Any) -> int:
    """``value`` as an int ≥ 1, or our error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------

def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run: a metrics file, a model or a checkpoint."""
    if not folder.is_dir():
        return False
    if (folder / METRICS_FILE).exists() or (folder / MODEL_FILE).exists() \
            or (folder / CHECKPOINT_FILE).exists():
        return True
    training = folder / TRAINING_DIR
    return training.is_dir() and any(training.rglob(CHECKPOINT_FILE))


def _beside(folder: Path) -> Path:
    """A new timestamped folder next to ``folder`` (``DIR-YYYYmmdd-HHMMSS``, then ``-2`` ...)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = folder.with_name(f"{folder.name}-{stamp}")
    k = 2
    while candidate.exists():
        candidate = folder.with_name(f"{folder.name}-{stamp}-{k}")
        k += 1
    return candidate


class RunFolder:
    """The folder a study writes into (created on first use, see :func:`prepare_run_folder`)."""

    def __init__(self, path: Path, resumed: bool = False, note: str | None = None) -> None:
        self.path = path
        self.resumed = resumed
        self.note = note
        self._created = False
        self.files: list[Path] = []

    def ensure(self) -> Path:
        """Create the folder (and its parents); an unwritable place is our error."""
        if not self._created:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the run folder {str(self.path)!r}: "
                                 f"{exc.strerror or exc}") from None
            if not os.access(self.path, os.W_OK):
                raise InputError(f"the run folder {str(self.path)!r} is not writable")
            self._created = True
        return self.path

    def file(self, name: str) -> Path:
        """``name`` inside the folder (the folder is created)."""
        return self.ensure() / name

    def training(self, part: str | None = None) -> Path:
        """Where ``nn.fit`` writes (``training/`` or ``training/<part>/``)."""
        p = self.ensure() / TRAINING_DIR
        return p / part if part else p

    def checkpoint(self, part: str | None = None) -> Path | None:
        """The checkpoint of ``part`` to resume from, if this is a resumed run and it exists."""
        if not self.resumed:
            return None
        p = self.path / TRAINING_DIR / (part or "") / CHECKPOINT_FILE
        return p if p.is_file() else None

    def record(self, *paths: Path | tuple[Path, ...]) -> None:
        """Remember files written (figures come as (png, svg) pairs)."""
        for p in paths:
            if isinstance(p, tuple):
                self.files.extend(p)
            else:
                self.files.append(p)

    def write_settings(self, name: str, options: StudyOptions, extra: Mapping[str, Any]) -> None:
        """run.json: the study's name and settings, what ``--resume`` reads back."""
        text = json.dumps(jsonable({"study": name, **options.saved(), **dict(extra)}), indent=1,
                          ensure_ascii=False)
        self.file(RUN_FILE).write_text(text + "\n")

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """metrics.json (non-finite numbers become ``null``; none should be there)."""
        path = self.file(METRICS_FILE)
        tmp = path.with_name(f".{path.name}.tmp")
        text = json.dumps(jsonable(dict(metrics)), indent=1, allow_nan=False, ensure_ascii=False)
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
        self.record(path)
        return path

    def save_model(self, model: Any, name: str = MODEL_FILE) -> Path:
        """Save a model with ``nn.save`` (atomically)."""
        from autodiff_lab import nn
        path = self.file(name)
        nn.save(model, path)
        self.record(path)
        return path

    def discard_if_unused(self) -> None:
        """Remove what this run created if it stopped before training wrote anything (an
        engine refused before the first step): no empty run folder stays behind."""
        if not self._created or self.resumed or holds_run(self.path):
            return
        for p in (self.path / RUN_FILE,):
            if p.is_file():
                p.unlink()
        for d in sorted((d for d in self.path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass


def prepare_run_folder(name: str, options: StudyOptions) -> RunFolder:
    """The run folder of this run, by the policy in the module docstring. With
    ``options.resume`` the settings saved in that folder's run.json are copied into
    ``options`` (an explicitly different setting is an error, except ``epochs`` and
    ``minutes``: train on for more epochs, or with a new time budget)."""
    if options.resume is not None:
        folder = Path(options.resume)
        settings = read_settings(folder)
        if settings.get("study") != name:
            raise InputError(f"{str(folder)!r} holds a {settings.get('study')!r} run, not a {name!r} "
                             "run")
        for key in SAVED_SETTINGS:
            saved = settings.get(key)
            given = getattr(options, key)
            if key == "quick":
                if given and not saved:
                    raise InputError(f"--quick differs from the run in {str(folder)!r} (a full run); "
                                     "a resumed run keeps its settings")
                options.quick = bool(saved)
            elif given is None or given == saved or key in RESUME_OVERRIDES:
                if key not in RESUME_OVERRIDES or given is None:
                    setattr(options, key, saved)
            else:
                raise InputError(f"--{key} {given} differs from the run in {str(folder)!r} ({key} "
                                 f"{saved}); a resumed run keeps its settings")
        return RunFolder(folder, resumed=True)
    folder = Path(options.out) if options.out is not None else Path("runs") / name
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {str(folder)!r} is a file, not a folder")
    if holds_run(folder) and not options.force:
        new = _beside(folder)
        return RunFolder(new, note=f"{folder} already holds a run (use --force to overwrite it); "
                                   f"writing this one to {new}")
    return RunFolder(folder)


def scheduled_epochs(folder: RunFolder, options: StudyOptions, default: int) -> int:
    """The epochs of a study whose learning-rate schedule is planned for them: ``--epochs``
    or ``default``; a resumed run must keep the epochs it was started with."""
    epochs = positive_int("--epochs", options.epochs) if options.epochs is not None else default
    if folder.resumed:
        started = read_settings(folder.path).get("epochs") or default
        if epochs != started:
            raise InputError(f"--epochs {epochs}: the run in {str(folder.path)!r} was started for "
                             f"{started} epochs and its learning-rate schedule is planned for them; "
                             "resume without --epochs")
    return epochs


def read_settings(folder: Path) -> dict[str, Any]:
    """The run.json of a run folder, or our error saying what is missing."""
    if not folder.is_dir():
        raise InputError(f"--resume {str(folder)!r}: no such run folder")
    path = folder / RUN_FILE
    if not path.is_file():
        raise InputError(f"--resume {str(folder)!r}: not a run folder (no {RUN_FILE})")
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"--resume {str(folder)!r}: {RUN_FILE} cannot be read ({exc})") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"--resume {str(folder)!r}: {RUN_FILE} is not a settings object")
    return settings


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, paths as
    strings, dataclasses as dicts and non-finite floats as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return jsonable(asdict(value))
    return value


def finite_numbers(value: Any, where: str = "metrics") -> list[str]:
    """The paths of every number in ``value`` that is not finite (for the tests)."""
    bad: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            bad += finite_numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad += finite_numbers(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        bad.append(where)
    return bad


def psnr_db(estimate: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """PSNR of a whole set: 10·log10(peak² / MSE) with the MSE over every pixel of every image."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def per_image_psnr(estimate: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """PSNR of each image (rows of a stack), in dB (inf where an image is exact)."""
    e = np.asarray(estimate, np.float64).reshape(len(estimate), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    mse = np.mean((e - r) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak ** 2 / mse)


def training_record(history: Any, seconds: float | None = None) -> dict[str, Any]:
    """The parts of an ``nn.fit`` History a metrics file keeps (losses per epoch, not per step)."""
    steps = int(history.steps)
    wall = float(history.wall_time if seconds is None else seconds)
    step_time = float(history.step_time) if history.step_time else float("nan")
    return {
        "engine": history.engine,
        "stopped": history.stopped,
        "steps": steps,
        "epochs": len(history.epoch),
        "wall_time_s": wall,
        "median_step_ms": 1e3 * step_time,
        "steps_per_s": 1.0 / step_time if step_time and math.isfinite(step_time) else None,
        "first_step_loss": float(history.step_loss[0]) if history.step_loss else None,
        "last_step_loss": float(history.step_loss[-1]) if history.step_loss else None,
        "train_loss_per_epoch": [float(v) for v in history.train_loss],
        "val_loss_per_epoch": [float(v) for v in history.val_loss],
        "metrics_per_epoch": {k: [float(x) for x in v] for k, v in history.metrics.items()},
    }


def options_from(args: Any) -> StudyOptions:
    """A :class:`StudyOptions` from an ``argparse.Namespace`` with the same attribute names."""
    kwargs = {f.name: getattr(args, f.name) for f in fields(StudyOptions) if hasattr(args, f.name)}
    for key in ("out", "resume"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    kwargs["force"] = bool(kwargs.get("force"))
    kwargs["quick"] = bool(kwargs.get("quick"))
    kwargs["quiet"] = bool(kwargs.get("quiet"))
    kwargs["seed"] = 0 if kwargs.get("seed") is None else kwargs["seed"]
    return StudyOptions(**kwargs)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


__all__ = ["ALL_ENGINES", "STUDY_MAX_NUMERIC", "RunFolder", "StudyOptions", "StudyResult", "check_engine",
           "finite_numbers", "holds_run", "jsonable", "options_from", "per_image_psnr", "positive_int",
           "prepare_run_folder", "psnr_db", "read_settings", "refuse_infeasible_engine", "say",
           "scheduled_epochs", "timed", "training_record"]
