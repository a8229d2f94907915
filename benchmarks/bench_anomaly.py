"""What the tape's NaN/Inf check costs: anomaly on against off, workload by workload.

    python benchmarks/bench_anomaly.py                  # every workload of bench_tape.py
    python benchmarks/bench_anomaly.py small mlp        # some groups: small, mlp, dncnn
    python benchmarks/bench_anomaly.py --cpu            # CPU time of this thread, 1 thread

The workloads are bench_tape.py's (the sigmoid neuron; the vector neuron and the MLP
16-8-16 batch 4 on the generated function; the inpainting MLP 784-256-784 batch 64 and
DnCNN-lite in float64 and float32; DnCNN with batch norm in float64), each compiled twice,
``anomaly=False`` and ``anomaly=True``, called until both run their steady-state code (the
compiled check from call 100), then timed in interleaved rounds (the order alternating from
round to round) in this process: the table gives the median time per call of each and the
cost in per cent, from the medians and as the median of each round's ratio. ``--cpu`` times
``time.thread_time`` with one BLAS thread: on a shared machine the time the process waits
for a core then counts for neither side.
"""

from __future__ import annotations

import os
import sys

#: CPU time and one thread (``--cpu``), else wall time and two threads as bench_tape.py
CPU = __name__ == "__main__" and "--cpu" in sys.argv
if __name__ == "__main__":  # before numpy loads its BLAS (bench_tape.py's environment)
    from _cpu import set_default_coretype  # benchmarks/ is on sys.path when run

    set_default_coretype()  # SkylakeX where the CPU has AVX-512, else OpenBLAS's pick
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "NUMBA_NUM_THREADS"):
        os.environ[_var] = "1" if CPU else "2"

import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import autodiff_lab as adl  # noqa: E402
from autodiff_lab import examples as E  # noqa: E402

#: (name, example, wrt, calls per timed round, rounds)
Workload = tuple[str, Any, list[str], int, int]


def workloads(groups: list[str]) -> list[Workload]:
    """bench_tape.py's workloads in the groups asked for."""
    out: list[Workload] = []
    if "small" in groups:
        ex = E.sigmoid_neuron()
        out.append(("sigmoid float64", ex, list(ex.graph.inputs), 1000, 61))
        for name, ex in (("neuron_small float64", E.sigmoid_neuron_vector()),
                         ("mlp_small float64", E.mlp(16, 8, 4))):
            out.append((name, ex, list(ex.graph.inputs), 500, 61))
    if "mlp" in groups:
        for dtype in ("float64", "float32"):
            out.append((f"mlp {dtype}", E.mlp(bias=False, dtype=dtype), ["W1", "W2"], 3, 81))
    if "dncnn" in groups:
        for dtype in ("float64", "float32"):
            ex = E.dncnn(batch_norm=False, dtype=dtype)
            out.append((f"dncnn {dtype}", ex, list(ex.graph.parameters), 1, 11))
        ex = E.dncnn(batch_norm=True, dtype="float64")
        out.append(("dncnn_bn float64", ex, list(ex.graph.parameters), 1, 9))
    return out


def measure(ex: Any, wrt: list[str], inner: int, rounds: int) -> dict[str, float]:
    """Median seconds per call with anomaly off and on, and the median per-round ratio."""
    clock = time.thread_time if CPU else time.perf_counter
    programs = {flag: adl.engine("tape", anomaly=flag).compile(ex.graph, wrt=wrt)
                for flag in (False, True)}
    for _ in range(120 if inner > 10 else 3):  # past the compiled check's first call
        for p in programs.values():
            p(ex.values)
    samples: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for flag in (False, True) if r % 2 == 0 else (True, False):
            p = programs[flag]
            p(ex.values)
            t0 = clock()
            for _ in range(inner):
                p(ex.values)
            samples[flag].append((clock() - t0) / inner)
    ratio = np.array(samples[True]) / np.array(samples[False])
    return {"off": float(np.median(samples[False])), "on": float(np.median(samples[True])),
            "paired": float(np.median(ratio))}


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    groups = [a for a in sys.argv[1:] if not a.startswith("--")] or ["small", "mlp", "dncnn"]
    print(f"{'workload':<22}{'off':>12}{'on':>12}{'cost':>8}{'paired':>8}   "
          f"({'CPU time, 1 thread' if CPU else 'wall time, 2 threads'}; load average "
          f"{os.getloadavg()[0]:.1f})")
    for name, ex, wrt, inner, rounds in workloads(groups):
        m = measure(ex, wrt, inner, rounds)
        scale, unit = (1e6, "µs") if m["off"] < 1e-3 else (1e3, "ms")
        print(f"{name:<22}{m['off'] * scale:>9.3f} {unit}{m['on'] * scale:>9.3f} {unit}"
              f"{100 * (m['on'] / m['off'] - 1):>+7.1f}%{100 * (m['paired'] - 1):>+7.1f}%",
              flush=True)


if __name__ == "__main__":
    main()
