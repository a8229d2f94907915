"""``autodiff-lab train NAME``: run one of the case studies from the shell.

    autodiff-lab train neuron                    # all three engines, runs/neuron/
    autodiff-lab train inpainting --engine symbolic --epochs 5
    autodiff-lab train denoiser --minutes 10 --out runs/dn10
    autodiff-lab train classifier --quick --quiet
    autodiff-lab train inpainting --resume runs/inpainting   # after Ctrl-C
    autodiff-lab train dip --image camera --steps 1500 --ema 0.99

Every bad value is reported in one line (exit status 2), errors while running in one line
(status 1), Ctrl-C during training finishes the checkpoint being written and exits with 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from autodiff_lab.errors import InputError, TrainingInterrupted
from autodiff_lab.studies import STUDIES
from autodiff_lab.studies.common import ALL_ENGINES, StudyOptions, holds_run, options_from

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` report a bad argument in one line (no usage block), status 2."""
    prog = parser.prog

    def error(message: str) -> NoReturn:
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    parser.error = error  # type: ignore[method-assign]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``autodiff-lab train``."""
    from autodiff_lab.studies import study_module
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "studies:\n" + "\n".join(f"  {name:<11} {study_module(name).SUMMARY}"
                                             for name in STUDIES)
    parser.add_argument("name", metavar="NAME", help=f"the study: {', '.join(STUDIES)}")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="tiny data and few steps: the whole study in seconds (a smoke test)")
    parser.add_argument("--engine", metavar="E",
                        help=f"gradient engine: {', '.join(ALL_ENGINES)} (default tape; the neuron "
                             "trains with all three and saves this one's model; the numeric engine "
                             "is refused before training where one step would be too costly)")
    parser.add_argument("--epochs", metavar="N", help="epochs to train (default: the study's; the "
                                                      "denoiser's epochs are 100 steps)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/NAME); one that "
                        "already holds a run is kept and a new DIR-YYYYmmdd-HHMMSS is used")
    parser.add_argument("--force", action="store_true", help="overwrite the run in --out")
    parser.add_argument("--seed", metavar="S", help="seed of the data, weights and batches (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the interrupted (or time-limited) run in DIR with its settings")
    parser.add_argument("--minutes", metavar="M",
                        help="denoiser: time budget of the training (default 5; 60 with --config "
                             "long); dip: stop fitting after M minutes")
    parser.add_argument("--image", metavar="IMG",
                        help="dip: a built-in grey image (camera, ...) or a grey or RGB PNG "
                             "(default camera, its 256×256 centre)")
    parser.add_argument("--steps", metavar="N", help="dip: Adam steps (default 2400; the study counts "
                                                     "steps, not epochs)")
    parser.add_argument("--ema", metavar="BETA", help="dip: the moving average of the outputs, a "
                                                      "factor in [0, 1), 0 = off (default 0.99, as "
                                                      "the paper)")
    parser.add_argument("--config", metavar="C",
                        help="denoiser: default (5 layers, 32 channels) or long (8 layers, 48 "
                             "channels, 60 minutes: aims at BM3D's 29.45 dB on camera)")
    _one_line_errors(parser)


