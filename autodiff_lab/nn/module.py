"""``Module``: the base class of every layer and model, PyTorch-style.

A module owns :class:`~autodiff_lab.nn.parameter.Parameter` objects, buffers (numpy arrays
that are state but not trained, e.g. batch norm's running statistics) and submodules, all
registered by plain attribute assignment in the order they are assigned, as in PyTorch::

    self.fc1 = Linear(784, 256)          # a submodule, named "fc1"
    self.weight = Parameter(...)         # a parameter
    self.register_buffer("running_mean", np.zeros(c))

Calling a module runs its ``forward`` on what it is given:

* numpy arrays (or numbers): evaluated at once with the op table's forwards (the ``adl``
  functions evaluate eagerly on arrays), inputs cast to the module's dtype;
* traced :class:`~autodiff_lab.graph.tensor.Tensor` values (inside ``adl.trace``): each
  parameter the layer uses becomes one input node of the graph with role ``"parameter"``,
  named by its module path (``"0.weight"``, ``"conv1.bias"``, exactly PyTorch's
  ``state_dict()`` keys); buffers it reads become plain inputs of the same kind of name.
  One node per parameter per trace, however often it is used.

So ``adl.trace(lambda x, y: loss(model(x), y), x=X, y=Y)`` builds the shared graph and
``adl.gradient(g, {**model.state_dict(), "x": X, "y": Y}, engine=...)`` differentiates it
with any engine; the gradients come back keyed by those names (``Parameter.name``).
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from autodiff_lab.errors import CheckpointError, InputError, ShapeError, TraceError
from autodiff_lab.graph.tensor import GraphBuilder, Tensor
from autodiff_lab.nn.parameter import Parameter

# --------------------------------------------------------------------------------------
# defaults: dtype and random generator
# --------------------------------------------------------------------------------------

_DEFAULTS: dict[str, Any] = {"dtype": np.dtype(np.float64), "rng": np.random.default_rng()}


def manual_seed(seed: int) -> None:
    """Seed the generator layers draw their initial weights (and dropout generators) from
    when no ``rng=`` is given: after ``nn.manual_seed(0)`` a model is built identically."""
    _DEFAULTS["rng"] = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    """The generator :func:`manual_seed` sets."""
    return _DEFAULTS["rng"]


def as_generator(rng: int | np.random.Generator | None) -> np.random.Generator:
    """``rng`` as a generator: ``None`` is the default generator, an int a fresh seeded one."""
    if rng is None:
        return _DEFAULTS["rng"]
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be None, an int seed or a numpy Generator, got {type(rng).__name__}")


def set_default_dtype(dtype: Any) -> None:
    """The dtype of parameters built without ``dtype=`` (float64 unless changed here)."""
    _DEFAULTS["dtype"] = float_dtype(dtype)


def get_default_dtype() -> np.dtype:
    """The dtype parameters get when no ``dtype=`` is given."""
    return _DEFAULTS["dtype"]


def float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy float dtype (float32 or float64), ``None`` -> the default."""
    if dtype is None:
        return _DEFAULTS["dtype"]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InputError(f"not a dtype: {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise InputError(f"parameters must be float32 or float64, got {dt}")
    return dt


# --------------------------------------------------------------------------------------
# what one trace remembers about the modules it runs (kept outside the graph code)
# --------------------------------------------------------------------------------------

@dataclass
class TraceState:
    """Per-trace bookkeeping of the nn layer, keyed by the graph builder."""

    nodes: dict[int, Tensor] = field(default_factory=dict)    # id(Parameter) -> its input node
    names: dict[str, int] = field(default_factory=dict)       # input name -> id of its owner
    buffers: dict[str, Tensor] = field(default_factory=dict)  # buffer name -> its input node
    calls: dict[str, int] = field(default_factory=dict)       # key -> how often it was used
    depth: int = 0
    tagged: set[int] = field(default_factory=set)  # nodes that already say which layer made them
    #: every module call of the trace, innermost first (what a layer-level drawing reads)
    module_calls: list[ModuleCall] = field(default_factory=list)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module while tracing: which module, how deep in the call tree, the
    node indices it recorded (``start`` to ``stop``), the tensors it read and returned."""

    path: str
    kind: str        # the module's class name
    depth: int       # 0 for the outermost module of the trace
    start: int
    stop: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    is_leaf: bool    # a module without submodules (Conv2d, ReLU ...)


_TRACES: weakref.WeakKeyDictionary[GraphBuilder, TraceState] = weakref.WeakKeyDictionary()


def trace_state(builder: GraphBuilder) -> TraceState:
    """The nn bookkeeping of the trace that ``builder`` records."""
    state = _TRACES.get(builder)
    if state is None:
        state = _TRACES[builder] = TraceState()
    return state


def unique_key(builder: GraphBuilder, key: str) -> str:
    """``key`` the first time a trace asks for it, then ``key@2``, ``key@3``...: a layer
    used twice in one trace gets one mask input / batch statistic per use."""
    state = trace_state(builder)
    n = state.calls.get(key, 0) + 1
    state.calls[key] = n
    return key if n == 1 else f"{key}@{n}"


def first_tensor(args: Any, kwargs: Mapping[str, Any]) -> Tensor | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            return a
    return None


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of a traced tensor or of anything numpy accepts."""
    return tuple(x.shape) if isinstance(x, Tensor) else np.shape(x)


def pair(v: Any, what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair (kernel sizes, strides ...), with our error."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v), int(v))
    try:
        t = tuple(int(a) for a in v)
    except (TypeError, ValueError):
        t = ()
    if len(t) != 2 or isinstance(v, str):
        raise InputError(f"{what} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def positive(v: Any, what: str, minimum: int = 1) -> int:
    """An int of at least ``minimum`` (layer sizes, groups ...), with our error."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise InputError(f"{what} must be an int >= {minimum}, got {v!r}")
    return int(v)


# --------------------------------------------------------------------------------------
# constructor arguments, recorded for nn.save / nn.load
# --------------------------------------------------------------------------------------

#: every Module subclass by "module.qualname" (what a saved model names its classes by)
REGISTRY: dict[str, type[Module]] = {}


def _record_arguments(init: Any) -> Any:
    """Wrap a subclass ``__init__`` so the outermost call stores its bound arguments."""
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):
        return init

    @functools.wraps(init)
    def wrapper(self: Module, *args: Any, **kwargs: Any) -> None:
        if "_config" not in self.__dict__:
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError:
                pass  # the constructor itself reports the bad call
            else:
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(sig.parameters)))  # self
                object.__setattr__(self, "_config", (sig, arguments))
        init(self, *args, **kwargs)

    wrapper.__signature__ = sig  # type: ignore[attr-defined]
    return wrapper


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` skipped: keys the checkpoint lacked and keys
    it had that the model does not."""

    missing_keys: list[str]
    unexpected_keys: list[str]


# --------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------

class Module:
    """Base class of layers and models (see the module docstring).

    Subclasses set parameters, buffers and submodules as attributes in ``__init__`` (after
    ``super().__init__()``) and write ``forward``. Their constructor arguments are recorded
    automatically, so :func:`autodiff_lab.nn.save` can rebuild the model.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_path", "")
        object.__setattr__(self, "training", True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_arguments(cls.__dict__["__init__"])  # type: ignore[misc]

    # --- registration ---------------------------------------------------------------------
    def _check_initialised(self) -> None:
        if "_parameters" not in self.__dict__:
            raise TraceError(f"{type(self).__name__}.__init__ must call super().__init__() "
                             "before assigning parameters, buffers or submodules")

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Module)) or name in self.__dict__.get("_parameters", ()) \
                or name in self.__dict__.get("_buffers", ()) \
                or name in self.__dict__.get("_modules", ()):
            self._check_initialised()
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif name in self.__dict__.get("_parameters", ()):
            if value is not None:
                raise TraceError(f"{self._describe()}: assign a nn.Parameter (or None) to "
                                 f"parameter {name!r}, not {type(value).__name__}")
            self._parameters[name] = None
        elif name in self.__dict__.get("_buffers", ()):
            self._buffers[name] = None if value is None else np.asarray(value)
        elif name in self.__dict__.get("_modules", ()) and value is None:
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: parameters, buffers and submodules live here
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def _forget(self, name: str, keep: dict[str, Any] | None = None) -> None:
        """Remove ``name`` from every store but ``keep`` (re-assigning keeps the position)."""
        for store in (self._parameters, self._buffers, self._modules):
            if store is not keep:
                store.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (``None`` registers an absent one, e.g. ``bias=False``)."""
        self._check_initialised()
        if param is not None and not isinstance(param, Parameter):
            raise TraceError(f"register_parameter({name!r}) needs a nn.Parameter or None, got "
                             f"{type(param).__name__}")
        self._forget(name, keep=self._parameters)
        self._parameters[name] = param
        self._set_path(self._path)

    def register_buffer(self, name: str, value: Any, persistent: bool = True) -> None:
        """Add a buffer: state saved in the state dict but not trained (running statistics).
        ``persistent=False`` keeps it out of ``state_dict()``."""
        self._check_initialised()
        self._forget(name, keep=self._buffers)
        self._buffers[name] = None if value is None else np.asarray(value)
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a submodule under ``name`` (what attribute assignment does)."""
        if module is not None and not isinstance(module, Module):
            raise TraceError(f"add_module({name!r}) needs a Module, got {type(module).__name__}")
        self._check_initialised()
        self._forget(name, keep=self._modules)
        self._modules[name] = module
        self._set_path(self._path)

    def _set_path(self, path: str) -> None:
        """Name this module ``path`` and rename everything below it: a module's path is where
        it sits in the outermost model, a parameter's name its state-dict key. A module or
        parameter reachable twice (shared) takes its first name in traversal order, the
        name ``named_parameters()`` gives it, as in PyTorch."""
        seen_modules: set[int] = set()
        seen_params: set[int] = set()
        stack: list[tuple[str, Module]] = [(path, self)]
        while stack:
            prefix, m = stack.pop()
            if id(m) in seen_modules:
                continue
            seen_modules.add(id(m))
            object.__setattr__(m, "_path", prefix)
            for name, p in m._parameters.items():
                if p is not None and id(p) not in seen_params:
                    seen_params.add(id(p))
                    p.name = join(prefix, name)
            stack.extend(reversed([(join(prefix, k), c) for k, c in m._modules.items()
                                   if c is not None]))

    @property
    def path(self) -> str:
        """Where this module sits in the outermost model (``""`` for the model itself)."""
        return self._path

    # --- reading ---------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every submodule below it, with their names relative to this one."""
        seen: set[int] = set()
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(join(name, k), c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(children))

    def modules(self) -> list[Module]:
        """This module and every submodule."""
        return [m for _, m in self.named_modules()]

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct submodules with their names."""
        return ((k, m) for k, m in self._modules.items() if m is not None)

    def children(self) -> list[Module]:
        """The direct submodules."""
        return [m for _, m in self.named_children()]

    def named_parameters(self, prefix: str = "", recurse: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """Parameters with their state-dict names relative to this module, each once."""
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mname, m in modules:
            for k, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield join(mname, k), p

    def parameters(self, recurse: bool = True) -> list[Parameter]:
        """Every parameter, once each, in registration order (what optimisers take)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def named_buffers(self, prefix: str = "", recurse: bool = True
                      ) -> Iterator[tuple[str, np.ndarray]]:
        """Buffers (running statistics ...) with their state-dict names."""
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mname, m in modules:
            for k, b in m._buffers.items():
                if b is not None:
                    yield join(mname, k), b

    def buffers(self, recurse: bool = True) -> list[np.ndarray]:
        """Every buffer."""
        return [b for _, b in self.named_buffers(recurse=recurse)]

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars (each shared parameter counted once)."""
        return int(sum(p.size for p in self.parameters()))

    @property
    def dtype(self) -> np.dtype | None:
        """The float dtype of this module's parameters and float buffers (``None`` if it has
        none, e.g. an activation). The first one found decides (a training step asks
        several times a call: the walk stops there)."""
        for _, p in self.named_parameters():
            return p.dtype
        for _, b in self.named_buffers():
            if b.dtype.kind == "f":
                return b.dtype
        return None

    # --- state dict ---------------------------------------------------------------------------
    def _state_entries(self) -> list[tuple[str, Module, str, str]]:
        """(state-dict key, owning module, attribute, "parameter" | "buffer") in PyTorch's
        order: a module's parameters, then its buffers, then each submodule in turn."""
        out: list[tuple[str, Module, str, str]] = []
        # (key prefix, module, ids of its ancestors): a module shared by two parents is
        # listed under both names, as PyTorch does; a module inside itself is not followed
        stack: list[tuple[str, Module, frozenset[int]]] = [("", self, frozenset())]
        while stack:
            prefix, m, above = stack.pop()
            out.extend((join(prefix, k), m, k, "parameter")
                       for k, p in m._parameters.items() if p is not None)
            out.extend((join(prefix, k), m, k, "buffer") for k, b in m._buffers.items()
                       if b is not None and k not in m._non_persistent)
            inner = above | {id(m)}
            stack.extend(reversed([(join(prefix, k), c, inner) for k, c in m._modules.items()
                                   if c is not None and id(c) not in inner]))
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by PyTorch's key names and order (``"0.weight"``,
        ``"1.running_mean"``, ``"1.num_batches_tracked"``).

        The arrays are copies (a snapshot later training does not change), unlike
        PyTorch's, which share memory with the model.
        """
        out: dict[str, np.ndarray] = {}
        for key, m, attr, kind in self._state_entries():
            arr = m._parameters[attr].data if kind == "parameter" else m._buffers[attr]
            out[key] = np.array(arr, copy=True)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy a state dict's arrays into this model's parameters and buffers, in place
        (optimisers holding the parameters keep working), cast to the model's dtypes.

        Shapes must agree; with ``strict`` the keys must too. The error names the first key
        that differs (a checkpoint of another architecture), and how many more do.
        """
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"load_state_dict needs a dict {{name: array}}, got "
                                  f"{type(state_dict).__name__}")
        entries = self._state_entries()
        problems: list[str] = []
        missing: list[str] = []
        updates: list[tuple[np.ndarray, np.ndarray, Module, str, str]] = []
        for key, m, attr, kind in entries:
            target = m._parameters[attr].data if kind == "parameter" else m._buffers[attr]
            if key not in state_dict:
                missing.append(key)
                if strict:
                    problems.append(f"{key!r} (shape {target.shape}) is in the model but not in "
                                    "the state dict")
                continue
            try:
                value = np.asarray(state_dict[key])
            except Exception as exc:  # anything that is not an array
                problems.append(f"{key!r} is not an array ({exc})")
                continue
            if value.shape != target.shape:
                problems.append(f"{key!r} has shape {value.shape} in the state dict but "
                                f"{target.shape} in the model")
                continue
            if value.dtype.kind not in "fiub":
                problems.append(f"{key!r} holds {value.dtype} values, not numbers")
                continue
            updates.append((target, value, m, attr, kind))
        known = {key for key, *_ in entries}
        unexpected = [k for k in state_dict if k not in known]
        if strict:
            problems.extend(f"{k!r} is in the state dict but not in the model" for k in unexpected)
        if problems:
            more = f" (and {len(problems) - 1} more difference(s): " + "; ".join(problems[1:4]) + \
                ("; ..." if len(problems) > 4 else "") + ")" if len(problems) > 1 else ""
            raise CheckpointError(f"the state dict does not fit this {type(self).__name__}: "
                                  f"{problems[0]}{more}. Was it saved from another "
                                  "architecture or configuration?")
        for target, value, m, attr, kind in updates:
            if target.ndim == 0 and kind == "buffer":  # 0-d buffers are replaced, not aliased
                m._buffers[attr] = np.array(value, dtype=target.dtype)
            else:
                target[...] = value
        return LoadResult(missing, unexpected)

    # --- modes and dtypes ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, dropout on) for this module and all below it."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: batch norm uses its running statistics, dropout is the identity."""
        return self.train(False)

    def to(self, dtype: Any) -> Module:
        """Cast parameters and float buffers to ``dtype`` (float32 or float64), in place on
        the module (each parameter gets a new array; gradients are dropped)."""
        dt = float_dtype(dtype)
        for p in self.parameters():
            if p.data.dtype != dt:
                p.data = p.data.astype(dt)
                p.grad = None
        for m in self.modules():
            for k, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    m._buffers[k] = b.astype(dt)
        return self

    def float(self) -> Module:
        """Cast to float32 (fast training)."""
        return self.to(np.float32)

    def double(self) -> Module:
        """Cast to float64 (accurate gradient checks)."""
        return self.to(np.float64)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``grad = None``)."""
        for p in self.parameters():
            p.grad = None

    # --- running statistics and random inputs of a traced step ------------------------------------
    def update_running_stats(self, outputs: Mapping[str, np.ndarray], strict: bool = True
                             ) -> list[str]:
        """Apply the batch statistics a traced training step returned (``result.outputs``
        of any engine) to every batch-norm layer in training mode, as PyTorch does in its
        forward pass. Returns the paths of the layers updated.

        ``strict``: a layer in training mode whose statistics are missing from ``outputs``
        (a graph traced in evaluation mode, or from another model) is an error.
        """
        from autodiff_lab.nn.norm import _BatchNorm
        updated = []
        for _, m in self.named_modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                if m.apply_batch_statistics(outputs, strict=strict):
                    updated.append(m.path)
        return updated

    def dropout_masks(self, graph: Any) -> dict[str, np.ndarray]:
        """Fresh keep-masks for the dropout inputs of ``graph`` (a trace of this model in
        training mode), each drawn from its layer's seeded generator: add them to the values
        of every step (``compile_step`` does)."""
        from autodiff_lab.nn.dropout import Dropout
        masks: dict[str, np.ndarray] = {}
        for _, m in self.named_modules():
            if isinstance(m, Dropout):
                masks.update(m.masks_for(graph))
        return masks

    # --- calling --------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        traced = first_tensor(args, kwargs)
        if traced is None:
            args = self._cast_inputs(args)
            return self._run(args, kwargs)
        state = trace_state(traced.builder)
        if state.depth == 0:  # the outermost module of this trace: its whole state may be given
            traced.builder.ignorable_inputs.update(self.state_names())
        state.depth += 1
        start = len(traced.builder.nodes)
        try:
            result = self._run(args, kwargs)
        finally:
            state.depth -= 1
            self._tag_nodes(traced.builder, start)
        outs = result if isinstance(result, (tuple, list)) else \
            tuple(result.values()) if isinstance(result, Mapping) else (result,)
        state.module_calls.append(ModuleCall(
            self._path, type(self).__name__, state.depth, start, len(traced.builder.nodes),
            tuple(a.node for a in (*args, *kwargs.values()) if isinstance(a, Tensor)),
            tuple(o.node for o in outs if isinstance(o, Tensor)),
            not any(m is not None for m in self._modules.values())))
        return result

    def _tag_nodes(self, builder: GraphBuilder, start: int) -> None:
        """Say which layer made each node this call recorded (inner layers tag first), so
        errors and drawings name ``layers.3 (BatchNorm2d)`` and not only a line in norm.py."""
        where = f"{self._path} ({type(self).__name__})" if self._path else type(self).__name__
        tagged = trace_state(builder).tagged
        for i in range(start, len(builder.nodes)):
            rec = builder.nodes[i]
            if rec.role == "op" and i not in tagged:
                rec.loc = f"{where}, {rec.loc}" if rec.loc else where
                tagged.add(i)

    def _run(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        try:
            return self.forward(*args, **kwargs)
        except (ShapeError, TraceError, InputError) as exc:
            if getattr(exc, "_layer", None) is not None:
                raise  # an inner layer has already said where
            error = type(exc)(f"{self._describe()}: {exc}")
            error._layer = self._path  # type: ignore[attr-defined]
            raise error from None

    def state_names(self) -> list[str]:
        """The graph input names of this module's state (``Parameter.name`` and the buffers'
        full paths): names a traced graph accepts values for even when it does not use them."""
        base = self._path
        return [join(base, key) for key, *_ in self._state_entries()]

    def _cast_inputs(self, args: tuple) -> tuple:
        """Eager inputs in the module's dtype (loaders give float64; models may be float32)."""
        dtype = self._own_dtype()
        if dtype is None:
            return args
        out = []
        for a in args:
            if isinstance(a, (list, tuple, int, float)) and not isinstance(a, bool):
                a = np.asarray(a)
            if isinstance(a, np.ndarray) and a.dtype.kind in "fbiu" and a.dtype != dtype:
                a = a.astype(dtype)
            out.append(a)
        return tuple(out)

    def _own_dtype(self) -> np.dtype | None:
        for p in self._parameters.values():
            if p is not None:
                return p.dtype
        for b in self._buffers.values():
            if b is not None and b.dtype.kind == "f":
                return b.dtype
        return None

    def tensor(self, name: str, like: Any) -> Any:
        """Parameter or buffer ``name`` ready to compute with ``like``: its array when
        evaluating eagerly; when ``like`` is traced, its input node in that trace (created
        the first time: role ``"parameter"`` for parameters, ``"input"`` for buffers)."""
        if name in self._parameters:
            p = self._parameters[name]
            if p is None:
                return None
            if not isinstance(like, Tensor):
                return p.data
            return self._parameter_node(p, like)
        if name in self._buffers:
            b = self._buffers[name]
            if not isinstance(like, Tensor) or b is None:
                return b
            return self._buffer_node(name, b, like)
        raise AttributeError(f"{self._describe()} has no parameter or buffer {name!r}")

    def _parameter_node(self, p: Parameter, like: Tensor) -> Tensor:
        builder = like.builder
        state = trace_state(builder)
        node = state.nodes.get(id(p))
        if node is not None:
            return node
        self._check_dtype(p.data, p.name, like)
        owner = state.names.get(p.name)
        if owner is not None and owner != id(p):
            raise TraceError(f"two different parameters are both named {p.name!r} in one trace "
                             "(two models traced together?); give them different paths, e.g. "
                             "by putting both in one container")
        node = builder.input(p.name, p.data.shape, p.data.dtype.name, role="parameter")
        state.nodes[id(p)] = node
        state.names[p.name] = id(p)
        return node

    def _buffer_node(self, name: str, b: np.ndarray, like: Tensor) -> Tensor:
        full = join(self._path, name)
        state = trace_state(like.builder)
        node = state.buffers.get(full)
        if node is None:
            if b.dtype.kind == "f":
                self._check_dtype(b, full, like)
            node = like.builder.input(full, b.shape, b.dtype.name, role="input")
            state.buffers[full] = node
        return node

    def _check_dtype(self, arr: np.ndarray, name: str, like: Tensor) -> None:
        want = np.dtype(like.dtype)
        if want.kind == "f" and arr.dtype != want:
            raise TraceError(f"its parameters are {arr.dtype} ({name!r}) but its input is "
                             f"{want}; trace with inputs of the model's dtype "
                             f"(X.astype(np.{arr.dtype.name})) or cast the model "
                             f"(model.to(np.{want.name}))")

    # --- describing ------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The arguments shown inside ``ClassName(...)`` in the repr."""
        return ""

    def _describe(self) -> str:
        """How errors name this module: its path and what it is."""
        what = f"{type(self).__name__}({self.extra_repr()})"
        return f"layer {self._path!r} ({what})" if self._path else what

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        for name, m in self._modules.items():
            text = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {text}")
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"

    # --- saving --------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        """Class and constructor arguments (containers: their current children), enough for
        :func:`autodiff_lab.nn.load` to rebuild the module before loading its state."""
        from autodiff_lab.nn.serialize import describe_module
        return describe_module(self)

    def save(self, path: Any) -> None:
        """Same as ``nn.save(self, path)``."""
        from autodiff_lab.nn.serialize import save
        save(self, path)


__all__ = ["LoadResult", "Module", "ModuleCall", "as_generator", "default_generator", "float_dtype",
           "get_default_dtype", "manual_seed", "set_default_dtype"]
