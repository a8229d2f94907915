"""autodiff_lab: compare finite differences, symbolic and reverse-mode differentiation.

One shared expression graph (``adl.trace``), one op table, three engines
(``adl.engine("numeric" | "symbolic" | "tape")``) and textbook drawings (``adl.render``).
"""

from autodiff_lab.errors import (
    AutodiffError,
    GraphError,
    InputError,
    NonFiniteError,
    NotDifferentiableError,
    OpDefinitionError,
    ShapeError,
    SymbolicSizeError,
    TraceError,
    UnknownOpError,
)
from autodiff_lab.graph import OPS, Graph, Spec, Tensor, define_op, load, param, spec, trace
from autodiff_lab.graph.functions import (
    abs,
    add,
    avg_pool2d,
    batch_norm,
    batch_stats,
    broadcast_to,
    concatenate,
    conv2d,
    conv_transpose2d,
    cos,
    div,
    dropout,
    exp,
    flatten,
    l1_loss,
    leaky_relu,
    log,
    log_softmax,
    matmul,
    max,
    max_pool2d,
    maximum,
    mean,
    minimum,
    mse_loss,
    mul,
    neg,
    power,
    reciprocal,
    relu,
    reshape,
    sigmoid,
    sin,
    softmax,
    softmax_cross_entropy,
    sqrt,
    sub,
    sum,
    tanh,
    transpose,
    upsample,
)

__version__ = "0.1.0"

__all__ = [
    "OPS", "AutodiffError", "Graph", "GraphError", "InputError", "NonFiniteError",
    "NotDifferentiableError", "OpDefinitionError", "ShapeError", "Spec", "SymbolicSizeError",
    "Tensor", "TraceError",
    "UnknownOpError", "abs", "add", "avg_pool2d", "batch_norm", "batch_stats", "broadcast_to", "concatenate",
    "conv2d", "conv_transpose2d", "cos", "define_op", "div", "dropout", "exp", "flatten", "l1_loss",
    "leaky_relu", "load",
    "log", "log_softmax", "matmul", "max", "max_pool2d", "maximum", "mean", "minimum", "mse_loss",
    "mul", "neg", "param", "power", "reciprocal", "relu", "reshape", "sigmoid", "sin", "softmax",
    "softmax_cross_entropy", "spec", "sqrt", "sub", "sum", "tanh", "trace", "transpose",
    "upsample",
]

from autodiff_lab.engines import engine, gradient  # noqa: E402
from autodiff_lab.engines.base import GradientResult  # noqa: E402
from autodiff_lab.graph.evaluate import DtypeCastWarning  # noqa: E402

__all__ += ["DtypeCastWarning", "GradientResult", "engine", "gradient"]

from autodiff_lab.checks import GradcheckError, gradcheck, jacobian  # noqa: E402

__all__ += ["GradcheckError", "gradcheck", "jacobian"]

# the render package itself, callable as adl.render(graph, ...): a function of that name
# would be replaced by the package as soon as a submodule such as render.backend is imported
from autodiff_lab import render  # noqa: E402

__all__ += ["render"]

__all__ += ["compare"]  # adl.compare.step_sweep, the report harness: imported at first use


def __getattr__(name: str) -> object:
    """``adl.compare`` is imported when first used: ``import autodiff_lab`` need not load
    the comparison harness (and tqdm) for a gradient."""
    if name == "compare":
        import importlib
        return importlib.import_module("autodiff_lab.compare")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"compare"})

from autodiff_lab.formula import explain, formula  # noqa: E402  (derivatives as formulas)

__all__ += ["explain", "formula"]

from autodiff_lab.functional import grad, value_and_grad  # noqa: E402  (gradients of functions)

__all__ += ["grad", "value_and_grad"]
