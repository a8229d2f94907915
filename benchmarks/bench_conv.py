"""Convolution kernels alone, next to PyTorch: the 3×3 layers of DnCNN-lite.

    python benchmarks/bench_conv.py              # 2 threads
    python benchmarks/bench_conv.py --threads 1
    python benchmarks/bench_conv.py --step       # also the whole DnCNN-lite gradient
    python benchmarks/bench_conv.py --cpu        # CPU time instead of wall time

For each layer shape, float32: the forward and the backward (input and weight gradients)
with the im2col kernels, with Winograd F(2×2, 3×3) (where it applies), with F(4×4, 3×3)
("wino4"), with Winograd F(2×2) and a
ReLU after the convolution fused into its transforms ("+relu": the forward clips in its
output transform, the backward applies ReLU's rule as it reads g) and with PyTorch
(``torch.nn.functional.conv2d`` and ``torch.autograd.grad``), medians of interleaved rounds.
GFLOP/s count the direct convolution's 2·N·F·C·9·Ho·Wo per product, whatever the
algorithm. ``--step`` times the tape program of ``examples.dncnn`` (with and without batch
norm; with Winograd, with F(4×4), without the conv+relu fusion, and with im2col only) and the same
network in PyTorch, and prints
the gradient's largest error against float64, relative to each parameter's largest entry.
"""

from __future__ import annotations

