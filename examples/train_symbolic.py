"""Train the two case-study networks with gradients from the symbolic engine's matrix mode.

The inpainting MLP (784-256-784 on masked MNIST digits) and a small DnCNN-style denoiser
(σ = 25 noise on patches of natural grey images) are traced once, differentiated once at
matrix level (``adl.engine("symbolic", mode="matrix")``), and the generated numpy program
is called at every SGD step. The loss going down is the point: the symbolic route, done on
the shared DAG instead of expanded trees, is fast enough to train with.

    python examples/train_symbolic.py [--mlp-steps 200] [--dncnn-steps 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import autodiff_lab as adl
from autodiff_lab import data, examples


def sgd(program, values: dict[str, np.ndarray], params: list[str], batches, lr: float,
        steps: int, every: int) -> list[float]:
    """Plain SGD θ ← θ − lr·∇θL with the compiled program; returns the loss per step."""
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        values.update(next(batches))
        result = program(values)
        for name in params:
            values[name] = values[name] - lr * result.grads[name]
        losses.append(float(result.value))
        if step % every == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {losses[-1]:.5f}  "
                  f"({(time.perf_counter() - start) / (step + 1) * 1e3:.1f} ms/step)")
    return losses


def train_mlp(steps: int, batch: int = 64) -> list[float]:
    images, _ = data.load_digits("train")
    flat = images.reshape(len(images), -1)
    rng = np.random.default_rng(0)
    ex = examples.mlp(784, 256, batch)
    params = ["W1", "b1", "W2", "b2"]
    tic = time.perf_counter()
    program = adl.engine("symbolic", mode="matrix").compile(ex.graph, wrt=params)
    print(f"inpainting MLP 784-256-784, batch {batch}: compiled in "
          f"{(time.perf_counter() - tic) * 1e3:.1f} ms")

    def batches():
        while True:
            pick = flat[rng.integers(0, len(flat), batch)]
            masked, _ = data.mask_pixels(pick, 0.5, rng)
            yield {"x": masked.T.copy(), "y": pick.T.copy()}

    return sgd(program, dict(ex.values), params, batches(), lr=0.01 / batch, steps=steps,
               every=max(steps // 10, 1))


def train_dncnn(steps: int, batch: int = 4, size: int = 16, channels: int = 8,
                depth: int = 4) -> list[float]:
    images = list(data.load_gray_images().values())
    rng = np.random.default_rng(1)
    ex = examples.dncnn(batch=batch, size=size, channels=channels, depth=depth)
    params = list(ex.graph.parameters)
    tic = time.perf_counter()
    program = adl.engine("symbolic", mode="matrix").compile(ex.graph, wrt=params)
    print(f"DnCNN-lite {batch}×1×{size}×{size}, depth {depth}, {channels} channels: compiled in "
          f"{(time.perf_counter() - tic) * 1e3:.1f} ms")

    def batches():
        while True:
            clean = np.stack([data.extract_patches(images[rng.integers(len(images))], size, 1,
                                                   rng)[0] for _ in range(batch)])[:, None]
            yield {"clean": clean, "noisy": data.add_gaussian_noise(clean, rng=rng)}

    return sgd(program, dict(ex.values), params, batches(), lr=0.05, steps=steps,
               every=max(steps // 8, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlp-steps", type=int, default=200)
    parser.add_argument("--dncnn-steps", type=int, default=40)
    args = parser.parse_args(argv)
    for name, losses in (("MLP", train_mlp(args.mlp_steps)),
                         ("DnCNN", train_dncnn(args.dncnn_steps))):
        first, last = np.mean(losses[:5]), np.mean(losses[-5:])
        print(f"{name}: mean loss of the first 5 steps {first:.5f} -> last 5 steps {last:.5f} "
              f"({'down' if last < first else 'NOT down'})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
