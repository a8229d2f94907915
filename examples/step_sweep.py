"""Finite differences against the step size: the V-shaped error plot, measured.

    python examples/step_sweep.py                  # tables, and out/step_sweep/step_sweep.png
    python examples/step_sweep.py --out docs/img   # regenerate the figure of docs/numeric.md

Two functions: the Squire–Trapp test function f(x) = eˣ / √(sin³x + cos³x) at x = 1.5,
whose derivative is known exactly (4.053427893898620658), and the sigmoid neuron of the
textbooks, measured against the tape engine. For each method (forward, backward, central,
five-point, Richardson, complex step) and each h from 1e-1 to 1e-16 the script prints the
relative error next to the method's own error estimate, then the errors at the default
steps, and draws both sweeps side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import autodiff_lab as adl
from autodiff_lab.compare.step_sweep import plot_step_sweep, step_sweep
from autodiff_lab.examples import sigmoid_neuron

SQUIRE_TRAPP_X = 1.5
SQUIRE_TRAPP_DERIVATIVE = 4.053427893898620658


def squire_trapp() -> adl.Graph:
    """f(x) = eˣ / √(sin³x + cos³x): smooth, but with large higher derivatives near 1.5."""
    return adl.trace(lambda x: adl.exp(x) / adl.sqrt(adl.sin(x) ** 3 + adl.cos(x) ** 3), x=())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/step_sweep"),
                        help="folder for step_sweep.png (default out/step_sweep)")
    args = parser.parse_args(argv)

    st = step_sweep(squire_trapp(), {"x": SQUIRE_TRAPP_X}, exact=SQUIRE_TRAPP_DERIVATIVE,
                    name="Squire–Trapp eˣ/√(sin³x+cos³x), x = 1.5")
    neuron = sigmoid_neuron()
    sn = step_sweep(neuron.graph, neuron.values, name="sigmoid neuron, all 5 inputs")
    for result in (st, sn):
        print(result.table(), end="\n\n")
        print(result.summary(), end="\n\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    plot_step_sweep(st, ax=axes[0], title="Squire–Trapp at x = 1.5 (exact reference)")
    plot_step_sweep(sn, ax=axes[1], title="sigmoid neuron (tape reference)")
    axes[1].set_ylabel("")
    fig.suptitle("Finite differences: relative error against the step h", fontsize=12)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "step_sweep.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
