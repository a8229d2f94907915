"""Training speed of the two larger case studies: ours (tape engine) against PyTorch CPU.

    python benchmarks/bench_train.py            # 3 MLP epochs, 20 DnCNN steps
    python benchmarks/bench_train.py --quick    # a smoke run (a few steps of each)
    python benchmarks/bench_train.py --json out.json
    python benchmarks/bench_train.py --threads 1   # on a busy machine (see below)

Both sides train the same model from the same initial weights on the same data with the
same batch size and optimiser, in float32:

(a) the inpainting MLP 784-256-784 (ReLU, biases), loss ½‖y − ŷ‖² per digit averaged over
    the batch, Adam 1e-3, batch 64, the 6,000 training digits with a fresh random 12×12
    block hidden per image and epoch: the time per epoch (the masks are drawn before the
    epoch's clock starts, as in the PyTorch loop);
(b) DnCNN-lite, 5 layers of 32 channels with batch norm, residual (predicts the noise),
    loss ½·mean((net(noisy) − noise)²), Adam 1e-3, batch 16 of 40×40 patches with σ = 25/255
    noise: the median time per training step (forward, backward, optimiser) after a warm-up.

The PyTorch side is ``benchmarks/peers_torch_train.py`` (an optional peer: without PyTorch
the table says "peer not installed"). Our side is the loop the studies use, written out:
``nn.compile_step`` (tape engine, no per-op NaN checks, as ``nn.fit`` runs it) and
``nn.Adam``. The ratio is ours / PyTorch (> 1: we are slower). Timings depend on the
machine's load; run it on a quiet machine for numbers to quote. On a machine whose cores
are busy with other work, multi-threaded BLAS and PyTorch spin-wait for each other's
threads and slow down many-fold: ``--threads 1`` then gives the fairer comparison.
"""

from __future__ import annotations

import os


def _threads_from_argv(argv: list[str], default: int = 2) -> int:
    """``--threads N`` read before numpy is imported (BLAS reads its variables at import)."""
    for i, a in enumerate(argv):
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
    return default


THREADS = _threads_from_argv(__import__("sys").argv[1:]) if __name__ == "__main__" else 2
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_var, str(THREADS))

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_torch_train as peer  # noqa: E402

from autodiff_lab import data as D  # noqa: E402
from autodiff_lab import nn  # noqa: E402


def ours_mlp_inpainting(epochs: int = 3, batch: int = 64, lr: float = 1e-3, hidden: int = 256,
                        block: int = 12, seed: int = 0, max_steps_per_epoch: int | None = None
                        ) -> dict[str, Any]:
    """The inpainting MLP trained with our stack exactly as the PyTorch peer trains it."""
    x_train, _ = D.load_digits("train")
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32)
    d = x_train.shape[1]
    model = nn.InpaintingMLP(d, hidden, dtype=np.float32, rng=seed)
    init = peer.mlp_initial_weights(d, hidden, seed)
    model.load_state_dict({"fc1.weight": init["W1"], "fc1.bias": init["b1"], "fc2.weight": init["W2"],
                           "fc2.bias": init["b2"]})
    step = nn.compile_step(model, nn.MSELoss(), engine="tape", anomaly=False)
    step(x_train[:batch], x_train[:batch])  # trace, compile and warm up outside the clock
    nn.Adam(model.parameters(), lr=lr).step()
    model.load_state_dict({"fc1.weight": init["W1"], "fc1.bias": init["b1"], "fc2.weight": init["W2"],
                           "fc2.bias": init["b2"]})
    opt = nn.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    epoch_times, losses, steps = [], [], 0
    for _ in range(epochs):
        masked, _ = D.random_block_mask(x_train, block, rng)
        steps = 0
        start = time.perf_counter()
        for idx in D.batches(len(x_train), batch, rng):
            if max_steps_per_epoch is not None and steps >= max_steps_per_epoch:
                break
            out = step(masked[idx], x_train[idx])
            opt.step()
            losses.append(out.loss)
            steps += 1
        epoch_times.append(time.perf_counter() - start)
    return {"epochs": epochs, "steps_per_epoch": steps, "time_per_epoch_s": float(np.median(epoch_times)),
            "time_per_step_ms": 1e3 * float(np.median(epoch_times)) / max(1, steps),
            "loss_first": losses[0], "loss_last": losses[-1]}


