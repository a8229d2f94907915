"""Weight initialisers (PyTorch's names and formulas), each taking a numpy Generator.

Every function fills a :class:`~autodiff_lab.nn.parameter.Parameter` (its ``data``) or a
numpy array *in place* and returns it; ``rng`` is a ``np.random.Generator``, an int seed or
``None`` (the generator :func:`autodiff_lab.nn.manual_seed` sets). Numbers are drawn in
float64 and then cast, so a float32 model starts from the rounded float64 weights.

Fan-in and fan-out follow PyTorch: for a weight of shape (out, in, kh, kw) (a Linear
weight is (out, in)), ``fan_in = in·kh·kw`` and ``fan_out = out·kh·kw``. (For a transpose
convolution's weight (in, out/groups, kh, kw) that makes ``fan_in = out/groups·kh·kw``,
as in PyTorch.)

* :func:`kaiming_normal_` / :func:`he_normal_`: N(0, std²), std = gain / √fan (He et al. 2015);
* :func:`kaiming_uniform_` / :func:`he_uniform_`: U(−b, b), b = gain·√(3 / fan);
* :func:`xavier_normal_` / :func:`glorot_normal_`: std = gain·√(2 / (fan_in + fan_out));
* :func:`xavier_uniform_` / :func:`glorot_uniform_`: b = gain·√(6 / (fan_in + fan_out));
* :func:`zeros_`, :func:`ones_`, :func:`constant_`, :func:`normal_`, :func:`uniform_`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.nn.module import as_generator
from autodiff_lab.nn.parameter import Parameter

Target = Any  # a Parameter or a numpy array
Rng = int | np.random.Generator | None


def _array(t: Target) -> np.ndarray:
    arr = t.data if isinstance(t, Parameter) else t
    if not isinstance(arr, np.ndarray):
        raise InputError(f"initialisers fill a Parameter or a numpy array, got {type(t).__name__}")
    return arr


def _fill(t: Target, values: np.ndarray) -> Target:
    arr = _array(t)
    arr[...] = values.astype(arr.dtype, copy=False)
    return t


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain PyTorch recommends for a nonlinearity: 1 for linear/conv/sigmoid, 5/3 for
    tanh, √2 for relu, √(2 / (1 + a²)) for leaky_relu with slope a (default 0.01)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                        "conv_transpose2d", "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + a * a))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise InputError(f"unknown nonlinearity {nonlinearity!r} for calculate_gain")


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape (out, in, *kernel), PyTorch's convention."""
    if len(shape) < 2:
        raise InputError(f"fan in and fan out need a weight with at least 2 axes, got shape "
                         f"{tuple(shape)}")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape: tuple[int, ...], mode: str) -> int:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise InputError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise InputError(f"cannot initialise a weight of shape {tuple(shape)}: its {mode} is 0")
    return fan


def uniform_(t: Target, a: float = 0.0, b: float = 1.0, rng: Rng = None) -> Target:
    """U(a, b)."""
    arr = _array(t)
    return _fill(t, as_generator(rng).uniform(a, b, arr.shape))


def normal_(t: Target, mean: float = 0.0, std: float = 1.0, rng: Rng = None) -> Target:
    """N(mean, std²)."""
    arr = _array(t)
    return _fill(t, as_generator(rng).normal(mean, std, arr.shape))


def constant_(t: Target, value: float) -> Target:
    """Every element ``value``."""
    _array(t)[...] = value
    return t


def zeros_(t: Target) -> Target:
    """Every element 0."""
    return constant_(t, 0.0)


def ones_(t: Target) -> Target:
    """Every element 1."""
    return constant_(t, 1.0)


def kaiming_uniform_(t: Target, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", rng: Rng = None) -> Target:
    """He/Kaiming uniform: U(−b, b) with b = gain·√(3 / fan); ``a`` is the leaky-relu slope
    (PyTorch's Linear and Conv2d default is ``a=√5``, which gives b = 1/√fan_in)."""
    arr = _array(t)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(arr.shape, mode))
    return uniform_(t, -bound, bound, rng)


def kaiming_normal_(t: Target, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", rng: Rng = None) -> Target:
    """He/Kaiming normal: N(0, std²) with std = gain / √fan (``nonlinearity="relu"``: √(2/fan))."""
    arr = _array(t)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(arr.shape, mode))
    return normal_(t, 0.0, std, rng)


def xavier_uniform_(t: Target, gain: float = 1.0, rng: Rng = None) -> Target:
    """Xavier/Glorot uniform: U(−b, b) with b = gain·√(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(_array(t).shape)
    bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return uniform_(t, -bound, bound, rng)


def xavier_normal_(t: Target, gain: float = 1.0, rng: Rng = None) -> Target:
    """Xavier/Glorot normal: N(0, std²) with std = gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(_array(t).shape)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / max(fan_in + fan_out, 1)), rng)


he_uniform_ = kaiming_uniform_
he_normal_ = kaiming_normal_
glorot_uniform_ = xavier_uniform_
glorot_normal_ = xavier_normal_

__all__ = ["calculate_gain", "constant_", "fan_in_and_fan_out", "glorot_normal_",
           "glorot_uniform_", "he_normal_", "he_uniform_", "kaiming_normal_", "kaiming_uniform_",
           "normal_", "ones_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_"]
