"""Straight-line Python for small array graphs: the tape's fast path for tiny models.

On a graph like the vector sigmoid neuron (``w`` (3,), ``x`` (2,)) or a 16-8-16 MLP on a
batch of 4 the arithmetic takes a few microseconds; the general run loop's bookkeeping
(building argument lists, the slot lists, freeing values and leaving stand-ins, the checks
of each returned gradient) took ten times that. So a compiled program whose graph is small
(:data:`SMALL_NODES` nodes and :data:`SMALL_ELEMENTS` elements over all its values, at most)
also gets one generated Python function: the forward, then the backward in reverse, every
step one call of the op table's own rule -- the same ``forward`` / ``forward_saving`` /
``vjp`` / ``fused_vjp`` functions the general loop calls, in the same order, with the
node's attributes bound as constants -- on local variables. Fan-out sums are written out
(the first contribution assigns, the next ones add), and nothing is freed: every value of a
small graph fits in a few hundred kilobytes at most. ``program.source`` shows the function.
It is written on the program's second call (a program run once pays nothing for it), and
the compiled code is reused when the same graph is compiled again.

What stays with the general loop: anything but ``{name: ndarray of the input's shape and
dtype}`` for exactly the graph's inputs (lists, Python numbers, other dtypes, ignorable
names: the general loop converts, casts and names what is wrong), a ``seed``,
``keep_all``, and any exception a rule raises (the general loop raises it again with the
node named). With ``anomaly=True`` the value, the auxiliary outputs and the gradients are
checked once at the end, as the general loop checks them -- first one sum per array,
finite exactly when every element is, then (a program called often) one compiled test over
all of them -- and a non-finite one sends the call to the general loop, which names the
input or the op that produced it (or, for an infinite gradient of finite values, returns
the same numbers). A gradient made only of index steps' float64 scalar gradients at
distinct positions (the vector neuron's ``w`` and ``x``) holds exactly those scalars and
zeros, so its scalars are tested with ``math.isfinite`` instead. Unlike the general loop,
numpy's warnings in the generated forward are kept quiet by a warnings filter on the
module name the checked functions run under (:data:`CHECKED_MODULE`), installed once:
setting numpy's error state on every call, as the general loop does, cost 2-3 % of these
graphs' time (:data:`QUIET_FORWARD` switches that back on). With ``anomaly=False`` the
functions run under another name and numpy's warnings show, as in the general loop.

Values of shape ``()`` stay numpy scalars (``np.float64``) between steps instead of 0-d
arrays: numpy's arithmetic on its scalars is about 30 times cheaper, with the same dtype
rules and the same numbers; steps on float64 scalars whose op has a ``scalar`` form in the
op table are written as that form (Python operators on numpy scalars, ~20 times cheaper
than a ufunc call on one; ``math.exp`` and numpy's ``exp`` may differ in the last bit).
Numba was not used for these functions: compiling one costs
0.3-1 s per graph, many thousands of calls' worth of the time it would save.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from autodiff_lab.engines.base import GradientResult
from autodiff_lab.graph.evaluate import constant_value, working_dtype
from autodiff_lab.graph.optable import OPS, ScalarForm, index_key

if TYPE_CHECKING:
    from autodiff_lab.engines.tape import TapeProgram

#: graphs with at most this many nodes ...
SMALL_NODES = 200
#: ... and at most this many elements over all their values (inputs included) get a
#: generated function; past that the per-op overhead it saves is small next to the work,
#: and the general loop's freeing of values matters more
SMALL_ELEMENTS = 1 << 15
#: with ``anomaly`` on, the call from which the generated function tests its results with
#: one compiled function instead of numpy sums (see :class:`GeneratedGradient`)
COMPILED_CHECK_CALL = 100
#: with ``anomaly`` on, whether the generated forward silences numpy's warnings as the
#: general loop does. Off: setting and resetting numpy's error state costs 0.15 µs on the
#: vector neuron and 0.35 µs on the MLP 16-8-16 b4 (2-3 % of their calls, half of what the
#: check costs there). A NaN/Inf made by the forward can then show numpy's RuntimeWarning
#: once before the general loop, which runs silenced, raises the error naming the op.
QUIET_FORWARD = False
#: the module name (``__name__``) the generated functions of programs with ``anomaly`` on
#: run under: numpy attributes its RuntimeWarnings (overflow in exp, 0/0 ...) to the
#: calling frame's module, and one filter installed at import ignores them there, at no
#: cost per call. The check that follows the forward then raises our error naming the op.
CHECKED_MODULE = "autodiff_lab.engines.tape_generated"
#: the module name of the generated functions of programs with ``anomaly`` off (not filtered)
UNCHECKED_MODULE = "autodiff_lab.engines.tape_generated_unchecked"
warnings.filterwarnings("ignore", category=RuntimeWarning, module=re.escape(CHECKED_MODULE) + "$")


def _quiet_hooks() -> tuple[Callable, Any, Callable] | None:
    """numpy's error state as (set, "ignore everything", reset): ``np.errstate`` costs
    ~1.5 µs a call, more than a small graph's forward; its context variable costs ~0.1 µs.
    ``None`` if this numpy keeps it elsewhere (then warnings are not silenced here)."""
    try:
        from numpy._core import _ufunc_config as config
        var = config._extobj_contextvar
        with np.errstate(all="ignore"):
            ignore = var.get()
        return var.set, ignore, var.reset
    except (ImportError, AttributeError):
        return None


_QUIET = _quiet_hooks()

_LITERALS = (int, float, bool, str, type(None))


def _literal(value: Any) -> bool:
    """Whether ``repr(value)`` reads back as the same value (source stays readable)."""
    if isinstance(value, (tuple, list)):
        return all(_literal(v) for v in value)
    return type(value) in _LITERALS and (not isinstance(value, float) or math.isfinite(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {}

    def const(self, name: str, value: Any) -> str:
        """A name in the generated function's globals bound to ``value``."""
        self.namespace[name] = value
        return name

    def attrs(self, node: int, attrs: Mapping[str, Any]) -> str:
        parts = []
        for k, a in attrs.items():
            parts.append(f"{k}={a!r}" if _literal(a) else f"{k}={self.const(f'A{node}_{k}', a)}")
        return "".join(", " + p for p in parts)


