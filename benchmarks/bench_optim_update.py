"""Cost of one optimiser update next to one gradient of the inpainting MLP (784-256-784).

    python benchmarks/bench_optim_update.py

Prints, for float64 and float32: the tape gradient of ``examples.mlp()`` (batch 64, with
biases, 402,448 parameters), and one ``step()`` of SGD, SGD with momentum, Adam and AdamW
on parameters of the same shapes, as medians; and ``torch.optim`` on the same shapes
when PyTorch is installed (2 threads). A short measurement, not a benchmark suite.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

import autodiff_lab as adl  # noqa: E402
from autodiff_lab import examples as E  # noqa: E402
from autodiff_lab.nn.optim import SGD, Adam, AdamW  # noqa: E402
from autodiff_lab.nn.parameter import Parameter  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int = 60) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        torch = None
    wrt = ["W1", "b1", "W2", "b2"]
    for dtype in ("float64", "float32"):
        ex = E.mlp(dtype=dtype)
        program = adl.engine("tape").compile(ex.graph, wrt=wrt)
        grad_ms = median_ms(lambda: program(ex.values))
        rng = np.random.default_rng(0)
        params = [Parameter(ex.values[k], name=k) for k in wrt]
        for p in params:
            p.grad = (rng.standard_normal(p.shape) * 1e-3).astype(dtype)
        n = sum(p.size for p in params)
        print(f"{dtype}: gradient {grad_ms:.3f} ms ({n} parameters)")
        makers = {"SGD": lambda ps: SGD(ps, lr=1e-3),
                  "SGD momentum 0.9": lambda ps: SGD(ps, lr=1e-3, momentum=0.9),
                  "Adam": lambda ps: Adam(ps, lr=1e-3),
                  "AdamW": lambda ps: AdamW(ps, lr=1e-3)}
        torch_makers = {"SGD": lambda ps: torch.optim.SGD(ps, lr=1e-3),
                        "SGD momentum 0.9": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
                        "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
                        "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3)}
        for name, make in makers.items():
            ms = median_ms(make(params).step)
            line = f"  {name:17s} {ms:7.3f} ms = {100 * ms / grad_ms:5.1f} % of a gradient"
            if torch is not None:
                tps = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
                for tp, p in zip(tps, params):
                    tp.grad = torch.tensor(p.grad)
                topt = torch_makers[name](tps)
                line += f"   torch.optim {median_ms(topt.step):7.3f} ms"
            print(line)


if __name__ == "__main__":
    main()
