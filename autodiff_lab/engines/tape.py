"""Reverse-mode automatic differentiation on a tape (level 3 of the three).

``compile`` turns the graph into a flat list of steps in topological order; every value
lives in a slot numbered by its node id. The forward pass runs the op table's forwards and
keeps only the values some backward rule reads (the op table's ``vjp_uses`` says whether a
rule reads the inputs, the result, or neither); the rest are dropped as soon as no later
step reads them. The backward pass starts from dL/dL = 1 (or a seed) and walks the tape in
reverse, multiplying the upstream gradient by each op's local derivative (its VJP rules)
and adding (``+=``) where a value fans out; a gradient and the values only it needed are
freed once its step is done. Loops only, no recursion: a 100,000-node chain is fine.

Two things make it fast without leaving the op table:

* heavy ops (convolution, pooling, batch norm, softmax cross-entropy, ReLU on big arrays)
  run Numba/BLAS kernels chosen by :mod:`autodiff_lab.kernels.dispatch` inside the op
  table's own rules; matrix products are numpy's BLAS calls. Where the op table gives an
  op a ``fused_vjp`` (convolution, batch norm), backward calls it once for all the wanted
  inputs instead of one rule per input, and a ``forward_saving`` forward hands it what it
  would otherwise compute again (batch norm's statistics, kept with the step until its
  backward has run). With ``keep_all`` off, the op table's fusions run as one step
  (ReLU after batch norm: one pass forward and one backward, and the normalised values
  are never stored);
* a graph made only of scalars whose ops have a ``scalar`` form in the op table (the
  sigmoid neuron, the scalar chain) is compiled once into straight-line Python on floats:
  no arrays, no per-op dispatch -- a few microseconds per gradient.
"""

from __future__ import annotations

import cmath
import gc
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autodiff_lab._lazy import lazy_module
from autodiff_lab.engines import tape_codegen
from autodiff_lab.engines.base import (
    Engine,
    GradientResult,
    Program,
    resolve_output,
    resolve_seed,
    resolve_wrt,
)
from autodiff_lab.errors import InputError, NonFiniteError, with_node
from autodiff_lab.graph.evaluate import (
    check_values,
    constant_value,
    nonfinite_message,
    working_dtype,
)
from autodiff_lab.graph.graph import Graph
from autodiff_lab.graph.optable import FUSIONS, OPS, Fusion, Op

#: arrays at least this big are checked for NaN/Inf through their sum (one fast pass; a
#: finite sum proves every element finite) before the exact element-wise check
_SUM_CHECK_SIZE = 4096
#: results with fewer elements are not written in place (malloc reuses small blocks well,
#: and the bookkeeping would cost more than it saves)
_IN_PLACE_MIN_SIZE = 4096
#: arrays up to this size are checked element by element in Python (no numpy call)
_SMALL_CHECK_SIZE = 32
#: the anomaly check of the general loop tests results with one compiled function
#: (:mod:`autodiff_lab.kernels.finite`, 3-8x faster than numpy's passes on big arrays and
#: one call for up to eight arrays) once a program has been checked
#: ``tape_codegen.COMPILED_CHECK_CALL`` times or numpy has tested this many elements of its
#: results: a program run a few times compiles nothing
_COMPILED_CHECK_ELEMENTS = 1 << 21
#: the dtypes the compiled check takes (other arrays keep numpy's checks)
_COMPILED_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})
#: a gradient is proven finite from the two factors of its products (the op table's
#: ``vjp_product_with``) when it has at least this many elements and more than both factors
#: together; smaller ones are tested directly (one compiled call costs as much as the proof)
_PROOF_MIN_SIZE = 1 << 14


@dataclass(frozen=True)
class Step:
    """One op on the tape: where its arguments are and whether backward must visit it."""

    node: int
    op: Op
    args: tuple[int, ...]
    attrs: dict[str, Any]
    needs_grad: tuple[bool, ...]  # per argument: does a wanted input depend on it?


def _fuse(steps: list[Step], outputs: set[int]) -> list[Step]:
    """The tape with each pair of the op table's :data:`FUSIONS` -- ``second`` reading only
    the result of ``first``, which nothing else reads and no output is -- as one step."""
    readers: dict[int, int] = {}
    for s in steps:
        for u in s.args:
            readers[u] = readers.get(u, 0) + 1
    by_node = {s.node: s for s in steps}
    merged: dict[int, Step] = {}
    for s in steps:
        first = by_node.get(s.args[0]) if len(s.args) == 1 else None
        if first is None or first.node in outputs or readers[first.node] != 1:
            continue
        fusion = FUSIONS.get((first.op.name, s.op.name))
        attrs = fusion.step_attrs(first.attrs, s.attrs) if fusion is not None else None
        if attrs is not None:  # the second op's attributes under the fusion's keywords
            merged[s.node] = Step(s.node, _fused_op(fusion), first.args, attrs,
                                  first.needs_grad)
    gone = {by_node[s.args[0]].node for s in steps if s.node in merged}
    return [merged.get(s.node, s) for s in steps if s.node not in gone]


_FUSED_OPS: dict[tuple[str, str], Op] = {}


def _fused_op(fusion: Fusion) -> Op:
    key = (fusion.first, fusion.second)
    if key not in _FUSED_OPS:
        _FUSED_OPS[key] = fusion.as_op()
    return _FUSED_OPS[key]


#: numpy's error state as (set, "ignore everything", reset), or None (tape_codegen.py)
_QUIET = tape_codegen._QUIET

_ONES: dict[np.dtype, np.ndarray] = {}
_ROW = 4096