_MATH = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "sin": math.sin,
         "cos": math.cos, "tanh": math.tanh, "abs": abs}


def _scalar_steps(program: TapeProgram) -> dict[int, ScalarForm]:
    """Steps on float64 scalars (the step and its arguments of shape ()) whose op has a
    ``scalar`` form: written as Python operators on numpy scalars, ~20 times cheaper than
    a ufunc call on them. (Not float32: the forms compute in double precision.)"""
    g = program.graph
    out: dict[int, ScalarForm] = {}
    f64 = np.dtype(np.float64)
    for fn, args, node, _attrs, _frees, saves in program._forward:
        form = OPS[g.node(node)["op"]].scalar if g.node(node)["op"] in OPS else None
        if form is None or saves or fn is not OPS[g.node(node)["op"]].forward:
            continue  # a fused step, a saving forward: the functions themselves
        if all(g.node(v)["shape"] == () and np.dtype(g.node(v)["dtype"]) == f64
               for v in (node, *args)):
            out[node] = form
    return out


def _scalar_expr(template: str, node: int, args: tuple[int, ...], attrs: Mapping[str, Any]
                 ) -> str:
    values = {k: repr(float(a)) if isinstance(a, (int, float)) and not isinstance(a, bool)
              else repr(a) for k, a in attrs.items()}
    return template.format(*(f"v{u}" for u in args), g=f"g{node}", ans=f"v{node}", **values)


def eligible(program: TapeProgram) -> bool:
    """Whether ``program``'s graph is small enough for a generated function."""
    if program.keep_all:
        return False
    g = program.graph
    if len(g) > SMALL_NODES or g.node(program.out_node)["shape"] != ():
        return False  # a non-scalar output needs a seed: the general loop
    total = 0
    for v in g.order:
        d = g.node(v)
        total += math.prod(d["shape"])
        if np.dtype(d["dtype"]).kind not in "fiub":
            return False
    return total <= SMALL_ELEMENTS


