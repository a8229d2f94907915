"""The residual block of ResNet (He, Zhang, Ren, Sun, CVPR 2016), "basic" variant.

::

    y = relu( bn2(conv2( relu(bn1(conv1(x))) )) + shortcut(x) )

``conv1`` is 3×3 with the block's stride, ``conv2`` 3×3 with stride 1 (both without bias:
batch norm follows). The shortcut is the identity when the shape is kept (stride 1 and as
many output channels as input channels); otherwise a 1×1 convolution with the stride plus
batch norm projects x to the output's shape, as in PyTorch's ``torchvision`` ResNets. The
block learns the *residual* y − x, which is what lets very deep stacks train.

A small ResNet is a stack of them::

    nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                  nn.ResidualBlock(16, 16), nn.ResidualBlock(16, 32, stride=2),
                  nn.ResidualBlock(32, 32))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autodiff_lab.graph import functions as F
from autodiff_lab.nn.activation import ReLU
from autodiff_lab.nn.container import Sequential
from autodiff_lab.nn.conv import Conv2d, check_image
from autodiff_lab.nn.linear import Identity
from autodiff_lab.nn.module import Module, as_generator, positive
from autodiff_lab.nn.norm import BatchNorm2d

Rng = int | np.random.Generator | None


class ResidualBlock(Module):
    """Basic residual block: two 3×3 convolutions with batch norm and ReLU, plus an identity
    or 1×1-projection shortcut (see the module docstring). (N, in, H, W) -> (N, out, H', W')
    with H' = ⌈H / stride⌉."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.in_channels = positive(in_channels, "ResidualBlock in_channels")
        self.out_channels = positive(out_channels, "ResidualBlock out_channels")
        self.stride = positive(stride, "ResidualBlock stride")
        gen = as_generator(rng)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                            dtype=dtype, rng=gen)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False, dtype=dtype,
                            rng=gen)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: Module = Identity()
        else:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride=stride,
                                              bias=False, dtype=dtype, rng=gen),
                                       BatchNorm2d(out_channels, dtype=dtype))
        self.relu2 = ReLU()

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a 1×1 projection (not the identity)."""
        return not isinstance(self.shortcut, Identity)

    def forward(self, x: Any) -> Any:
        check_image(x, self.in_channels)
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu2(F.add(h, self.shortcut(x)))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


__all__ = ["ResidualBlock"]
