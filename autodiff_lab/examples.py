"""The built-in example graphs users try first, each with a function that makes its values.

* ``sigmoid_neuron``   -- f = σ(w0·x0 + w1·x1 + w2) with scalar inputs: the textbook drawing
  (``primitive=True`` writes σ as neg, exp, +1, 1/x);
* ``sigmoid_neuron_vector`` -- the same with w (3,) and x (2,), as in the API examples;
* ``scalar_chain``     -- f = w1·x, g = max(0, f), ŷ = w2·g, L = ½(ŷ − y)²;
* ``mlp``              -- the inpainting MLP L = ½‖W2·relu(W1·x + b1) + b2 − y‖² on a batch;
* ``dncnn``            -- a DnCNN-style residual denoiser: conv+relu, (conv+BN+relu)×k, conv,
  loss ½‖(noisy − net(noisy)) − clean‖² (mean over the batch).

Every builder returns an :class:`Example`: the graph, its values and a one-line description.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autodiff_lab.graph import functions as F
from autodiff_lab.graph.graph import Graph, param, spec, trace


@dataclass
class Example:
    """A named graph with values to evaluate it at."""

    name: str
    graph: Graph
    values: dict[str, np.ndarray]
    description: str


# the textbook point (CS231n): w = [2, -3, -3], x = [-1, -2] gives f = 0.73
NEURON_W = np.array([2.0, -3.0, -3.0])
NEURON_X = np.array([-1.0, -2.0])


def sigmoid_neuron(primitive: bool = False) -> Example:
    """f = σ(w0·x0 + w1·x1 + w2) on scalars, at the textbook point."""
    def neuron(w0, x0, w1, x1, w2):
        return F.sigmoid(w0 * x0 + w1 * x1 + w2)

    g = trace(neuron, w0=param(()), x0=(), w1=param(()), x1=(), w2=param(()))
    if primitive:
        g = g.expand("sigmoid")
    values = {"w0": NEURON_W[0], "x0": NEURON_X[0], "w1": NEURON_W[1], "x1": NEURON_X[1],
              "w2": NEURON_W[2]}
    return Example("sigmoid_neuron", g, {k: np.asarray(v) for k, v in values.items()},
                   "f = σ(w0·x0 + w1·x1 + w2) at w = [2, −3, −3], x = [−1, −2]")


def sigmoid_neuron_vector() -> Example:
    """The sigmoid neuron with vector inputs w (3,) and x (2,)."""
    g = trace(lambda w, x: F.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]), w=param((3,)), x=(2,))
    return Example("sigmoid_neuron_vector", g, {"w": NEURON_W.copy(), "x": NEURON_X.copy()},
                   "f = σ(w[0]·x[0] + w[1]·x[1] + w[2])")


def scalar_chain(w1: float = 0.5, w2: float = -1.5, x: float = 2.0, y: float = 1.0) -> Example:
    """The scalar two-layer chain of the textbooks."""
    def chain(w1, w2, x, y):
        f = w1 * x
        g = F.relu(f)
        y_hat = w2 * g
        return F.mse_loss(y_hat, y)

    g = trace(chain, w1=param(()), w2=param(()), x=(), y=())
    values = {k: np.asarray(float(v)) for k, v in dict(w1=w1, w2=w2, x=x, y=y).items()}
    return Example("scalar_chain", g, values,
                   "f = w1·x, g = max(0, f), ŷ = w2·g, L = ½(ŷ − y)²")


def mlp_function(bias: bool = True) -> Callable[..., Any]:
    """The inpainting MLP loss as a traceable function of (W1, W2[, b1, b2], x, y).

    Columns are examples: x is (D, B), W1 (H, D), W2 (D, H), as in ŷ = W2·max(0, W1·x).
    """
    if bias:
        def loss(W1, b1, W2, b2, x, y):  # noqa: N803 - the names of the maths
            h = F.relu(W1 @ x + b1)
            return F.mse_loss(W2 @ h + b2, y)
    else:
        def loss(W1, W2, x, y):  # noqa: N803
            return F.mse_loss(W2 @ F.relu(W1 @ x), y)
    return loss


def mlp(d_in: int = 784, hidden: int = 256, batch: int = 64, bias: bool = True,
        dtype: str = "float64", seed: int = 0) -> Example:
    """L = ½‖W2·relu(W1·x + b1) + b2 − y‖² with x, y of shape (d_in, batch)."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {"W1": (hidden, d_in), "W2": (d_in, hidden)}
    if bias:
        shapes.update(b1=(hidden, 1), b2=(d_in, 1))
    specs: dict[str, Any] = {k: param(s, dtype) for k, s in shapes.items()}
    specs.update(x=spec((d_in, batch), dtype), y=spec((d_in, batch), dtype))
    g = trace(mlp_function(bias), **specs)
    values = {
        "W1": rng.standard_normal((hidden, d_in)) * np.sqrt(2.0 / d_in),
        "W2": rng.standard_normal((d_in, hidden)) * np.sqrt(1.0 / hidden),
        "x": rng.random((d_in, batch)), "y": rng.random((d_in, batch)),
    }
    if bias:
        values.update(b1=np.zeros((hidden, 1)), b2=np.zeros((d_in, 1)))
    values = {k: v.astype(dtype) for k, v in values.items()}
    return Example("mlp", g, values,
                   f"inpainting MLP {d_in}-{hidden}-{d_in}, batch {batch}, {dtype}")


