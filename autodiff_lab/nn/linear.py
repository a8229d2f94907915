"""Fully connected layers: ``Linear`` (y = x Wᵀ + b) and ``Identity``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autodiff_lab.errors import ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn import init
from autodiff_lab.nn.module import Module, as_generator, float_dtype, positive, shape_of
from autodiff_lab.nn.parameter import Parameter


class Linear(Module):
    """y = x Wᵀ + b on rows: x (N, in_features) -> y (N, out_features) (any leading axes).

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,), as in PyTorch,
    initialised as PyTorch does: U(−1/√in, 1/√in) for both. In the graph the layer is
    ``matmul(x, transpose(weight)) + bias``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: Any = None, rng: int | np.random.Generator | None = None) -> None:
        super().__init__()
        self.in_features = positive(in_features, "Linear in_features")
        self.out_features = positive(out_features, "Linear out_features")
        dt = float_dtype(dtype)
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), dtype=dt))
        self.register_parameter("bias", Parameter(np.zeros(self.out_features, dtype=dt))
                                if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: int | np.random.Generator | None = None) -> None:
        """PyTorch's default initialisation (Kaiming uniform with a = √5)."""
        gen = as_generator(rng)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=gen)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound, rng=gen)

    def forward(self, x: Any) -> Any:
        s = shape_of(x)
        if len(s) < 1 or s[-1] != self.in_features:
            hint = ""
            if len(s) > 2 and math.prod(s[1:]) == self.in_features:
                hint = "; flatten the inputs first (nn.Flatten() or x.reshape(len(x), -1))"
            raise ShapeError(f"expects input (N, {self.in_features}), got {s}{hint}")
        y = F.matmul(x, F.transpose(self.tensor("weight", x)))
        b = self.tensor("bias", x)
        return y if b is None else y + b

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Identity(Module):
    """Returns its input unchanged (a placeholder layer)."""

    def forward(self, x: Any) -> Any:
        return x


__all__ = ["Identity", "Linear"]
