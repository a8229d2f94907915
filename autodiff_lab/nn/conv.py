"""Convolutions on images (N, C, H, W): ``Conv2d`` and ``ConvTranspose2d``.

Weights use PyTorch's layouts, which are also the op table's: ``Conv2d.weight`` is
(out_channels, in_channels/groups, kh, kw) and ``ConvTranspose2d.weight`` is
(in_channels, out_channels/groups, kh, kw), so state dicts carry over unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn import init
from autodiff_lab.nn.module import Module, as_generator, float_dtype, pair, positive, shape_of
from autodiff_lab.nn.parameter import Parameter

Rng = int | np.random.Generator | None


def check_image(x: Any, channels: int) -> tuple[int, ...]:
    """The shape of ``x`` if it is a batch of images with ``channels`` channels."""
    s = shape_of(x)
    if len(s) != 4:
        hint = " (a single image needs a batch axis: x[None])" if len(s) == 3 else ""
        raise ShapeError(f"expects images (N, {channels}, H, W), got shape {s}{hint}")
    if s[1] != channels:
        raise ShapeError(f"expects {channels} input channels (N, {channels}, H, W), got {s} with "
                         f"{s[1]} channels")
    return s


def check_halvings(shape: tuple[int, ...], depth: int, network: str, deepest: str,
                   batch_norm_training: bool, fewer: str, bn_fixes: str) -> None:
    """Refuse an (N, C, H, W) input that ``network`` (halving it ``depth`` times) cannot
    take: a side that is not a multiple of 2**depth (``fewer``: how to halve less), or, with
    batch normalisation in training mode, a deepest map (named ``deepest``) of fewer than 2
    values per channel (``bn_fixes``: what else helps)."""
    n, _, h, w = shape
    d = 2 ** depth
    if h < d or w < d or h % d or w % d:
        fix = (f"crop to {h // d * d}×{w // d * d}" if h >= d and w >= d
               else f"pad to at least {d}×{d}")
        raise ShapeError(f"the image is {h}×{w} but {network} halves it {depth} times: height "
                         f"and width must be multiples of 2**{depth} = {d} ({fix}, or use "
                         f"{fewer})")
    if batch_norm_training and n * (h // d) * (w // d) < 2:
        raise ShapeError(f"a batch of {n} {h}×{w} image(s) leaves a {h // d}×{w // d} {deepest}: "
                         "batch normalisation in training mode needs at least 2 values per "
                         f"channel (use a larger image, {bn_fixes})")


def _groups(in_channels: int, out_channels: int, groups: Any, name: str) -> int:
    g = positive(groups, f"{name} groups")
    if in_channels % g or out_channels % g:
        raise InputError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                         f"must both be divisible by groups ({g})")
    return g


def _init_conv(weight: Parameter, bias: Parameter | None, rng: Rng) -> None:
    """PyTorch's default: Kaiming uniform (a = √5) for the weight, U(±1/√fan_in) for the bias."""
    gen = as_generator(rng)
    init.kaiming_uniform_(weight, a=math.sqrt(5), rng=gen)
    if bias is not None:
        fan_in, _ = init.fan_in_and_fan_out(weight.shape)
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        init.uniform_(bias, -bound, bound, rng=gen)


def _conv_repr(layer: Any, extra: tuple[tuple[str, Any, Any], ...]) -> str:
    parts = [f"{layer.in_channels}, {layer.out_channels}", f"kernel_size={layer.kernel_size}",
             f"stride={layer.stride}"]
    parts += [f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
              for name, value, default in extra if value != default]
    if layer.bias is None:
        parts.append("bias=False")
    return ", ".join(parts)