def dncnn_function(depth: int = 5, batch_norm: bool = True) -> Callable[..., Any]:
    """A DnCNN-style residual denoiser loss: weights w0..w{depth-1}, first bias b0,
    BN scales/shifts gamma_i/beta_i for the middle layers; inputs noisy, clean (N, 1, H, W)."""
    def loss(noisy, clean, **p):
        h = F.relu(F.conv2d(noisy, p["w0"], p["b0"], padding=1))
        for i in range(1, depth - 1):
            h = F.conv2d(h, p[f"w{i}"], padding=1)
            if batch_norm:
                h = F.batch_norm(h, p[f"gamma{i}"], p[f"beta{i}"])
            h = F.relu(h)
        noise = F.conv2d(h, p[f"w{depth - 1}"], padding=1)
        return F.mse_loss(noisy - noise, clean, reduction="mean")
    return loss


def dncnn(batch: int = 16, size: int = 40, channels: int = 32, depth: int = 5,
          batch_norm: bool = True, dtype: str = "float64", seed: int = 0) -> Example:
    """DnCNN-lite on a batch of (batch, 1, size, size) noisy/clean images."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {"w0": (channels, 1, 3, 3), "b0": (channels,)}
    for i in range(1, depth - 1):
        shapes[f"w{i}"] = (channels, channels, 3, 3)
        if batch_norm:
            shapes[f"gamma{i}"] = (channels,)
            shapes[f"beta{i}"] = (channels,)
    shapes[f"w{depth - 1}"] = (1, channels, 3, 3)
    image = (batch, 1, size, size)
    specs: dict[str, Any] = {"noisy": spec(image, dtype), "clean": spec(image, dtype)}
    specs.update({k: param(s, dtype) for k, s in shapes.items()})
    g = trace(dncnn_function(depth, batch_norm), **specs)
    clean = rng.random(image)
    values: dict[str, np.ndarray] = {"clean": clean,
                                     "noisy": clean + rng.normal(0, 25 / 255, image)}
    for k, s in shapes.items():
        if k.startswith("w"):
            fan_in = s[1] * s[2] * s[3]
            values[k] = rng.standard_normal(s) * np.sqrt(2.0 / fan_in)
        elif k.startswith("gamma"):
            values[k] = np.ones(s)
        else:
            values[k] = np.zeros(s)
    values = {k: v.astype(dtype) for k, v in values.items()}
    return Example("dncnn", g, values,
                   f"DnCNN-lite {batch}×1×{size}×{size}, {depth} conv 3×3 ({channels} channels), "
                   f"{dtype}")


BUILTIN: dict[str, Callable[[], Example]] = {
    "sigmoid": sigmoid_neuron,
    "sigmoid_primitive": lambda: sigmoid_neuron(primitive=True),
    "sigmoid_vector": sigmoid_neuron_vector,
    "chain": scalar_chain,
    "mlp_small": lambda: mlp(d_in=16, hidden=8, batch=4),
    "mlp": mlp,
    "dncnn_small": lambda: dncnn(batch=2, size=8, channels=4, depth=3),
    "dncnn": dncnn,
}


def get_example(name: str) -> Example:
    """A built-in example by name (see ``BUILTIN``)."""
    from autodiff_lab.errors import InputError
    if name not in BUILTIN:
        raise InputError(f"no built-in example {name!r}; choose one of {', '.join(BUILTIN)}")
    return BUILTIN[name]()
