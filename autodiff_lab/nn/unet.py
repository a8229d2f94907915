"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015), the encoder-decoder with skip connections.

::

    x ─ enc0 ─────────────────────────────── concat ─ dec0 ─ head ─ y
          └ down ─ enc1 ─────────── concat ─ dec1 ┘
                     └ down ─ bottleneck ─ up ┘

Each encoder level ``encoders.l`` is a :class:`ConvBlock` (two 3×3 convolutions, each with
batch normalisation and a (leaky) ReLU); ``downs.l`` halves the image (2×2 max-pooling, or
a stride-2 3×3 convolution); after the ``bottleneck`` block, ``ups.l`` doubles it again
(nearest or bilinear up-sampling, or a 2×2 stride-2 transpose convolution) and the decoder
block ``decoders.l`` reads the up-sampled features concatenated on the channel axis with
the encoder's features of the same size: the skip connections, which carry the fine detail
the down-sampling threw away. A 1×1 convolution ``head`` maps to ``out_channels``.

Level ``l`` has ``width·growth**l`` channels (``growth=2``: the classic doubling; ``1``:
the same width everywhere, as the Deep Image Prior's networks), or ``width[l]`` when
``width`` is a tuple (narrow at full resolution, where convolutions cost most, wider
below). The input's height and width must be multiples of ``2**depth``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn.activation import LeakyReLU, ReLU, Sigmoid
from autodiff_lab.nn.container import ModuleList
from autodiff_lab.nn.conv import Conv2d, ConvTranspose2d, check_halvings, check_image
from autodiff_lab.nn.linear import Identity
from autodiff_lab.nn.module import Module, as_generator, positive
from autodiff_lab.nn.norm import BatchNorm2d
from autodiff_lab.nn.pooling import MaxPool2d, Upsample

Rng = int | np.random.Generator | None

DOWN_MODES = ("maxpool", "conv")
UP_MODES = ("nearest", "bilinear", "transpose")
ACTIVATIONS = ("leaky_relu", "relu")


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InputError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


def _activation(kind: str, negative_slope: float) -> Module:
    return LeakyReLU(negative_slope) if kind == "leaky_relu" else ReLU()


class ConvBlock(Module):
    """Two 3×3 convolutions (padding 1, so the size is kept), each followed by batch
    normalisation and the activation: ``conv1 → bn1 → act1 → conv2 → bn2 → act2``.

    With ``batch_norm=False`` the normalisations are identities and the convolutions get
    biases (with batch norm a bias would be cancelled by the mean it subtracts).
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str = "leaky_relu",
                 negative_slope: float = 0.2, batch_norm: bool = True, *, dtype: Any = None,
                 rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "ConvBlock in_channels")
        self.out_channels = positive(out_channels, "ConvBlock out_channels")
        _choice(activation, ACTIVATIONS, "ConvBlock activation")
        gen = as_generator(rng)
        bn = bool(batch_norm)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=not bn, dtype=dtype,
                            rng=gen)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype) if bn else Identity()
        self.act1 = _activation(activation, negative_slope)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=not bn, dtype=dtype,
                            rng=gen)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype) if bn else Identity()
        self.act2 = _activation(activation, negative_slope)

    def forward(self, x: Any) -> Any:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(x)))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class SkipProjection(Module):
    """A narrow skip connection: 1×1 convolution to ``out_channels``, batch norm, activation
    (the Deep Image Prior's skip branches carry 4 channels)."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "leaky_relu",
                 negative_slope: float = 0.2, batch_norm: bool = True, *, dtype: Any = None,
                 rng: Rng = None) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, 1, bias=not batch_norm, dtype=dtype,
                           rng=rng)
        self.bn = BatchNorm2d(out_channels, dtype=dtype) if batch_norm else Identity()
        self.act = _activation(activation, negative_slope)

    def forward(self, x: Any) -> Any:
        return self.act(self.bn(self.conv(x)))

    def extra_repr(self) -> str:
        return f"{self.conv.in_channels}, {self.conv.out_channels}"


