"""The textbook sigmoid neuron: trace it, evaluate it, differentiate it, draw it.

    python examples/sigmoid_neuron.py                  # pictures into out/sigmoid_neuron/
    python examples/sigmoid_neuron.py --out docs/img   # regenerate the README pictures

f = σ(w0·x0 + w1·x1 + w2) at w = [2, −3, −3], x = [−1, −2] gives f = 0.7311; reverse mode
gives every gradient in one backward pass. The script prints the value and gradient of every
primitive node (mul, add, −x, exp, +1, 1/x), then writes the textbook picture at primitive
level (neuron.svg/png) and with one fused σ node (neuron_fused.svg/png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import autodiff_lab as adl
from autodiff_lab.examples import NEURON_W, NEURON_X
from autodiff_lab.render.dot import op_label
from autodiff_lab.render.numbers import format_value

TITLE = "f = σ(w0·x0 + w1·x1 + w2) at w = [2, −3, −3], x = [−1, −2]"


def trace_neuron() -> adl.Graph:
    """The neuron as a graph; w0, w1, w2 are parameters, x0, x1 inputs."""
    def neuron(w0, x0, w1, x1, w2):
        return adl.sigmoid(w0 * x0 + w1 * x1 + w2)
    return adl.trace(neuron, w0=adl.param(()), x0=(), w1=adl.param(()), x1=(), w2=adl.param(()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/sigmoid_neuron"),
                        help="folder for the pictures (default out/sigmoid_neuron)")
    args = parser.parse_args(argv)

    graph = trace_neuron()
    values = {"w0": NEURON_W[0], "x0": NEURON_X[0], "w1": NEURON_W[1], "x1": NEURON_X[1],
              "w2": NEURON_W[2]}
    values = {name: np.asarray(v) for name, v in values.items()}
    print(graph.summary(), end="\n\n")

    result = adl.gradient(graph, values, engine="tape")
    print(f"f = {float(result.value):.4f}")
    for name, grad in result.grads.items():
        print(f"  df/d{name} = {float(grad):+.4f}")

    # the same at primitive level, node by node: what the picture shows on its edges
    primitive = graph.expand("sigmoid")
    kept = adl.engine("tape", keep_all=True).compile(primitive)(values)
    print("\nprimitive graph, forward value and gradient of each node:")
    for v in primitive.order:
        node = primitive.node(v)
        if node["role"] == "constant":
            continue
        label = node.get("name") or op_label(primitive, v)[0]
        grad = kept.node_grads.get(v)
        print(f"  {v:>2}  {label:<4} value {format_value(kept.node_values[v]):>8}"
              f"   gradient {format_value(grad) if grad is not None else '-':>8}")

    args.out.mkdir(parents=True, exist_ok=True)
    for stem, at_primitive in (("neuron", True), ("neuron_fused", False)):
        for suffix in ("svg", "png"):
            path = args.out / f"{stem}.{suffix}"
            adl.render(graph, values, grads=True, primitive=at_primitive, path=path, title=TITLE)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
