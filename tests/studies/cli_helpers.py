"""Running ``autodiff-lab`` inside a test: its exit status and standard error, and the
one-line error rule, shared by the case-study command tests."""

from __future__ import annotations

from autodiff_lab.cli import main


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``autodiff-lab ARGS``; (exit status, standard error)."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(status), err


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]
