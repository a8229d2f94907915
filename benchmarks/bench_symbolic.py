"""Symbolic engine benchmark: the expression swell of expanded mode, and matrix mode at scale.

1. Matrix mode on the inpainting MLP 784-256-784, batch 64: compile time, gradient time
   against the tape engine's, agreement; and on a small DnCNN.
2. Swell table, expanded mode, on the 2-layer sigmoid MLP L = ½‖σ(W2 σ(W1 x)) − y‖² with
   D inputs = hidden = outputs: the guard's estimate, count_ops of the gradient before and
   after cse, expand/diff/cse/lambdify times, evaluation time, agreement with the tape.
   D = 16 takes minutes (SymPy's diff alone is ~45 s); use --sizes 2 4 8 for a quick run.
3. The guard refusing D = 32 (timed).

    python benchmarks/bench_symbolic.py [--sizes 2 4 8 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

import autodiff_lab as adl
from autodiff_lab import examples
from autodiff_lab.engines.symbolic_expanded import (
    ExpandedProgram,
    estimate_expansion,
    sigmoid_mlp_example,
)
from autodiff_lab.engines.symbolic_matrix import MatrixProgram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import OURS, Table  # noqa: E402, I001


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def paired_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so background load hits both alike."""
    for _ in range(2):
        first()
        second()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(a)), float(np.median(b))


def max_relative_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-300)) for k in b)


def peak_rss_mb() -> float:
    scale = 1e6 if sys.platform == "darwin" else 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def swell_row(d: int) -> dict[str, Any]:
    graph, values = sigmoid_mlp_example(d)
    wrt = ["W1", "W2"]
    estimate = estimate_expansion(graph, wrt, "out")
    program = ExpandedProgram(graph, wrt, "out", max_tree_size=None)
    tic = time.perf_counter()
    counts = program.op_counts()
    count_seconds = time.perf_counter() - tic
    replacements, reduced = sp.cse([program.value_expr])
    forward_ops = int(sum(sp.count_ops(rhs) for _, rhs in replacements) + sp.count_ops(reduced[0]))
    result = program(values)
    tape = adl.gradient(graph, values, engine="tape", wrt=wrt)
    matrix = MatrixProgram(graph, wrt, "out")
    eval_seconds = median_seconds(lambda: program(values), repeats=20 if d < 16 else 5)
    return {
        "D": d, "scalars": estimate.scalars, "tree_size": estimate.output_tree_size,
        "estimated_ops": estimate.gradient_ops, "estimated_seconds": estimate.seconds,
        "ops_before_cse": counts["before_cse"], "ops_after_cse": counts["after_cse"],
        "forward_ops_after_cse": forward_ops,
        "matrix_mode_nodes": matrix.n_ops,
        **{f"{k}_s": v for k, v in program.timings.items()},
        "compile_s": program.compile_seconds, "count_ops_s": count_seconds,
        "eval_s": eval_seconds, "rel_err_vs_tape": max_relative_error(result.grads, tape.grads),
        "peak_rss_mb": peak_rss_mb(),
    }


def guard_refusal(d: int = 32) -> dict[str, Any]:
    graph, _ = sigmoid_mlp_example(d)
    message = ""

    def attempt() -> None:
        nonlocal message
        try:
            ExpandedProgram(graph, ["W1", "W2"], "out", max_tree_size=2e6)
        except adl.SymbolicSizeError as exc:
            message = str(exc)

    seconds = median_seconds(attempt, repeats=5, warmup=1)
    return {"D": d, "refused": bool(message), "seconds": seconds, "message": message}


def matrix_vs_tape(example: examples.Example, wrt: list[str], repeats: int) -> dict[str, Any]:
    start = time.perf_counter()
    program = adl.engine("symbolic", mode="matrix", cache=False).compile(example.graph, wrt=wrt)
    compile_seconds = time.perf_counter() - start
    tape = adl.engine("tape").compile(example.graph, wrt=wrt)
    sym_s, tape_s = paired_medians(lambda: program(example.values), lambda: tape(example.values),
                                   repeats)
    return {"example": example.description, "compile_s": compile_seconds,
            "symbolic_eval_s": sym_s, "tape_eval_s": tape_s, "ratio": sym_s / tape_s,
            "rel_err_vs_tape": max_relative_error(program(example.values).grads,
                                                  tape(example.values).grads),
            "generated_lines": program.source.count("\n")}


