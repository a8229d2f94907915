"""Where a compiled tape program's time goes: every forward step and backward rule timed.

    python benchmarks/profile_tape.py                      # DnCNN-lite float32, 2 threads
    python benchmarks/profile_tape.py --workload mlp --dtype float64
    python benchmarks/profile_tape.py --threads 1 --calls 50

The program is compiled as ``bench_tape.py`` compiles it (``anomaly=False``, every weight
differentiated), warmed up, and timed plainly (median per call); then each of its forward
steps and backward rules (a fused rule counts once) is wrapped in a timer and the calls are
run again. The table lists the steps by their time per call, with the op and the node,
and the wrapped total next to the plain one (the wrappers cost a few µs per step). Same
environment as ``bench_tape.py``: OPENBLAS_CORETYPE=SkylakeX (on a CPU with AVX-512) and the thread count for
every library, set before numpy is imported.
"""

from __future__ import annotations

import argparse
import os


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("dncnn", "dncnn_bn", "mlp"), default="dncnn")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30, help="timed calls (default 30)")
    ap.add_argument("--top", type=int, default=15, help="steps listed (default 15)")
    return ap.parse_args()


def profile(workload: str, dtype: str, calls: int) -> dict:
    """Plain and wrapped seconds per call, and each step's seconds per call, by label."""
    import time

    import numpy as np

    import autodiff_lab as adl
    from autodiff_lab import examples as E

    if workload == "mlp":
        ex, wrt = E.mlp(bias=False, dtype=dtype), ["W1", "W2"]
    else:
        ex = E.dncnn(batch_norm=workload == "dncnn_bn", dtype=dtype)
        wrt = list(ex.graph.parameters)
    program = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=wrt)
    for _ in range(5):
        program(ex.values)
    plain = []
    for _ in range(calls):
        t0 = time.perf_counter()
        program(ex.values)
        plain.append(time.perf_counter() - t0)
    op_of = {s.node: s.op.name for s in program.steps}  # a fused step: both ops' names
    spent: dict[str, float] = {}

    def timed(fn, label):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
            return out
        return run

    # the tape's step lists (see TapeProgram.forward and _backward_pass)
    program._forward = [(timed(fn, f"forward  {op_of[node]} (node {node})"), args, node,
                         attrs, frees, saves)
                        for fn, args, node, attrs, frees, saves in program._forward]
    backward = []
    for node, args, attrs, rules, drops, fused in program._backward:
        op = op_of[node]
        rules = [(i, timed(rule, f"backward {op} (node {node}), argument {i}"), u)
                 for i, rule, u in rules]
        if fused is not None:
            fused = (timed(fused[0], f"backward {op} (node {node}), fused"),) + tuple(fused[1:])
        backward.append((node, args, attrs, rules, drops, fused))
    program._backward = backward
    for _ in range(3):
        program(ex.values)
    spent.clear()
    t0 = time.perf_counter()
    for _ in range(calls):
        program(ex.values)
    wrapped = (time.perf_counter() - t0) / calls
    return {"plain_s": float(np.median(plain)), "wrapped_s": wrapped,
            "steps_s": {k: v / calls for k, v in spent.items()}}


def main() -> None:
    args = _args()
    from _cpu import set_default_coretype  # benchmarks/ is on sys.path when run

    set_default_coretype()  # SkylakeX where the CPU has AVX-512, else OpenBLAS's pick
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    r = profile(args.workload, args.dtype, args.calls)
    total = sum(r["steps_s"].values())
    print(f"{args.workload} {args.dtype}, {args.threads} thread(s): {1e3 * r['plain_s']:.2f} ms "
          f"per call (median of {args.calls}); wrapped {1e3 * r['wrapped_s']:.2f} ms, of which "
          f"the steps {1e3 * total:.2f} ms")
    for label, s in sorted(r["steps_s"].items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {1e3 * s:8.3f} ms  {100 * s / total:5.1f} %  {label}")


if __name__ == "__main__":
    main()
