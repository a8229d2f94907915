"""Comparing the engines: accuracy, speed, scaling and the step sweep, as tables and plots.

    from autodiff_lab import compare
    acc, spd = compare.measure(graph, values)             # both tables, one run per engine
    compare.accuracy(graph, values, engines="tape,matrix,central", reference="auto")
    compare.speed(graph, values)                          # compile / per call / ÷ forward / memory
    compare.scaling(build, sizes)                         # cost as the parameters grow
    compare.step_sweep(graph, values)                     # the V of finite differences
    compare.training(make_model, loss, (X, Y))            # the same training, engine by engine
    compare.accuracy(*compare.model_case(model, loss, x, y))  # an nn model's gradient
    compare.run_report(["neuron"], "report", quick=True)  # the HTML report of the command line

Every result is a dataclass with ``save_json``/``load_json`` and ``save_csv``/``load_csv``.
``run_report`` is imported on first use, so ``import autodiff_lab`` does not load
matplotlib or Jinja2.
"""

from __future__ import annotations

from typing import Any

from autodiff_lab.compare.harness import EngineConfig, parse_engines
from autodiff_lab.compare.measure import (
    AccuracyResult,
    AccuracyRow,
    SpeedResult,
    SpeedRow,
    accuracy,
    measure,
    speed,
)
from autodiff_lab.compare.reference import Reference, compute_reference
from autodiff_lab.compare.scaling import ScalingPoint, ScalingResult, scaling
from autodiff_lab.compare.step_sweep import SweepResult, plot_step_sweep, step_sweep
from autodiff_lab.compare.training import (
    ModelCase,
    TrainingResult,
    TrainingRow,
    model_case,
    training,
)

__all__ = ["AccuracyResult", "AccuracyRow", "EngineConfig", "ModelCase", "Reference",
           "ScalingPoint", "ScalingResult", "SpeedResult", "SpeedRow", "SweepResult",
           "TrainingResult", "TrainingRow", "accuracy", "compute_reference", "measure",
           "model_case", "parse_engines", "plot_step_sweep", "run_report", "scaling", "speed",
           "step_sweep", "training"]


def __getattr__(name: str) -> Any:
    if name == "run_report":  # the report loads matplotlib and Jinja2: only when asked
        from autodiff_lab.compare.report import run_report
        return run_report
    raise AttributeError(f"module 'autodiff_lab.compare' has no attribute {name!r}")