class GeneratedGradient:
    """The generated gradient function of a program, written on its second call (or when
    ``source`` is read): a program run once, as ``adl.gradient`` does, does not pay the
    ~0.3 ms of writing and compiling it. Returns ``None`` where the general loop must take
    the call (the first call, and see the module docstring).

    With ``anomaly`` on, the first version tests the results with numpy sums; from call
    :data:`COMPILED_CHECK_CALL` on (a program used in a loop) it is written again with one
    compiled test over all of them (:mod:`autodiff_lab.kernels.finite`), which costs one
    Numba compilation per combination of result types and machine, and about a tenth of
    the sums on every call after."""

    def __init__(self, program: TapeProgram) -> None:
        self._program: TapeProgram | None = program
        self._anomaly = program.anomaly
        self._fn: Callable[[Mapping[str, Any]], GradientResult | None] | None = None
        self._first: Callable[[Mapping[str, Any]], GradientResult | None] | None = None
        self._calls = 0

    def function(self) -> Callable[[Mapping[str, Any]], GradientResult | None]:
        """The final version (the compiled check where it applies), written now if needed."""
        fn = self._fn
        if fn is None:
            program = self._program
            fn = _generate(program, compiled_check=True) if self._anomaly else None
            fn = fn or self._first or _generate(program, compiled_check=False)
            self._fn = fn
            self._program = self._first = None
        return fn

    @property
    def source(self) -> str:
        return self.function().source

    def __call__(self, values: Mapping[str, Any]) -> GradientResult | None:
        fn = self._fn
        if fn is None:
            self._calls += 1
            if self._calls < 2:
                return None
            fn = self._first
            if self._calls >= COMPILED_CHECK_CALL or not self._anomaly:
                fn = self.function()
            elif fn is None:
                fn = self._first = _generate(self._program, compiled_check=False)
        return fn(values)


def build(program: TapeProgram) -> GeneratedGradient | None:
    """The generated gradient of ``program`` (written when first needed), or ``None`` if
    its graph is not small."""
    return GeneratedGradient(program) if eligible(program) else None


#: compiled code by source: the same graph compiled again reuses it
_CODE: dict[str, Any] = {}


def _compiled_checkers(count: int) -> list[tuple[Callable[..., Any], int]] | None:
    """(function, how many arrays it takes) testing ``count`` arrays in groups of at most
    ``finite.MAX_ARRAYS`` (``None`` if Numba cannot be loaded: the sums then stay)."""
    try:
        from autodiff_lab.kernels import finite
    except Exception:  # pragma: no cover - Numba missing or broken
        return None
    full, rest = divmod(count, finite.MAX_ARRAYS)
    sizes = [finite.MAX_ARRAYS] * full + ([rest] if rest else [])
    return [(finite.checker(n), n) for n in sizes]


def _scattered_position(g: Any, node: int, rule: Any, shape: tuple[int, ...]) -> int | None:
    """The flat position in its argument (of ``shape``) that the index step ``node`` picks,
    if ``node`` is an index of one element whose gradient rule is the op table's (zeros of
    the argument's shape with the gradient at that position); else ``None``."""
    d = g.node(node)
    if d["op"] != "index" or d["shape"] != () or rule is not OPS["index"].vjp_for(0):
        return None
    try:
        at = np.arange(math.prod(shape)).reshape(shape)[index_key(d["attrs"]["key"])]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return int(at) if np.ndim(at) == 0 else None


#: dtypes the compiled check takes (others keep the sums)
_COMPILED_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