def _integer(flag: str, text: str | None, minimum: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{flag} must be an integer, got {text!r}") from None
    if value < minimum:
        raise InputError(f"{flag} must be at least {minimum}, got {value}")
    return value


def _only(args: argparse.Namespace, who: str, studies: tuple[str, ...],
          *given: tuple[str, object]) -> None:
    """Refuse options that apply only to ``studies`` when another study is run."""
    flags = [f for f, v in given if v is not None]
    if flags and args.name not in studies:
        verb = "apply" if len(flags) > 1 else "applies"
        raise InputError(f"{' and '.join(flags)} {verb} to {who} only, not to {args.name!r}")


def parse_options(args: argparse.Namespace) -> StudyOptions:
    """Check every value (our one-line errors) and turn them into :class:`StudyOptions`."""
    if args.name not in STUDIES:
        raise InputError(f"unknown study {args.name!r}; choose one of {', '.join(STUDIES)}")
    if args.engine is not None and args.engine not in ALL_ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ALL_ENGINES)}, got {args.engine!r}")
    args.epochs = _integer("--epochs", args.epochs, 1)
    args.seed = _integer("--seed", args.seed, 0)
    if args.minutes is not None:
        try:
            minutes = float(args.minutes)
        except ValueError:
            raise InputError(f"--minutes must be a number, got {args.minutes!r}") from None
        if not (math.isfinite(minutes) and minutes > 0):
            raise InputError(f"--minutes must be a positive number of minutes, got {args.minutes!r}")
        args.minutes = minutes
    _only(args, "the denoiser", ("denoiser",), ("--config", args.config))
    _only(args, "the denoiser and dip", ("denoiser", "dip"), ("--minutes", args.minutes))
    _only(args, "dip", ("dip",), ("--image", args.image), ("--steps", args.steps),
          ("--ema", args.ema))
    if args.name == "dip":
        if args.epochs is not None:
            raise InputError("dip counts Adam steps, not epochs: use --steps N")
        if args.resume is not None:
            raise InputError("a dip run cannot be resumed (it keeps no checkpoint); start it again, "
                             "or use --steps / --minutes to choose its length")
        args.steps = _integer("--steps", args.steps, 1)
        if args.ema is not None:
            try:
                ema = float(args.ema)
            except ValueError:
                raise InputError(f"--ema must be a number in [0, 1), got {args.ema!r}") from None
            if not 0.0 <= ema < 1.0:
                raise InputError(f"--ema must be in [0, 1) (0 = off; the paper uses 0.99), got "
                                 f"{args.ema!r}")
            args.ema = ema
    if args.config is not None:
        from autodiff_lab.studies.denoiser import CONFIGS
        if args.config not in CONFIGS:
            raise InputError(f"--config must be one of {', '.join(CONFIGS)}, got {args.config!r}")
    if args.resume is not None and (args.out is not None or args.force):
        raise InputError("--resume DIR continues that run in place; do not give --out or --force with it")
    return options_from(args)


def run(args: argparse.Namespace) -> int:
    """Run the study; report the run folder and the main numbers on standard error."""
    from autodiff_lab.studies import run_study, study_module
    try:
        options = parse_options(args)
    except InputError as exc:
        print(f"autodiff-lab train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = run_study(args.name, options)
    except TrainingInterrupted as exc:
        folder = getattr(exc, "run_folder", None)
        message = str(exc.args[0]) if exc.args else "training interrupted"
        resumable = getattr(study_module(args.name), "RESUMABLE", True)
        again = (f"; resume with: autodiff-lab train {args.name} --resume {folder}"
                 if folder and resumable else "")
        print(f"autodiff-lab train: {message.split('; resume with')[0]}{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:  # outside a training loop: before it, or while scoring
        folder = getattr(exc, "run_folder", None)
        if folder is not None and holds_run(folder):
            print(f"autodiff-lab train: interrupted; resume with: autodiff-lab train {args.name} "
                  f"--resume {folder}", file=sys.stderr)
        else:
            print("autodiff-lab train: interrupted before training started; nothing was written",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.folder_note:
        print(f"note: {result.folder_note}", file=sys.stderr)
    if not options.quiet:
        for line in result.notes:
            print(f"{args.name}: {line}", file=sys.stderr)
    figures = len([p for p in result.files if p.suffix == ".png"
                   and p.with_suffix(".svg") in result.files])
    model = "model.npz, " if any(p.name == "model.npz" for p in result.files) else ""
    print(f"{args.name}: wrote {result.folder} ({model}metrics.json, {figures} PNG figures with "
          "SVG twins)", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "parse_options", "run"]
