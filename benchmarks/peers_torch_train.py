"""PyTorch CPU reference runs of the two training case studies (an optional peer).

    python benchmarks/peers_torch_train.py            # 5 MLP epochs, 30 DnCNN steps
    python benchmarks/peers_torch_train.py --quick    # a smoke run (a few steps of each)
    python benchmarks/peers_torch_train.py --json out.json

(a) :func:`torch_mlp_inpainting` -- the inpainting MLP 784-256-784 with ReLU and biases,
    loss ½‖y − ŷ‖² summed over pixels and averaged over the batch, Adam (lr 1e-3), batch 64,
    on the shipped digits (6,000 train / 1,000 test) with one random 12×12 block hidden per
    image (a new block for every training image each epoch; fixed test blocks). Reports the
    time per epoch and the test PSNR of the prediction, of the prediction pasted into the
    hidden block only, and of the masked input (the baseline).
(b) :func:`torch_dncnn_steps` -- DnCNN-lite: conv 1→32 + bias + ReLU, 3 × [conv 32→32 without
    bias + batch norm (training mode) + ReLU], conv 32→1 without bias; residual (the network
    predicts the noise, clean ≈ noisy − net(noisy)); loss ½ mean((noisy − net) − clean)²;
    float32, 40×40 patches of the training grey images with σ = 25/255 noise, batch 16,
    Adam 1e-3. Reports the time per training step.

Both draw the initial weights, the masks, the patches, the noise and the batch order with
numpy from ``seed`` (the same recipes as ``autodiff_lab.examples`` and
``autodiff_lab.data``), so a run of our own stack with the same seed sees the same numbers.
PyTorch is imported only when a run starts, with 2 threads; without it the functions raise
ImportError and the script prints "peer not installed". Install it with
``pip install -r benchmarks/requirements-peers.txt``.
"""

from __future__ import annotations

import os

THREADS = 2
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(THREADS))

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from autodiff_lab import data as D  # noqa: E402

NOT_INSTALLED = "peer not installed: PyTorch (pip install -r benchmarks/requirements-peers.txt)"


def _torch(threads: int = THREADS) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(NOT_INSTALLED) from exc
    torch.set_num_threads(threads)
    return torch


def available() -> bool:
    """Whether PyTorch can be imported."""
    try:
        _torch()
        return True
    except ImportError:
        return False


# -- (a) inpainting MLP -----------------------------------------------------------------------------

def mlp_initial_weights(d_in: int = 784, hidden: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """W1 (H, D) ~ N(0, 2/D), W2 (D, H) ~ N(0, 1/H), zero biases -- ``examples.mlp``'s recipe;
    (out, in) layout, as ``torch.nn.Linear.weight``."""
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((hidden, d_in)) * np.sqrt(2.0 / d_in), "b1": np.zeros(hidden),
            "W2": rng.standard_normal((d_in, hidden)) * np.sqrt(1.0 / hidden), "b2": np.zeros(d_in)}