def _finite_sum(a: np.ndarray) -> bool:
    """Whether the sum of ``a`` is finite (then every element is), for big ``a``: a
    contiguous real array as rows of 4096 times a vector of ones (one BLAS pass, 1.2-3x
    faster than numpy's sum), anything else through ``a.sum()``."""
    n = a.size // _ROW * _ROW
    if a.dtype.kind == "f" and a.flags.c_contiguous and a.dtype.isnative:
        ones = _ONES.get(a.dtype)
        if ones is None:
            ones = _ONES[a.dtype] = np.ones(_ROW, a.dtype)
        flat = a.reshape(-1)
        with np.errstate(all="ignore"):
            total = float((flat[:n].reshape(-1, _ROW) @ ones).sum()) + float(flat[n:].sum())
        return math.isfinite(total)
    with np.errstate(all="ignore"):
        return bool(np.isfinite(a.sum()))


def _nonfinite(a: np.ndarray) -> bool:
    """Whether ``a`` holds a NaN or an Inf (floats and complex only)."""
    if a.dtype.kind not in "fc":
        return False
    if a.size >= _SUM_CHECK_SIZE and _finite_sum(a):
        return False
    return not bool(np.isfinite(a).all())


def _all_finite(*groups: Any) -> bool:
    """Whether every float/complex array in ``groups`` (arrays or iterables of arrays) is
    free of NaN and Inf: one pass over each (its sum when big, exact otherwise)."""
    for group in groups:
        for a in (group,) if isinstance(group, np.ndarray) else group:
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype.kind not in "fc":
                continue
            if a.size <= _SMALL_CHECK_SIZE:  # Python's checks beat a numpy call here
                isfinite = math.isfinite if a.dtype.kind == "f" else cmath.isfinite
                if not all(map(isfinite, a.ravel().tolist())):
                    return False
            elif _nonfinite(a):
                return False
    return True


#: no early tests in the backward pass (the numpy checks at the end only)
_NO_CHECKS = itertools.repeat(frozenset())


def _compiled_all_finite() -> Callable[[list[Any]], bool] | None:
    """:func:`autodiff_lab.kernels.finite.all_finite` (real float32/float64 arrays only),
    falling back to :func:`_all_finite` if it fails; ``None`` if Numba cannot load."""
    try:
        from autodiff_lab.kernels import finite
    except Exception:  # pragma: no cover - Numba missing or broken: numpy's checks stay
        return None
    compiled = finite.all_finite

    def all_finite(arrays: list[Any]) -> bool:
        try:
            return compiled(arrays)
        except Exception:  # pragma: no cover - a compilation failure: numpy's check
            return _all_finite(arrays)

    return all_finite


#: the compiled checks, imported at their first use (only once a program is used in a loop)
_finite = lazy_module("autodiff_lab.kernels.finite")


def _products_finite(p: Any, q: Any, terms: int) -> bool:
    """:func:`autodiff_lab.kernels.finite.products_finite`; ``False`` (not proven) if it
    fails."""
    try:
        return _finite.products_finite(p, q, terms)
    except Exception:  # pragma: no cover - a compilation failure: the gradient is tested
        return False


def _stand_in(a: np.ndarray) -> np.ndarray:
    """A read-only array of ``a``'s shape and dtype holding one element: what a freed value
    leaves behind for rules that only read the shape."""
    return np.broadcast_to(np.zeros((), dtype=a.dtype), a.shape)


def _nbytes(shape: tuple[int, ...], itemsize: int) -> int:
    return int(math.prod(shape)) * itemsize


