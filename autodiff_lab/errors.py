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


class GraphError(AutodiffError, ValueError):
    """A graph is malformed: a cycle, wrong number of arguments, bad names or attributes."""


class GraphShapeError(ShapeError, GraphError):
    """The shapes recorded in a graph (a loaded or hand-built one) do not fit its ops."""


class UnknownOpError(GraphError, KeyError):
    """A graph names an op that is not in the op table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OpDefinitionError(AutodiffError, ValueError):
    """An op-table entry is malformed (a field of the wrong kind, rules that do not match the
    number of arguments), or a custom op would replace a built-in one (``adl.define_op``)."""


class TraceError(AutodiffError, TypeError):
    """Something in the traced function cannot be recorded (e.g. ``if tensor > 0:``)."""


class InputError(AutodiffError, ValueError):
    """Values given for a graph's inputs are missing, unknown, mis-shaped or of a wrong dtype."""


class LabelError(InputError, IndexError):
    """An integer input used as an index (a class label) is outside the range the op allows,
    e.g. label 10 for logits with K = 10 classes (labels are 0 … K − 1)."""


class NonFiniteError(AutodiffError, FloatingPointError):
    """NaN or Inf in the values given, or produced by an op during evaluation."""


class NotDifferentiableError(AutodiffError, ValueError):
    """A gradient was asked for something that has none (integer input, non-scalar output...)."""


class SymbolicSizeError(AutodiffError, MemoryError):
    """The symbolic engine refuses an expression that would swell beyond its size limit."""


class RenderError(AutodiffError, RuntimeError):
    """Graphviz could not turn the DOT text into a picture."""


class GraphTooLargeError(RenderError):
    """A graph has too many nodes to draw in reasonable time (see ``max_nodes``)."""


class GraphvizNotFoundError(RenderError, FileNotFoundError):
    """Neither the system ``dot`` nor the ``graphviz-pure`` binary could be found."""


def with_node(exc: AutodiffError, where: str) -> AutodiffError:
    """``exc`` re-made with ``where`` (how messages name a node: ``node 7 'softmax_cross_entropy'
    (at model.py:12)``) in front of its message, for an error an op's rule raised without
    knowing which node it runs for. An error that already names its node comes back as it is."""
    if getattr(exc, "where", None):
        return exc
    new = type(exc)(f"{where}: {exc}")
    new.where = where  # type: ignore[attr-defined]
    return new


class CheckpointError(AutodiffError, ValueError):
    """A saved model or state dict does not fit: a truncated or corrupt file, an unknown
    class, or the parameters of another architecture."""


class EvaluationLimitError(AutodiffError, RuntimeError):
    """A finite-difference gradient would need more forward evaluations than allowed (the
    numeric engine's ``max_evaluations``, or ``fit``'s ``max_numeric_evaluations``)."""


class TrainingDiverged(NonFiniteError):  # noqa: N818 (the public name)
    """The loss or a gradient became NaN or Inf during training.

    Attributes: ``step`` (the 1-based number of the step that failed), ``epoch`` (1-based),
    ``layer`` (module path of the first non-finite layer, ``""`` for the model itself,
    ``None`` if unknown), ``parameter`` (the first parameter, in model order, whose gradient
    is not finite, or ``None``), ``node`` (description of the first graph node whose value
    is not finite, or ``None``), ``history`` (the training history up to the last good step)
    and ``checkpoint`` (path of the last good checkpoint, or ``None``).
    """

    def __init__(self, message: str, *, step: int = 0, epoch: int = 0, layer: str | None = None,
                 parameter: str | None = None, node: str | None = None, history: object = None,
                 checkpoint: object = None) -> None:
        super().__init__(message)
        self.step, self.epoch, self.layer = step, epoch, layer
        self.parameter, self.node = parameter, node
        self.history, self.checkpoint = history, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (KeyboardInterrupt). The checkpoint being written was
    finished and the run can be resumed from it; ``history`` holds the history so far and
    ``checkpoint`` the path of the checkpoint (or ``None`` without an output folder).

    A subclass of :class:`KeyboardInterrupt`, not of :class:`AutodiffError`, so that
    ``except Exception`` does not swallow a Ctrl-C.
    """

    def __init__(self, message: str = "training interrupted", *, history: object = None,
                 checkpoint: object = None) -> None:
        super().__init__(message)
        self.history, self.checkpoint = history, checkpoint
