"""``autodiff-lab compare``: every engine on the built-in cases (or a saved graph), as an
HTML report with its figures and tables.

    autodiff-lab compare                      # all cases, full run (≤ 20 min on 2 cores)
    autodiff-lab compare neuron --quick       # one case, the quick run
    autodiff-lab compare dip --quick          # the Deep Image Prior: a 64×64 crop, seconds
    autodiff-lab compare inpainting --engines tape,matrix,central --out report
    autodiff-lab compare my_graph.json --values v.npz
"""

from __future__ import annotations

import argparse
import math
import sys

from autodiff_lab.errors import InputError


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``compare`` subcommand."""
    from autodiff_lab.cli import add_values_argument, example_help
    from autodiff_lab.compare.harness import engine_choices
    from autodiff_lab.compare.reference import KINDS
    from autodiff_lab.compare.report import BUDGET_FULL_S, BUDGET_QUICK_S, DEFAULT_OUT

    parser.epilog = ("Writes OUT/report.html (with every figure as PNG and SVG, every table as "
                     "CSV and JSON, in one folder per case). An existing OUT is kept: the run "
                     "goes to a new timestamped folder beside it, unless --force.")
    parser.add_argument("examples", nargs="*", metavar="EXAMPLE",
                        help=f"cases to run: {example_help()}, dip (the Deep Image Prior), or "
                             "all (the default, dip included); or the "
                             "path of a graph saved as JSON (Graph.save)")
    add_values_argument(parser)
    parser.add_argument("--engines", default=None, metavar="LIST",
                        help=f"comma-separated engines (default: all). {engine_choices()}")
    parser.add_argument("--quick", action="store_true",
                        help="the quick run (about 3 minutes for all cases): smaller scaling "
                             f"families, shorter sweeps and timings, a budget of "
                             f"{BUDGET_QUICK_S:g} s per finite-difference gradient")
    parser.add_argument("-o", "--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder for report.html and its files (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="write into DIR even if it exists (files of an earlier run are "
                             "replaced)")
    parser.add_argument("--budget", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="finite differences projected to take longer per gradient are "
                             f"refused and measured on a sample (default {BUDGET_FULL_S:g}, "
                             f"{BUDGET_QUICK_S:g} with --quick)")
    parser.add_argument("--reference", choices=KINDS, default="auto",
                        help="what accuracy is measured against: auto (50-digit mpmath where "
                             "the expressions are small, else the matrix-mode program in long "
                             "double, else a float64 consensus), or one of them")
    parser.add_argument("--threads", type=_threads, default=1, metavar="N",
                        help="BLAS threads while measuring (default 1: steady timings on a "
                             "shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cases(args: argparse.Namespace) -> list:
    from pathlib import Path

    from autodiff_lab.compare.cases import CASES
    from autodiff_lab.compare.report import graph_case
    from autodiff_lab.examples import canonical_name

    names = args.examples or ["all"]
    specs, seen = [], set()
    for name in names:
        if name.strip().lower() == "all":
            picked = list(CASES)
        elif name.strip().lower() in CASES:
            picked = [name.strip().lower()]
        elif Path(name).is_file():
            specs.append(graph_case(name, args.values))
            continue
        else:
            try:
                picked = [canonical_name(name)]
            except InputError:
                from autodiff_lab.cli import example_help
                raise InputError(f"{name!r} is neither an example ({example_help()}, or all) "
                                 "nor a graph file") from None
        for key in picked:
            if key not in seen:
                seen.add(key)
                specs.append(CASES[key])
    if args.values and not any(Path(n).is_file() for n in names):
        raise InputError("--values goes with a graph file (compare my_graph.json --values v.npz)")
    return specs


def run(args: argparse.Namespace) -> int:
    """Run the report; 130 after Ctrl-C (the finished sections are written)."""
    from autodiff_lab.compare.harness import parse_engines
    from autodiff_lab.compare.report import run_report

    if args.engines is not None:
        parse_engines(args.engines)  # bad names: one line before anything runs
    try:
        specs = _cases(args)
        result = run_report(specs, args.out, engines=args.engines, quick=args.quick,
                            budget_s=args.budget, force=args.force, reference=args.reference,
                            threads=args.threads, progress_bar=not args.no_progress)
    except KeyboardInterrupt:
        print("\nautodiff-lab compare: interrupted", file=sys.stderr)
        return 130
    figures = sum(len(s.figures) for c in result.cases for s in c.sections)
    if result.interrupted:
        print(f"\ninterrupted after {result.seconds:.0f} s: the finished sections are in "
              f"{result.page}", file=sys.stderr)
        return 130
    print(f"\nwrote {result.page} ({len(result.cases)} case(s), {figures} figures, PNG + SVG; "
          f"tables as CSV and JSON) in {result.seconds:.0f} s", file=sys.stderr)
    return 0
