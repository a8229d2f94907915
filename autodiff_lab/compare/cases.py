"""The cases of the comparison report, and the sections each case's part of the page has.

A case is an example (:mod:`autodiff_lab.examples`: neuron, chain, inpainting, denoiser,
classifier, or a user's graph file) plus what the report shows about it: a list of section
keys, each a function ``section(ctx) -> Section`` in :data:`SECTIONS`. Adding a section to a
case is one call, e.g. for training curves::

    from autodiff_lab.compare import cases
    cases.SECTIONS["training"] = my_training_section      # (ctx: CaseContext) -> Section
    cases.add_section("inpainting", "training")

Every section writes its figures (PNG + SVG) and tables (CSV + JSON) into the case's folder
and returns what the page shows (:class:`Section`); the page is re-written after every
section, so an interrupted run leaves the finished ones readable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.compare.harness import EngineConfig
from autodiff_lab.examples import Example

# --------------------------------------------------------------------------------------------
# what a section hands to the page
# --------------------------------------------------------------------------------------------


@dataclass
class FigureRef:
    """A figure on the page: PNG shown, SVG linked (paths relative to the page)."""

    title: str
    png: str
    svg: str
    caption: str = ""
    width: int = 0
    height: int = 0


@dataclass
class TableRef:
    """A table on the page, with the meaning of its columns and the files it was saved to."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    legend: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    text: str = ""  # the same table as fixed-width text (printed on the terminal)


@dataclass
class Section:
    """One part of a case: paragraphs, tables and figures."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[TableRef] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class CaseContext:
    """What a section builder gets: the case, its example, options and earlier results."""

    spec: CaseSpec
    example: Example
    wrt: list[str]
    folder: Path
    page_dir: Path
    quick: bool
    engines: list[EngineConfig]
    budget_s: float
    reference_kind: str = "auto"
    #: BLAS threads while measuring (None: as the machine's numpy has it)
    threads: int | None = 1
    progress: Callable[[str], None] = lambda message: None
    echo: Callable[[str], None] = print
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """A file in the case's folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    def rel(self, path: Path) -> str:
        """``path`` relative to the page."""
        return Path(path).resolve().relative_to(self.page_dir.resolve()).as_posix()

    def figure(self, title: str, paths: tuple[Path, Path], caption: str = "") -> FigureRef:
        from autodiff_lab.compare.plots import figure_sizes
        (w, h), = figure_sizes([paths[0]])
        return FigureRef(title, self.rel(paths[0]), self.rel(paths[1]), caption, w, h)


SectionBuilder = Callable[[CaseContext], "Section | list[Section] | None"]


@dataclass
class CaseSpec:
    """A case of the report: how to build it (full size or ``--quick``) and its sections."""

    name: str
    build: Callable[[bool], Example]
    sections: list[str]
    #: a miniature of the same network, small enough for 50-digit mpmath: it checks an
    #: extended-precision reference
    miniature: Callable[[], tuple[Any, dict[str, Any]]] | None = None
    #: draw the graph at primitive level (small scalar graphs)
    primitive: bool = False
    #: the scaling family: (family name, size name, build(size), sizes full, sizes quick)
    scaling: tuple[str, str, Callable[[int], Example], list[int], list[int]] | None = None
    #: step sweep: the inputs differentiated (None: the parameters)
    sweep_wrt: list[str] | None = None
    reference: str = "auto"


# --------------------------------------------------------------------------------------------
# the built-in cases
# --------------------------------------------------------------------------------------------

def _mini_mlp() -> tuple[Any, dict[str, Any]]:
    from autodiff_lab.examples import mlp
    ex = mlp(d_in=4, hidden=3, batch=2)
    return ex.graph, ex.values


