"""The training loop's own cost per step: ``nn.fit`` against bare ``compile_step`` calls.

Same model (the 784-256-784 inpainting MLP, float32), same batches of 64, same optimiser;
the bare loop only slices consecutive rows, ``fit`` gathers a shuffled batch, checks the
loss, keeps the history and the generator state for checkpoints. Run it alone on a quiet
machine (``OMP_NUM_THREADS=1 python benchmarks/fit_overhead.py``); it prints steps/s.
"""

from __future__ import annotations

import time

import numpy as np

from autodiff_lab import nn

STEPS = 300
BATCH = 64


def tiny_overhead(steps: int = 2000) -> None:
    """The loop's fixed cost per step, measured where the step itself costs little."""
    rng = np.random.default_rng(0)
    X = rng.random((steps * BATCH, 8))
    Y = rng.random((steps * BATCH, 1))
    model = nn.Linear(8, 1, rng=0)
    opt = nn.SGD(model.parameters(), lr=1e-3)
    step = nn.compile_step(model, nn.MSELoss(), X[:BATCH], Y[:BATCH], anomaly=False)
    best_bare = best_fit = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(steps):
            step(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
            opt.step()
        best_bare = max(best_bare, steps / (time.perf_counter() - t))
        model = nn.Linear(8, 1, rng=0)
        h = nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=1e-3), (X, Y), epochs=1,
                   batch_size=BATCH, progress=False)
        best_fit = max(best_fit, h.steps / h.wall_time)
    print(f"Linear(8, 1), batch {BATCH}: bare {1e6 / best_bare:.0f} µs/step, fit {1e6 / best_fit:.0f} "
          f"µs/step: the loop adds {1e6 / best_fit - 1e6 / best_bare:.0f} µs per step")


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((STEPS * BATCH, 784), dtype=np.float32)

    model = nn.InpaintingMLP(784, 256, dtype=np.float32, rng=0)
    opt = nn.SGD(model.parameters(), lr=1e-3)
    step = nn.compile_step(model, nn.MSELoss(), X[:BATCH], X[:BATCH], engine="tape", anomaly=False)
    for _ in range(10):  # warm-up (Numba kernels, BLAS)
        step(X[:BATCH], X[:BATCH])
        opt.step()
    best_bare = best_gather = best_fit = 0.0
    perm = rng.permutation(len(X))
    for _ in range(3):
        t = time.perf_counter()
        for i in range(STEPS):
            xb = X[i * BATCH:(i + 1) * BATCH]
            step(xb, xb)
            opt.step()
        best_bare = max(best_bare, STEPS / (time.perf_counter() - t))

        t = time.perf_counter()
        for i in range(STEPS):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            step(X.take(idx, axis=0), X.take(idx, axis=0))
            opt.step()
        best_gather = max(best_gather, STEPS / (time.perf_counter() - t))

        model = nn.InpaintingMLP(784, 256, dtype=np.float32, rng=0)
        h = nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=1e-3), (X, X), epochs=1,
                   batch_size=BATCH, progress=False)
        best_fit = max(best_fit, h.steps / h.wall_time)
    print(f"bare compile_step + SGD: {best_bare:7.1f} steps/s ({1e3 / best_bare:.3f} ms/step)")
    print(f"  + shuffled batches:    {best_gather:7.1f} steps/s ({1e3 / best_gather:.3f} ms/step)")
    print(f"nn.fit:                  {best_fit:7.1f} steps/s ({1e3 / best_fit:.3f} ms/step)")
    print(f"fit - bare:              {1e3 / best_fit - 1e3 / best_bare:+.3f} ms/step "
          f"({100 * (best_bare / best_fit - 1):+.1f} %), of which gathering shuffled rows "
          f"{1e3 / best_gather - 1e3 / best_bare:+.3f} ms/step")
    tiny_overhead()


if __name__ == "__main__":
    main()
