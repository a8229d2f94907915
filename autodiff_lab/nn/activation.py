"""Activations and reshaping layers: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Flatten``."""

from __future__ import annotations

import math
from typing import Any

from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn.module import Module, shape_of


class ReLU(Module):
    """max(0, x) element-wise; its derivative at 0 is 0 (PyTorch's convention)."""

    def forward(self, x: Any) -> Any:
        return F.relu(x)


class LeakyReLU(Module):
    """x for x > 0, ``negative_slope``·x otherwise."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = _check_slope(float(negative_slope))

    def forward(self, x: Any) -> Any:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """σ(x) = 1 / (1 + e⁻ˣ) element-wise (one fused node; derivative σ(1 − σ))."""

    def forward(self, x: Any) -> Any:
        return F.sigmoid(x)


class Tanh(Module):
    """tanh(x) element-wise."""

    def forward(self, x: Any) -> Any:
        return F.tanh(x)


class Flatten(Module):
    """Axes ``start_dim``..``end_dim`` merged into one: images (N, C, H, W) -> rows (N, C·H·W)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x: Any) -> Any:
        s = shape_of(x)
        nd = len(s)
        start = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        end = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= start < max(nd, 1) and start <= end < max(nd, 1)):
            raise ShapeError(f"cannot flatten axes {self.start_dim}..{self.end_dim} of an input of "
                             f"shape {s}")
        if nd == 0 or end == start:
            return x
        new = s[:start] + (math.prod(s[start:end + 1]),) + s[end + 1:]
        return F.reshape(x, new)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


def _check_slope(value: float) -> float:
    if not math.isfinite(value):
        raise InputError(f"negative_slope must be finite, got {value}")
    return value


__all__ = ["Flatten", "LeakyReLU", "ReLU", "Sigmoid", "Tanh"]