class TapeProgram(Program):
    """A compiled reverse-mode program (see the module docstring).

    Attributes worth reading: ``steps`` (the tape), ``backward_steps``, ``kept`` (node ids
    whose values the forward keeps for the backward), ``memory_bytes`` (the size of the
    buffer arena planned at compile time for one call's intermediate values and gradients,
    for the graph's dtype: each buffer reused once its value's last reader is done; what it
    leaves out is listed in :meth:`buffer_plan`) and ``memory_bytes_keep_all`` (the same if
    every value were kept, as a naive tape does), ``scalar_fast_path`` (whether calls run
    as generated straight-line Python).
    """

    def __init__(self, graph: Graph, wrt: list[str], output: str, *, anomaly: bool,
                 keep_all: bool, generate: bool = True) -> None:
        self.graph, self.wrt, self.output = graph, wrt, output
        self.anomaly, self.keep_all = anomaly, keep_all
        self.out_node = out_node = graph.outputs[output]
        wanted = {graph.inputs[n] for n in wrt}
        # nodes on a path from a wanted input: the only gradients backward computes
        depends: set[int] = set()
        for v in graph.order:
            if v in wanted or any(u in depends for u in graph.operands(v)):
                depends.add(v)
        # nodes the differentiated output depends on: backward visits nothing else; the
        # forward pass also runs what the other (e.g. auxiliary) outputs need
        to_output = _ancestors(graph, [out_node])
        reaches = _ancestors(graph, graph.outputs.values())
        self._output_nodes = dict(graph.outputs)
        self.steps = [
            Step(v, OPS[graph.node(v)["op"]], graph.operands(v), graph.node(v)["attrs"],
                 tuple(u in depends for u in graph.operands(v)))
            for v in graph.order if graph.node(v)["role"] == "op" and v in reaches
        ]
        # the per-op NaN/Inf diagnosis (anomaly mode, only after a non-finite result) runs
        # these unfused steps; the normal pass fuses unless every op's value is kept
        self._unfused_steps = self.steps
        self._diagnosis: list[tuple[Any, ...]] | None = None
        # the results check: numpy's until the program is used in a loop (_results_finite)
        self._checks = self._checked_elements = 0
        self._compiled_check: Callable[[list[Any]], bool] | None = None
        if not keep_all:  # keep_all returns every op's own value
            self.steps = _fuse(self.steps, {out_node, *graph.outputs.values()})
        self.backward_steps = [s for s in reversed(self.steps) if any(s.needs_grad)
                               and s.node in to_output]
        self._plan(wanted)
        self._leaves = [(v, graph.node(v)) for v in graph.order
                        if graph.node(v)["role"] != "op" and v in reaches]
        self._scalar_fn = None if keep_all else _ScalarCodegen(self).build()
        #: small array graphs: one generated function (engines/tape_codegen.py)
        self._generated_fn = None if self._scalar_fn is not None or not generate else \
            tape_codegen.build(self)

    # --- compile-time planning -----------------------------------------------------------
    def _plan(self, wanted: set[int]) -> None:
        """Decide which values backward needs and when each value and gradient can go."""
        g = self.graph
        kept: set[int] = {self.out_node}
        for s in self.backward_steps:
            if "inputs" in s.op.vjp_uses:
                kept.update(s.args)
            if "ans" in s.op.vjp_uses:
                kept.add(s.node)
        is_op = {s.node for s in self.steps}
        self.kept = {v for v in kept if v in is_op}
        # forward: free an intermediate after its last reader unless backward needs it
        last_read: dict[int, int] = {}
        for k, s in enumerate(self.steps):
            for u in s.args:
                last_read[u] = k
        free_after: list[list[int]] = [[] for _ in self.steps]
        outputs = set(self._output_nodes.values())
        for u, k in last_read.items():
            if u in is_op and u not in kept and u not in outputs and not self.keep_all:
                free_after[k].append(u)
        # a rule that does not read its inputs' values may still read their shapes
        # (add un-broadcasts to a.shape): those get a zero-byte stand-in of that shape
        shape_read = {u for s in self.backward_steps for u in s.args}
        # an op with a fused rule and a saving forward keeps what the forward saved for it
        saving = {s.node for s in self.backward_steps
                  if s.op.fused_vjp is not None and s.op.forward_saving is not None}
        self._forward = [(s.op.forward_saving if s.node in saving else s.op.forward, s.args,
                          s.node, s.attrs, tuple((u, u in shape_read) for u in free_after[k]),
                          s.node in saving)
                         for k, s in enumerate(self.steps)]
        # backward: a kept value can go after the last backward step that reads it
        last_back: dict[int, int] = {}
        for k, s in enumerate(self.backward_steps):
            reads = (list(s.args) if "inputs" in s.op.vjp_uses else []) + \
                    ([s.node] if "ans" in s.op.vjp_uses else [])
            for u in reads:
                last_back[u] = k
        drop_after: list[list[int]] = [[] for _ in self.backward_steps]
        for u, k in last_back.items():
            if u in self.kept and u != self.out_node and not self.keep_all:
                drop_after[k].append(u)
        # ops with a fused rule compute all their wanted input gradients in one call
        self._backward = [
            (s.node, s.args, s.attrs,
             tuple((i, s.op.vjp_for(i), u) for i, u in enumerate(s.args) if s.needs_grad[i]),
             tuple((u, u in shape_read) for u in drop_after[k]),
             None if s.op.fused_vjp is None else (s.op.fused_vjp, s.needs_grad))
            for k, s in enumerate(self.backward_steps)
        ]
        self._wanted = wanted
        # the anomaly check's early tests (_backward_pass): per backward step, the
        # positions in its rules of the last contribution to a wanted gradient
        last_added: dict[int, tuple[int, int]] = {}
        for k, (_node, _args, _attrs, rules, _drops, _fused) in enumerate(self._backward):
            for j, (_i, _rule, u) in enumerate(rules):
                if u in wanted:
                    last_added[u] = (k, j)
        complete: list[set[int]] = [set() for _ in self._backward]
        for k, j in last_added.values():
            complete[k].add(j)
        self._complete_at = [frozenset(c) for c in complete]
        self._proof_at = self._plan_proofs(last_added)
        self._plan_in_place(free_after)
        dtypes = {np.dtype(g.node(v)["dtype"]) for v in g.inputs.values()
                  if np.dtype(g.node(v)["dtype"]).kind == "f"}
        itemsize = max((d.itemsize for d in dtypes), default=8)
        self.memory_bytes = self.memory_report(itemsize)
        self.memory_bytes_keep_all = self.memory_report(itemsize, keep_all=True)

    def _plan_proofs(self, last_added: dict[int, tuple[int, int]]) -> list[dict[int, int]]:
        """Per backward step, for the early tests of ``_complete_at``: the position in its
        rules of a wanted gradient that this one rule makes alone, as sums of products of the
        upstream gradient with another input (the op table's ``vjp_product_with``), mapped
        to that input's position -- when the gradient is big and larger than both factors,
        the check proves it finite from them (``_products_finite``) instead of reading it.
        Fused rules are left out: their results are not the plain rule's."""
        g = self.graph
        makers: dict[int, int] = {}
        for _node, _args, _attrs, rules, _drops, _fused in self._backward:
            for _i, _rule, u in rules:
                makers[u] = makers.get(u, 0) + 1
        proofs: list[dict[int, int]] = [{} for _ in self._backward]
        for u, (k, j) in last_added.items():
            step, (node, args, _attrs, rules, _drops, fused) = \
                self.backward_steps[k], self._backward[k]
            pairs = step.op.vjp_product_with
            if pairs is None or fused is not None or makers[u] != 1:
                continue
            other = pairs[rules[j][0]]
            if other is None:
                continue
            size = math.prod(g.node(u)["shape"])
            factors = math.prod(g.node(node)["shape"]) + math.prod(g.node(args[other])["shape"])
            if size >= _PROOF_MIN_SIZE and size > factors:
                proofs[k][j] = other
        return proofs

    def _plan_in_place(self, free_after: list[list[int]]) -> None:
        """Plan the buffers the run loop writes into with ``out=``: the result of an op whose
        forward is a numpy ufunc (add, mul, exp, matmul...) when it dies during the forward
        pass (no backward rule reads it, it is no output) and so does every value that may
        be a view of it (an op that is not a ufunc may return a view of its argument). Such
        results never leave the call, so the next call can overwrite them; a buffer goes to
        the next such result of its size once its value's last reader has run."""
        g = self.graph
        death: dict[int, int] = {u: k for k, us in enumerate(free_after) for u in us}
        roots: dict[int, frozenset[int]] = {}  # buffers a value may view
        eligible: list[tuple[int, int]] = []
        for k, (fn, args, node, attrs, _frees, saves) in enumerate(self._forward):
            if isinstance(fn, np.ufunc):
                roots[node] = frozenset()
                if fn.nout == 1 and not attrs and not saves and node in death and \
                        np.dtype(g.node(node)["dtype"]).kind == "f" and \
                        math.prod(g.node(node)["shape"]) >= _IN_PLACE_MIN_SIZE:
                    roots[node] = frozenset({node})
                    eligible.append((k, node))
            else:
                roots[node] = frozenset().union(*(roots.get(u, frozenset()) for u in args))
        last = {c: death[c] for _k, c in eligible}
        for v, rs in roots.items():
            for c in rs:
                last[c] = max(last[c], death.get(v, len(self._forward)))
        slots: dict[int, tuple[int, int]] = {}  # node -> (offset, elements) in the arena
        free: dict[int, list[int]] = {}
        ends: dict[int, list[int]] = {}
        top = 0
        by_step = dict(eligible)
        for k in range(len(self._forward)):
            c = by_step.get(k)
            if c is not None and last[c] < len(self._forward):
                n = int(math.prod(g.node(c)["shape"]))
                spare = free.get(n)
                offset = spare.pop() if spare else top
                if offset == top:
                    top += n
                slots[c] = (offset, n)
                ends.setdefault(last[c], []).append(c)
            for c in ends.pop(k, []):
                free.setdefault(slots[c][1], []).append(slots[c][0])
        self._in_place_slots = slots
        self._in_place_elements = top
        self._arenas: dict[np.dtype, dict[int, np.ndarray]] = {}
        self._arena_lock = threading.Lock()

    @property
    def in_place_bytes(self) -> int:
        """Bytes of the arena the run loop really writes into (see :meth:`_plan_in_place`),
        for the graph's dtype; the other values and gradients come from their kernels."""
        g = self.graph
        dtypes = [np.dtype(g.node(v)["dtype"]) for v in self._in_place_slots]
        return self._in_place_elements * max((d.itemsize for d in dtypes), default=0)

    def _arena(self, dtype: np.dtype) -> dict[int, np.ndarray]:
        """The in-place buffers as views of one array of ``dtype``, made on first use."""
        views = self._arenas.get(dtype)
        if views is None:
            flat = np.empty(self._in_place_elements, dtype)
            views = {c: flat[o:o + n].reshape(self.graph.node(c)["shape"])
                     for c, (o, n) in self._in_place_slots.items()}
            self._arenas[dtype] = views
        return views

    def memory_report(self, itemsize: int = 8, keep_all: bool | None = None) -> int:
        """Bytes of the buffer arena a call needs for its intermediate values and gradients,
        planned on the tape with shapes (``itemsize`` 8 for float64, 4 for float32): see
        :meth:`buffer_plan`."""
        return self.buffer_plan(itemsize, keep_all).arena_bytes

    def buffer_plan(self, itemsize: int = 8, keep_all: bool | None = None) -> BufferPlan:
        """Assign every intermediate value and gradient of one call to a buffer, in tape
        order, reusing a buffer of the same size as soon as the value or gradient in it has
        had its last reader (the freeing plan of :meth:`_plan`). Counted: every op's value
        (the output and auxiliary outputs too) and every gradient (the returned ones too),
        each living until the step after which the run loop lets it go. Not counted: the
        caller's input arrays and the constants; a rule's contribution before it is added
        into a gradient that fans in; scratch inside a kernel (the convolution's patch
        blocks, BLAS workspace); allocator slack and the kernels' recycling pool
        (:mod:`autodiff_lab.kernels.memory`)."""
        keep_all = self.keep_all if keep_all is None else keep_all
        g = self.graph
        size = {v: _nbytes(g.node(v)["shape"], itemsize) for v in g.order}
        alloc = _Allocator()
        for (_fn, _args, node, _attrs, frees, _saves) in self._forward:
            alloc.take(("v", node), size[node])
            if not keep_all:
                for u, _ in frees:
                    alloc.give(("v", u))
        grads: set[int] = {self.out_node}
        alloc.take(("g", self.out_node), size[self.out_node])
        for (node, _args, _attrs, rules, drops, _fused) in self._backward:
            if node not in grads:
                continue
            for _i, _rule, u in rules:
                if u not in grads:
                    grads.add(u)
                    alloc.take(("g", u), size[u])
            if not keep_all:
                if node not in self._wanted:
                    alloc.give(("g", node))
                for u, _ in drops:
                    alloc.give(("v", u))
        return BufferPlan(slots=dict(alloc.slot), buffer_bytes=list(alloc.buffers),
                          peak_live_bytes=alloc.peak, total_bytes=alloc.total)

    # --- running ---------------------------------------------------------------------------
    @property
    def scalar_fast_path(self) -> bool:
        """Whether this program runs as generated straight-line Python on floats."""
        return self._scalar_fn is not None

    @property
    def source(self) -> str | None:
        """The generated Python calls run (``None``: the general loop)."""
        fast = self._scalar_fn or self._generated_fn
        return None if fast is None else fast.source

    @property
    def generated_path(self) -> bool:
        """Whether calls run as one generated function of the op table's rules (small
        array graphs, :mod:`autodiff_lab.engines.tape_codegen`)."""
        return self._generated_fn is not None

    def __call__(self, values: Mapping[str, Any], seed: Any = None) -> GradientResult:
        fast = self._scalar_fn or self._generated_fn
        if fast is not None and seed is None:
            try:
                result = fast(values)
            except Exception:  # not plain floats, a rule refused...: the general loop says why
                result = None
            if result is not None:
                return result
        return self._run_arrays(values, seed)

    def _run_arrays(self, values: Mapping[str, Any], seed: Any) -> GradientResult:
        if not self.anomaly:
            return self._run_once(values, seed)[0]
        # anomaly mode: run unchecked, then one finite-check pass over the value, the
        # outputs and the gradients; only a non-finite result (or a failure) pays for the per-op
        # diagnosis, which raises NonFiniteError naming the first op that made a NaN/Inf.
        # With the compiled check, the backward pass tests each gradient once its last
        # contribution is in, while it is still in the cache (``early``)
        try:
            result, early = self._run_once(values, seed, early_check=self._compiled_check
                                           is not None)
        except NonFiniteError:
            raise
        except Exception:
            try:
                self._diagnose(values)  # a NaN upstream may be what made an op fail
            except NonFiniteError as exc:
                raise exc from None
            raise
        checked = [result.value]
        checked += [a for n, a in result.outputs.items() if n != self.output]  # aux outputs
        if early is None:
            checked += result.grads.values()
        else:  # the gradients the backward pass has not tested
            checked += [result.grads[n] for n in early[1]]
        # the inputs are not checked: a NaN/Inf in one that reaches the value or a gradient
        # is found (and named as an input) by the diagnosis; one that reaches neither is not
        if not (self._results_finite(checked) and (early is None or early[0])):
            self._diagnose(values)  # raises if a forward op made the NaN/Inf
        return result

    def _results_finite(self, arrays: list[Any]) -> bool:
        """Whether every float/complex array of ``arrays`` is free of NaN and Inf (exactly):
        numpy's checks (:func:`_all_finite`) at first, then, once the program is used in a
        loop (see :data:`_COMPILED_CHECK_ELEMENTS`), one compiled call for every float32 and
        float64 array of eight -- on a 784-256-784 MLP's two float32 weight gradients, in
        cache, 17 µs instead of 35-50 µs; on the value and six gradients of a 16-8-16 MLP
        1.3 µs instead of 6.7 µs."""
        check = self._compiled_check
        if check is None:
            self._checks += 1
            self._checked_elements += sum(getattr(a, "size", 1) for a in arrays)
            if self._checks >= tape_codegen.COMPILED_CHECK_CALL or \
                    self._checked_elements >= _COMPILED_CHECK_ELEMENTS:
                self._compiled_check = _compiled_all_finite() or _all_finite
            return _all_finite(arrays)
        fast: list[np.ndarray] = []
        rest: list[Any] = []  # complex, other dtypes, not arrays: numpy's checks
        for a in arrays:  # a scalar loss: Python's test (0.2 µs) beats a Numba call (~5 µs)
            (fast if type(a) is np.ndarray and a.dtype in _COMPILED_DTYPES
             and a.size > _SMALL_CHECK_SIZE else rest).append(a)
        return (not rest or _all_finite(rest)) and check(fast)

    def _diagnose(self, values: Mapping[str, Any]) -> None:
        """Re-run the forward pass, unfused, checking every op's result for NaN/Inf: raise
        :class:`NonFiniteError` naming the first op that produced one; return if none did
        (the non-finite number came from a backward rule, or from nowhere)."""
        g = self.graph
        if self._diagnosis is None:
            steps = self._unfused_steps
            last_read: dict[int, int] = {}
            for k, s in enumerate(steps):
                for u in s.args:
                    last_read[u] = k
            is_op = {s.node for s in steps}
            frees: list[list[int]] = [[] for _ in steps]
            for u, k in last_read.items():
                if u in is_op:
                    frees[k].append(u)
            self._diagnosis = [(s.op.forward, s.args, s.node, s.attrs, tuple(frees[k]))
                               for k, s in enumerate(steps)]
        arrays = check_values(g, values, check_finite=True)
        dtype = working_dtype(g, arrays)
        vals: list[Any] = [None] * len(g)
        for v, d in self._leaves:
            vals[v] = constant_value(g, v, dtype) if d["role"] == "constant" \
                else arrays[d["name"]]
        node = -1
        try:
            with np.errstate(all="ignore"):
                for fn, args, node, attrs, frees_k in self._diagnosis:
                    xs = [vals[u] for u in args]
                    out = np.asarray(fn(*xs, **attrs))
                    if _nonfinite(out):
                        raise NonFiniteError(nonfinite_message(g, node, xs, out))
                    vals[node] = out
                    for u in frees_k:
                        vals[u] = None
        except NonFiniteError:
            raise
        except Exception:  # not a NaN/Inf: the caller reports its own failure
            return

    def _run_once(self, values: Mapping[str, Any], seed: Any, early_check: bool = False
                  ) -> tuple[GradientResult, tuple[bool, list[str]] | None]:
        """One call without the NaN/Inf checks of the value and outputs; with
        ``early_check`` the backward pass's test of the gradients (see
        :meth:`_backward_pass`), else ``None``."""
        state = self.forward(values, _check=False)
        node_values = {v: a for v, a in enumerate(state.vals) if a is not None} \
            if self.keep_all else None
        grads, node_grads, early = self._backward_pass(state, seed, retain=False,
                                                       early_check=early_check)
        return GradientResult(value=state.value, grads=grads, engine="tape", output=self.output,
                              node_values=node_values, node_grads=node_grads,
                              outputs=state.outputs), early

    def forward(self, values: Mapping[str, Any], _check: bool = True) -> TapeState:
        """Run the forward pass only; the state holds what :meth:`backward` needs. With
        ``anomaly`` on, a non-finite output value raises :class:`NonFiniteError` naming
        the first op that produced a NaN/Inf."""
        g = self.graph
        anomaly = self.anomaly
        # anomaly mode's call checks the results; its diagnosis checks the inputs
        arrays = check_values(g, values, check_finite=anomaly and _check)
        dtype = working_dtype(g, arrays)
        vals: list[Any] = [None] * len(g)
        saved: dict[int, Any] = {}
        for v, d in self._leaves:
            if d["role"] == "constant":
                vals[v] = constant_value(g, v, dtype)
            else:
                vals[v] = arrays[d["name"]]
        # a program run from two threads at once: the second one allocates as usual
        arena = None
        if self._in_place_slots and self._arena_lock.acquire(blocking=False):
            arena = self._arena(dtype)
        # with anomaly checks on, our error names the op: numpy's warnings would be noise
        # (silenced through numpy's context variable: np.errstate costs ~0.7 µs a call)
        node = -1
        quiet = _QUIET if anomaly else None
        fallback = np.errstate(all="ignore") if anomaly and quiet is None else None
        token = quiet[0](quiet[1]) if quiet is not None else None
        if fallback is not None:
            fallback.__enter__()
        try:
            for fn, args, node, attrs, frees, saves in self._forward:
                xs = [vals[u] for u in args]
                buf = None if arena is None else arena.get(node)
                if buf is not None and all(type(x) is np.ndarray and x.dtype == dtype
                                           for x in xs):
                    out = fn(*xs, out=buf)
                else:
                    out = fn(*xs, **attrs)
                if saves:
                    out, saved[node] = out
                if type(out) is not np.ndarray:
                    out = np.asarray(out)
                vals[node] = out
                for u, stand_in in frees:
                    vals[u] = _stand_in(vals[u]) if stand_in else None
        except InputError as exc:  # a forward refused the values (labels): name the node
            if anomaly:
                try:
                    self._diagnose(values)
                except NonFiniteError as nf:
                    raise nf from None
            raise with_node(exc, g.describe(node)) from None
        finally:
            if token is not None:
                quiet[2](token)
            elif fallback is not None:
                fallback.__exit__(None, None, None)
            if arena is not None:
                self._arena_lock.release()
        outputs = {n: vals[v] for n, v in self._output_nodes.items()}
        if anomaly and _check and not self._results_finite([vals[self.out_node],
                                                             *outputs.values()]):
            self._diagnose(values)
        return TapeState(vals, dtype, vals[self.out_node], saved, outputs=outputs,
                         inputs=values if anomaly else None,
                         arrays=arrays)

    def backward(self, state: TapeState, seed: Any = None, retain: bool = False
                 ) -> dict[str, np.ndarray]:
        """Gradients (keyed by input name) from a :meth:`forward` state. ``retain=True``
        keeps the state usable for another backward pass (``adl.jacobian`` runs one per
        output row); otherwise values are freed as the pass goes."""
        if state.used:
            raise InputError("this forward state was consumed by a backward pass without "
                             "retain=True; run forward again")
        grads, _, _ = self._backward_pass(state, seed, retain=retain)
        if self.anomaly and state.inputs is not None and \
                not self._results_finite(list(grads.values())):
            self._diagnose(state.inputs)
        return grads

    def _backward_pass(self, state: TapeState, seed: Any, retain: bool,
                       early_check: bool = False
                       ) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray] | None,
                                  tuple[bool, list[str]] | None]:
        """Gradients by input name, every node's gradient (``keep_all``) and, with
        ``early_check`` (the compiled check loaded), whether the gradients tested during the
        pass are finite and the names of those it did not test: a float32/float64 gradient
        is tested right after its last contribution, while it is still in the cache
        (on the float32 784-256-784 MLP the test of W2's gradient, 0.8 MB, took ~30 µs after
        the next backward step and ~20 µs right after the product that made it), or proven
        finite from the two factors of the product that made it (``_proof_at``); the
        others, and one that the end copies to another dtype, are the caller's to test."""
        g, dtype = self.graph, state.dtype
        vals = state.vals if not retain else list(state.vals)
        state.used = not retain
        grads: list[Any] = [None] * len(g)
        owned = [False] * len(g)  # does grads[v] belong to us (safe to add into in place)?
        grads[self.out_node] = resolve_seed(g, self.output, seed, dtype)
        free = not (self.keep_all or retain)
        wanted = self._wanted
        saved = state.saved
        check = self._compiled_check if early_check else None
        finite = True
        tested: set[int] = set()
        for (node, args, attrs, rules, drops, fused), complete, proofs in zip(
                self._backward, self._complete_at if check is not None else _NO_CHECKS,
                self._proof_at):
            g_out = grads[node]
            if g_out is None:
                continue
            ans = vals[node]
            xs = [vals[u] for u in args]
            if fused is not None:
                try:
                    together = fused[0](fused[1], saved.get(node), g_out, ans, *xs, **attrs)
                except InputError as exc:
                    raise with_node(exc, g.describe(node)) from None
            for j, (i, rule, u) in enumerate(rules):
                # proven before the product runs: right after a two-thread product, a pass
                # over memory measured 2-3x slower than on its own
                proven = bool(proofs) and j in proofs and check is not None and finite and \
                    _products_finite(g_out, xs[proofs[j]], g_out.size)
                try:
                    contribution = together[i] if fused is not None else \
                        rule(g_out, ans, *xs, **attrs)
                except InputError as exc:  # a rule refused the values: name the node
                    raise with_node(exc, g.describe(node)) from None
                current = grads[u]
                if current is None:
                    grads[u] = contribution  # may alias g_out (add's rule): not ours yet
                elif owned[u]:
                    np.add(current, contribution, out=current, casting="unsafe")
                else:
                    total = current + contribution
                    grads[u] = total
                    owned[u] = type(total) is np.ndarray and total.ndim > 0
                if j in complete and finite:  # the last contribution to a wanted gradient
                    grad = grads[u]
                    if type(grad) is np.ndarray and grad.dtype in _COMPILED_DTYPES:
                        if not proven:
                            finite = check([grad])
                        tested.add(u)
            if free:
                saved.pop(node, None)
                if node not in wanted:
                    grads[node] = None
                for u, stand_in in drops:
                    vals[u] = _stand_in(vals[u]) if stand_in else None
        result: dict[str, np.ndarray] = {}
        returned = [grads[self.out_node]] if seed is not None else []
        for name in self.wrt:
            v = g.inputs[name]
            grad = grads[v]
            if grad is None:
                grad = np.zeros(g.node(v)["shape"], dtype=dtype)
                tested.add(v)
            elif not (type(grad) is np.ndarray and grad.dtype == dtype and grad.flags.writeable
                      and not any(np.may_share_memory(grad, r) for r in returned)):
                # a copy, so no returned gradient is the same memory as another one or as
                # the seed (add's rule passes g through unchanged), nor a read-only view
                if not (type(grad) is np.ndarray and grad.dtype == dtype):
                    tested.discard(v)  # a cast can overflow: the copy is tested
                grad = np.array(grad, dtype=dtype)
            returned.append(grad)
            result[name] = grad
        node_grads = None
        if self.keep_all:
            node_grads = {v: np.asarray(gv) for v, gv in enumerate(grads) if gv is not None}
        early = None
        if check is not None:
            early = (finite, [n for n in self.wrt if g.inputs[n] not in tested])
        return result, node_grads, early


