"""Comparison harness: accuracy, cost and scaling of the engines, as tables and plots."""

from autodiff_lab.compare.step_sweep import SweepResult, plot_step_sweep, step_sweep

__all__ = ["SweepResult", "plot_step_sweep", "step_sweep"]