class Conv2d(Module):
    """2-D convolution (cross-correlation) of images (N, in_channels, H, W).

    ``padding`` is an int, a pair, ``"same"`` (output as big as the input: stride 1 and an
    odd effective kernel size) or ``"valid"`` (none). Output size per axis:
    ⌊(H + 2·padding − dilation·(k − 1) − 1) / stride⌋ + 1. Initialised as PyTorch does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "Conv2d in_channels")
        self.out_channels = positive(out_channels, "Conv2d out_channels")
        self.kernel_size = pair(kernel_size, "Conv2d kernel_size")
        self.stride = pair(stride, "Conv2d stride")
        self.dilation = pair(dilation, "Conv2d dilation")
        for what, v in (("kernel_size", self.kernel_size), ("stride", self.stride),
                        ("dilation", self.dilation)):
            if min(v) < 1:
                raise InputError(f"Conv2d {what} must be positive, got {v}")
        self.groups = _groups(self.in_channels, self.out_channels, groups, "Conv2d")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise InputError(f"Conv2d padding must be an int, a pair, 'same' or 'valid', got "
                                 f"{padding!r}")
            if padding == "same" and (self.stride != (1, 1) or any(
                    d * (k - 1) % 2 for k, d in zip(self.kernel_size, self.dilation))):
                raise InputError("Conv2d padding='same' needs stride 1 and an odd effective kernel "
                                 f"size (kernel {self.kernel_size}, dilation {self.dilation})")
            self.padding: Any = padding
        else:
            self.padding = pair(padding, "Conv2d padding")
            if min(self.padding) < 0:
                raise InputError(f"Conv2d padding must be >= 0, got {self.padding}")
        dt = float_dtype(dtype)
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((self.out_channels, self.in_channels // self.groups,
                                          kh, kw), dtype=dt))
        self.register_parameter("bias", Parameter(np.zeros(self.out_channels, dtype=dt))
                                if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: Rng = None) -> None:
        """PyTorch's default initialisation."""
        _init_conv(self.weight, self.bias, rng)

    def forward(self, x: Any) -> Any:
        check_image(x, self.in_channels)
        return F.conv2d(x, self.tensor("weight", x), self.tensor("bias", x), stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        return _conv_repr(self, (("padding", self.padding, (0, 0)),
                                 ("dilation", self.dilation, (1, 1)), ("groups", self.groups, 1)))


class ConvTranspose2d(Module):
    """Transpose convolution (the adjoint of ``Conv2d`` in its input), e.g. to up-sample.

    Output size per axis: (H − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1;
    ``weight`` is (in_channels, out_channels/groups, kh, kw), PyTorch's layout.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 output_padding: int | tuple[int, int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int, int] = 1, *, dtype: Any = None,
                 rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "ConvTranspose2d in_channels")
        self.out_channels = positive(out_channels, "ConvTranspose2d out_channels")
        self.kernel_size = pair(kernel_size, "ConvTranspose2d kernel_size")
        self.stride = pair(stride, "ConvTranspose2d stride")
        self.padding = pair(padding, "ConvTranspose2d padding")
        self.output_padding = pair(output_padding, "ConvTranspose2d output_padding")
        self.dilation = pair(dilation, "ConvTranspose2d dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise InputError("ConvTranspose2d kernel_size, stride and dilation must be positive "
                             "and padding >= 0")
        for o, s_, d in zip(self.output_padding, self.stride, self.dilation):
            if not 0 <= o < max(s_, d):
                raise InputError(f"ConvTranspose2d output_padding {self.output_padding} must be "
                                 f"smaller than stride {self.stride} or dilation {self.dilation}")
        self.groups = _groups(self.in_channels, self.out_channels, groups, "ConvTranspose2d")
        dt = float_dtype(dtype)
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((self.in_channels, self.out_channels // self.groups,
                                          kh, kw), dtype=dt))
        self.register_parameter("bias", Parameter(np.zeros(self.out_channels, dtype=dt))
                                if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: Rng = None) -> None:
        """PyTorch's default initialisation (its fan-in of this layout: out/groups·kh·kw)."""
        _init_conv(self.weight, self.bias, rng)

    def forward(self, x: Any) -> Any:
        check_image(x, self.in_channels)
        return F.conv_transpose2d(x, self.tensor("weight", x), self.tensor("bias", x),
                                  stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding, dilation=self.dilation,
                                  groups=self.groups)

    def extra_repr(self) -> str:
        return _conv_repr(self, (("padding", self.padding, (0, 0)),
                                 ("output_padding", self.output_padding, (0, 0)),
                                 ("dilation", self.dilation, (1, 1)), ("groups", self.groups, 1)))


__all__ = ["Conv2d", "ConvTranspose2d"]
