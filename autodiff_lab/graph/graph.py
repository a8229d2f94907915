"""The shared expression graph: a validated ``networkx.DiGraph`` that every engine reads.

Nodes are stable integers 0..n-1 in a topological order. Each node carries

* ``op``    -- the op-table name, or ``"input"``, ``"parameter"``, ``"constant"``;
* ``role``  -- ``"input"``, ``"parameter"``, ``"constant"`` or ``"op"``;
* ``shape``, ``dtype`` -- known from tracing;
* ``attrs`` -- the op's attributes (stride, axes, ...), JSON-friendly tuples and numbers;
* ``name``  -- for inputs and parameters; ``value`` for constants; ``loc``, the user's
  source line that created it (used in error messages).

An edge ``u -> v`` carries ``args``: the argument positions of ``v`` where ``u`` is used
(``x + x`` gives one edge with ``args=(0, 1)``). Outputs are named. networkx is used for
what it is good at (validation, pruning, topological order, drawing), never per step:
engines read the flat :attr:`Graph.order` and :meth:`Graph.operands` computed once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from autodiff_lab.errors import GraphError, GraphShapeError, InputError, ShapeError, TraceError
from autodiff_lab.graph.optable import OPS, get_op
from autodiff_lab.graph.tensor import (
    GraphBuilder,
    NodeRecord,
    Tensor,
    check_int_values,
    check_shape,
    describe,
)

LEAF_ROLES = ("input", "parameter", "constant")
FORMAT = "autodiff_lab.graph"
VERSION = 1


class Spec:
    """What :func:`trace` needs to know about one input: shape, dtype and role."""

    def __init__(self, shape: Any = (), dtype: Any = None, role: str = "input") -> None:
        if isinstance(shape, (bool, int)):
            raise TraceError(f"give a shape as a tuple, e.g. ({shape},), or a value as a float, "
                             f"e.g. {float(shape)}; a bare int {shape} is ambiguous")
        if not isinstance(shape, tuple):  # an example value: array, list or number
            arr = np.asarray(shape)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)):
                raise TraceError(f"cannot read a shape or an array from {shape!r}")
            shape, dtype = arr.shape, dtype or arr.dtype
        try:
            self.shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise TraceError(f"cannot read a shape from {shape!r}") from None
        if any(d < 0 for d in self.shape):
            raise TraceError(f"negative dimension in shape {self.shape}")
        self.dtype = np.dtype(dtype or np.float64).name
        if role not in ("input", "parameter"):
            raise TraceError(f"role must be 'input' or 'parameter', got {role!r}")
        self.role = role

    def __repr__(self) -> str:
        return f"Spec(shape={self.shape}, dtype={self.dtype!r}, role={self.role!r})"


def param(shape: Any = (), dtype: Any = None) -> Spec:
    """Mark a traced input as a parameter (drawn and counted as a weight).

    Args:
        shape: a shape tuple, or an example array (its shape and dtype).
        dtype: the float dtype (default float64, or the example's).

    Examples:
        >>> g = adl.trace(lambda w, x: adl.sum(w * x), w=adl.param((3,)), x=(3,))
        >>> list(g.parameters)
        ['w']
    """
    return Spec(shape, dtype, role="parameter")


def spec(shape: Any = (), dtype: Any = None) -> Spec:
    """An input of the given shape and dtype (tuples, arrays and floats also work directly).

    Args:
        shape: a shape tuple, or an example array (its shape and dtype).
        dtype: e.g. ``"float32"`` to trace a graph that computes in single precision, or an
            integer dtype for class labels.

    Examples:
        >>> g = adl.trace(lambda x: adl.sum(x * x), x=adl.spec((2,), "float32"))
        >>> adl.gradient(g, {"x": np.ones(2)}).grads["x"].dtype
        dtype('float32')
    """
    return Spec(shape, dtype, role="input")


def trace(fn: Callable[..., Any], /, **inputs: Any) -> Graph:
    """Trace ``fn`` into a :class:`Graph`.

    Each keyword names one argument of ``fn`` and gives its shape (a tuple), an example
    array (shape and dtype are taken from it), a float (a scalar), or a :class:`Spec`
    (``adl.param(...)`` marks a parameter). ``fn`` is called once with symbolic tensors;
    it may return one tensor (output ``"out"``), a tuple (``"out0"``, ``"out1"``...) or a
    dict of named tensors. Layers of :mod:`autodiff_lab.nn` may add auxiliary outputs
    (batch statistics of batch normalisation, see :attr:`Graph.auxiliary`).

    Args:
        fn: the function to trace, written with the ``adl`` functions, tensor operators
            and the numpy functions that have an op.
        **inputs: one keyword per argument of ``fn``: a shape tuple, an example array, a
            float, or ``adl.spec(...)`` / ``adl.param(...)``.

    Returns:
        The validated :class:`Graph` (``g.nx`` is the ``networkx.DiGraph``).

    Raises:
        TraceError: something in ``fn`` cannot be recorded (a comparison, ``if tensor:``,
            ``float(t)``, a numpy function without an op), naming your line.
        ShapeError: operands whose shapes do not fit an op, naming the node and shapes.

    Examples:
        >>> g = adl.trace(lambda w, x: adl.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2]),
        ...               w=adl.param((3,)), x=(2,))
        >>> len(g), list(g.inputs), list(g.outputs)
        (12, ['w', 'x'], ['out'])
        >>> out = g.evaluate({"w": np.array([2.0, -3.0, -3.0]), "x": np.array([-1.0, -2.0])})
        >>> print(np.round(out["out"], 4))
        0.7311
    """
    if not callable(fn):
        raise TraceError(f"trace needs a function, got {type(fn).__name__}")
    specs = {name: s if isinstance(s, Spec) else Spec(s) for name, s in inputs.items()}
    _check_signature(fn, specs)
    floats = [s.dtype for s in specs.values() if np.issubdtype(np.dtype(s.dtype), np.floating)]
    builder = GraphBuilder(np.result_type(*floats).name if floats else "float64")
    args = {name: builder.input(name, s.shape, s.dtype, s.role) for name, s in specs.items()}
    result = fn(**args)
    if isinstance(result, Mapping):
        named = {str(k): v for k, v in result.items()}
    elif isinstance(result, (tuple, list)):
        named = {f"out{i}": v for i, v in enumerate(result)}
    else:
        named = {"out": result}
    if not named:
        raise TraceError("the traced function returned no outputs")
    outputs = {}
    for name, value in named.items():
        if not isinstance(value, Tensor):
            value = builder.constant(value)
        elif value.builder is not builder:
            raise TraceError(f"output {name!r} comes from another trace")
        outputs[name] = value.node
    for name, value in builder.aux_outputs.items():
        if name in outputs:
            raise TraceError(f"the traced function returns an output named {name!r}, which is "
                             "also the name of a layer's auxiliary output; rename the output")
        outputs[name] = value.node
    return Graph.from_records(builder.nodes, outputs, auxiliary=builder.aux_outputs,
                              ignorable_inputs=builder.ignorable_inputs)


def _check_signature(fn: Callable[..., Any], specs: dict[str, Spec]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    missing = [n for n, p in params.items() if p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in specs]
    unknown = [n for n in specs if n not in params]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"no shape given for argument(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"{', '.join(unknown)} is not an argument of the function")
        raise TraceError("trace: " + "; ".join(parts) + f" (the function takes {', '.join(params)})")


def _to_tuple(v: Any) -> Any:
    """JSON lists back to the tuples attributes are made of."""
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list) else v


class Graph:
    """A validated computational graph (see the module docstring for its contents).

    Build one with :func:`trace`, :meth:`from_json` or :meth:`from_nx`; it validates on
    construction and is immutable afterwards, so engines may cache what they derive from it.
    """

    def __init__(self, g: nx.DiGraph, outputs: Mapping[str, int],
                 auxiliary: Iterable[str] = (), ignorable_inputs: Iterable[str] = ()) -> None:
        self.nx = g
        self.outputs: dict[str, int] = dict(outputs)
        self._fingerprint: str | None = None
        #: names of auxiliary outputs: values every engine computes and returns (in
        #: ``GradientResult.outputs``) but never the output differentiated by default
        self.auxiliary: frozenset[str] = frozenset(auxiliary)
        self._validate()
        self.order: list[int] = list(nx.lexicographical_topological_sort(g))
        self._operands: dict[int, tuple[int, ...]] = {
            v: self._collect_operands(v) for v in self.order if g.nodes[v]["role"] == "op"
        }
        self._check_shapes()
        self.inputs: dict[str, int] = {
            g.nodes[v]["name"]: v for v in self.order if g.nodes[v]["role"] in ("input", "parameter")
        }
        #: names whose values a caller may pass although the graph does not read them: the
        #: parameters and buffers of traced modules that this trace did not use (running
        #: statistics in training mode, ``num_batches_tracked``); other unknown names are errors
        self.ignorable_inputs: frozenset[str] = frozenset(ignorable_inputs) - set(self.inputs)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: list[NodeRecord], outputs: Mapping[str, int],
                     auxiliary: Iterable[str] = (), ignorable_inputs: Iterable[str] = ()) -> Graph:
        """Build from traced records: prune what does not reach an output, number 0..n-1."""
        keep = set(outputs.values())
        for i in range(len(records) - 1, -1, -1):
            if i in keep:
                keep.update(records[i].inputs)
        keep.update(i for i, r in enumerate(records) if r.role in ("input", "parameter"))
        new_id = {old: new for new, old in enumerate(sorted(keep))}
        g = nx.DiGraph()
        for old in sorted(keep):
            r = records[old]
            g.add_node(new_id[old], **_node_attrs(r))
        for old in sorted(keep):
            for pos, src in enumerate(records[old].inputs):
                _add_arg_edge(g, new_id[src], new_id[old], pos)
        return cls(g, {name: new_id[v] for name, v in outputs.items()}, auxiliary,
                   ignorable_inputs)

    @classmethod
    def from_nx(cls, g: nx.DiGraph, outputs: Mapping[str, int], auxiliary: Iterable[str] = (),
                ignorable_inputs: Iterable[str] = ()) -> Graph:
        """Wrap (a copy of) a networkx graph that follows the node/edge schema above."""
        return cls(g.copy(), outputs, auxiliary, ignorable_inputs)

    # --- validation -------------------------------------------------------------------------
    def _where(self, v: int) -> str:
        d = self.nx.nodes[v]
        return describe(v, d.get("op", "?"), d.get("loc", ""), d.get("name"))

    def _validate(self) -> None:
        g = self.nx
        if not nx.is_directed_acyclic_graph(g):
            cycle = [u for u, _ in nx.find_cycle(g)]
            raise GraphError(f"the graph has a cycle through nodes {cycle}")
        names: dict[str, int] = {}
        for v, d in g.nodes(data=True):
            if not isinstance(v, (int, np.integer)):
                raise GraphError(f"node ids must be integers, got {v!r}")
            for key in ("op", "role", "shape", "dtype"):
                if key not in d:
                    raise GraphError(f"node {v} has no {key!r}")
            if not isinstance(d["op"], str) or not isinstance(d["role"], str):
                raise GraphError(f"node {v}: op and role must be strings, got {d['op']!r} and "
                                 f"{d['role']!r}")
            try:
                d["shape"] = tuple(int(s) for s in d["shape"])
                if any(s < 0 for s in d["shape"]):
                    raise ValueError
            except (TypeError, ValueError):
                raise GraphError(f"{self._where(v)}: shape {d['shape']!r} is not a tuple of "
                                 "non-negative integers") from None
            try:
                dtype = np.dtype(d["dtype"])
            except (TypeError, ValueError):
                dtype = None
            if dtype is None or dtype.kind not in "biufc":
                raise GraphError(f"{self._where(v)}: dtype {d['dtype']!r} is not a numpy number "
                                 "type")
            d["dtype"] = dtype.name
            d.setdefault("attrs", {})
            if not isinstance(d["attrs"], Mapping):
                raise GraphError(f"{self._where(v)}: attrs must be a dict, got {d['attrs']!r}")
            d.setdefault("loc", "")
            role = d["role"]
            if role in LEAF_ROLES and d["op"] != role:
                raise GraphError(f"node {v}: a node of role {role!r} must have op {role!r}, "
                                 f"got {d['op']!r}")
            if role in ("input", "parameter"):
                name = d.get("name")
                if not name or not isinstance(name, str):
                    raise GraphError(f"{self._where(v)}: every input needs a name")
                if name in names:
                    raise GraphError(f"two inputs are named {name!r} (nodes {names[name]} and {v})")
                names[name] = v
                if g.in_degree(v):
                    raise GraphError(f"{self._where(v)}: an input cannot have arguments")
            elif role == "constant":
                value = d.get("value")
                if not isinstance(value, np.ndarray) or value.shape != d["shape"] \
                        or value.dtype.kind not in "biufc":
                    raise GraphError(f"{self._where(v)}: constant value missing or not a numeric "
                                     f"array of shape {d['shape']}")
                if g.in_degree(v):
                    raise GraphError(f"{self._where(v)}: a constant cannot have arguments")
            elif role == "op":
                get_op(d["op"])  # UnknownOpError names the op and lists the known ones
                op = OPS[d["op"]]
                unknown = set(d["attrs"]) - set(op.attrs)
                if unknown:
                    raise GraphError(f"{self._where(v)}: unknown attribute(s) {sorted(unknown)} "
                                     f"for {op.name}; it takes {sorted(op.attrs) or 'none'}")
            else:
                raise GraphError(f"node {v} has unknown role {role!r}")
        if not self.outputs:
            raise GraphError("a graph needs at least one named output")
        unknown_aux = sorted(self.auxiliary - set(self.outputs))
        if unknown_aux:
            raise GraphError(f"auxiliary output(s) {unknown_aux} are not outputs of the graph")
        if not self.main_outputs:
            raise GraphError("every output of the graph is auxiliary; a graph needs a main output")
        for name, v in self.outputs.items():
            if not _is_int(v) or v not in g:
                raise GraphError(f"output {name!r} refers to node {v}, which is not in the graph")

    def _collect_operands(self, v: int) -> tuple[int, ...]:
        slots: dict[int, int] = {}
        for u, _, data in self.nx.in_edges(v, data=True):
            for pos in data.get("args", ()):
                if pos in slots:
                    raise GraphError(f"{self._where(v)}: argument {pos} is given twice")
                slots[pos] = u
        n = len(slots)
        if sorted(slots) != list(range(n)):
            raise GraphError(f"{self._where(v)}: argument positions {sorted(slots)} are not 0..{n - 1}")
        return tuple(slots[i] for i in range(n))

    def _check_shapes(self) -> None:
        for v in self.order:
            d = self.nx.nodes[v]
            if d["role"] != "op":
                continue
            op = OPS[d["op"]]
            args = self._operands[v]
            try:
                shape = check_shape(op, [self.nx.nodes[u]["shape"] for u in args], d["attrs"],
                                    self._where(v))
            except ShapeError as exc:
                raise GraphShapeError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a shape rule fed attributes of a wrong kind
                raise GraphError(f"{self._where(v)}: attributes {d['attrs']} do not fit "
                                 f"{op.name} ({type(exc).__name__}: {exc})") from None
            if shape != d["shape"]:
                raise GraphShapeError(f"{self._where(v)}: recorded shape {d['shape']} but the "
                                      f"op's shape rule gives {shape}")
            for i in op.int_args:
                if i < len(args) and not np.issubdtype(np.dtype(self.nx.nodes[args[i]]["dtype"]),
                                                       np.integer):
                    raise GraphError(f"{self._where(v)}: argument {i} must be integer labels")
                if i < len(args) and self.nx.nodes[args[i]]["role"] == "constant":
                    check_int_values(op, i, self.nx.nodes[args[i]]["value"],
                                     [self.nx.nodes[u]["shape"] for u in args], d["attrs"],
                                     self._where(v))

    # --- reading ------------------------------------------------------------------------------
    def node(self, v: int) -> dict[str, Any]:
        """The attributes of node ``v`` (op, role, shape, dtype, attrs, name, value, loc)."""
        return self.nx.nodes[v]

    def operands(self, v: int) -> tuple[int, ...]:
        """The argument node ids of op node ``v``, in argument order (empty for leaves)."""
        return self._operands.get(v, ())

    def describe(self, v: int) -> str:
        """How error messages name node ``v``."""
        return self._where(v)

    @property
    def parameters(self) -> dict[str, int]:
        """The inputs marked as parameters (``adl.param``), by name."""
        return {n: v for n, v in self.inputs.items() if self.nx.nodes[v]["role"] == "parameter"}

    @property
    def main_outputs(self) -> dict[str, int]:
        """The outputs that are not auxiliary (what the traced function returned), by name."""
        return {n: v for n, v in self.outputs.items() if n not in self.auxiliary}

    @property
    def output(self) -> int:
        """The node id of the only main output (error when there are several)."""
        main = self.main_outputs
        if len(main) != 1:
            raise GraphError(f"the graph has {len(main)} outputs ({', '.join(main)});"
                             " name the one you mean")
        return next(iter(main.values()))

    def path_nodes(self, sources: list[int], target: int) -> list[int]:
        """Nodes on some path from one of ``sources`` to ``target``, in graph order (what a
        perturbation of the sources can change on its way to the target)."""
        downstream = set(sources)
        for v in self.order:
            if any(u in downstream for u in self.operands(v)):
                downstream.add(v)
        upstream = {target}
        for v in reversed(self.order):
            if v in upstream:
                upstream.update(self.operands(v))
        return [v for v in self.order if v in downstream and v in upstream]

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each input by name."""
        return {n: self.nx.nodes[v]["shape"] for n, v in self.inputs.items()}

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    # --- evaluation ----------------------------------------------------------------------------
    def evaluate(self, values: Mapping[str, Any], *, all_nodes: bool = False,
                 check_finite: bool = True) -> dict[Any, np.ndarray]:
        """Run the graph on ``values`` with the op table's numpy forwards (the reference).

        Returns the outputs by name, or, with ``all_nodes=True``, every node's value by id.
        """
        from autodiff_lab.graph.evaluate import evaluate
        return evaluate(self, values, all_nodes=all_nodes, check_finite=check_finite)

    # --- summary --------------------------------------------------------------------------
    def summary(self) -> str:
        """A short text: node counts, inputs, outputs, ops by kind, number of parameters."""
        g = self.nx
        ops = Counter(d["op"] for _, d in g.nodes(data=True) if d["role"] == "op")
        consts = sum(1 for _, d in g.nodes(data=True) if d["role"] == "constant")
        n_params = sum(int(np.prod(g.nodes[v]["shape"], dtype=np.int64))
                       for v in self.parameters.values())
        lines = [f"Graph: {len(self)} nodes ({sum(ops.values())} ops, {consts} constants, "
                 f"{len(self.inputs)} inputs), {len(self.outputs)} output(s)"]
        for name, v in self.inputs.items():
            d = g.nodes[v]
            lines.append(f"  {d['role']:<9} {name}: shape {d['shape']} {d['dtype']}")
        for name, v in self.outputs.items():
            d = g.nodes[v]
            kind = "auxiliary" if name in self.auxiliary else "output   "
            lines.append(f"  {kind} {name}: shape {d['shape']} {d['dtype']} <- node {v} {d['op']!r}")
        lines.append("  ops: " + ", ".join(f"{k}×{n}" for k, n in sorted(ops.items())))
        lines.append(f"  parameters: {n_params} scalars in {len(self.parameters)} tensor(s)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self, *, with_locations: bool = True) -> dict[str, Any]:
        """A JSON-ready description (nodes in order, operands by id, named outputs)."""
        nodes = []
        for v in self.order:
            d = self.nx.nodes[v]
            item: dict[str, Any] = {"id": v, "op": d["op"], "role": d["role"],
                                    "shape": list(d["shape"]), "dtype": d["dtype"]}
            if d.get("name"):
                item["name"] = d["name"]
            if d["attrs"]:
                item["attrs"] = {k: _jsonable(a) for k, a in sorted(d["attrs"].items())}
            if d["role"] == "op":
                item["inputs"] = list(self.operands(v))
            if d["role"] == "constant":
                value = np.asarray(d["value"])
                item["value"] = value.tolist()
            if with_locations and d.get("loc"):
                item["loc"] = d["loc"]
            nodes.append(item)
        out = {"format": FORMAT, "version": VERSION, "nodes": nodes,
               "outputs": dict(self.outputs)}
        if self.auxiliary:
            out["auxiliary"] = sorted(self.auxiliary)
        if self.ignorable_inputs:
            out["ignorable_inputs"] = sorted(self.ignorable_inputs)
        return out

    def to_json(self, indent: int | None = 1) -> str:
        """The graph as JSON text (:meth:`from_json` reads it back)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Graph:
        """Inverse of :meth:`to_dict`; validates like any other construction.

        Every problem -- a missing or mistyped field, a constant of the wrong size, an
        unknown op, shapes the ops do not fit -- is a :class:`GraphError` naming the node
        and the field.
        """
        if not isinstance(data, Mapping):
            raise GraphError("malformed graph description: expected a JSON object with "
                             f"'format', 'nodes' and 'outputs', got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise GraphError(f"not an autodiff_lab graph (format {data.get('format')!r})")
        if "version" in data and not (_is_int(data["version"]) and data["version"] == VERSION):
            raise GraphError(f"graph format version {data['version']!r}; this version of "
                             f"autodiff_lab reads version {VERSION}")
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise GraphError("malformed graph description: field 'nodes' must be a list of "
                             f"node objects, got {_kind(nodes)}")
        g = nx.DiGraph()
        operands: list[tuple[int, str, list[int]]] = []
        for k, item in enumerate(nodes):
            v, node, inputs = _parse_node(item, k)
            if v in g:
                raise GraphError(f"malformed graph description: two nodes have id {v}")
            g.add_node(v, **node)
            operands.append((v, node["op"], inputs))
        for v, op, inputs in operands:
            for pos, src in enumerate(inputs):
                if src not in g:
                    raise GraphError(f"malformed graph description: node {v} {op!r}: field "
                                     f"'inputs' refers to node {src}, which does not exist")
                _add_arg_edge(g, src, v, pos)
        raw_outputs = data.get("outputs")
        if not isinstance(raw_outputs, Mapping):
            raise GraphError("malformed graph description: field 'outputs' must be an object "
                             f"{{name: node id}}, got {_kind(raw_outputs)}")
        outputs = {}
        for name, v in raw_outputs.items():
            if not _is_int(v):
                raise GraphError(f"malformed graph description: output {name!r} must be a node "
                                 f"id (an integer), got {_kind(v)}")
            outputs[str(name)] = int(v)
        auxiliary = _name_list(data.get("auxiliary", ()), "auxiliary")
        ignorable = _name_list(data.get("ignorable_inputs", ()), "ignorable_inputs")
        return cls(g, outputs, auxiliary, ignorable)

    @classmethod
    def from_json(cls, text: str | bytes) -> Graph:
        """Read a graph written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphError(f"not a graph file: the text is not JSON ({exc.msg} at line "
                             f"{exc.lineno}, column {exc.colno})") from None
        except (TypeError, UnicodeDecodeError) as exc:
            raise GraphError(f"not a graph file: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the graph as JSON to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph saved with :meth:`save`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise GraphError(f"{str(path)!r} is not a graph file: it is not text (JSON)") from None
        try:
            return cls.from_json(text)
        except GraphError as exc:
            raise type(exc)(f"{str(path)!r}: {exc}") from None

    def fingerprint(self) -> str:
        """A hash of the graph's content (not of where it was traced): a cache key.
        Computed once (the graph is immutable)."""
        if self._fingerprint is None:
            text = json.dumps(self.to_dict(with_locations=False), sort_keys=True)
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        # equal graphs (same fingerprint) hash alike, so sets and dict keys agree with ==
        return hash(self.fingerprint())

    # --- rewriting --------------------------------------------------------------------------------
    def astype(self, dtype: Any) -> Graph:
        """A copy computing in float ``dtype``: every float input, constant and op of the
        graph takes that dtype (integer labels stay). ``g.astype("float64")`` is how
        gradcheck checks a float32 graph in double precision."""
        target = np.dtype(dtype)
        if target.kind != "f":
            raise InputError(f"astype needs a float dtype (float32, float64), got {target}")
        data = self.to_dict()
        for item in data["nodes"]:
            if np.dtype(item["dtype"]).kind == "f":
                item["dtype"] = target.name
                if item["role"] == "constant":
                    item["value"] = np.asarray(item["value"], dtype=target).tolist()
        return Graph.from_dict(data)

    def expand(self, ops: str | tuple[str, ...] = ("sigmoid",)) -> Graph:
        """A copy with the named composite ops written out in primitives (their ``decompose``).

        ``g.expand("sigmoid")`` draws the neuron as neg, exp, +1 and 1/x instead of one σ node.
        """
        from autodiff_lab.graph import functions as F

        wanted = {ops} if isinstance(ops, str) else set(ops)
        builder = GraphBuilder()
        env: dict[int, Tensor] = {}
        for v in self.order:
            d = self.nx.nodes[v]
            if d["role"] in ("input", "parameter"):
                env[v] = builder.input(d["name"], d["shape"], d["dtype"], d["role"])
            elif d["role"] == "constant":
                env[v] = builder.constant(d["value"], d["dtype"])
                builder.nodes[-1].loc = d.get("loc", "")
            else:
                args = [env[u] for u in self.operands(v)]
                op = OPS[d["op"]]
                if d["op"] in wanted and op.decompose is not None:
                    env[v] = op.decompose(F, *args, **d["attrs"])
                else:
                    env[v] = builder.op(d["op"], args, d["attrs"])
                    builder.nodes[-1].loc = d.get("loc", "")
        return Graph.from_records(builder.nodes, {n: env[v].node for n, v in self.outputs.items()},
                                  self.auxiliary, self.ignorable_inputs)

    # --- drawing --------------------------------------------------------------------------------
    def _repr_svg_(self) -> str | None:
        """The drawing without numbers, for Jupyter (``adl.render(g, values, grads=True)``
        shows the values and gradients)."""
        from autodiff_lab.errors import RenderError
        from autodiff_lab.render import to_svg
        try:
            return to_svg(self)
        except RenderError:  # too big to draw, or no Graphviz: Jupyter shows the summary
            return None


def _kind(x: Any) -> str:
    """How a message names a JSON value's type."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(x), type(x).__name__)


def _name_list(raw: Any, field: str) -> list[str]:
    """A JSON list of names (``auxiliary``, ``ignorable_inputs``), or our error."""
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, str) for n in raw):
        raise GraphError(f"malformed graph description: field {field!r} must be a list of "
                         f"names, got {_kind(raw)}")
    return list(raw)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _parse_node(item: Any, k: int) -> tuple[int, dict[str, Any], list[int]]:
    """One node of :meth:`Graph.from_dict`: (id, networkx attributes, operand ids)."""
    head = "malformed graph description"
    if not isinstance(item, Mapping):
        raise GraphError(f"{head}: nodes[{k}] must be an object, got {_kind(item)}")
    if "id" not in item:
        raise GraphError(f"{head}: nodes[{k}] has no field 'id'")
    if not _is_int(item["id"]):
        raise GraphError(f"{head}: nodes[{k}]: field 'id' must be an integer, got "
                         f"{_kind(item['id'])}")
    v = int(item["id"])
    where = f"{head}: node {v}"
    for key in ("op", "role", "shape", "dtype"):
        if key not in item:
            raise GraphError(f"{where} has no field {key!r}")
    for key in ("op", "role", "dtype"):
        if not isinstance(item[key], str):
            raise GraphError(f"{where}: field {key!r} must be a string, got {_kind(item[key])}")
    where = f"{head}: node {v} {item['op']!r}"
    shape = item["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise GraphError(f"{where}: field 'shape' must be a list of non-negative integers, "
                         f"got {shape!r}")
    dtype = _parse_dtype(item["dtype"], where)
    attrs = item.get("attrs", {})
    if not isinstance(attrs, Mapping):
        raise GraphError(f"{where}: field 'attrs' must be an object, got {_kind(attrs)}")
    node: dict[str, Any] = {"op": item["op"], "role": item["role"], "shape": tuple(shape),
                            "dtype": dtype, "attrs": {str(a): _to_tuple(x) for a, x in attrs.items()},
                            "loc": item.get("loc", "")}
    if not isinstance(node["loc"], str):
        raise GraphError(f"{where}: field 'loc' must be a string, got {_kind(node['loc'])}")
    if "name" in item:
        node["name"] = item["name"]
    if item["role"] == "constant":
        node["value"] = _parse_value(item, tuple(shape), dtype, where)
    inputs = item.get("inputs", [])
    if not isinstance(inputs, list) or not all(_is_int(u) for u in inputs):
        raise GraphError(f"{where}: field 'inputs' must be a list of node ids, got {inputs!r}")
    return v, node, [int(u) for u in inputs]


def _parse_dtype(text: str, where: str) -> str:
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biufc":
        raise GraphError(f"{where}: field 'dtype' must name a numpy number type such as "
                         f"'float64', got {text!r}")
    return dtype.name


def _parse_value(item: Mapping[str, Any], shape: tuple[int, ...], dtype: str,
                 where: str) -> np.ndarray:
    if "value" not in item:
        raise GraphError(f"{where}: a constant needs a field 'value'")
    raw = item["value"]
    try:
        if isinstance(raw, (str, bytes, Mapping)) or raw is None:
            raise TypeError
        value = np.asarray(raw, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise GraphError(f"{where}: field 'value' must be {dtype} numbers (nested lists of the "
                         f"node's shape {shape}), got {_short_json(raw)}") from None
    size = int(np.prod(shape, dtype=np.int64))
    if value.size != size:
        raise GraphError(f"{where}: field 'value' holds {value.size} number(s), but shape "
                         f"{shape} needs {size}")
    return value.reshape(shape)


def _short_json(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(a: Any) -> Any:
    if isinstance(a, tuple):
        return [_jsonable(x) for x in a]
    if isinstance(a, np.generic):
        return a.item()
    return a


def _node_attrs(r: NodeRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"op": r.op, "role": r.role, "shape": tuple(r.shape), "dtype": r.dtype,
                           "attrs": dict(r.attrs), "loc": r.loc}
    if r.name is not None:
        out["name"] = r.name
    if r.value is not None:
        out["value"] = r.value
    return out


def _add_arg_edge(g: nx.DiGraph, src: int, dst: int, pos: int) -> None:
    if g.has_edge(src, dst):
        g.edges[src, dst]["args"] = g.edges[src, dst]["args"] + (pos,)
    else:
        g.add_edge(src, dst, args=(pos,))


def load(path: str | Path) -> Graph:
    """Read a graph saved with :meth:`Graph.save` (JSON), validating it.

    Args:
        path: the file to read.

    Raises:
        GraphError: not a graph file, or a malformed one (the message names the node and the
            field); :class:`~autodiff_lab.errors.UnknownOpError` when it uses an op this
            process does not have (a custom op must be defined with ``adl.define_op`` first).

    Examples:
        >>> import os, tempfile
        >>> g = adl.trace(lambda x: adl.sum(adl.exp(x)), x=(2,))
        >>> path = os.path.join(tempfile.mkdtemp(), "g.json")
        >>> g.save(path)
        >>> adl.load(path) == g
        True
    """
    return Graph.load(path)