def _generate(program: TapeProgram, compiled_check: bool = False
              ) -> Callable[[Mapping[str, Any]], GradientResult | None] | None:
    """The generated function of ``program``. ``compiled_check``: test the results with
    one compiled function (:mod:`autodiff_lab.kernels.finite`); ``None`` if that does not
    apply (numpy sums are the other way)."""
    p, g = program, program.graph
    w = _Writer()
    nd = w.const("_nd", np.ndarray)
    names = list(g.inputs)
    dtypes = {n: np.dtype(g.node(g.inputs[n])["dtype"]) for n in names}
    dtype = working_dtype(g, {n: np.empty(0, dt) for n, dt in dtypes.items()})
    shape_of = {v: g.node(v)["shape"] for v in g.order}
    lines = w.lines
    lines += ["def generated_gradient(values):",
              f"    if values.keys() != {w.const('_NAMES', frozenset(names))}:",
              "        return None"]
    checks = []
    for k, n in enumerate(names):
        v = g.inputs[n]
        lines.append(f"    v{v} = values[{n!r}]")
        checks.append(f"type(v{v}) is {nd} and v{v}.dtype is {w.const(f'_dt{k}', dtypes[n])} "
                      f"and v{v}.shape == {shape_of[v]!r}")
    if checks:
        lines.append("    if not (" + "\n            and ".join(checks) + "):")
        lines.append("        return None")
    for v, d in p._leaves:
        if d["role"] == "constant":
            lines.append(f"    v{v} = {w.const(f'C{v}', constant_value(g, v, dtype))}")
    # forward: the same functions the general loop calls (forward_saving where the fused
    # rule wants what it saves); numpy's warnings silenced only with QUIET_FORWARD
    quiet = p.anomaly and QUIET_FORWARD and _QUIET is not None
    if quiet:
        lines.append(f"    _token = {w.const('_quiet_on', _QUIET[0])}({w.const('_IGNORE', _QUIET[1])})")
        lines.append("    try:")
    start = len(lines)
    asarray = w.const("_asarray", np.asarray)
    scalar_types = w.const("_scalar_types", frozenset({np.ndarray, np.float64, np.float32,
                                                       np.float16, np.int64, np.int32,
                                                       np.bool_}))
    saved: set[int] = set()
    f64 = w.const("_f64", np.float64)
    w.namespace.update(_MATH)
    scalar = _scalar_steps(p)
    for fn, args, node, attrs, _frees, saves in p._forward:
        if node in scalar:  # float64 scalars: the op table's scalar form, as operators
            lines.append(f"    v{node} = {f64}({_scalar_expr(scalar[node].forward, node, args, attrs)})")
            continue
        call = f"{w.const(f'F{node}', fn)}({', '.join(f'v{u}' for u in args)}" \
               f"{w.attrs(node, attrs)})"
        if saves:
            lines.append(f"    v{node}, s{node} = {call}")
            saved.add(node)
        else:
            lines.append(f"    v{node} = {call}")
        if shape_of[node] == ():
            lines.append(f"    if type(v{node}) not in {scalar_types}: v{node} = {asarray}(v{node})")
        else:
            lines.append(f"    if type(v{node}) is not {nd}: v{node} = {asarray}(v{node})")
    if quiet:
        lines[start:] = ["    " + line for line in lines[start:]]
        lines += ["    finally:", f"        {w.const('_quiet_off', _QUIET[2])}(_token)"]
    # backward: the first contribution to a gradient assigns, later ones add
    out = p.out_node
    lines.append(f"    g{out} = {w.const('_one', dtype.type(1))}")
    has_grad = {out}
    f64_grads = {out} if dtype == np.float64 else set()  # gradients known to be np.float64
    # per wanted input, the float64 scalars its gradient is scattered from (None: it is not
    # made that way; see _scattered_position)
    wanted_nodes = {g.inputs[n] for n in p.wrt}
    scattered: dict[int, dict[int, str] | None] = {}
    for node, args, attrs, rules, _drops, fused in p._backward:
        if node not in has_grad:
            continue
        xs = "".join(f", v{u}" for u in args)
        kw = w.attrs(node, attrs)
        if fused is not None:
            s = f"s{node}" if node in saved else "None"
            lines.append(f"    c{node} = {w.const(f'V{node}', fused[0])}"
                         f"({w.const(f'W{node}', fused[1])}, {s}, g{node}, v{node}{xs}{kw})")
        for i, rule, u in rules:
            if u in wanted_nodes and scattered.get(u, {}) is not None:
                at = _scattered_position(g, node, rule, shape_of[u]) \
                    if node in f64_grads and fused is None else None
                if at is None or at in scattered.get(u, {}):
                    scattered[u] = None
                else:
                    scattered.setdefault(u, {})[at] = f"g{node}"
            if node in scalar:
                form = scalar[node].vjp[min(i, len(scalar[node].vjp) - 1)]
                expr = _scalar_expr(form, node, args, attrs)
                if not (form == "{g}" and node in f64_grads):  # g itself: no conversion
                    expr = f"{f64}({expr})"
                if u not in has_grad or u in f64_grads:
                    f64_grads.add(u)
            elif fused is not None:
                expr = f"c{node}[{i}]"
            else:
                expr = f"{w.const(f'R{node}_{i}', rule)}(g{node}, v{node}{xs}{kw})"
            lines.append(f"    g{u} = g{u} + {expr}" if u in has_grad else f"    g{u} = {expr}")
            if node not in scalar:
                f64_grads.discard(u)
            has_grad.add(u)
    # the gradients returned: arrays of the input's dtype that own their memory, each a
    # different one (add's rule hands g through unchanged); anything else is copied
    wanted = [(n, g.inputs[n]) for n in p.wrt]
    array, zeros = w.const("_array", np.array), w.const("_zeros", np.zeros)
    for k, (_n, v) in enumerate(wanted):
        dt = w.const(f"_wdt{k}", np.dtype(dtype))
        if v not in has_grad:
            lines.append(f"    r{k} = {zeros}({shape_of[v]!r}, {dt})")
            continue
        others = "".join(f" or g{v} is r{j}" for j in range(k))
        lines.append(f"    r{k} = g{v}")
        lines.append(f"    if not (type(r{k}) is {nd} and r{k}.dtype is {dt} and r{k}.base is None "
                     f"and r{k}.flags.writeable){others}:")
        lines.append(f"        r{k} = {array}(r{k}, {dt})")
    lines.append(f"    value = v{out} if type(v{out}) is {nd} else {asarray}(v{out})")
    aux = [v for v in dict.fromkeys(g.outputs.values()) if v != out]
    for v in aux:
        lines.append(f"    o{v} = v{v} if type(v{v}) is {nd} else {asarray}(v{v})")
    if p.anomaly:
        # the value, the auxiliary outputs and the gradients (the inputs are left to the
        # general loop's diagnosis, as there: one that reaches none of these is not reported)
        checked = [(f"o{v}", np.dtype(g.node(v)["dtype"])) for v in aux
                   if np.dtype(g.node(v)["dtype"]).kind == "f"]
        # a gradient scattered from scalars: its elements are those scalars and zeros
        # exactly, so the scalars are tested (~20 ns each) instead of the array
        scalars = [e for _n, v in wanted if scattered.get(v) for e in scattered[v].values()]
        checked += [(f"r{k}", dtype) for k, (_n, v) in enumerate(wanted)
                    if not scattered.get(v)]
        isfinite = w.const("_isfinite", math.isfinite)
        if compiled_check:
            if any(dt not in _COMPILED_DTYPES for _e, dt in checked):
                return None
            fns = _compiled_checkers(len(checked)) if checked else []
            if fns is None:
                return None
            # the value in Python (a scalar), the arrays in one call per group of up to
            # eight: every element's x - x is 0 exactly when it is finite
            calls, at = [f"{isfinite}({e})" for e in [f"v{out}", *scalars]], 0
            for k, (fn, n) in enumerate(fns):
                group = [e for e, _dt in checked[at:at + n]]
                calls.append(f"{w.const(f'_finite{k}', fn)}({', '.join(group)})")
                at += n
            lines.append("    if not (" + "\n            and ".join(calls) + "):")
        else:
            # one sum per array: finite exactly when every element is (a NaN or an Inf
            # makes it NaN or Inf; an overflow of finite values only sends the call to the
            # general loop, which returns the same numbers)
            total = w.const("_sum", np.add.reduce)
            parts = ["value", *scalars] + [f"{total}({e}, None)" for e, _dt in checked]
            lines.append(f"    if not {isfinite}(" + "\n            + ".join(parts) + "):")
        lines.append("        return None  # the general loop names the op")
    elif compiled_check:
        return None
    outputs = []
    for name, v in g.outputs.items():
        outputs.append(f"{name!r}: value" if v == out else f"{name!r}: o{v}")
    grads = ", ".join(f"{n!r}: r{k}" for k, (n, _v) in enumerate(wanted))
    lines.append(f"    return {w.const('_Result', GradientResult)}(value=value, grads={{{grads}}}, "
                 f"engine='tape', output={p.output!r}, info={{'path': 'generated'}}, "
                 f"outputs={{{', '.join(outputs)}}})")
    source = "\n".join(lines) + "\n"
    code = _CODE.get(source)
    if code is None:
        if len(_CODE) >= 256:
            _CODE.clear()
        code = _CODE[source] = compile(source, "<tape generated gradient>", "exec")
    w.namespace["__name__"] = CHECKED_MODULE if p.anomaly else UNCHECKED_MODULE
    exec(code, w.namespace)
    fn = w.namespace["generated_gradient"]
    fn.source = source
    return fn
