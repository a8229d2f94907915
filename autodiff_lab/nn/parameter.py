"""A trainable array and the gradient that the last step computed for it.

Layers own :class:`Parameter` objects; optimisers read ``grad`` and update ``data`` in
place, so a model, its ``state_dict()`` and an optimiser always see the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Parameter:
    """A named trainable array.

    ``name`` is the module path PyTorch would give the same tensor in ``state_dict()``
    (``"0.weight"``, ``"conv1.bias"``); it is set when the parameter is registered in a
    module and is the key of its gradient in a :class:`~autodiff_lab.GradientResult`.
    ``data`` is updated in place by optimisers (its dtype is kept); ``grad`` holds the
    gradient of the last step (same shape and dtype as ``data``) or ``None``.
    """

    __slots__ = ("data", "grad", "name", "requires_grad")

    def __init__(self, data: Any, name: str = "", requires_grad: bool = True) -> None:
        arr = np.array(data, copy=True)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.name: str = name
        self.requires_grad: bool = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.data.shape}, dtype={self.data.dtype})"