@dataclass
class BufferPlan:
    """Where one call's intermediate values and gradients live (:meth:`TapeProgram.buffer_plan`):
    ``slots`` maps ``("v", node)`` (a value) or ``("g", node)`` (a gradient) to a buffer
    index, ``buffer_bytes`` gives each buffer's size."""

    slots: dict[tuple[str, int], int]
    buffer_bytes: list[int]
    #: the most bytes of values and gradients alive at one time (a lower bound of any plan)
    peak_live_bytes: int
    #: every value and gradient with a buffer of its own (what a plan without reuse needs)
    total_bytes: int

    @property
    def arena_bytes(self) -> int:
        """The arena's size: the sum of the buffers."""
        return sum(self.buffer_bytes)


class _Allocator:
    """Buffers handed out in tape order: a released buffer goes to the next value or
    gradient of exactly its size (shapes repeat layer after layer in a network)."""

    def __init__(self) -> None:
        self.buffers: list[int] = []
        self.slot: dict[tuple[str, int], int] = {}
        self.free: dict[int, list[int]] = {}
        self.live = self.peak = self.total = 0

    def take(self, key: tuple[str, int], nbytes: int) -> None:
        spare = self.free.get(nbytes)
        if spare:
            self.slot[key] = spare.pop()
        else:
            self.slot[key] = len(self.buffers)
            self.buffers.append(nbytes)
        self.live += nbytes
        self.total += nbytes
        self.peak = max(self.peak, self.live)

    def give(self, key: tuple[str, int]) -> None:
        b = self.slot.get(key)
        if b is None:
            return
        nbytes = self.buffers[b]
        self.free.setdefault(nbytes, []).append(b)
        self.live -= nbytes