class UNet(Module):
    """U-Net for images (N, in_channels, H, W) -> (N, out_channels, H, W) (see the module
    docstring for the layout).

    ``depth``: number of down-samplings (the input size must be a multiple of 2**depth);
    ``width``: channels of the first level, or a tuple of ``depth + 1`` counts, one per
    level (the bottleneck last); ``growth``: channel factor per level (for an int width);
    ``down``: ``"maxpool"`` or ``"conv"`` (stride 2); ``up``: ``"nearest"``,
    ``"bilinear"`` or ``"transpose"`` (learned 2×2 transpose convolution);
    ``activation``: ``"leaky_relu"`` (slope ``negative_slope``) or ``"relu"``;
    ``skip_channels``: ``None`` concatenates the encoder's features as they are; a number
    first projects them to that many channels (1×1 convolution + batch norm + activation,
    module ``skips.l``), as the Deep Image Prior does with 4: a narrow full-resolution path
    fits the noise later;
    ``output``: ``None`` (a linear head) or ``"sigmoid"`` (outputs in (0, 1), for images).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 4,
                 width: int | tuple[int, ...] = 32, *, growth: int = 2, down: str = "maxpool",
                 up: str = "nearest", activation: str = "leaky_relu",
                 negative_slope: float = 0.2, batch_norm: bool = True,
                 skip_channels: int | None = None, output: str | None = None,
                 dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "UNet in_channels")
        self.out_channels = positive(out_channels, "UNet out_channels")
        self.depth = positive(depth, "UNet depth")
        self.growth = positive(growth, "UNet growth")
        if isinstance(width, (tuple, list)):
            self.width: int | tuple[int, ...] = tuple(positive(v, "UNet width") for v in width)
            if len(self.width) != self.depth + 1:
                raise InputError(f"UNet width as a tuple needs depth + 1 = {self.depth + 1} "
                                 f"channel counts (one per level, the bottleneck last), got "
                                 f"{len(self.width)}: {self.width}")
        else:
            self.width = positive(width, "UNet width")
        self.down = _choice(down, DOWN_MODES, "UNet down")
        self.up = _choice(up, UP_MODES, "UNet up")
        self.activation = _choice(activation, ACTIVATIONS, "UNet activation")
        self.batch_norm = bool(batch_norm)
        if output not in (None, "sigmoid"):
            raise InputError(f"UNet output must be None or 'sigmoid', got {output!r}")
        self.output = output
        gen = as_generator(rng)
        c = self.channels
        block = dict(activation=activation, negative_slope=negative_slope,
                     batch_norm=batch_norm, dtype=dtype, rng=gen)
        self.encoders = ModuleList(ConvBlock(in_channels if lvl == 0 else c[lvl - 1], c[lvl],
                                             **block) for lvl in range(self.depth))
        self.downs = ModuleList(MaxPool2d(2) if down == "maxpool" else
                                Conv2d(c[lvl], c[lvl], 3, stride=2, padding=1, dtype=dtype,
                                       rng=gen) for lvl in range(self.depth))
        self.bottleneck = ConvBlock(c[self.depth - 1], c[self.depth], **block)
        if up == "transpose":
            self.ups = ModuleList(ConvTranspose2d(c[lvl + 1], c[lvl], 2, stride=2, dtype=dtype,
                                                  rng=gen) for lvl in range(self.depth))
            up_channels = list(c[:self.depth])
        else:
            self.ups = ModuleList(Upsample(2, mode=up) for _ in range(self.depth))
            up_channels = list(c[1:])
        if skip_channels is None:
            skip = list(c[:self.depth])
        else:
            skip = self._skip_widths(skip_channels)
            self.skips = ModuleList(SkipProjection(c[lvl], k, activation, negative_slope,
                                                    batch_norm, dtype=dtype, rng=gen)
                                    if k else Identity() for lvl, k in enumerate(skip))
        self.skip_channels = skip_channels if not isinstance(skip_channels, (tuple, list)) \
            else tuple(skip)
        self.decoders = ModuleList(ConvBlock(skip[lvl] + up_channels[lvl], c[lvl], **block)
                                   for lvl in range(self.depth))
        self.head = Conv2d(c[0], out_channels, 1, dtype=dtype, rng=gen)
        self.final = Sigmoid() if output == "sigmoid" else Identity()

    def _skip_widths(self, skip_channels: int | tuple[int, ...]) -> list[int]:
        """Channels of each level's skip connection: one count for every level, or a tuple of
        ``depth`` counts, the full-resolution level first, where 0 means no skip connection
        at that level (the Deep Image Prior's denoising net: 0, 0, 0, 4, 4)."""
        if not isinstance(skip_channels, (tuple, list)):
            return [positive(skip_channels, "UNet skip_channels")] * self.depth
        if len(skip_channels) != self.depth:
            raise InputError(f"UNet skip_channels as a tuple needs depth = {self.depth} counts "
                             f"(one per level, full resolution first), got {len(skip_channels)}: "
                             f"{tuple(skip_channels)}")
        bad = [k for k in skip_channels
               if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0]
        if bad:
            raise InputError(f"UNet skip_channels must be integers >= 0 (0: no skip at that "
                             f"level), got {tuple(skip_channels)}")
        return [int(k) for k in skip_channels]

    @property
    def channels(self) -> list[int]:
        """Channels at each level, the bottleneck last (``depth + 1`` numbers)."""
        if isinstance(self.width, tuple):
            return list(self.width)
        return [self.width * self.growth ** lvl for lvl in range(self.depth + 1)]

    def _has_skip(self, lvl: int) -> bool:
        return not isinstance(self.skip_channels, tuple) or self.skip_channels[lvl] > 0

    @property
    def divisor(self) -> int:
        """2**depth: the input's height and width must be multiples of it."""
        return 2 ** self.depth

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Refuse, with the size and the depth, an input this U-Net cannot take."""
        check_halvings(shape, self.depth, f"a U-Net of depth {self.depth}",
                       f"bottleneck at depth {self.depth}", self.training and self.batch_norm,
                       "a smaller depth", "a smaller depth or batch_norm=False")

    def forward(self, x: Any) -> Any:
        self.check_input(check_image(x, self.in_channels))
        skips = []
        h = x
        for lvl in range(self.depth):
            h = self.encoders[lvl](h)
            skips.append(h if self.skip_channels is None else self.skips[lvl](h))
            h = self.downs[lvl](h)
        h = self.bottleneck(h)
        for lvl in reversed(range(self.depth)):
            h = self.ups[lvl](h)
            if self._has_skip(lvl):
                h = F.concatenate([skips[lvl], h], axis=1)
            h = self.decoders[lvl](h)
        return self.final(self.head(h))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, depth={self.depth}, "
                f"width={self.width}, growth={self.growth}, down={self.down!r}, up={self.up!r}")


__all__ = ["ConvBlock", "SkipProjection", "UNet"]
