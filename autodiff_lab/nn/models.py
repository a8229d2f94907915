"""The case studies' models, built from the layers (all saveable with ``nn.save``).

* :class:`SigmoidNeuron`    -- f = σ(w·x + b), 2 inputs by default: (N, 2) -> (N, 1);
* :class:`InpaintingMLP`    -- ŷ = W2·relu(W1·x + b1) + b2 on rows: (N, 784) -> (N, 784);
* :class:`DnCNN`            -- residual denoiser (Zhang et al. 2017): ``forward`` predicts the
  noise, :meth:`DnCNN.denoise` returns noisy − noise;
* :class:`LinearClassifier` -- logits = W·x + b: (N, 784) (or (N, 28, 28)) -> (N, 10);
* :class:`MLPClassifier`    -- logits = W2·relu(W1·x + b1) + b2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autodiff_lab.errors import ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.nn import init
from autodiff_lab.nn.activation import Flatten, ReLU
from autodiff_lab.nn.container import Sequential
from autodiff_lab.nn.conv import Conv2d
from autodiff_lab.nn.linear import Linear
from autodiff_lab.nn.module import Module, as_generator, float_dtype, positive, shape_of
from autodiff_lab.nn.norm import BatchNorm2d
from autodiff_lab.nn.parameter import Parameter

Rng = int | np.random.Generator | None


class SigmoidNeuron(Module):
    """f = σ(x·wᵀ + b): one sigmoid unit, ``weight`` (1, in_features), ``bias`` (1,).

    The textbook neuron (f = σ(w0 + w1·x1 + w2·x2) with w0 the bias);
    rows in, one column out: (N, in_features) -> (N, 1).
    """

    def __init__(self, in_features: int = 2, *, dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.in_features = positive(in_features, "SigmoidNeuron in_features")
        dt = float_dtype(dtype)
        self.weight = Parameter(np.zeros((1, self.in_features), dtype=dt))
        self.bias = Parameter(np.zeros(1, dtype=dt))
        gen = as_generator(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        init.uniform_(self.weight, -bound, bound, rng=gen)
        init.uniform_(self.bias, -bound, bound, rng=gen)

    def forward(self, x: Any) -> Any:
        s = shape_of(x)
        if len(s) != 2 or s[1] != self.in_features:
            raise ShapeError(f"expects input (N, {self.in_features}), got {s}")
        z = F.matmul(x, F.transpose(self.tensor("weight", x))) + self.tensor("bias", x)
        return F.sigmoid(z)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}"


class InpaintingMLP(Module):
    """ŷ = W2·relu(W1·x + b1) + b2 on rows: masked images (N, in_features) -> complete
    images (N, in_features); ``fc1`` is W1 (hidden, in), ``fc2`` is W2 (in, hidden)."""

    def __init__(self, in_features: int = 784, hidden: int = 256, *, dtype: Any = None,
                 rng: Rng = None) -> None:
        super().__init__()
        gen = as_generator(rng)
        self.fc1 = Linear(in_features, hidden, dtype=dtype, rng=gen)
        self.relu = ReLU()
        self.fc2 = Linear(hidden, in_features, dtype=dtype, rng=gen)

    def forward(self, x: Any) -> Any:
        return self.fc2(self.relu(self.fc1(x)))


class LinearClassifier(Module):
    """logits = x·Wᵀ + b: images (N, 784) or (N, 28, 28) -> class scores (N, classes).
    Its weight rows are one template per class: :meth:`templates`."""

    def __init__(self, in_features: int = 784, classes: int = 10, *, dtype: Any = None,
                 rng: Rng = None) -> None:
        super().__init__()
        self.flatten = Flatten()
        self.linear = Linear(in_features, classes, dtype=dtype, rng=rng)

    def forward(self, x: Any) -> Any:
        return self.linear(self.flatten(x))

    def templates(self, image_shape: tuple[int, int] = (28, 28)) -> np.ndarray:
        """The weight rows as images (classes, H, W): what each class's score looks for."""
        return self.linear.weight.data.reshape((-1,) + tuple(image_shape))


class MLPClassifier(Module):
    """logits = W2·relu(W1·x + b1) + b2: images (N, 784) or (N, 28, 28) -> (N, classes)."""

    def __init__(self, in_features: int = 784, hidden: int = 128, classes: int = 10, *,
                 dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        gen = as_generator(rng)
        self.flatten = Flatten()
        self.fc1 = Linear(in_features, hidden, dtype=dtype, rng=gen)
        self.relu = ReLU()
        self.fc2 = Linear(hidden, classes, dtype=dtype, rng=gen)

    def forward(self, x: Any) -> Any:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class DnCNN(Module):
    """DnCNN-style residual denoiser (Zhang et al., IEEE TIP 2017), fully convolutional.

    ``layers``: 3×3 conv + ReLU; (depth − 2) × [3×3 conv without bias + BatchNorm + ReLU];
    a final 3×3 conv back to ``image_channels``. Padding 1 keeps every image size.
    :meth:`forward` returns the predicted *noise* (residual learning: train it against
    noisy − clean); :meth:`denoise` returns noisy − predicted noise. Convolutions start
    from He normal weights (fan-in, ReLU gain) and zero biases; BN from γ = 1, β = 0.
    """

    def __init__(self, depth: int = 5, channels: int = 32, image_channels: int = 1, *,
                 dtype: Any = None, rng: Rng = None) -> None:
        super().__init__()
        self.depth = positive(depth, "DnCNN depth", minimum=2)
        self.channels = positive(channels, "DnCNN channels")
        self.image_channels = positive(image_channels, "DnCNN image_channels")
        gen = as_generator(rng)
        c, ic = self.channels, self.image_channels
        layers: list[Module] = [Conv2d(ic, c, 3, padding=1, dtype=dtype, rng=gen), ReLU()]
        for _ in range(self.depth - 2):
            layers += [Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype, rng=gen),
                       BatchNorm2d(c, dtype=dtype), ReLU()]
        layers.append(Conv2d(c, ic, 3, padding=1, dtype=dtype, rng=gen))
        self.layers = Sequential(*layers)
        for m in self.layers:
            if isinstance(m, Conv2d):
                init.kaiming_normal_(m.weight, nonlinearity="relu", rng=gen)
                if m.bias is not None:
                    init.zeros_(m.bias)

    def forward(self, noisy: Any) -> Any:
        """The predicted noise of images (N, image_channels, H, W)."""
        return self.layers(noisy)

    def denoise(self, noisy: Any, batch_size: int = 16) -> np.ndarray:
        """noisy − predicted noise, evaluated eagerly in evaluation mode (running BN
        statistics) and in batches; any image size. Takes (H, W) (one channel), (C, H, W)
        or (N, C, H, W) and returns the same shape."""
        arr = np.asarray(noisy)
        shape = arr.shape
        if arr.ndim == 2 and self.image_channels == 1:
            arr = arr[None, None]
        elif arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ShapeError(f"DnCNN.denoise expects (H, W), (C, H, W) or (N, C, H, W) images, "
                             f"got shape {shape}")
        was_training = self.training
        self.eval()
        try:
            arr = arr.astype(self.dtype, copy=False)
            step = max(1, int(batch_size))
            noise = np.concatenate([np.asarray(self(arr[i:i + step]))
                                    for i in range(0, len(arr), step)]) if len(arr) else arr
        finally:
            self.train(was_training)
        return (arr - noise).reshape(shape)


__all__ = ["DnCNN", "InpaintingMLP", "LinearClassifier", "MLPClassifier", "SigmoidNeuron"]
