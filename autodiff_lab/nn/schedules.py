"""Learning-rate schedules: step decay and cosine annealing with optional linear warm-up.

A schedule counts its ``step()`` calls and sets the learning rate of every parameter group
of its optimiser from that count ``t`` and each group's base rate (the group's ``lr`` when
the schedule was made). Call ``step()`` once per optimiser step or once per epoch, as you
prefer: ``step_size``, ``total_steps`` and ``warmup_steps`` are counted in the same unit.
The usual loop, as with ``torch.optim.lr_scheduler``::

    opt = SGD(params, lr=0.1)
    sched = CosineLR(opt, total_steps=epochs * steps_per_epoch, warmup_steps=100)
    for ...:
        ... opt.step()
        sched.step()

Making a schedule already sets the rate for ``t = 0`` (the first optimiser step).
"""

from __future__ import annotations

import math
import operator
from typing import Any

from autodiff_lab.errors import InputError
from autodiff_lab.nn.optim import Optimizer

__all__ = ["LRSchedule", "StepLR", "CosineLR"]


def _int(name: str, value: Any, minimum: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if v < minimum:
        raise InputError(f"{name} must be ≥ {minimum}, got {v}")
    return v


def _float(name: str, value: Any, positive: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise InputError(f"{name} must be a finite number {'> 0' if positive else '≥ 0'}, got {value!r}")
    return v


class LRSchedule:
    """Base class: the step count, the base rates and checkpoints. Subclasses implement
    :meth:`factor_lr` (the rate of a group with base rate ``base`` at count ``t``)."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise InputError(f"a schedule needs an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        #: each group's learning rate when the schedule was made
        self.base_lrs: list[float] = [float(g["lr"]) for g in optimizer.param_groups]
        #: how many times step() was called
        self.last_step = 0

    def factor_lr(self, base: float, t: int) -> float:
        raise NotImplementedError

    def lr_at(self, t: int) -> list[float]:
        """The rate of every group after ``t`` calls of :meth:`step` (no side effect)."""
        t = _int("t", t, 0)
        return [self.factor_lr(base, t) for base in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step)):
            group["lr"] = lr

    def step(self) -> float:
        """Advance the count by one and set the optimiser's rates; returns the new :attr:`lr`."""
        self.last_step += 1
        self._apply()
        return self.lr

    @property
    def lr(self) -> float:
        """The current rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def lrs(self) -> list[float]:
        """The current rate of every parameter group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _options(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"schedule": name, "last_step": t, "base_lrs": [...], **options}``."""
        return {"schedule": type(self).__name__, "last_step": self.last_step,
                "base_lrs": list(self.base_lrs), **self._options()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the count and base rates and set the optimiser's rates from them. The
        options (step size, total steps ...) must be the ones the checkpoint was saved with."""
        if not isinstance(state_dict, dict) or state_dict.get("schedule") != type(self).__name__:
            got = state_dict.get("schedule") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise InputError(f"not a {type(self).__name__} checkpoint (got {got!r})")
        for key, value in self._options().items():
            if state_dict.get(key) != value:
                raise InputError(f"the checkpoint has {key}={state_dict.get(key)!r}, this schedule {value!r}")
        base = [float(b) for b in state_dict["base_lrs"]]
        if len(base) != len(self.optimizer.param_groups):
            raise InputError(f"the checkpoint has {len(base)} base rate(s), the optimiser "
                             f"{len(self.optimizer.param_groups)} parameter group(s)")
        self.last_step = _int("last_step", state_dict["last_step"], 0)
        self.base_lrs = base
        self._apply()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({opts}; step {self.last_step}, lr {self.lr:.6g})"


class StepLR(LRSchedule):
    """Step decay: ``lr = base · gamma ** (t // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _float("gamma", gamma, positive=True)
        self._apply()

    def factor_lr(self, base: float, t: int) -> float:
        return base * self.gamma ** (t // self.step_size)

    def _options(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineLR(LRSchedule):
    """Cosine annealing from each group's base rate down to ``min_lr``, after an optional
    linear warm-up.

    With W = ``warmup_steps`` and T = ``total_steps``::

        t < W:       lr = base · (t + 1) / (W + 1)              (rises linearly towards base)
        W ≤ t ≤ T:   lr = min_lr + (base − min_lr) · (1 + cos(π (t − W) / (T − W))) / 2
        t > T:       lr = min_lr

    Without warm-up this is ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T,
    eta_min=min_lr)`` for t ≤ T (PyTorch's keeps oscillating past T; this one stays at
    ``min_lr``). The warm-up equals PyTorch's ``LinearLR(start_factor=1/(W+1),
    total_iters=W)`` followed by that cosine over T − W steps.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, min_lr: float = 0.0,
                 warmup_steps: int = 0) -> None:
        super().__init__(optimizer)
        self.total_steps = _int("total_steps", total_steps, 1)
        self.min_lr = _float("min_lr", min_lr, positive=False)
        self.warmup_steps = _int("warmup_steps", warmup_steps, 0)
        if self.warmup_steps >= self.total_steps:
            raise InputError(f"warmup_steps ({self.warmup_steps}) must be smaller than total_steps "
                             f"({self.total_steps})")
        self._apply()

    def factor_lr(self, base: float, t: int) -> float:
        w, total = self.warmup_steps, self.total_steps
        if t < w:
            return base * (t + 1) / (w + 1)
        if t >= total:
            return self.min_lr
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * (t - w) / (total - w))) / 2

    def _options(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps}