def ours_dncnn_steps(steps: int = 20, batch: int = 16, size: int = 40, channels: int = 32, depth: int = 5,
                     sigma: float = 25 / 255, lr: float = 1e-3, seed: int = 0, warmup: int = 3
                     ) -> dict[str, Any]:
    """DnCNN-lite trained with our stack on the PyTorch peer's patches and noise."""
    train = {k: v for k, v in D.load_gray_images().items() if k not in D.DENOISE_TEST_IMAGES}
    total = warmup + steps
    patches = D.random_patches(train, size, count=total * batch, rng=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, sigma, patches.shape).astype(np.float32)
    noisy = patches + noise
    model = nn.DnCNN(depth, channels, 1, dtype=np.float32, rng=seed)
    weights = peer.dncnn_initial_weights(channels, depth, seed)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        conv.weight.data[...] = weights[f"w{i}"]
        if conv.bias is not None:
            conv.bias.data[...] = 0.0  # the peer's first bias is 0 and its last conv has none
    step = nn.compile_step(model, nn.MSELoss(reduction="mean"), engine="tape", anomaly=False)
    opt = nn.Adam(model.parameters(), lr=lr)
    times, losses = [], []
    for s in range(total):
        x, y = noisy[s * batch:(s + 1) * batch], noise[s * batch:(s + 1) * batch]
        start = time.perf_counter()
        out = step(x, y)
        opt.step()
        if s >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(out.loss)
    return {"steps": steps, "warmup": warmup, "batch": batch, "size": size,
            "time_per_step_ms": 1e3 * float(np.median(times)), "loss_first": losses[0],
            "loss_last": losses[-1]}


#: seconds of pause between our calls and PyTorch's in :func:`optimiser_shares`: OpenBLAS
#: threads spin for up to about 0.1 s after their last call, OpenMP's for less
SETTLE = 0.2
#: seconds of untimed calls before each timed group in :func:`optimiser_shares`, and the
#: calls timed together
WARM_S = 0.03
TIMED = 5


_STREAM: Any = None


def adam_bytes_floor(params: list[np.ndarray]) -> Callable[[], None]:
    """A function that moves the bytes an Adam step must move for ``params`` and does no
    arithmetic: per element it reads the weight, its gradient and both moments and writes
    the weight and the moments (m ← g, v ← m, θ ← max(θ, v), on copies, so that the model
    is not touched and the numbers stay bounded). Its time is the floor of any Adam step
    that is a pass of its own over memory, on this machine."""
    global _STREAM
    if _STREAM is None:
        import numba

        @numba.njit(nogil=True)
        def stream(p, g, m, v):  # pragma: no cover - numba
            for i in range(p.size):
                gi, mi, vi, pi = g[i], m[i], v[i], p[i]
                m[i] = gi
                v[i] = mi
                p[i] = pi if pi > vi else vi
        _STREAM = stream
    rng = np.random.default_rng(0)
    arrays = [[rng.standard_normal(a.size).astype(a.dtype) for _ in range(4)] for a in params]

    def floor() -> None:
        for p, g, m, v in arrays:
            _STREAM(p, g, m, v)
    floor.arrays = arrays  # type: ignore[attr-defined]  # the copies it moves (for its test)
    return floor


