"""``autodiff-lab compare``: the three engines side by side on the built-in examples."""

from __future__ import annotations

import argparse

from autodiff_lab.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``compare`` subcommand."""
    parser.add_argument("examples", nargs="*", metavar="EXAMPLE",
                        help="which examples to run (default: all of sigmoid_neuron, "
                             "scalar_chain, inpainting_mlp, dncnn_denoiser)")
    parser.add_argument("-o", "--out", default="autodiff_lab_report",
                        help="folder for report.md, report.json and error_vs_time.png "
                             "(default: %(default)s)")
    parser.add_argument("--engines", default="tape,symbolic,numeric",
                        help="comma-separated engines to run (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=0.3,
                        help="seconds spent repeating each warm timing (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip the error-vs-time figure")


def run(args: argparse.Namespace) -> int:
    """Run the report with the chosen examples and engines."""
    from autodiff_lab.compare.harness import DEFAULT_CONFIGS
    from autodiff_lab.compare.report import default_cases, run_report

    cases = default_cases()
    if args.examples:
        known = {c.example.name: c for c in cases}
        unknown = [e for e in args.examples if e not in known]
        if unknown:
            raise InputError(f"unknown example(s) {unknown}; choose from {', '.join(known)}")
        cases = [known[e] for e in args.examples]
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}
    bad = engines - {c.engine for c in DEFAULT_CONFIGS}
    if bad:
        raise InputError(f"unknown engine(s) {sorted(bad)}; choose from tape, symbolic, numeric")
    configs = [c for c in DEFAULT_CONFIGS if c.engine in engines]
    run_report(args.out, cases, configs, budget_s=args.budget, plot=not args.no_plot)
    return 0
