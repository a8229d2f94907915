"""Drawing a graph like the textbook: values forward in green, gradients backward in red.

``adl.render(graph, values, grads, path="neuron.svg")`` returns the DOT text and, given a
path, writes the picture (SVG, PNG, or any format the dot program knows; ``.dot``/``.gv``
write the DOT text itself). ``to_svg`` is what a :class:`Graph` shows in Jupyter.

Parts: ``annotate`` resolves the numbers, ``dot`` writes the DOT text, ``numbers`` formats
numbers, ``backend`` finds and runs Graphviz (system ``dot``, else the pip-installed
``graphviz-pure``), ``fonts`` names the font every drawing uses (DejaVu Sans) and measures
text with it, ``layers`` draws a model one box per module.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path
from typing import Any

from autodiff_lab.errors import GraphTooLargeError, InputError
from autodiff_lab.graph.graph import Graph
from autodiff_lab.render.annotate import annotate
from autodiff_lab.render.backend import (
    DotProgram,
    GraphvizNotFoundError,
    RenderError,
    configure_graphviz_package,
    find_dot,
    run_dot,
)
from autodiff_lab.render.dot import DrawOptions, build_dot
from autodiff_lab.render.numbers import format_number, format_summary

#: formats written without Graphviz
TEXT_FORMATS = ("dot", "gv")
#: graphs with more nodes are refused (``max_nodes=`` raises the limit, ``None`` lifts it):
#: Graphviz's layout time grows much faster than the node count (measured: a densely
#: connected 2,400-node graph took 3 s, a 133,000-node one did not finish in 120 s), and
#: such a picture is unreadable anyway
MAX_NODES = 2000


def check_size(graph: Graph, max_nodes: int | None = MAX_NODES) -> None:
    """Raise :class:`GraphTooLargeError` if ``graph`` has more than ``max_nodes`` nodes."""
    if max_nodes is None or len(graph) <= max_nodes:
        return
    raise GraphTooLargeError(
        f"the graph has {len(graph):,} nodes, more than the {max_nodes:,} drawn at most: "
        "Graphviz would take minutes (or never finish) and the picture would be unreadable. "
        "Read graph.summary() (inputs, outputs, ops by kind) instead; or draw at layer level "
        "by tracing whole arrays (adl.matmul, adl.conv2d on tensors: one node per layer) "
        "rather than single scalars, a smaller instance (fewer units, a smaller batch or "
        "image), or pass max_nodes=... (None for no limit) to draw it anyway")


def to_dot(graph: Graph, values: Any = None, grads: Any = None, *, primitive: bool = False,
           output: str | None = None, numbers: str = "edges", digits: int = 4,
           legend: bool = True, title: str | None = None, rankdir: str = "LR",
           max_nodes: int | None = MAX_NODES) -> str:
    """The DOT source of the drawing (see :func:`render` for the arguments)."""
    if not isinstance(graph, Graph):
        raise InputError(f"render expects an autodiff_lab Graph, got {type(graph).__name__}")
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise InputError(f"rankdir must be LR, TB, RL or BT, got {rankdir!r}")
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int)
                                  or max_nodes < 1):
        raise InputError(f"max_nodes must be a positive int or None, got {max_nodes!r}")
    check_size(graph, max_nodes)  # before any value is computed
    notes = annotate(graph, values, grads, primitive=primitive, output=output)
    check_size(notes.graph, max_nodes)  # primitive=True may have written composites out
    options = DrawOptions(numbers=numbers, digits=digits, legend=legend, title=title,
                          rankdir=rankdir)
    return build_dot(notes, options)


class Drawing(str):
    """The DOT text of a drawing: a ``str`` (print it, save it, compare it) that Jupyter
    shows as the picture (``_repr_svg_``). ``svg()`` runs Graphviz for the SVG text."""

    @property
    def source(self) -> str:
        """The DOT text as a plain ``str``."""
        return str.__str__(self)

    def svg(self) -> str:
        """The picture as SVG text (runs Graphviz; :class:`RenderError` if it cannot)."""
        picture, _ = run_dot(self.source, "svg")
        return picture.decode("utf-8")

    def _repr_svg_(self) -> str | None:
        try:
            return self.svg()
        except RenderError:
            return None  # Jupyter falls back to the text


def render(graph: Graph, values: Any = None, grads: Any = None, path: str | Path | None = None,
           format: str | None = None, *, primitive: bool = False, output: str | None = None,
           numbers: str = "edges", digits: int = 4, legend: bool = True,
           title: str | None = None, rankdir: str = "LR", max_nodes: int | None = MAX_NODES
           ) -> Drawing:
    """Draw ``graph`` with its forward values and gradients; return the DOT source.

    The DOT source comes back as a :class:`Drawing`, a ``str`` that a notebook shows as the
    picture itself.

    * ``values``: the input values by name (every other node is evaluated), every node's
      value by id, or a :class:`GradientResult` compiled with ``keep_all=True``;
    * ``grads``: ``True`` (compute them with the tape engine), a :class:`GradientResult`
      (its per-node gradients when kept, else its gradients by input name), or a dict by
      input name or by node id;
    * ``path``: write the picture there; ``format`` defaults to the path's suffix
      (``svg``, ``png``, ``pdf`` with the system Graphviz, ``dot``/``gv`` for the text);
    * ``primitive=True``: write composite ops (σ) in primitives (neg, exp, +1, 1/x), values
      and gradients recomputed on that graph;
    * ``numbers``: ``"edges"`` (textbook: value above, gradient below each edge) or
      ``"nodes"``; ``digits`` significant digits; ``legend`` and ``title`` below the graph;
      ``output`` the output whose gradient is drawn when there are several. Auxiliary
      outputs (batch-norm statistics of an ``nn`` model) and the nodes only they need are
      not drawn.
    * ``max_nodes``: a bigger graph raises :class:`GraphTooLargeError` at once, before any
      value is computed or Graphviz started (default :data:`MAX_NODES`; ``None``: no limit).

    Examples:
        >>> import numpy as np, autodiff_lab as adl
        >>> g = adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]),
        ...               w=adl.param((3,)), x=(2,))
        >>> vals = {"w": np.array([2.0, -3.0, -3.0]), "x": np.array([-1.0, -2.0])}
        >>> dot = adl.render(g, values=vals, grads=True)    # in Jupyter: the picture
        >>> dot.startswith("// autodiff_lab graph")
        True
    """
    source = to_dot(graph, values, grads, primitive=primitive, output=output, numbers=numbers,
                    digits=digits, legend=legend, title=title, rankdir=rankdir,
                    max_nodes=max_nodes)
    if path is None:
        if format is not None:
            raise InputError("format= needs a path= to write to (the DOT text is returned)")
        return Drawing(source)
    write(source, path, format)
    return Drawing(source)


def output_format(path: str | Path, format: str | None = None) -> str:
    """The picture format: ``format`` if given, else the suffix of ``path``."""
    fmt = (format or Path(path).suffix.lstrip(".")).lower()
    if not fmt:
        raise InputError(f"cannot tell the picture format of {str(path)!r}: give a suffix "
                         "(.svg, .png ...) or format=")
    if not fmt.isalnum():
        raise InputError(f"not a picture format: {fmt!r}")
    return fmt


def write(source: str, path: str | Path, format: str | None = None) -> DotProgram | None:
    """Write DOT ``source`` as a picture to ``path``; returns the dot program used (``None``
    for the DOT text itself)."""
    fmt = output_format(path, format)
    target = Path(path)
    if target.parent and not target.parent.exists():
        raise InputError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not "
                         "exist")
    if fmt in TEXT_FORMATS:
        target.write_text(source, encoding="utf-8")
        return None
    picture, program = run_dot(source, fmt)
    target.write_bytes(picture)
    return program


def to_graphviz(graph: Graph, values: Any = None, grads: Any = None, **options: Any) -> Any:
    """The drawing as a ``graphviz.Source`` (for code built on the graphviz package), with
    that package pointed at the dot program found here (system dot or graphviz-pure)."""
    import graphviz

    configure_graphviz_package()
    return graphviz.Source(to_dot(graph, values, grads, **options))


def to_svg(graph: Graph, values: Any = None, grads: Any = None, **options: Any) -> str:
    """The drawing as SVG text (what a Graph shows in Jupyter)."""
    picture, _ = run_dot(to_dot(graph, values, grads, **options), "svg")
    return picture.decode("utf-8")


__all__ = [
    "MAX_NODES", "DotProgram", "DrawOptions", "Drawing", "GraphTooLargeError", "GraphvizNotFoundError",
    "RenderError", "check_size",
    "configure_graphviz_package", "find_dot", "format_number", "format_summary", "output_format",
    "render", "run_dot", "to_dot", "to_graphviz", "to_svg", "write",
]


class _RenderPackage(types.ModuleType):
    """This package, callable as :func:`render`.

    ``adl.render(graph, ...)`` draws a graph, and ``autodiff_lab.render`` is also this
    package, so ``import autodiff_lab.render.backend`` and ``from autodiff_lab.render import
    dot`` work in any order: the import system sets the package as the ``render`` attribute
    of ``autodiff_lab``, so a plain function of that name would be replaced by (or hide) it.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return render(*args, **kwargs)


sys.modules[__name__].__class__ = _RenderPackage
__signature__ = inspect.signature(render)  # what help() and IDEs show for adl.render(...)
