"""``Dropout``: inverted dropout with reproducible masks.

In training mode each element is kept with probability 1 − p and the kept ones are scaled
by 1/(1 − p), so the expected output equals the input and evaluation mode (the identity)
needs no rescaling. The random keep-mask is drawn by the layer from its own generator
(seeded by ``rng=``, or spawned from the one :func:`~autodiff_lab.nn.manual_seed` sets)
and given to the graph's ``dropout`` op as data:

* eagerly, a new mask per call;
* traced, the mask is an integer input of the graph named ``"<layer path>.mask"``; every
  step needs a fresh one: ``model.dropout_masks(graph)`` draws them (``compile_step``
  does this for you), so a traced step and an eager call with the same generator state
  drop the same elements.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.tensor import Tensor
from autodiff_lab.nn.module import Module, as_generator, join, unique_key


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode, scaling the rest by
    1/(1 − p); the identity in evaluation mode. ``rng``: seed or Generator of the masks."""

    def __init__(self, p: float = 0.5, *, rng: int | np.random.Generator | None = None) -> None:
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise InputError(f"Dropout probability must be in [0, 1], got {p}")
        self.p = p
        # an own stream: the masks do not depend on how many weights were drawn before
        self.generator = as_generator(rng).spawn(1)[0] if rng is None else as_generator(rng)

    def sample_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """A keep-mask (uint8, 1 = keep with probability 1 − p) from the layer's generator."""
        return (self.generator.random(shape) >= self.p).astype(np.uint8)

    @property
    def mask_name(self) -> str:
        """The graph input of this layer's mask (``"<path>.mask"``; a second use in the same
        trace is ``"<path>.mask@2"``)."""
        return join(self.path, "mask")

    def masks_for(self, graph: Any) -> dict[str, np.ndarray]:
        """Fresh masks for every input of ``graph`` that holds this layer's mask."""
        base = self.mask_name
        return {name: self.sample_mask(graph.node(v)["shape"])
                for name, v in graph.inputs.items()
                if name == base or name.startswith(base + "@")}

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            return x
        if isinstance(x, Tensor):
            name = unique_key(x.builder, self.mask_name)
            mask = x.builder.input(name, x.shape, "uint8", role="input")
        else:
            mask = self.sample_mask(np.shape(x))
        return F.dropout(x, mask, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


__all__ = ["Dropout"]