def torch_mlp_inpainting(epochs: int = 5, batch: int = 64, lr: float = 1e-3, hidden: int = 256,
                         block: int = 12, seed: int = 0, dtype: str = "float32",
                         max_steps_per_epoch: int | None = None, threads: int = THREADS) -> dict[str, Any]:
    """Train the inpainting MLP with PyTorch; times and test PSNRs (dB) in a dict.

    Random numbers, all from ``numpy.random.default_rng(seed)`` in this order: the initial
    weights (:func:`mlp_initial_weights` with ``seed``), then per epoch the block masks of the
    training images (:func:`autodiff_lab.data.random_block_mask`) and the batch order
    (:func:`autodiff_lab.data.batches`); the test masks come from ``seed + 1``.
    """
    torch = _torch(threads)
    tdtype = getattr(torch, dtype)
    x_train, _ = D.load_digits("train")
    x_test, _ = D.load_digits("test")
    x_train = x_train.reshape(len(x_train), -1).astype(dtype)
    x_test = x_test.reshape(len(x_test), -1).astype(dtype)
    d = x_train.shape[1]

    init = mlp_initial_weights(d, hidden, seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d))
    model = model.to(tdtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(init["W1"]))
        model[0].bias.copy_(torch.from_numpy(init["b1"]))
        model[2].weight.copy_(torch.from_numpy(init["W2"]))
        model[2].bias.copy_(torch.from_numpy(init["b2"]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    clean_t = torch.from_numpy(x_train)

    losses: list[float] = []
    epoch_times: list[float] = []
    steps_per_epoch = 0
    for _ in range(epochs):
        masked, _ = D.random_block_mask(x_train, block, rng)
        masked_t = torch.from_numpy(masked)
        steps = 0
        start = time.perf_counter()
        for idx in D.batches(len(x_train), batch, rng):
            if max_steps_per_epoch is not None and steps >= max_steps_per_epoch:
                break
            index = torch.from_numpy(idx)
            x, y = masked_t[index], clean_t[index]
            opt.zero_grad()
            loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
        epoch_times.append(time.perf_counter() - start)
        steps_per_epoch = steps

    masked_test, mask_test = D.random_block_mask(x_test, block, np.random.default_rng(seed + 1))
    with torch.no_grad():
        pred = model(torch.from_numpy(masked_test)).numpy().astype(np.float64)
    composite = mask_test * x_test + (1 - mask_test) * pred
    return {
        "framework": f"torch {torch.__version__}", "threads": threads, "dtype": dtype,
        "epochs": epochs, "batch": batch, "steps_per_epoch": steps_per_epoch,
        "epoch_times_s": epoch_times, "time_per_epoch_s": float(np.median(epoch_times)),
        "time_per_step_ms": 1e3 * float(np.median(epoch_times)) / max(1, steps_per_epoch),
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last": losses[-1] if losses else float("nan"),
        "loss_history": losses,
        "test_psnr_db": float(D.psnr(pred, x_test)),
        "test_psnr_block_only_db": float(D.psnr(composite, x_test)),
        "masked_input_psnr_db": float(D.psnr(masked_test, x_test)),
    }


# -- (b) DnCNN-lite -----------------------------------------------------------------------------------

def dncnn_initial_weights(channels: int = 32, depth: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Conv weights ~ N(0, 2/fan_in), first bias 0, batch-norm γ = 1, β = 0 (``examples.dncnn``)."""
    rng = np.random.default_rng(seed)
    shapes = {"w0": (channels, 1, 3, 3)}
    for i in range(1, depth - 1):
        shapes[f"w{i}"] = (channels, channels, 3, 3)
    shapes[f"w{depth - 1}"] = (1, channels, 3, 3)
    weights = {k: rng.standard_normal(s) * np.sqrt(2.0 / (s[1] * s[2] * s[3])) for k, s in shapes.items()}
    weights["b0"] = np.zeros(channels)
    return weights


def _dncnn_model(torch: Any, channels: int, depth: int, weights: dict[str, np.ndarray]) -> Any:
    nn = torch.nn
    layers: list[Any] = [nn.Conv2d(1, channels, 3, padding=1, bias=True), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU()]
    layers.append(nn.Conv2d(channels, 1, 3, padding=1, bias=False))
    model = nn.Sequential(*layers)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(torch.from_numpy(weights[f"w{i}"]))
        convs[0].bias.copy_(torch.from_numpy(weights["b0"]))
    return model


def torch_dncnn_steps(steps: int = 30, batch: int = 16, size: int = 40, channels: int = 32,
                      depth: int = 5, sigma: float = 25 / 255, lr: float = 1e-3, seed: int = 0,
                      warmup: int = 3, threads: int = THREADS) -> dict[str, Any]:
    """Train DnCNN-lite for ``warmup + steps`` steps with PyTorch (float32); the median time
    of a training step (forward, backward, Adam) after the warm-up, in a dict.

    Patches: :func:`autodiff_lab.data.random_patches` of the training images (all but
    ``DENOISE_TEST_IMAGES``) with ``seed``; noise from ``default_rng(seed + 1)``.
    """
    torch = _torch(threads)
    images = D.load_gray_images()
    train = {k: v for k, v in images.items() if k not in D.DENOISE_TEST_IMAGES}
    total = warmup + steps
    patches = D.random_patches(train, size, count=total * batch, rng=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, sigma, patches.shape).astype(np.float32)
    noisy = patches + noise
    model = _dncnn_model(torch, channels, depth, dncnn_initial_weights(channels, depth, seed)).float()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times: list[float] = []
    losses: list[float] = []
    for s in range(total):
        x = torch.from_numpy(noisy[s * batch:(s + 1) * batch])
        y = torch.from_numpy(patches[s * batch:(s + 1) * batch])
        start = time.perf_counter()
        opt.zero_grad()
        loss = 0.5 * (((x - model(x)) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if s >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "framework": f"torch {torch.__version__}", "threads": threads, "dtype": "float32",
        "steps": steps, "warmup": warmup, "batch": batch, "size": size, "channels": channels, "depth": depth,
        "time_per_step_ms": 1e3 * float(np.median(times)), "step_times_ms": [1e3 * t for t in times],
        "loss_first": losses[0], "loss_last": losses[-1],
        "noisy_psnr_db": float(D.psnr(noisy, patches)),
    }


def main() -> int:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch of 20 steps, 5 DnCNN steps")
    ap.add_argument("--epochs", type=int, default=5, help="MLP epochs")
    ap.add_argument("--dncnn-steps", type=int, default=30, help="timed DnCNN steps")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    ap.add_argument("--json", default=None,
                    help="write the results to this JSON file (default: a new "
                         "benchmarks/results/peers_torch_train-<time>.json, with a CSV beside it)")
    args = ap.parse_args()
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _table import Table

    table = Table("peers_torch_train", meta={"threads": args.threads, "quick": args.quick})
    if not available():
        print(NOT_INSTALLED)
        for workload, metric, unit in (("inpainting MLP", "time per epoch", "s"),
                                       ("DnCNN-lite", "time per step", "ms")):
            table.not_installed(workload, "torch", metric, unit)
        path, _ = table.save(args.json)
        print(f"wrote {path}")
        return 0
    if args.quick:
        mlp = torch_mlp_inpainting(epochs=1, max_steps_per_epoch=20, threads=args.threads)
        dn = torch_dncnn_steps(steps=5, warmup=1, threads=args.threads)
    else:
        mlp = torch_mlp_inpainting(epochs=args.epochs, threads=args.threads)
        dn = torch_dncnn_steps(steps=args.dncnn_steps, threads=args.threads)
    print(f"inpainting MLP ({mlp['framework']}, {mlp['threads']} threads, {mlp['dtype']}): "
          f"{mlp['epochs']} epoch(s) of {mlp['steps_per_epoch']} steps, "
          f"{mlp['time_per_epoch_s']:.3f} s/epoch "
          f"({mlp['time_per_step_ms']:.2f} ms/step); loss {mlp['loss_first']:.2f} → {mlp['loss_last']:.2f}; "
          f"test PSNR {mlp['test_psnr_db']:.2f} dB (block only {mlp['test_psnr_block_only_db']:.2f} dB, "
          f"masked input {mlp['masked_input_psnr_db']:.2f} dB)")
    print(f"DnCNN-lite ({dn['framework']}, float32, batch {dn['batch']} × {dn['size']}²): "
          f"{dn['time_per_step_ms']:.1f} ms/step over {dn['steps']} steps; "
          f"loss {dn['loss_first']:.5f} → {dn['loss_last']:.5f}")
    table.meta.update(mlp=mlp, dncnn=dn)
    table.add("inpainting MLP", "torch", "time per epoch", mlp["time_per_epoch_s"], "s",
              f"{mlp['framework']}, {mlp['steps_per_epoch']} steps")
    table.add("inpainting MLP", "torch", "test PSNR", mlp["test_psnr_db"], "dB")
    table.add("DnCNN-lite", "torch", "time per step", dn["time_per_step_ms"], "ms",
              f"{dn['framework']}, batch {dn['batch']}")
    path, _ = table.save(args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
