"""The Deep Image Prior's encoder-decoder ("hourglass" with skip connections; Ulyanov,
Vedaldi, Lempitsky, CVPR 2018, their ``skip`` network).

It differs from :class:`~autodiff_lab.nn.UNet` in where the work is done. Each level
*starts* by halving the image (a stride-2 3×3 convolution), so the only 3×3 convolution at
full resolution is the decoder's last one. The skip connection of level ``l`` branches off
that level's *input* (for level 0, the code itself) through a narrow 1×1 convolution, and
a level may have none. ::

    x ─┬─ skip_l: 1×1 conv ─ BN ─ act ───────────────────────────┐ (absent if skip[l] = 0)
       └─ down_l: 3×3 conv stride 2 ─ BN ─ act ─ 3×3 conv ─ BN ─ act
              ─ level l + 1 (the deepest level: nothing) ─ ×2 up-sampling ─ concat
                    ─ BN ─ 3×3 conv ─ BN ─ act ─ 1×1 conv ─ BN ─ act ─→ out_l

and a 1×1 convolution ``head`` (with a sigmoid for images in (0, 1)) maps level 0's output
to the image. The Deep Image Prior's denoising network has widths 8, 16, 32, 64, 128 and
skips 0, 0, 0, 4, 4 on five levels; as the fit runs, the missing full-resolution skips keep
fine noise out of the output for longer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn.activation import LeakyReLU, ReLU, Sigmoid
from autodiff_lab.nn.container import ModuleList, Sequential
from autodiff_lab.nn.conv import Conv2d, check_halvings, check_image
from autodiff_lab.nn.linear import Identity
from autodiff_lab.nn.module import Module, as_generator, positive
from autodiff_lab.nn.norm import BatchNorm2d
from autodiff_lab.nn.pooling import Upsample

Rng = int | np.random.Generator | None


def _counts(values: Any, what: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
            for v in values):
        raise InputError(f"Hourglass {what} must be a non-empty tuple of integers >= {minimum}, "
                         f"got {values!r}")
    return tuple(int(v) for v in values)


class Hourglass(Module):
    """Encoder-decoder with skip connections branching off each level's input (see the
    module docstring). (N, in_channels, H, W) -> (N, out_channels, H, W); H and W must be
    multiples of 2**len(widths).

    ``widths``: channels of each level, full resolution first (the Deep Image Prior:
    8, 16, 32, 64, 128); ``skip_channels``: one count per level, 0 = no skip connection
    there (the paper: 0, 0, 0, 4, 4); ``up``: ``"bilinear"`` or ``"nearest"``;
    ``activation``: ``"leaky_relu"`` (slope ``negative_slope``) or ``"relu"``;
    ``output="sigmoid"`` for images in (0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 widths: tuple[int, ...] = (8, 16, 32, 64, 128),
                 skip_channels: tuple[int, ...] = (0, 0, 0, 4, 4), *, up: str = "bilinear",
                 activation: str = "leaky_relu", negative_slope: float = 0.2,
                 output: str | None = None, dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "Hourglass in_channels")
        self.out_channels = positive(out_channels, "Hourglass out_channels")
        self.widths = _counts(widths, "widths", 1)
        self.skip_channels = _counts(skip_channels, "skip_channels", 0)
        if len(self.skip_channels) != len(self.widths):
            raise InputError(f"Hourglass needs one skip width per level: {len(self.widths)} "
                             f"widths {self.widths} but {len(self.skip_channels)} skip widths "
                             f"{self.skip_channels}")
        if up not in ("bilinear", "nearest"):
            raise InputError(f"Hourglass up must be 'bilinear' or 'nearest', got {up!r}")
        if activation not in ("leaky_relu", "relu"):
            raise InputError(f"Hourglass activation must be 'leaky_relu' or 'relu', got "
                             f"{activation!r}")
        if output not in (None, "sigmoid"):
            raise InputError(f"Hourglass output must be None or 'sigmoid', got {output!r}")
        self.up, self.output = up, output
        self.activation, self.negative_slope = activation, float(negative_slope)
        gen = as_generator(rng)

        def unit(cin: int, cout: int, k: int, stride: int = 1) -> Sequential:
            act = LeakyReLU(negative_slope) if activation == "leaky_relu" else ReLU()
            return Sequential(Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False,
                                     dtype=dtype, rng=gen), BatchNorm2d(cout, dtype=dtype), act)

        w, s, depth = self.widths, self.skip_channels, len(self.widths)
        inputs = [in_channels, *w[:-1]]       # level l reads level l - 1's down-sampled map
        self.skips = ModuleList(unit(inputs[lvl], s[lvl], 1) if s[lvl] else Identity()
                                for lvl in range(depth))
        self.downs = ModuleList(Sequential(unit(inputs[lvl], w[lvl], 3, stride=2),
                                           unit(w[lvl], w[lvl], 3)) for lvl in range(depth))
        self.ups = ModuleList(Upsample(2, mode=up) for _ in range(depth))
        # the up-sampled part: level l + 1's output (w[l + 1] channels), or at the deepest
        # level its own down-sampled features
        mixed = [s[lvl] + (w[lvl + 1] if lvl + 1 < depth else w[lvl]) for lvl in range(depth)]
        self.mix_norms = ModuleList(BatchNorm2d(c, dtype=dtype) for c in mixed)
        self.decoders = ModuleList(Sequential(unit(mixed[lvl], w[lvl], 3), unit(w[lvl], w[lvl], 1))
                                   for lvl in range(depth))
        self.head = Conv2d(w[0], out_channels, 1, dtype=dtype, rng=gen)
        self.final = Sigmoid() if output == "sigmoid" else Identity()

    @property
    def depth(self) -> int:
        """Number of levels, each halving the image once."""
        return len(self.widths)

    @property
    def divisor(self) -> int:
        """2**depth: the input's height and width must be multiples of it."""
        return 2 ** self.depth

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Refuse, with the size and the depth, an input this network cannot take."""
        check_halvings(shape, self.depth, f"an Hourglass of {self.depth} levels",
                       "map at the deepest level", self.training, "fewer levels",
                       "or fewer levels")

    def forward(self, x: Any) -> Any:
        self.check_input(check_image(x, self.in_channels))
        return self.final(self.head(self._level(0, x)))

    def _level(self, lvl: int, x: Any) -> Any:
        deeper = self.downs[lvl](x)
        if lvl + 1 < self.depth:
            deeper = self._level(lvl + 1, deeper)
        h = self.ups[lvl](deeper)
        if self.skip_channels[lvl]:
            h = F.concatenate([self.skips[lvl](x), h], axis=1)
        return self.decoders[lvl](self.mix_norms[lvl](h))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, widths={self.widths}, "
                f"skip_channels={self.skip_channels}, up={self.up!r}")