def optimiser_shares(threads: int, rounds: int = 15) -> dict[str, Any]:
    """The optimiser's share of a training step, ours and PyTorch's side by side: the gradient
    (``step(x, y)``; PyTorch: zero_grad, forward, ``loss.backward()``) and ``opt.step()`` (Adam,
    and SGD with momentum 0.9, whose step size is too small to move the weights) timed
    separately in interleaved rounds (medians; see :data:`SETTLE` and :data:`WARM_S`: the
    times of back-to-back training steps), for the inpainting MLP
    784-256-784 (batch 64) and DnCNN-lite 5×32 with batch norm (16 × 40²), float32. Next to
    them, the floor of a separate Adam pass over the same parameters
    (:func:`adam_bytes_floor`): the time of moving its bytes, without its arithmetic."""
    rng = np.random.default_rng(0)
    cases = {
        "mlp": (nn.InpaintingMLP(784, 256, dtype=np.float32, rng=0), nn.MSELoss(),
                rng.random((64, 784), dtype=np.float32)),
        "dncnn": (nn.DnCNN(5, 32, 1, dtype=np.float32, rng=0), nn.MSELoss(reduction="mean"),
                  rng.random((16, 1, 40, 40), dtype=np.float32)),
    }
    torch = peer._torch(threads) if peer.available() else None
    out: dict[str, Any] = {}
    for name, (model, loss, x) in cases.items():
        step = nn.compile_step(model, loss, engine="tape", anomaly=False)
        opt = nn.Adam(model.parameters(), lr=1e-6)
        sgd = nn.SGD(model.parameters(), lr=1e-12, momentum=0.9)
        fns = {"ours_grad": lambda: step(x, x), "ours_opt": opt.step, "ours_sgd": sgd.step,
               "ours_floor": adam_bytes_floor([p.data for p in model.parameters()])}
        if torch is not None:
            tm = peer._dncnn_model(torch, 32, 5, peer.dncnn_initial_weights(32, 5, 0)).float() \
                if name == "dncnn" else torch.nn.Sequential(
                    torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 784))
            topt = torch.optim.Adam(tm.parameters(), lr=1e-6)
            tsgd = torch.optim.SGD(tm.parameters(), lr=1e-12, momentum=0.9)
            tx = torch.from_numpy(x)

            def torch_grad(tm=tm, topt=topt, tx=tx):
                topt.zero_grad()
                (0.5 * ((tm(tx) - tx) ** 2).mean()).backward()
            fns.update(torch_grad=torch_grad, torch_opt=topt.step, torch_sgd=tsgd.step)
        for fn in fns.values():  # compile, warm up, create the optimiser state
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        last = None
        rng = np.random.default_rng(0)
        for _ in range(rounds):
            # the order shuffled each round; a pause when the framework changes, so that the
            # other one's threads (OpenMP, OpenBLAS) have stopped spinning; then untimed
            # calls for WARM_S (after the pause, one untimed call left our MLP gradient at
            # 1.4 ms against 0.9 ms after ten), and TIMED calls timed together
            for k in [names[i] for i in rng.permutation(len(names))]:
                if k.split("_")[0] != last:
                    time.sleep(SETTLE)
                    last = k.split("_")[0]
                start = time.perf_counter()
                while True:
                    fns[k]()
                    if time.perf_counter() - start >= WARM_S:
                        break
                start = time.perf_counter()
                for _ in range(TIMED):
                    fns[k]()
                times[k].append((time.perf_counter() - start) / TIMED)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        row = {"ours_grad_ms": med["ours_grad"], "ours_opt_ms": med["ours_opt"],
               "ours_share": med["ours_opt"] / med["ours_grad"],
               "ours_sgd_ms": med["ours_sgd"], "ours_sgd_share": med["ours_sgd"] / med["ours_grad"],
               "floor_ms": med["ours_floor"], "floor_share": med["ours_floor"] / med["ours_grad"]}
        if torch is not None:
            row.update(torch_grad_ms=med["torch_grad"], torch_opt_ms=med["torch_opt"],
                       torch_share=med["torch_opt"] / med["torch_grad"],
                       torch_sgd_ms=med["torch_sgd"],
                       torch_sgd_share=med["torch_sgd"] / med["torch_grad"])
        out[name] = row
    return out


def _row(name: str, unit: str, ours: float, theirs: float | None) -> str:
    if theirs is None:
        return f"| {name} | {ours:.3g} {unit} | peer not installed | – |"
    return f"| {name} | {ours:.3g} {unit} | {theirs:.3g} {unit} | {ours / theirs:.2f}× |"


