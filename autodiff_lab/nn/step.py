"""``compile_step``: trace a model's loss once, compile it with an engine, run it every step.

::

    step = nn.compile_step(model, nn.MSELoss(), X[:64], Y[:64], engine="tape")
    out = step(Xb, Yb)       # StepOutput: out.loss (float), out.grads {name: array}
    optimiser.step()         # reads each Parameter's .grad, which step() has set

Each call

1. casts the batch to the model's dtype (float targets too; integer labels stay integer);
2. picks the compiled program for this batch's shapes and dtypes and the model's modes
   (training/evaluation of every layer), tracing ``loss(model(x), y)`` and compiling it the
   first time such a batch comes (the last, smaller batch of an epoch just works);
3. feeds the parameters' current arrays (read at every call, so in-place optimiser updates
   and ``load_state_dict`` are seen), the buffers the graph reads, ``x``, ``y`` and fresh
   dropout masks from each Dropout layer's generator;
4. sets ``p.grad`` for every trained parameter and, in training mode, updates the batch-norm
   running statistics from the step's auxiliary outputs (``update_running_stats``).

``predict`` and ``evaluate`` run the model eagerly in evaluation mode (the op table's
forward kernels, no graph), in batches.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab.engines import engine as make_engine
from autodiff_lab.engines.base import GradientResult, Program
from autodiff_lab.errors import InputError, NotDifferentiableError
from autodiff_lab.graph.graph import Graph, Spec, trace
from autodiff_lab.nn.module import Module, join
from autodiff_lab.nn.parameter import Parameter

#: compiled programs kept per step object (batch shapes × modes)
CACHE_SIZE = 8


@dataclass
class StepOutput:
    """What one training step returns."""

    loss: float                        #: the loss value of this batch
    grads: dict[str, np.ndarray]       #: gradient of each trained parameter, by its name
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  #: every graph output
    batch_size: int = 0
    result: GradientResult | None = None  #: the engine's full result (info, timings ...)


@dataclass
class _Compiled:
    graph: Graph
    program: Program
    trained: list[tuple[str, Parameter]]           # parameters differentiated
    state: list[tuple[str, Callable[[], np.ndarray]]]  # other state inputs: name -> current array
    labels_for: list[int]                          # class counts the labels y index into


class CompiledStep:
    """A compiled training step for ``loss(model(x), y)`` (see the module docstring).

    Attributes: ``model``, ``loss``, ``engine`` (the engine object), ``graphs`` (the
    traced graphs by key), ``last_graph`` (the graph of the latest call: draw it with
    ``adl.render``).
    """

    def __init__(self, model: Module, loss: Callable[[Any, Any], Any], x_example: Any = None,
                 y_example: Any = None, engine: str = "tape", **engine_options: Any) -> None:
        if not isinstance(model, Module):
            raise InputError(f"compile_step needs a nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise InputError(f"compile_step needs a loss (a module or function of (prediction, "
                             f"target)), got {type(loss).__name__}")
        self.model = model
        self.loss = loss
        self.engine_name = engine
        self.engine = make_engine(engine, **engine_options)
        self._compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
        self.last_graph: Graph | None = None
        #: the compiled program and the input values of the latest call (the batch, the
        #: parameters' arrays -- the live ones, which the optimiser then updates in place --,
        #: buffers and dropout masks): what a gradient check or a NaN diagnosis re-runs
        self.last_compiled: _Compiled | None = None
        self.last_values: dict[str, Any] = {}
        if x_example is not None and y_example is not None:
            self.compile(x_example, y_example)

    # --- shapes and dtypes -------------------------------------------------------------------
    def _model_dtype(self) -> np.dtype:
        return self.model.dtype or np.dtype(np.float64)

    def _spec(self, example: Any, what: str) -> Spec:
        """A Spec for ``x`` or ``y`` from an example array, a shape tuple or a Spec; floats
        in the model's dtype."""
        dt = self._model_dtype()
        if isinstance(example, Spec):
            kind = np.dtype(example.dtype).kind
            return Spec(example.shape, dt if kind == "f" else example.dtype)
        if isinstance(example, tuple) and all(isinstance(d, (int, np.integer)) for d in example):
            return Spec(example, dt)
        arr = self._array(example, what)
        return Spec(arr.shape, arr.dtype)

    def _array(self, value: Any, what: str) -> np.ndarray:
        """The batch as an array: floats (and bools) in the model's dtype, integers kept."""
        arr = np.asarray(value)
        if arr.dtype.kind in "iu":
            return arr if what == "y" else arr.astype(self._model_dtype())
        if arr.dtype.kind not in "fb":
            raise InputError(f"compile_step: {what} must be an array of numbers, got dtype "
                             f"{arr.dtype}")
        return arr.astype(self._model_dtype(), copy=False)

    def _modes(self) -> tuple[bool, ...]:
        return tuple(m.training for m in self.model.modules())

    def _key(self, xs: Spec, ys: Spec) -> tuple:
        return (xs.shape, xs.dtype, ys.shape, ys.dtype, self._modes(), self._model_dtype().name)

    # --- tracing and compiling -------------------------------------------------------------------
    def compile(self, x_example: Any, y_example: Any) -> _Compiled:
        """Trace and compile for batches like these (done on demand by ``__call__``)."""
        xs, ys = self._spec(x_example, "x"), self._spec(y_example, "y")
        key = self._key(xs, ys)
        found = self._compiled.get(key)
        if found is not None:
            self._compiled.move_to_end(key)
            return found
        compiled = self._build(xs, ys)
        self._compiled[key] = compiled
        if len(self._compiled) > CACHE_SIZE:
            self._compiled.popitem(last=False)
        return compiled

    def _build(self, xs: Spec, ys: Spec) -> _Compiled:
        model, loss = self.model, self.loss
        graph = trace(lambda x, y: loss(model(x), y), x=xs, y=ys)
        out = graph.node(graph.output)
        if out["shape"] != ():
            raise NotDifferentiableError(f"compile_step: the loss must be a scalar, but "
                                         f"loss(model(x), y) has shape {out['shape']}")
        params: dict[str, Parameter] = {}
        state: dict[str, Callable[[], np.ndarray]] = {}
        owners = [model]
        if isinstance(loss, Module) and loss is not model:
            owners.append(loss)
        for owner in owners:
            for p in owner.parameters():
                params.setdefault(p.name, p)
            for key, m, attr, kind in owner._state_entries():
                if kind == "buffer":
                    state.setdefault(join(owner.path, key), _buffer_reader(m, attr))
        masks = {graph.node(graph.operands(v)[1])["name"] for v in graph.order
                 if graph.node(v)["op"] == "dropout"
                 and graph.node(graph.operands(v)[1])["role"] == "input"}
        trained, other = [], []
        for name in graph.inputs:
            if name in ("x", "y") or name in masks:
                continue
            if name in params:
                p = params[name]
                if p.requires_grad and model_owns(model, p):
                    trained.append((name, p))
                else:
                    other.append((name, _param_reader(p)))
            elif name in state:
                other.append((name, state[name]))
            else:
                raise InputError(f"compile_step: the traced loss reads input {name!r}, which is "
                                 "neither a parameter nor a buffer of the model or the loss")
        program = self.engine.compile(graph, wrt=[n for n, _ in trained], output=None)
        labels_for = []
        if np.dtype(ys.dtype).kind in "iu":
            y_node = graph.inputs["y"]
            for v in graph.order:
                d = graph.node(v)
                if d["role"] == "op" and d["op"] == "softmax_cross_entropy" and \
                        graph.operands(v)[1] == y_node:
                    labels_for.append(graph.node(graph.operands(v)[0])["shape"][-1])
        return _Compiled(graph, program, trained, other, labels_for)

    # --- running ------------------------------------------------------------------------------
    def __call__(self, X: Any, Y: Any) -> StepOutput:
        """Loss and gradients at this batch; sets ``p.grad``; updates batch-norm running
        statistics in training mode."""
        X, Y = self._array(X, "x"), self._array(Y, "y")
        compiled = self.compile(X, Y)
        self.last_graph = compiled.graph
        for classes in compiled.labels_for:
            if Y.size and (Y.min() < 0 or Y.max() >= classes):
                bad = Y[(Y < 0) | (Y >= classes)].ravel()[0]
                raise InputError(f"label {int(bad)} is out of range for {classes} classes "
                                 f"(labels must be in 0..{classes - 1})")
        values: dict[str, Any] = {"x": X, "y": Y}
        values.update((name, p.data) for name, p in compiled.trained)
        values.update((name, read()) for name, read in compiled.state)
        values.update(self.model.dropout_masks(compiled.graph))
        self.last_compiled, self.last_values = compiled, values
        result = compiled.program(values)
        for name, p in compiled.trained:
            p.grad = result.grads[name]
        # batch-norm layers in training mode take this batch's statistics (others: nothing)
        self.model.update_running_stats(result.outputs, strict=False)
        return StepOutput(loss=float(result.value), grads=result.grads, outputs=result.outputs,
                          batch_size=int(X.shape[0]) if X.ndim else 1, result=result)

    @property
    def graphs(self) -> dict[tuple, Graph]:
        """The traced graphs, by (x shape, x dtype, y shape, y dtype, modes, model dtype)."""
        return {k: c.graph for k, c in self._compiled.items()}

    def graph_for(self, X: Any, Y: Any) -> Graph:
        """The graph a call with batches like these runs (traced and compiled if needed)."""
        return self.compile(X, Y).graph

    # --- evaluation ---------------------------------------------------------------------------
    def predict(self, X: Any, batch_size: int | None = 256) -> np.ndarray:
        """The model's output on ``X`` in evaluation mode (eagerly, ``batch_size`` rows at a
        time; the model's mode is restored afterwards)."""
        return predict(self.model, X, batch_size)

    def evaluate(self, X: Any, Y: Any, batch_size: int | None = 256) -> float:
        """The loss over all of ``X``, ``Y`` in evaluation mode, no gradients. Batches are
        combined so the result is what one batch of everything would give (summed for a
        ``reduction="sum"`` loss, averaged otherwise)."""
        return evaluate(self.model, self.loss, X, Y, batch_size)

    def __repr__(self) -> str:
        return (f"CompiledStep({type(self.model).__name__}, engine={self.engine_name!r}, "
                f"{len(self._compiled)} compiled batch shape(s))")


