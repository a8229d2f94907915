"""Finite differences next to kinks: measured error against the estimate, with and without
kink detection, for every numeric method.

Cases: relu'(1e-5) (one coordinate, a step away from the kink), relu and 2×2 max pooling
of an image with near-ties and values near 0, and the comparison report's inpainting MLP
and DnCNN denoiser. The reference is the tape engine; errors and estimates are relative, ‖·‖∞ / ‖g_ref‖∞ over
the parameters, as in the comparison report. Prints a markdown table (the one in
docs/numeric.md, section "Kinks").

    python examples/numeric_kinks.py [--out table.md]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import autodiff_lab as adl
from autodiff_lab.engines.numeric import KinkWarning
from autodiff_lab.engines.numeric_steps import METHODS
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.graph import param, trace


def _inpainting_small():
    """The report's inpainting case in miniature (14×14 digits, 16 hidden units)."""
    from autodiff_lab.examples import inpainting
    return inpainting(hidden=16, batch=16, block=6, side=14)


def _denoiser_small():
    """The report's denoiser case in miniature (3 convs of 4 channels on 16×16 patches)."""
    from autodiff_lab.examples import denoiser
    return denoiser(depth=3, channels=4, batch=2, size=16)


def relu_case():
    g = trace(lambda x: F.sum(F.relu(x)), x=param((1,)))
    return "relu'(1e-5)", g, {"x": np.array([1e-5])}


def maxpool_case():
    rng = np.random.default_rng(0)

    def loss(p, w):
        return F.sum(F.conv2d(F.max_pool2d(F.relu(p), 2), w) ** 2) * 0.5

    g = trace(loss, p=param((1, 2, 8, 8)), w=param((1, 2, 1, 1)))
    # values on a grid of 0.05 plus noise of 1e-6: near-ties in the pool windows and
    # values near 0 for the relu, within the steps of every method but forward/backward
    p = np.round(rng.standard_normal((1, 2, 8, 8)) * 4) / 20 + 1e-6 * rng.standard_normal((1, 2, 8, 8))
    return "relu + max pool, near-ties", g, {"p": p, "w": rng.standard_normal((1, 2, 1, 1))}


def report_case(ex):
    return ex.name, ex.graph, ex.values


def measure(name, graph, values, method, kinks):
    wrt = list(graph.parameters)
    ref = adl.gradient(graph, values, engine="tape", wrt=wrt).grads
    scale = max(float(np.max(np.abs(g))) for g in ref.values()) or 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KinkWarning)
        t0 = time.perf_counter()
        r = adl.gradient(graph, values, engine="numeric", method=method, wrt=wrt, kinks=kinks,
                         progress=False)
        seconds = time.perf_counter() - t0
    err = max(float(np.max(np.abs(r.grads[k] - ref[k]))) for k in wrt) / scale
    est = max(float(np.max(r.error_estimate[k])) for k in wrt) / scale
    flagged = sum(r.info["kink_flagged"].values())
    total = sum(int(np.size(values[k])) for k in wrt)
    return {"case": name, "method": method, "kinks": kinks, "error": err, "estimate": est,
            "flagged": flagged, "components": total, "evaluations": r.evaluations,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    cases = [relu_case(), maxpool_case(), report_case(_inpainting_small()),
             report_case(_denoiser_small())]
    lines = ["| case | method | without detection: error | estimate | with detection: error "
             "| estimate | flagged / components | evaluations (extra) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, graph, values in cases:
        for method in METHODS:
            off = measure(name, graph, values, method, False)
            on = measure(name, graph, values, method, True)
            mark = lambda r: " ⚠" if r["estimate"] < r["error"] else ""  # noqa: E731
            lines.append(
                f"| {name} | {method} | {off['error']:.1e}{mark(off)} | {off['estimate']:.1e} | "
                f"{on['error']:.1e}{mark(on)} | {on['estimate']:.1e} | "
                f"{on['flagged']} / {on['components']} | {on['evaluations']} "
                f"(+{on['evaluations'] - off['evaluations']}) |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    print("\n⚠: the estimate is below the measured error.")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
