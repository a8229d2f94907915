"""The errors autodiff_lab raises.

Every error is an :class:`AutodiffError`, and every message names what a user needs to find
the problem: the node id, the op, the shapes involved and, for traced graphs, the line of
user code that created the node. Each class also derives from the closest built-in
exception (``ValueError``, ``TypeError`` ...) so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class AutodiffError(Exception):
    """Base class of every error raised by autodiff_lab."""


class ShapeError(AutodiffError, ValueError):
    """Operand shapes do not fit an op (raised at trace time, or when a graph is loaded)."""


class UnknownOpError(AutodiffError, KeyError):
    """A graph names an op that is not in the op table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GraphError(AutodiffError, ValueError):
    """A graph is malformed: a cycle, wrong number of arguments, bad names or attributes."""


class TraceError(AutodiffError, TypeError):
    """Something in the traced function cannot be recorded (e.g. ``if tensor > 0:``)."""


class InputError(AutodiffError, ValueError):
    """Values given for a graph's inputs are missing, unknown, mis-shaped or of a wrong dtype."""


class NonFiniteError(AutodiffError, FloatingPointError):
    """NaN or Inf in the values given, or produced by an op during evaluation."""


class NotDifferentiableError(AutodiffError, ValueError):
    """A gradient was asked for something that has none (integer input, non-scalar output...)."""


class SymbolicSizeError(AutodiffError, MemoryError):
    """The symbolic engine refuses an expression that would swell beyond its size limit."""


class RenderError(AutodiffError, RuntimeError):
    """Graphviz could not turn the DOT text into a picture."""


class GraphvizNotFoundError(RenderError, FileNotFoundError):
    """Neither the system ``dot`` nor the ``graphviz-pure`` binary could be found."""


class CheckpointError(AutodiffError, ValueError):
    """A saved model or state dict does not fit: a truncated or corrupt file, an unknown
    class, or the parameters of another architecture."""