@dataclass
class TapeState:
    """What a forward pass leaves for the backward pass: the kept values (by node id), the
    run's dtype, the output value and what saving forwards kept for their fused rules (by
    node id)."""

    vals: list[Any]
    dtype: np.dtype
    value: np.ndarray
    saved: dict[int, Any] = field(default_factory=dict)
    used: bool = False
    #: the value of every named output (auxiliary outputs included)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    #: the input values (anomaly mode: what a NaN/Inf diagnosis re-runs)
    inputs: Mapping[str, Any] | None = None
    #: the converted input arrays
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class _ScalarCodegen:
    """Generate one Python function for a graph of scalars from the op table's ``scalar``
    forms: forward as straight-line float arithmetic, then backward in reverse with every
    fan-out sum written out (the tape is known at compile time, so no bookkeeping runs)."""

    def __init__(self, program: TapeProgram) -> None:
        self.p = program

    def eligible(self) -> bool:
        g = self.p.graph
        if len(g.outputs) != 1:  # auxiliary outputs: the array path returns them
            return False
        for v in g.order:
            d = g.node(v)
            if d["shape"] != ():
                return False
            if d["role"] == "op" and OPS[d["op"]].scalar is None:
                return False
            if d["role"] != "op" and np.dtype(d["dtype"]).kind != "f":
                return False
            if d["role"] == "constant" and np.dtype(d["value"].dtype).kind not in "fiu":
                return False
        return np.dtype(g.node(self.p.out_node)["dtype"]) == np.float64

    def build(self) -> Callable[[Mapping[str, Any]], GradientResult | None] | None:
        if not self.eligible():
            return None
        p, g = self.p, self.p.graph
        lines = ["def scalar_gradient(values):",
                 "    if values.keys() != _NAMES:",
                 "        return None  # the array path says what is missing or unknown"]
        for v, d in p._leaves:
            if d["role"] == "constant":
                lines.append(f"    v{v} = {float(d['value'])!r}")
            else:
                lines.append(f"    v{v} = _float(values[{d['name']!r}])")
        for s in p.steps:
            lines.append(f"    v{s.node} = " + self._fmt(s.op.scalar.forward, s))
        # backward: the first contribution assigns, later ones add
        lines.append(f"    g{p.out_node} = 1.0")
        has_grad = {p.out_node}
        for s in p.backward_steps:
            if s.node not in has_grad:
                continue
            for i, u in enumerate(s.args):
                if not s.needs_grad[i]:
                    continue
                expr = self._fmt(s.op.scalar.vjp[min(i, len(s.op.scalar.vjp) - 1)], s)
                lines.append(f"    g{u} {'+=' if u in has_grad else '='} {expr}")
                has_grad.add(u)
        names = [(n, g.inputs[n]) for n in p.wrt]
        grads = ", ".join(f"g{v}" if v in has_grad else "0.0" for _, v in names)
        lines.append(f"    grads = ({grads},)" if names else "    grads = ()")
        if p.anomaly:
            # one test of the sum: a NaN or an Inf makes it NaN or Inf; an overflow of
            # finite numbers only sends the call to the array path, which returns them
            total = " + ".join([f"v{p.out_node}"] + [f"g{v}" for _, v in names if v in has_grad])
            lines += [f"    if not _isfinite({total}):",
                      "        return None  # the array path names the op"]
        dict_items = ", ".join(f"{n!r}: _f64(grads[{k}])" for k, (n, _) in enumerate(names))
        lines.append(f"    value = _f64(v{p.out_node})")
        lines.append(f"    return _Result(value=value, grads={{{dict_items}}}, "
                     f"engine='tape', output={p.output!r}, info={{'path': 'scalar'}}, "
                     f"outputs={{{p.output!r}: value}})")
        source = "\n".join(lines) + "\n"
        namespace: dict[str, Any] = {
            "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "sin": math.sin,
            "cos": math.cos, "tanh": math.tanh, "abs": abs, "_isfinite": math.isfinite,
            "_float": _plain_float, "_f64": np.float64, "_Result": GradientResult,
            "_NAMES": frozenset(g.inputs),
        }
        exec(compile(source, f"<tape scalar gradient of graph {g.fingerprint()}>", "exec"),
             namespace)
        fn = namespace["scalar_gradient"]
        fn.source = source
        self.p.scalar_source = source
        return fn

    @staticmethod
    def _fmt(template: str, s: Step) -> str:
        names = {str(k): f"v{u}" for k, u in enumerate(s.args)}
        attrs = {k: repr(float(a)) if isinstance(a, (int, float)) else repr(a)
                 for k, a in {**s.op.attrs, **s.attrs}.items()}
        return "(" + template.format(*names.values(), g=f"g{s.node}", ans=f"v{s.node}",
                                     **attrs) + ")"