def main(argv: list[str] | None = None) -> int:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2, 4, 8, 16])
    parser.add_argument("--json", default=None,
                        help="output JSON path (default: a new "
                             "benchmarks/results/bench_symbolic-<time>.json; a CSV beside it)")
    args = parser.parse_args(argv)

    # matrix mode first: its timings should not inherit the memory SymPy leaves behind
    print("Matrix mode against the tape engine (gradient w.r.t. the parameters)")
    mlp = examples.mlp(784, 256, 64, bias=True)
    dn = examples.dncnn(batch=4, size=16, channels=8, depth=4)
    dn_params = [n for n in dn.graph.parameters]
    matrix_rows = [matrix_vs_tape(mlp, ["W1", "b1", "W2", "b2"], repeats=30),
                   matrix_vs_tape(dn, dn_params, repeats=10)]
    for r in matrix_rows:
        print(f"  {r['example']}: compile {r['compile_s'] * 1e3:.1f} ms, gradient "
              f"{r['symbolic_eval_s'] * 1e3:.2f} ms vs tape {r['tape_eval_s'] * 1e3:.2f} ms "
              f"(ratio {r['ratio']:.2f}), max rel. difference {r['rel_err_vs_tape']:.1e}")
    print()

    print("Expression swell, expanded mode: L = ½‖σ(W2 σ(W1 x)) − y‖², D = H = O, "
          "gradient w.r.t. W1 and W2")
    head = (f"{'D':>3} {'scalars':>7} {'est. ops':>9} {'ops':>9} {'ops cse':>8} {'fwd cse':>8} "
            f"{'DAG':>4} {'expand':>7} {'diff':>7} {'cse':>7} {'lambdify':>8} {'eval':>9} "
            f"{'err/tape':>8} {'RSS MB':>7}")
    print(head)
    rows = []
    for d in args.sizes:
        r = swell_row(d)
        rows.append(r)
        print(f"{d:>3} {r['scalars']:>7} {r['estimated_ops']:>9.3g} {r['ops_before_cse']:>9} "
              f"{r['ops_after_cse']:>8} {r['forward_ops_after_cse']:>8} {r['matrix_mode_nodes']:>4} "
              f"{r['expand_s']:>6.2f}s {r['diff_s']:>6.2f}s {r['cse_s']:>6.2f}s "
              f"{r['lambdify_s']:>7.3f}s {r['eval_s'] * 1e3:>7.3f}ms {r['rel_err_vs_tape']:>8.1e} "
              f"{r['peak_rss_mb']:>7.0f}", flush=True)
    print("  ops = sympy.count_ops of all gradient entries; ops cse = after sympy.cse; fwd cse = "
          "the loss alone after cse; DAG = nodes of the matrix-mode derivative")

    refusal = guard_refusal(32)
    print(f"\nGuard, D = 32: refused={refusal['refused']} in {refusal['seconds'] * 1e3:.2f} ms\n  "
          f"{refusal['message']}")

    out = {"machine": {"python": platform.python_version(), "sympy": sp.__version__,
                       "numpy": np.__version__, "platform": platform.platform()},
           "swell": rows, "guard": refusal, "matrix": matrix_rows}
    # the shared table (benchmarks/_table.py); the detailed records stay in its meta
    table = Table("bench_symbolic", meta=out)
    for r, name in zip(matrix_rows, ("inpainting MLP 784-256-784", "DnCNN 4×1×16×16")):
        table.add(name, f"{OURS} (symbolic matrix)", "compile", r["compile_s"] * 1e3, "ms")
        table.add(name, f"{OURS} (symbolic matrix)", "time per gradient",
                  r["symbolic_eval_s"] * 1e3, "ms", f"max rel. difference {r['rel_err_vs_tape']:.1e}")
        table.add(name, f"{OURS} (tape)", "time per gradient", r["tape_eval_s"] * 1e3, "ms")
    for r in rows:
        name = f"sigmoid-mlp-D{r['D']}"
        for metric, key in (("ops before cse", "ops_before_cse"), ("ops after cse", "ops_after_cse")):
            table.add(name, f"{OURS} (symbolic expanded)", metric, r[key], "ops")
        table.add(name, f"{OURS} (symbolic expanded)", "compile", r["compile_s"], "s")
        table.add(name, f"{OURS} (symbolic expanded)", "time per gradient", r["eval_s"] * 1e3, "ms")
    table.add("sigmoid-mlp-D32", f"{OURS} (symbolic expanded)", "guard refusal", refusal["seconds"] * 1e3,
              "ms", "refused" if refusal["refused"] else "NOT refused")
    path, csv_path = table.save(args.json)
    print(f"\nwrote {path} and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