def _mini_conv() -> tuple[Any, dict[str, Any]]:
    """One convolution + batch norm + ReLU + another convolution and the mean squared loss:
    the denoiser's ops at a size mpmath can expand."""
    from autodiff_lab.graph import functions as F
    from autodiff_lab.graph.graph import param, trace

    def loss(noisy, clean, w0, gamma, beta, w1):
        h = F.relu(F.batch_norm(F.conv2d(noisy, w0, padding=1), gamma, beta))
        return F.mse_loss(noisy - F.conv2d(h, w1, padding=1), clean, reduction="mean")

    rng = np.random.default_rng(0)
    g = trace(loss, noisy=(1, 1, 2, 2), clean=(1, 1, 2, 2), w0=param((1, 1, 3, 3)),
              gamma=param((1,)), beta=param((1,)), w1=param((1, 1, 3, 3)))
    values = {"noisy": rng.random((1, 1, 2, 2)), "clean": rng.random((1, 1, 2, 2)),
              "w0": rng.standard_normal((1, 1, 3, 3)), "gamma": np.ones(1), "beta": np.zeros(1),
              "w1": rng.standard_normal((1, 1, 3, 3))}
    return g, values


def _mini_classifier() -> tuple[Any, dict[str, Any]]:
    from autodiff_lab.graph import functions as F
    from autodiff_lab.graph.graph import param, trace
    labels = np.array([1, 0, 2])
    rng = np.random.default_rng(0)
    g = trace(lambda W, b, x: F.softmax_cross_entropy(x @ F.transpose(W) + b, labels),
              W=param((3, 4)), b=param((3,)), x=(3, 4))
    return g, {"W": rng.standard_normal((3, 4)), "b": np.zeros(3), "x": rng.random((3, 4))}


def _inpainting_family() -> tuple[str, str, Callable[[int], Example], list[int], list[int]]:
    from autodiff_lab.examples import inpainting
    return ("inpainting MLP 784-h-784 on 64 digits", "hidden units",
            lambda h: inpainting(hidden=h), [1, 2, 4, 8, 16, 32, 64, 128, 256], [1, 4, 16, 64])


def _denoiser_family() -> tuple[str, str, Callable[[int], Example], list[int], list[int]]:
    from autodiff_lab.examples import denoiser
    return ("DnCNN-style denoiser, 8 channels, 2 patches 20×20", "convolutions",
            lambda d: denoiser(depth=d, channels=8, batch=2, size=20), [2, 3, 4, 6, 8, 12],
            [2, 4, 8])


def _builtin(name: str) -> Callable[[bool], Example]:
    def build(quick: bool) -> Example:
        from autodiff_lab.examples import get_example
        return get_example(name)
    return build


STANDARD = ["graph", "accuracy", "speed", "error_vs_time"]

CASES: dict[str, CaseSpec] = {
    "neuron": CaseSpec("neuron", _builtin("neuron"), STANDARD + ["step_sweep"], primitive=True),
    "chain": CaseSpec("chain", _builtin("chain"), STANDARD + ["step_sweep"], primitive=True),
    "inpainting": CaseSpec("inpainting", _builtin("inpainting"), STANDARD + ["scaling"],
                           miniature=_mini_mlp, scaling=None),
    "denoiser": CaseSpec("denoiser", _builtin("denoiser"), STANDARD + ["scaling"],
                         miniature=_mini_conv, scaling=None),
    "classifier": CaseSpec("classifier", _builtin("classifier"), STANDARD + ["step_sweep"],
                           miniature=_mini_classifier, sweep_wrt=["b"]),
}
CASES["inpainting"].scaling = _inpainting_family()
CASES["denoiser"].scaling = _denoiser_family()


def add_section(case: str, key: str, position: int | None = None) -> None:
    """Show section ``key`` (a builder in :data:`SECTIONS`) in ``case``'s part of the page."""
    spec = CASES[case]
    if key not in spec.sections:
        spec.sections.insert(len(spec.sections) if position is None else position, key)


def graph_file_case(name: str, graph: Any, values: dict[str, Any], description: str) -> CaseSpec:
    """A case for a user's graph: the standard sections (and a step sweep if it is small)."""
    ex = Example(name, graph, values, description)
    small = sum(int(np.prod(graph.node(v)["shape"], dtype=np.int64))
                for v in graph.inputs.values()) <= 64
    return CaseSpec(name, lambda quick: ex, STANDARD + (["step_sweep"] if small else []),
                    primitive=len(graph) <= 60)


#: section builders by key (filled in by autodiff_lab.compare.sections)
SECTIONS: dict[str, SectionBuilder] = {}

# the Deep Image Prior case (a study rather than an example: its own sections)
from autodiff_lab.compare import dip_section as _dip_section  # noqa: E402,F401
