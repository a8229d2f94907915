"""The ``autodiff-lab`` command: one subcommand per job, each with its own ``--help``.

Subcommands are listed in :data:`COMMANDS`. Adding one is one line: a module that defines
``add_arguments(parser)`` and ``run(args) -> int`` (see ``autodiff_lab/render/cli.py``), and

    Command.from_module("compare", "compare the three engines on an example",
                        "autodiff_lab.compare.cli"),

in the list below. Helpers every subcommand can share -- the example/graph argument and
loading it -- live here too (:func:`add_graph_argument`, :func:`load_graph_argument`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autodiff_lab.errors import AutodiffError, InputError


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how to declare its arguments and what it does."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]

    @classmethod
    def from_module(cls, name: str, help: str, module: str) -> Command:
        """A subcommand whose ``add_arguments`` and ``run`` are functions of ``module``
        (imported only when the parser is built, so ``import autodiff_lab.cli`` stays light)."""
        def add_arguments(parser: argparse.ArgumentParser) -> None:
            importlib.import_module(module).add_arguments(parser)

        def run(args: argparse.Namespace) -> int | None:
            return importlib.import_module(module).run(args)

        return cls(name, help, add_arguments, run)


# --------------------------------------------------------------------------------------------
# shared: which graph a subcommand works on
# --------------------------------------------------------------------------------------------

@dataclass
class LoadedGraph:
    """A graph named on the command line, with values when they are known."""

    name: str
    graph: object  # autodiff_lab.Graph (kept loose so importing the CLI stays cheap)
    values: dict[str, np.ndarray] | None
    description: str | None


def example_help() -> str:
    """The example names and their aliases, as the help texts list them."""
    from autodiff_lab.examples import BUILTIN, aliases_help
    return f"{', '.join(BUILTIN)} (aliases: {aliases_help()})"


def add_graph_argument(parser: argparse.ArgumentParser) -> None:
    """The positional EXAMPLE argument and ``--values``, as every graph subcommand takes them."""
    parser.add_argument("example", metavar="EXAMPLE",
                        help=f"a built-in example: {example_help()}; or the path of a graph "
                             "saved as JSON (Graph.save)")
    add_values_argument(parser)


def add_values_argument(parser: argparse.ArgumentParser) -> None:
    """``--values FILE.npz``: input values by name for a saved graph."""
    parser.add_argument("--values", metavar="FILE.npz",
                        help="input values by name (numpy .npz); a saved graph has none otherwise")


def load_graph(name: str, values: str | None = None) -> LoadedGraph:
    """A built-in example (by name or alias) or a graph file, with values from ``values``
    (an .npz path) when given."""
    from autodiff_lab.examples import BUILTIN, canonical_name, get_example
    from autodiff_lab.graph.graph import Graph

    path = Path(name)
    if path.is_file():
        loaded = LoadedGraph(path.stem, Graph.load(path), None, None)
    else:
        try:
            key = canonical_name(name)
        except InputError:
            hint = " (no such file)" if path.suffix else ""
            raise InputError(f"{name!r} is neither a built-in example ({example_help()}) nor a "
                             f"graph file{hint}") from None
        example = get_example(key)
        assert key in BUILTIN
        loaded = LoadedGraph(key, example.graph, example.values, example.description)
    if values:
        loaded.values = _read_values(Path(values))
    return loaded


def load_graph_argument(args: argparse.Namespace) -> LoadedGraph:
    """The graph and values named by :func:`add_graph_argument`'s arguments."""
    return load_graph(args.example, args.values)


def _read_values(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"no values file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read values from {str(path)!r} (expected a numpy .npz file "
                         f"with one array per input name): {exc}") from None


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

def _add_summary_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_argument(parser)
    parser.add_argument("--primitive", action="store_true",
                        help="expand composite ops (sigmoid) into primitives first")


def _run_summary(args: argparse.Namespace) -> int:
    loaded = load_graph_argument(args)
    graph = loaded.graph
    if args.primitive:
        from autodiff_lab.render.annotate import composite_ops
        graph = graph.expand(composite_ops(graph)) if composite_ops(graph) else graph
    if loaded.description:
        print(f"{loaded.name}: {loaded.description}")
    print(graph.summary())
    return 0


# --------------------------------------------------------------------------------------------
# the registry and the entry point
# --------------------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command.from_module("compare", "run every engine on the built-in examples: accuracy and "
                        "speed side by side", "autodiff_lab.compare.cli"),
    Command.from_module("render", "draw a graph with its values and gradients (SVG, PNG, DOT)",
                        "autodiff_lab.render.cli"),
    Command("summary", "print a graph's nodes, inputs, outputs and ops",
            _add_summary_arguments, _run_summary),
    Command.from_module("train", "run a case study (neuron, inpainting, denoiser, classifier, dip): "
                        "train, score, write model.npz, metrics.json and figures",
                        "autodiff_lab.studies.cli"),
    Command.from_module("precompile", "compile the Numba kernels into the cache now, so the "
                        "first gradient of a later run does not wait for them",
                        "autodiff_lab.kernels.precompile"),
    Command.from_module("denoise", "denoise your own grey or colour PNG with a trained denoiser",
                        "autodiff_lab.studies.denoise_cli"),
]


#: commands that run long or time their calls: they compile kernels in the foreground
#: (see :mod:`autodiff_lab.kernels.tiered`)
_TIMED_COMMANDS = frozenset({"compare", "train", "denoise"})


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming what is wrong and where the choices are listed."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS`."""
    from autodiff_lab import __version__
    parser = _Parser(
        prog="autodiff-lab",
        description="Compare finite differences, symbolic differentiation and reverse-mode "
                    "autodiff on one shared expression graph, and draw that graph.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run, subparser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``autodiff-lab`` with ``argv`` (default: the process arguments); the exit status."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand's parser, in its own words
            getattr(args, "subparser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command in _TIMED_COMMANDS:
            from autodiff_lab.kernels import tiered
            tiered.foreground()
        status = args.run(args)
    except AutodiffError as exc:
        print(f"autodiff-lab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the usual status, no traceback
        print("\nautodiff-lab: interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
