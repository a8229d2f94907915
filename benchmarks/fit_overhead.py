"""The training loop's own cost per step: ``nn.fit`` against bare ``compile_step`` calls.

Same model, same batches of 64, same optimiser (SGD). The bare loop slices consecutive rows
and calls the compiled step and ``opt.step()``; ``fit`` gathers a shuffled batch, checks the
loss, keeps the history and the generator state for checkpoints. Times are medians of
whole loop iterations (``fit``'s measured between consecutive callbacks), which a busy
machine disturbs less than means. Run it alone: ``OMP_NUM_THREADS=1 python
benchmarks/fit_overhead.py``.
"""

from __future__ import annotations

import time

import numpy as np

from autodiff_lab import nn

BATCH = 64


def compare(make_model, X: np.ndarray, Y: np.ndarray, label: str, repeats: int = 3) -> None:
    steps = len(X) // BATCH
    bare, looped = [], []
    for _ in range(repeats):
        model = make_model()
        opt = nn.SGD(model.parameters(), lr=1e-3)
        step = nn.compile_step(model, nn.MSELoss(), X[:BATCH], Y[:BATCH], anomaly=False)
        step(X[:BATCH], Y[:BATCH])
        last = time.perf_counter()
        for i in range(steps):
            step(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
            opt.step()
            now = time.perf_counter()
            bare.append(now - last)
            last = now

        stamps: list[float] = []
        model = make_model()
        nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=1e-3), (X, Y), epochs=1,
               batch_size=BATCH, progress=False, callback=lambda info: stamps.append(time.perf_counter()))
        looped.extend(np.diff(stamps))
    b, f = float(np.median(bare)), float(np.median(looped))
    print(f"{label}: bare {1e3 * b:.3f} ms/step ({1 / b:.0f} steps/s), fit {1e3 * f:.3f} ms/step "
          f"({1 / f:.0f} steps/s): the loop adds {1e6 * (f - b):+.0f} µs per step")


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    rng = np.random.default_rng(0)
    X = rng.random((300 * BATCH, 784), dtype=np.float32)
    compare(lambda: nn.InpaintingMLP(784, 256, dtype=np.float32, rng=0), X, X,
            "784-256-784 MLP float32, batch 64")
    Xs, Ys = rng.random((2000 * BATCH, 8)), rng.random((2000 * BATCH, 1))
    compare(lambda: nn.Linear(8, 1, rng=0), Xs, Ys, "Linear(8, 1), batch 64 (the fixed cost)")


if __name__ == "__main__":
    main()