def main(argv: list[str] | None = None) -> int:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 MLP steps, 5 DnCNN steps")
    ap.add_argument("--epochs", type=int, default=3, help="MLP epochs (the median is reported)")
    ap.add_argument("--dncnn-steps", type=int, default=20, help="timed DnCNN steps")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="threads for BLAS, Numba and PyTorch (default 2; 1 on a busy machine)")
    ap.add_argument("--json", default=None,
                    help="output JSON path (default: a new benchmarks/results/bench_train-<time>.json "
                         "with the shared table's CSV beside it; committed results are never overwritten)")
    ap.add_argument("--share-only", action="store_true",
                    help="only the optimiser's share of a step (gradient and Adam timed apart)")
    args = ap.parse_args(argv)
    mlp_kw = {"epochs": 1, "max_steps_per_epoch": 20} if args.quick else {"epochs": args.epochs}
    dn_kw = {"steps": 5, "warmup": 1} if args.quick else {"steps": args.dncnn_steps}
    results: dict[str, Any] = {"threads": args.threads, "load_average": list(os.getloadavg()),
                               "ours": {}, "torch": {}}
    results["optimiser_share"] = optimiser_shares(args.threads, rounds=5 if args.quick else 15)
    if args.share_only:
        _print_shares(results)
        return 0
    results["ours"]["mlp"] = ours_mlp_inpainting(**mlp_kw)
    results["ours"]["dncnn"] = ours_dncnn_steps(**dn_kw)
    if peer.available():
        results["torch"]["mlp"] = peer.torch_mlp_inpainting(**mlp_kw, threads=args.threads)
        results["torch"]["dncnn"] = peer.torch_dncnn_steps(**dn_kw, threads=args.threads)
        results["torch_version"] = results["torch"]["mlp"]["framework"]
    t = results["torch"]
    steps = results["ours"]["mlp"]["steps_per_epoch"]
    print(f"training speed, float32, {args.threads} thread(s); load average "
          f"{', '.join(f'{v:.1f}' for v in results['load_average'])} (ratio = ours / PyTorch)")
    print("| case | ours (tape) | PyTorch CPU | ratio |")
    print("|---|---|---|---|")
    print(_row(f"inpainting MLP 784-256-784, epoch of {steps} steps (batch 64)", "s",
               results["ours"]["mlp"]["time_per_epoch_s"], t.get("mlp", {}).get("time_per_epoch_s")))
    print(_row("DnCNN-lite 5×32, step (batch 16 × 40²)", "ms",
               results["ours"]["dncnn"]["time_per_step_ms"], t.get("dncnn", {}).get("time_per_step_ms")))
    if not t:
        print(peer.NOT_INSTALLED)
    _print_shares(results)
    table = _shared_table(results)
    path, csv_path = table.save(args.json)
    print(f"\nwrote {path} and {csv_path}")
    return 0


def _shared_table(results: dict[str, Any]) -> Any:
    """The run in the benchmarks' one table format (a peer that did not run is a row too)."""
    from _table import Table
    table = Table("bench_train", meta={k: v for k, v in results.items() if k != "ours"} |
                  {"ours": results["ours"]})
    t = results["torch"]
    for workload, key, metric, unit in (("inpainting MLP epoch", "mlp", "time_per_epoch_s", "s"),
                                        ("DnCNN-lite step", "dncnn", "time_per_step_ms", "ms")):
        table.add(workload, "ours", metric, results["ours"][key][metric], unit)
        if key in t:
            table.add(workload, "torch", metric, t[key][metric], unit)
        else:
            table.not_installed(workload, "torch", metric, unit)
    for name, r in results["optimiser_share"].items():
        table.add(f"{name} Adam share", "ours", "optimiser / gradient", r["ours_share"], "ratio")
        if "torch_share" in r:
            table.add(f"{name} Adam share", "torch", "optimiser / gradient", r["torch_share"], "ratio")
        table.add(f"{name} SGD share", "ours", "optimiser / gradient", r["ours_sgd_share"], "ratio")
        table.add(f"{name} Adam memory floor share", "ours", "bytes moved / gradient",
                  r["floor_share"], "ratio")
        if "torch_sgd_share" in r:
            table.add(f"{name} SGD share", "torch", "optimiser / gradient", r["torch_sgd_share"],
                      "ratio")
    table.fill_ratios()
    return table


def _print_shares(results: dict[str, Any]) -> None:
    print("\noptimiser share of a step (Adam step / gradient, float32; target ≤ 5 %), load "
          f"average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; the memory floor is the "
          "time of moving an Adam step's bytes\n(read θ, g, m, v; write θ, m, v) without its "
          "arithmetic, over the gradient:")
    print("| case | ours: gradient | Adam | share | memory floor | share | SGD+momentum | share "
          "| PyTorch: gradient | Adam | share | SGD+momentum | share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["optimiser_share"].items():
        theirs = (f"{r['torch_grad_ms']:.3g} ms | {r['torch_opt_ms']:.3g} ms | "
                  f"{100 * r['torch_share']:.1f} % | {r['torch_sgd_ms']:.3g} ms | "
                  f"{100 * r['torch_sgd_share']:.1f} %") if "torch_share" in r else "– | – | – | – | –"
        print(f"| {name} | {r['ours_grad_ms']:.3g} ms | {r['ours_opt_ms']:.3g} ms | "
              f"{100 * r['ours_share']:.1f} % | {r['floor_ms']:.3g} ms | "
              f"{100 * r['floor_share']:.1f} % | {r['ours_sgd_ms']:.3g} ms | "
              f"{100 * r['ours_sgd_share']:.1f} % | {theirs} |")


if __name__ == "__main__":
    raise SystemExit(main())
