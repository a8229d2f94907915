"""What every engine shares: the result type, the program interface and argument checks.

An engine turns a graph into a *program* once (``engine.compile(graph, wrt=[...])``);
the program maps input values to the output value and the gradients, as many times as
asked. All engines return a :class:`GradientResult`, so a comparison is a loop over engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, NotDifferentiableError
from autodiff_lab.graph.graph import Graph


@dataclass
class GradientResult:
    """Output value and gradients (keyed by input name, each of that input's shape)."""

    value: np.ndarray
    grads: dict[str, np.ndarray]
    engine: str
    output: str = "out"
    #: forward evaluations the gradient took (1 for tape/symbolic; counts for numeric)
    evaluations: int = 1
    #: per-input error estimates where the engine has them (numeric methods)
    error_estimate: dict[str, np.ndarray] | None = None
    #: every node's forward value / gradient, when the program was asked to keep them
    node_values: dict[int, np.ndarray] | None = None
    node_grads: dict[int, np.ndarray] | None = None
    #: engine-specific extras (timings, method, step ...)
    info: dict[str, Any] = field(default_factory=dict)
    #: the value of every named output of the graph at these inputs, the differentiated one
    #: included (so auxiliary outputs, e.g. batch statistics of batch norm, come back too)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        grads = ", ".join(f"{k}: shape {np.shape(v)}" for k, v in self.grads.items())
        return (f"GradientResult(engine={self.engine!r}, value={_short(self.value)}, "
                f"grads={{{grads}}}, evaluations={self.evaluations})")


def _short(a: Any) -> str:
    a = np.asarray(a)
    return repr(a.item()) if a.ndim == 0 else f"array{a.shape}"


class Program(ABC):
    """A compiled gradient program: call it with ``{input name: value}``."""

    graph: Graph
    wrt: list[str]
    output: str

    @abstractmethod
    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        """Value of the output and its gradients with respect to ``wrt`` at ``values``."""


class Engine(ABC):
    """A way of computing gradients; ``compile`` once, call the program many times."""

    name: str = "?"

    @abstractmethod
    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> Program:
        """Prepare a program computing the gradient of ``output`` with respect to ``wrt``."""


def resolve_output(graph: Graph, output: str | None) -> str:
    """The output to differentiate: the given name, or the only main (not auxiliary) output."""
    if output is None:
        main = graph.main_outputs
        if len(main) != 1:
            raise InputError(f"the graph has outputs {', '.join(main)}; pass output=...")
        return next(iter(main))
    if output not in graph.outputs:
        raise InputError(f"no output named {output!r}; outputs are {', '.join(graph.outputs)}")
    return output


def resolve_wrt(graph: Graph, wrt: Iterable[str] | str | None) -> list[str]:
    """Names to differentiate with respect to (default: every floating-point input)."""
    if wrt is None:
        return [n for n, v in graph.inputs.items()
                if not np.issubdtype(np.dtype(graph.node(v)["dtype"]), np.integer)]
    names = [wrt] if isinstance(wrt, str) else list(wrt)
    for n in names:
        if n not in graph.inputs:
            raise InputError(f"cannot differentiate with respect to {n!r}: not an input of the "
                             f"graph (inputs: {', '.join(graph.inputs)})")
        if np.issubdtype(np.dtype(graph.node(graph.inputs[n])["dtype"]), np.integer):
            raise NotDifferentiableError(f"input {n!r} is integer "
                                         f"({graph.node(graph.inputs[n])['dtype']}); integer "
                                         "inputs cannot be differentiated")
    if len(set(names)) != len(names):
        raise InputError(f"wrt lists a name twice: {names}")
    return names


def resolve_seed(graph: Graph, output: str, seed: Any, dtype: np.dtype) -> np.ndarray:
    """The upstream gradient dL/d(output): 1 for a scalar output, else the seed given."""
    shape = graph.node(graph.outputs[output])["shape"]
    if seed is None:
        if shape != ():
            raise NotDifferentiableError(
                f"output {output!r} has shape {shape}; a gradient needs a scalar output or a "
                "seed vector of that shape (seed=...), or use adl.jacobian")
        return np.ones((), dtype=dtype)
    seed = np.asarray(seed, dtype=dtype)
    if seed.shape != shape:
        raise InputError(f"seed has shape {seed.shape}; output {output!r} has shape {shape}")
    return seed
