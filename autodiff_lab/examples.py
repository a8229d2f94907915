"""The built-in examples: the graphs users try first, each with values to evaluate it at.

One vocabulary of names serves every subcommand (``render``, ``summary``, ``compare``,
``train``) and :func:`get_example`:

* ``neuron``     -- f = σ(w0·x0 + w1·x1 + w2) on scalars at the textbook point;
* ``chain``      -- the scalar two-layer chain f = w1·x, g = max(0, f), ŷ = w2·g, L = ½(ŷ − y)²;
* ``inpainting`` -- the inpainting MLP 784-64-784, L = ½‖W2·relu(W1·x + b1) + b2 − y‖², on 64
  real handwritten digits with a 12×12 block hidden in each;
* ``denoiser``   -- a DnCNN-style residual denoiser, 4 convolutions 3×3 of 16 channels (batch
  normalisation in the middle layers), on 4 patches 40×40 of a natural image, σ = 25 noise;
* ``classifier`` -- a linear softmax classifier 784 → 10 with cross-entropy on 64 digits.

Older spellings are accepted everywhere as aliases (:data:`ALIASES`: ``sigmoid`` and
``sigmoid_neuron`` for ``neuron``, ``mlp`` for ``inpainting``, ``dncnn`` for ``denoiser`` ...),
so a name means one graph of one size in every command.

The builder functions below (``sigmoid_neuron``, ``scalar_chain``, ``mlp``, ``dncnn``,
``inpainting``, ``denoiser``, ``classifier`` ...) make the same graphs at any size. Every
builder returns an :class:`Example`: the graph, its values and a one-line description.
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
    return Example("neuron", g, {k: np.asarray(v) for k, v in values.items()},
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
    return Example("chain", g, values,
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


def inpainting(hidden: int = 64, batch: int = 64, block: int = 12, side: int = 28,
               seed: int = 0) -> Example:
    """The inpainting MLP on ``batch`` real handwritten digits (``side``×``side``; 28 is the
    original size, 14 averages 2×2 pixels) with a ``block``×``block`` square hidden in each:
    input the masked image, target the complete one, columns are images."""
    from autodiff_lab.data import load_digits
    from autodiff_lab.data.transforms import random_block_mask

    rng = np.random.default_rng(seed)
    images, _ = load_digits("train")
    pick = images[rng.choice(len(images), batch, replace=False)]
    if side != 28:
        if 28 % side:
            raise ValueError(f"side must divide 28, got {side}")
        f = 28 // side
        pick = pick.reshape(batch, side, f, side, f).mean(axis=(2, 4))
    masked, _ = random_block_mask(pick, block=min(block, side), rng=rng)
    d = side * side
    ex = mlp(d_in=d, hidden=hidden, batch=batch, seed=seed)
    ex.values.update(x=masked.reshape(batch, d).T.copy(), y=pick.reshape(batch, d).T.copy())
    ex.name = "inpainting"
    ex.description = (f"inpainting MLP {d}-{hidden}-{d} on {batch} MNIST digits "
                      f"({side}×{side}, a {min(block, side)}×{min(block, side)} block hidden)")
    return ex


def denoiser(depth: int = 4, channels: int = 16, batch: int = 4, size: int = 40,
             seed: int = 0) -> Example:
    """The DnCNN-style denoiser on ``batch`` patches ``size``×``size`` of a natural grey image
    (brick) with additive Gaussian noise σ = 25/255: predicts the noise, residual learning."""
    from autodiff_lab.data import add_gaussian_noise, extract_patches, load_gray_images

    rng = np.random.default_rng(seed)
    image = load_gray_images(("brick",))["brick"]
    clean = extract_patches(image, size, batch, rng)[:, None]
    ex = dncnn(batch=batch, size=size, channels=channels, depth=depth, seed=seed)
    ex.values.update(clean=clean, noisy=add_gaussian_noise(clean, 25 / 255, rng))
    ex.name = "denoiser"
    ex.description = (f"DnCNN-style denoiser: {depth} convolutions 3×3 of {channels} channels "
                      f"(batch norm in the middle) on {batch} patches {size}×{size} of a natural "
                      "image, σ = 25")
    return ex


def classifier_function() -> Callable[..., Any]:
    """The linear softmax classifier's loss as a traceable function of (W, b, x, labels):
    mean cross-entropy of softmax(x·Wᵀ + b); rows of x are images."""
    def loss(W, b, x, labels):  # noqa: N803
        return F.softmax_cross_entropy(x @ F.transpose(W) + b, labels)
    return loss


def classifier(batch: int = 64, classes: int = 10, seed: int = 0) -> Example:
    """A linear softmax classifier 784 → ``classes`` on ``batch`` real digits, small random
    weights (the gradient at the start of training)."""
    from autodiff_lab.data import load_digits

    rng = np.random.default_rng(seed)
    images, labels = load_digits("train")
    keep = np.flatnonzero(labels < classes)
    pick = rng.choice(keep, batch, replace=False)
    d = images.shape[1] * images.shape[2]
    g = trace(classifier_function(), W=param((classes, d)), b=param((classes,)),
              x=spec((batch, d)), labels=spec((batch,), "int64"))
    values = {"W": rng.standard_normal((classes, d)) * 0.01, "b": np.zeros(classes),
              "x": images[pick].reshape(batch, d), "labels": labels[pick].astype(np.int64)}
    return Example("classifier", g, values,
                   f"linear softmax classifier {d} → {classes}, cross-entropy on {batch} MNIST "
                   "digits")


#: the built-in examples by name: the vocabulary of every subcommand
BUILTIN: dict[str, Callable[[], Example]] = {
    "neuron": sigmoid_neuron,
    "chain": scalar_chain,
    "inpainting": inpainting,
    "denoiser": denoiser,
    "classifier": classifier,
}

#: older spellings, accepted everywhere and meaning the same example
ALIASES: dict[str, str] = {
    "sigmoid": "neuron", "sigmoid_neuron": "neuron", "sigmoid_primitive": "neuron",
    "sigmoid_vector": "neuron",
    "scalar_chain": "chain",
    "mlp": "inpainting", "inpainting_mlp": "inpainting", "mlp_small": "inpainting",
    "dncnn": "denoiser", "dncnn_denoiser": "denoiser", "dncnn_small": "denoiser",
    "softmax": "classifier", "linear_classifier": "classifier",
}


def aliases_help() -> str:
    """'sigmoid, sigmoid_neuron = neuron; ...': the aliases as a help text lists them."""
    by_name: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        by_name.setdefault(name, []).append(alias)
    return "; ".join(f"{', '.join(a)} = {n}" for n, a in by_name.items())


def canonical_name(name: str) -> str:
    """The example's name in the vocabulary (an alias resolved); an InputError listing the
    choices for anything else."""
    from autodiff_lab.errors import InputError
    key = name.strip().lower().replace("-", "_")
    if key in BUILTIN:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise InputError(f"no built-in example {name!r}; choose one of {', '.join(BUILTIN)} "
                     f"(aliases: {aliases_help()})")


def get_example(name: str) -> Example:
    """A built-in example by name or alias (see :data:`BUILTIN`, :data:`ALIASES`)."""
    return BUILTIN[canonical_name(name)]()