_F64 = np.dtype(np.float64)


def _ancestors(graph: Graph, nodes: Iterable[int]) -> set[int]:
    """``nodes`` and every node they depend on (one reverse sweep, no recursion)."""
    found = set(nodes)
    for v in reversed(graph.order):
        if v in found:
            found.update(graph.operands(v))
    return found


def _plain_float(v: Any) -> float:
    """``v`` as a Python float if it is a float64 scalar (or a Python number); anything else
    raises, and the program takes the array path with its full input checks."""
    t = type(v)
    if t is float or t is np.float64:
        return float(v)
    if t is np.ndarray and v.ndim == 0 and v.dtype == _F64:
        return float(v)
    if t is int:
        return float(v)
    raise TypeError("not a float64 scalar")


class TapeEngine(Engine):
    """Reverse-mode AD. ``anomaly=True`` (the default) checks the value, the outputs and
    the gradients of each call for NaN/Inf and, if one is not finite, checks the inputs and
    runs the forward pass again checking every op, to name the non-finite input or the
    first op that made one (an input or intermediate NaN/Inf that reaches neither the value
    nor an output or gradient is not reported; ``False`` skips the checks);
    ``keep_all=True`` keeps and returns every node's value and gradient (for drawing);
    ``generate=False`` runs small array graphs on the general loop too instead of their
    generated function (:mod:`autodiff_lab.engines.tape_codegen`; same numbers, slower)."""

    name = "tape"

    def __init__(self, anomaly: bool = True, keep_all: bool = False, generate: bool = True
                 ) -> None:
        self.anomaly = anomaly
        self.keep_all = keep_all
        self.generate = generate

    def compile(self, graph: Graph, wrt: Iterable[str] | None = None,
                output: str | None = None) -> TapeProgram:
        output = resolve_output(graph, output)
        # Planning allocates a few small tuples per node; on a 100,000-node graph (millions
        # of live networkx objects) the cyclic collector's full passes took most of the
        # compile time, and nothing allocated here forms a cycle.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return TapeProgram(graph, resolve_wrt(graph, wrt), output, anomaly=self.anomaly,
                               keep_all=self.keep_all, generate=self.generate)
        finally:
            if was_enabled:
                gc.enable()