import argparse
import os
import sys


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--step", action="store_true", help="also the whole DnCNN-lite step")
    ap.add_argument("--coretype", default=None,
                    help="OPENBLAS_CORETYPE (default: SkylakeX on a CPU with AVX-512, else unset)")
    ap.add_argument("--cpu", action="store_true",
                    help="CPU time of the process (all its threads) instead of wall time: on a "
                         "busy machine, the work done without the waits for a core")
    return ap.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    if ARGS.coretype is None:
        from _cpu import default_coretype  # benchmarks/ is on sys.path when run

        ARGS.coretype = default_coretype()
    if ARGS.coretype:
        os.environ["OPENBLAS_CORETYPE"] = ARGS.coretype
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    sys.path.insert(0, os.getcwd())

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from autodiff_lab.kernels import conv_fast, dispatch, winograd  # noqa: E402


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call, every function once per round (after one untimed call)."""
    clock = time.process_time if ARGS is not None and ARGS.cpu else time.perf_counter
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.02)  # PyTorch's OpenMP threads spin for a while after a call
            fn()
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
    return {k: float(np.median(v)) for k, v in samples.items()}


def layer_rows(torch, rounds: int) -> None:
    rng = np.random.default_rng(0)
    shapes = [(16, 1, 40, 40, 32), (16, 32, 40, 40, 32), (16, 32, 40, 40, 1)]
    print(f"{'layer':>18} {'pass':>4} {'im2col':>9} {'winograd':>9} {'wino4':>9} {'+relu':>9} "
          f"{'torch':>9} {'GF/s im2col':>11} {'GF/s wino':>9} {'GF/s wino4':>10} "
          f"{'GF/s +relu':>10} {'GF/s torch':>10}")
    for n, c, h, w, f in shapes:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        g = rng.standard_normal((n, f, h, w)).astype(np.float32)
        flop = 2.0 * n * f * c * 9 * h * w
        fns = {"im2col fwd": lambda: conv_fast.conv2d_forward(x, wt, (1, 1), (1, 1), (1, 1)),
               "im2col bwd": lambda: conv_fast.conv2d_backward(g, x, wt, (1, 1), (1, 1),
                                                               (1, 1), 1, True, True)}
        if c > 1 and f > 1:
            fns["wino fwd"] = lambda: winograd.conv2d_forward(x, wt, (1, 1))
            fns["wino bwd"] = lambda: winograd.conv2d_backward(g, x, wt, (1, 1), True, True)
            fns["wino4 fwd"] = lambda: winograd.conv2d_forward(x, wt, (1, 1), tile=4)
            fns["wino4 bwd"] = lambda: winograd.conv2d_backward(g, x, wt, (1, 1), True, True,
                                                                tile=4)
            r = winograd.conv2d_forward(x, wt, (1, 1), None, True)
            fns["relu fwd"] = lambda: winograd.conv2d_forward(x, wt, (1, 1), None, True)
            fns["relu bwd"] = lambda: winograd.conv2d_backward(g, x, wt, (1, 1), True, True, r)
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_(True)
            tw = torch.from_numpy(wt).requires_grad_(True)
            tg = torch.from_numpy(g)
            fns["torch fwd"] = lambda: torch.nn.functional.conv2d(tx.detach(), tw.detach(),
                                                                  padding=1)

            def torch_bwd() -> None:
                y = torch.nn.functional.conv2d(tx, tw, padding=1)
                torch.autograd.grad(y, (tx, tw), tg)
            fns["torch bwd"] = torch_bwd
        t = interleaved(fns, rounds)
        if "torch bwd" in t:  # torch's backward timed with its forward: take it out
            t["torch bwd"] = max(t["torch bwd"] - t["torch fwd"], 1e-9)
        for pas, mult in (("fwd", 1), ("bwd", 2)):
            cell = [t.get(f"{k} {pas}") for k in ("im2col", "wino", "wino4", "relu", "torch")]
            ms = " ".join(f"{v * 1e3:9.2f}" if v else f"{'—':>9}" for v in cell)
            gf = " ".join(f"{mult * flop / v / 1e9:10.0f}" if v else f"{'—':>10}" for v in cell)
            print(f"{f'{c}->{f} {n}x{h}x{w}':>18} {pas:>4} {ms} {gf}")


def step_rows(torch, rounds: int) -> None:
    import autodiff_lab as adl
    from autodiff_lab import examples as E

    for bn in (True, False):
        ex = E.dncnn(batch_norm=bn, dtype="float32")
        ex64 = E.dncnn(batch_norm=bn, dtype="float64")
        wrt = list(ex.graph.parameters)
        prog = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=wrt)
        prog64 = adl.engine("tape", anomaly=False).compile(ex64.graph, wrt=wrt)
        unfused = _without_conv_relu_fusion(wrt, ex.graph)
        fns = {"ours": lambda p=prog, v=ex.values: p(v),
               "F4": lambda p=prog, v=ex.values: _with_tile(p, v, 4),
               "unfused": lambda p=unfused, v=ex.values: p(v),
               "im2col": lambda p=prog, v=ex.values: _without_winograd(p, v)}
        if torch is not None:
            fns["torch"] = _torch_step(torch, ex.values, bn)
        for _ in range(2):
            for fn in fns.values():
                fn()
        t = interleaved(fns, rounds)
        ref = prog64(ex64.values).grads
        got = prog(ex.values).grads
        err = max(float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in wrt)
        line = (f"dncnn float32 bn={bn!s:5}: ours {t['ours'] * 1e3:6.1f} ms "
                f"({4.32 / t['ours']:4.0f} GF/s), gradient error {err:.1e} | F(4x4) "
                f"{t['F4'] * 1e3:6.1f} ms | conv+relu unfused "
                f"{t['unfused'] * 1e3:6.1f} ms | im2col only {t['im2col'] * 1e3:6.1f} ms")
        if "torch" in t:
            tg = fns["torch"].grads()
            terr = max(float(np.abs(tg[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in wrt)
            line += (f" | torch {t['torch'] * 1e3:6.1f} ms, error {terr:.1e} | "
                     f"ours/torch {t['ours'] / t['torch']:.2f}")
        print(line)


def _without_conv_relu_fusion(wrt: list[str], graph) -> object:
    """The tape program compiled without the conv2d+relu fusion (as before it existed)."""
    import autodiff_lab as adl
    from autodiff_lab.graph import optable

    pair = optable.FUSIONS.pop(("conv2d", "relu"))
    try:
        return adl.engine("tape", anomaly=False).compile(graph, wrt=wrt)
    finally:
        optable.FUSIONS[("conv2d", "relu")] = pair


def _with_tile(program, values: dict[str, np.ndarray], tile: int) -> object:
    """The program with Winograd F(tile×tile, 3×3) (dispatch.WINOGRAD_TILE)."""
    saved = dispatch.WINOGRAD_TILE
    dispatch.WINOGRAD_TILE = tile
    try:
        return program(values)
    finally:
        dispatch.WINOGRAD_TILE = saved


def _without_winograd(program, values: dict[str, np.ndarray]) -> object:
    """The program with every convolution on im2col (the kernels before Winograd)."""
    dispatch.WINOGRAD = False
    try:
        return program(values)
    finally:
        dispatch.WINOGRAD = True


def _torch_step(torch, values: dict[str, np.ndarray], bn: bool) -> Callable[[], object]:
    F = torch.nn.functional
    p = {k: torch.from_numpy(np.array(v)).requires_grad_(k not in ("noisy", "clean"))
         for k, v in values.items()}
    names = [k for k in values if k not in ("noisy", "clean")]
    depth = sum(1 for k in values if k.startswith("w"))
    last: dict[str, np.ndarray] = {}

    def step() -> object:
        h = F.relu(F.conv2d(p["noisy"], p["w0"], p["b0"], padding=1))
        for i in range(1, depth - 1):
            h = F.conv2d(h, p[f"w{i}"], padding=1)
            if bn:
                h = F.batch_norm(h, None, None, p[f"gamma{i}"], p[f"beta{i}"], training=True)
            h = F.relu(h)
        noise = F.conv2d(h, p[f"w{depth - 1}"], padding=1)
        loss = 0.5 * F.mse_loss(p["noisy"] - noise, p["clean"])  # ours is ½ mean(·)²
        grads = torch.autograd.grad(loss, [p[k] for k in names])
        last.update({k: gr.numpy() for k, gr in zip(names, grads)})
        return loss

    step.grads = lambda: (step(), last)[1]  # type: ignore[attr-defined]
    return step


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    try:
        import torch
        torch.set_num_threads(ARGS.threads)
    except ImportError:
        torch = None
    print(f"threads {ARGS.threads}, {'CPU' if ARGS.cpu else 'wall'} time, load "
          f"{os.getloadavg()[0]:.2f}, winograd dispatch "
          f"{'on' if dispatch.WINOGRAD else 'off'}")
    layer_rows(torch, ARGS.rounds)
    if ARGS.step:
        step_rows(torch, ARGS.rounds)


if __name__ == "__main__":
    main()