def _buffer_reader(m: Module, attr: str) -> Callable[[], np.ndarray]:
    return lambda: m._buffers[attr]


def _param_reader(p: Parameter) -> Callable[[], np.ndarray]:
    return lambda: p.data


def model_owns(model: Module, p: Parameter) -> bool:
    return any(q is p for q in model.parameters())


def _batches(n: int, batch_size: int | None) -> list[slice]:
    size = n if not batch_size or batch_size >= n else int(batch_size)
    return [slice(i, i + size) for i in range(0, n, max(size, 1))] if n else [slice(0, 0)]


def predict(model: Module, X: Any, batch_size: int | None = 256) -> np.ndarray:
    """``model(X)`` in evaluation mode, eagerly and in batches (mode restored afterwards)."""
    X = np.asarray(X)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        outs = [np.asarray(model(X[s])) for s in _batches(len(X), batch_size)]
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return np.concatenate(outs) if len(outs) > 1 else outs[0]


def evaluate(model: Module, loss: Callable[[Any, Any], Any], X: Any, Y: Any,
             batch_size: int | None = 256) -> float:
    """The loss of ``model`` on all of X, Y in evaluation mode (see ``CompiledStep.evaluate``)."""
    X, Y = np.asarray(X), np.asarray(Y)
    if len(X) != len(Y):
        raise InputError(f"evaluate: X has {len(X)} samples but Y has {len(Y)}")
    n = len(X)
    summed = getattr(loss, "reduction", None) == "sum"
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        for s in _batches(n, batch_size):
            value = float(np.asarray(loss(model(X[s]), Y[s])))
            rows = len(X[s])
            total += value if summed else value * rows / max(n, 1)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    return total


def compile_step(model: Module, loss: Callable[[Any, Any], Any], x_example: Any = None,
                 y_example: Any = None, engine: str = "tape", **engine_options: Any
                 ) -> CompiledStep:
    """A compiled training step for ``loss(model(x), y)`` with the named engine (``"tape"``,
    ``"symbolic"`` (matrix mode), ``"numeric"`` for tiny models); ``engine_options`` go to
    the engine (``anomaly=False`` skips the tape's NaN checks). The examples (arrays,
    shape tuples or ``adl.spec``) compile for that batch shape at once; other shapes are
    compiled when they come. See :class:`CompiledStep`."""
    return CompiledStep(model, loss, x_example, y_example, engine, **engine_options)


__all__ = ["CompiledStep", "StepOutput", "compile_step", "evaluate", "predict"]
