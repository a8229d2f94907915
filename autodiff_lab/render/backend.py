"""Finding a Graphviz ``dot`` program and running it, so that ``pip install`` alone is enough.

Order of preference:

1. ``$AUTODIFF_LAB_DOT`` when set (a path or a command name): the user's explicit choice;
2. the system ``dot`` on PATH (Graphviz from apt, brew, conda ...);
3. ``graphviz-pure``, the static dot-compatible binary of the PyPI package of that name
   (a dependency of autodiff_lab): first next to the running Python (a virtualenv's ``bin``
   need not be on PATH), then in the interpreter's script folders, then on PATH.

The DOT text goes to the program's standard input and the picture comes back on its standard
output; nothing depends on the ``graphviz`` Python package's own idea of where ``dot`` is.
If a program cannot write the asked format (a system ``dot`` built without PNG support, or
graphviz-pure asked for PDF), the next one found is tried.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from autodiff_lab.errors import GraphvizNotFoundError, RenderError

ENV_VARIABLE = "AUTODIFF_LAB_DOT"
PURE_NAME = "graphviz-pure"
TIMEOUT_SECONDS = 120
#: raster formats are drawn at this resolution (Graphviz's default, 96, looks blurred in a README)
RASTER_DPI = 150
RASTER_FORMATS = ("png", "jpg", "jpeg", "jpe", "gif", "bmp", "tif", "tiff", "webp")


@dataclass(frozen=True)
class DotProgram:
    """A dot-compatible executable and where it was found."""

    path: str
    kind: str  # "system dot", "graphviz-pure" or the environment variable's name

    def __str__(self) -> str:
        return f"{self.kind} ({self.path})"


def _script_dirs() -> list[Path]:
    """Folders where pip puts console scripts for this interpreter, nearest first."""
    dirs = [Path(sys.executable).parent]
    for scheme in (None, f"{os.name}_user"):
        try:
            path = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:  # the user scheme is missing on some builds
            continue
        if path:
            dirs.append(Path(path))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _executable_in(folder: Path, name: str) -> str | None:
    for candidate in (folder / name, folder / f"{name}.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_dot_programs() -> list[DotProgram]:
    """Every usable dot program, in order of preference (may be empty)."""
    found: list[DotProgram] = []
    override = os.environ.get(ENV_VARIABLE)
    if override:
        path = shutil.which(override)
        if path is None:
            raise GraphvizNotFoundError(f"${ENV_VARIABLE} is set to {override!r}, which is not an "
                                        "executable program")
        found.append(DotProgram(path, f"${ENV_VARIABLE}"))
    system = shutil.which("dot")
    if system:
        found.append(DotProgram(system, "system dot"))
    for folder in _script_dirs():
        path = _executable_in(folder, PURE_NAME)
        if path:
            found.append(DotProgram(path, PURE_NAME))
            break
    else:
        path = shutil.which(PURE_NAME)
        if path:
            found.append(DotProgram(path, PURE_NAME))
    return found


def find_dot() -> DotProgram:
    """The preferred dot program; :class:`GraphvizNotFoundError` naming both options if none."""
    programs = find_dot_programs()
    if not programs:
        raise GraphvizNotFoundError(
            "cannot draw: no Graphviz 'dot' program on PATH and no 'graphviz-pure' binary "
            f"(looked next to {sys.executable} and on PATH). Install one of them: "
            "`pip install graphviz-pure` (pure pip, no system packages) or the system Graphviz "
            "(e.g. `apt-get install graphviz`); or set $AUTODIFF_LAB_DOT to a dot program.")
    return programs[0]


def run_dot(dot_source: str, fmt: str) -> tuple[bytes, DotProgram]:
    """Lay out ``dot_source`` and return the picture in format ``fmt`` (``svg``, ``png`` ...)
    and the program that made it."""
    programs = find_dot_programs()
    if not programs:
        find_dot()  # raises the explanatory error
    command = [f"-T{fmt}"] + ([f"-Gdpi={RASTER_DPI}"] if fmt in RASTER_FORMATS else [])
    failures = []
    for program in programs:
        source = _raster_fonts(dot_source, program) if fmt in RASTER_FORMATS else dot_source
        try:
            done = subprocess.run([program.path, *command], input=source.encode("utf-8"),
                                  capture_output=True, timeout=TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{program}: {exc}")
            continue
        if done.returncode == 0 and done.stdout:
            if fmt == "svg":  # a browser without the named font still draws a sans-serif
                from autodiff_lab.render.fonts import with_generic_fallback
                text = with_generic_fallback(done.stdout.decode("utf-8"))
                return text.encode("utf-8"), program
            return done.stdout, program
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit code {done.returncode}"
        failures.append(f"{program}: {message}")
    raise RenderError(f"Graphviz could not write {fmt!r}:\n  " + "\n  ".join(failures))


def _raster_fonts(dot_source: str, program: DotProgram) -> str:
    """graphviz-pure's rasteriser draws only its own bundled faces (it finds no DejaVu Sans
    and falls back to a serif): for its PNGs the drawings name Helvetica, which it measures
    and draws with one metric-compatible sans. SVGs keep DejaVu Sans (what browsers get)."""
    from autodiff_lab.render.fonts import FONT_FAMILY

    if program.kind != PURE_NAME and Path(program.path).stem != PURE_NAME:
        return dot_source
    return dot_source.replace(f'fontname="{FONT_FAMILY}"', 'fontname="Helvetica"')


def configure_graphviz_package() -> DotProgram:
    """Point the ``graphviz`` Python package at the dot program found here, so that
    ``graphviz.Source(...).pipe()`` and its Jupyter display also work with only
    ``graphviz-pure`` installed. A binary the user already set there is left alone."""
    from pathlib import PurePath

    from graphviz.backend import dot_command

    program = find_dot()
    if PurePath(dot_command.DOT_BINARY) == PurePath("dot"):
        dot_command.DOT_BINARY = Path(program.path)
    return program
