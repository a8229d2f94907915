"""Pooling and up-sampling of images (N, C, H, W): ``MaxPool2d``, ``AvgPool2d``, ``Upsample``."""

from __future__ import annotations

from typing import Any

from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn.module import Module, pair, shape_of


def _check_images(x: Any) -> None:
    s = shape_of(x)
    if len(s) != 4:
        raise ShapeError(f"expects images (N, C, H, W), got shape {s}")


class _Pool2d(Module):
    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise InputError(f"{name}: kernel_size and stride must be positive, padding >= 0")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise InputError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over windows (stride defaults to the window size; padding counts as −∞).
    The gradient goes to each window's first maximum, as in PyTorch."""

    def forward(self, x: Any) -> Any:
        _check_images(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over windows (stride defaults to the window size; padded zeros are counted,
    PyTorch's ``count_include_pad=True``)."""

    def forward(self, x: Any) -> Any:
        _check_images(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Upsample(Module):
    """Up-sampling by integer factors: (N, C, H, W) -> (N, C, sH, sW).

    ``mode="nearest"`` repeats each pixel; ``mode="bilinear"`` interpolates between the
    four nearest input pixels as ``torch.nn.Upsample(mode="bilinear")`` does
    (``align_corners=False``: pixel centres scaled, edges repeated). Neither has weights;
    ``ConvTranspose2d`` is the learned alternative.
    """

    MODES = ("nearest", "bilinear")

    def __init__(self, scale_factor: int | tuple[int, int] = 2, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise InputError(f"Upsample mode must be 'nearest' or 'bilinear', got {mode!r}; use "
                             "ConvTranspose2d for a learned up-sampling")
        if isinstance(scale_factor, float) and scale_factor.is_integer():
            scale_factor = int(scale_factor)
        self.scale_factor = pair(scale_factor, "Upsample scale_factor (integers)")
        if min(self.scale_factor) < 1:
            raise InputError(f"Upsample scale_factor must be positive, got {self.scale_factor}")
        self.mode = mode

    def forward(self, x: Any) -> Any:
        _check_images(x)
        return F.upsample(x, self.scale_factor, mode=self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


__all__ = ["AvgPool2d", "MaxPool2d", "Upsample"]
