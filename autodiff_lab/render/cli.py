"""``autodiff-lab render``: draw an example or a saved graph from the shell.

    autodiff-lab render neuron -o neuron.svg               # fused σ node
    autodiff-lab render neuron --primitive -o neuron.png   # mul, add, −x, exp, +1, 1/x
    autodiff-lab render graph.json --values x.npz -o g.svg
    autodiff-lab render inpainting                         # DOT text on standard output

The examples are the same in every subcommand (neuron, chain, inpainting, denoiser,
classifier; older names such as sigmoid and mlp are aliases).
"""

from __future__ import annotations

import argparse
import sys

from autodiff_lab.cli import add_graph_argument, load_graph_argument
from autodiff_lab.errors import InputError
from autodiff_lab.render import MAX_NODES
from autodiff_lab.render.dot import NUMBER_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``autodiff-lab render``."""
    add_graph_argument(parser)
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="picture to write (.svg, .png, .dot ...); without it, or with '-', "
                             "the DOT text goes to standard output")
    parser.add_argument("--format", metavar="FMT",
                        help="picture format when the suffix does not say (svg, png, dot, pdf "
                             "with the system Graphviz)")
    parser.add_argument("--primitive", action="store_true",
                        help="draw composite ops at primitive level (σ as −x, exp, +1, 1/x)")
    parser.add_argument("--no-values", action="store_true", help="do not draw forward values")
    parser.add_argument("--no-grads", action="store_true", help="do not draw gradients")
    parser.add_argument("--numbers", choices=NUMBER_MODES, default="edges",
                        help="where values and gradients go: on the edges like the textbook "
                             "(default) or inside the nodes")
    parser.add_argument("--digits", type=int, default=4, help="significant digits (default 4)")
    parser.add_argument("--title", help="caption under the graph (default: the example's "
                                        "description)")
    parser.add_argument("--no-legend", action="store_true", help="leave out the colour key")
    parser.add_argument("--max-nodes", type=int, default=MAX_NODES, metavar="N",
                        help=f"refuse graphs with more nodes (default {MAX_NODES}; 0 for no "
                             "limit): Graphviz takes minutes on big graphs")


def _has_one_scalar_output(graph) -> bool:
    outputs = list(graph.outputs.values())
    return len(outputs) == 1 and tuple(graph.node(outputs[0])["shape"]) == ()


def run(args: argparse.Namespace) -> int:
    """Draw the graph as asked; report what was written on standard error."""
    from autodiff_lab.render import render
    from autodiff_lab.render.annotate import composite_ops

    if args.digits < 1:
        raise InputError(f"--digits must be at least 1, got {args.digits}")
    if args.max_nodes < 0:
        raise InputError(f"--max-nodes must be at least 0, got {args.max_nodes}")
    max_nodes = args.max_nodes or None
    loaded = load_graph_argument(args)
    graph, values = loaded.graph, loaded.values
    want_grads = not args.no_grads and values is not None
    if want_grads and not _has_one_scalar_output(graph):
        print("note: gradients are drawn only for a graph with one scalar output; drawing "
              "values only", file=sys.stderr)
        want_grads = False
    primitive = args.primitive
    grads: object = want_grads or None
    if args.no_values and want_grads:
        # gradients alone: compute them here (they need the values), then draw without values
        if primitive and composite_ops(graph):
            graph = graph.expand(composite_ops(graph))
        primitive = False
        from autodiff_lab.engines import engine
        grads = engine("tape", keep_all=True).compile(graph)(values).node_grads
    shown_values = None if args.no_values else values
    to_stdout = args.output in (None, "-")
    if to_stdout and args.format not in (None, "dot", "gv"):
        raise InputError(f"--format {args.format} needs -o PATH; only DOT text goes to standard "
                         "output")
    source = render(graph, shown_values, grads, path=None if to_stdout else args.output,
                    format=None if to_stdout else args.format, primitive=primitive,
                    numbers=args.numbers, digits=args.digits, legend=not args.no_legend,
                    title=args.title if args.title is not None else loaded.description,
                    max_nodes=max_nodes)
    if to_stdout:
        sys.stdout.write(source)
    else:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
