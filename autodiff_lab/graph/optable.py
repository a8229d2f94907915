"""The op table: every primitive of autodiff_lab, defined once.

Each :class:`Op` entry says everything an engine or a drawing needs to know about one
primitive, side by side, so that "where is relu's derivative?" has one answer (here):

* ``shape``    -- shape rule ``shape(*input_shapes, **attrs) -> output shape``; raises
                  :class:`ShapeRuleError` with a plain sentence when operands do not fit
                  (the graph builder adds the node, op and source line to it);
* ``forward``  -- numpy forward ``forward(*xs, **attrs)``; generic in dtype (float32,
                  float64, and complex where ``complex_safe``);
* ``vjp``      -- one reverse-mode rule per input, ``vjp[i](g, ans, *xs, **attrs)``: the
                  upstream gradient ``g`` (shape of the output), the forward result ``ans``
                  and the inputs give the gradient with respect to input ``i`` (its shape).
                  ``None`` marks an input the op is not differentiable in (class labels).
                  The rules are hand-written numpy, independent of the SymPy forms, so the
                  symbolic engine is a real cross-check of the tape engine;
* ``sympy``    -- the element-wise SymPy form ``sympy(*xs, **attrs)`` on numpy ``object``
                  arrays of SymPy expressions (what the expanded symbolic engine uses);
* ``complex_safe`` -- the forward is real-analytic and gives the right complex-step
                  derivative (abs, relu, max and comparisons act on the real part);
* ``kink``     -- ``kink(*xs, **attrs) -> bool``: the inputs sit on a non-differentiable
                  point (relu at 0, ties of a max); engines warn there;
* ``kink_coord`` -- required for every op with a ``kink``:
                  ``kink_coord(lead, *xs, **attrs) -> array | None``, the *kink coordinates*
                  of the inputs: an array of signed distances to the op's kinks, one per
                  place where the op switches branch, whose sign says which branch is taken
                  and which is 0 exactly on a kink (so ``kink`` is "some coordinate is 0").
                  relu, leaky_relu, abs, sqrt: x; maximum/minimum: a − b; l1: ŷ − y; max
                  (reduction) and max pooling: for every element of every window,
                  x_i − max of the others (positive for the window's maximum, negative
                  for the rest, 0 on a tie). The inputs carry ``lead`` extra leading axes
                  (perturbed copies, as for ``batched``) and so does the result. Complex
                  inputs give complex coordinates (real part: the point; imaginary part:
                  the complex step's perturbation). ``None``: no kink for these attributes
                  (pow with an exponent ≥ 1, a max over one element). The numeric engine
                  compares their signs at x and at every perturbed point: a change of sign
                  means a finite-difference stencil straddles a kink;
* ``kink_convention`` -- what the engines' derivative is on a kink, in terms of the two
                  sides: ``"negative"`` (the branch of negative coordinate: relu'(0) = 0,
                  leaky_relu'(0) = alpha), ``"mean"`` (the mean of both branches: abs'(0) = 0,
                  ties of maximum/minimum and l1's sign(0) = 0) or ``None`` (no rule in terms
                  of one coordinate: ties of more than two in a max, max pooling's first
                  maximum, the infinite slope of sqrt at 0);
* ``batched``  -- forward with ``lead`` extra leading axes on every input (all inputs carry
                  them, possibly of size 1): the numeric engine uses it to evaluate many
                  perturbed copies in one call. The copies' axes come before the operand's
                  own axes (its batch axes included) and must never be broadcast against
                  them; the result equals stacking ``forward`` over the copies
                  (``tests/engines/test_batched_rules.py`` checks every entry). ``None``
                  (or raising NotImplementedError) means "loop over the copies";
* ``check_ints`` -- for ops that index with integer inputs (class labels):
                  ``check_ints(i, value, *input_shapes, **attrs)`` raises
                  :class:`~autodiff_lab.errors.LabelError` naming the value and the range
                  when integer input ``i`` holds a value the op cannot index with. The op's
                  forward and VJP check before they index; the graph builder checks constants
                  at trace time and the engines' input checks check integer inputs;
* ``label``    -- how the node is labelled in a drawing;
* ``decompose`` -- optional: the op written with more primitive ops (drawing at primitive level).
* ``elementwise`` -- each output element depends only on the same element of each
                  (broadcast) input; set by the element-wise helpers below;
* ``fused_vjp`` -- optional, for speed only: all the wanted input gradients from one call,
                  ``fused_vjp(wanted, saved, g, ans, *xs, **attrs) -> tuple`` (one entry per
                  input given, ``None`` where ``wanted[i]`` is false). Worth having where the
                  per-input rules repeat work (batch norm's x, γ and β rules share the same
                  sums; a convolution's input and weight gradients can share one patch
                  matrix of ``g``). The tape calls it once per step instead of the ``vjp``
                  rules; every other engine, and the drawing, keep using ``vjp``, which stays
                  the definition: ``tests/graph/test_optable.py`` checks that the two agree
                  for every entry that has both;
* ``forward_saving`` -- optional, with ``fused_vjp``: ``forward_saving(*xs, **attrs) ->
                  (result, saved)``, the forward that also returns what the fused rule can
                  reuse instead of computing again (batch norm's batch statistics). The tape
                  keeps ``saved`` with the step and passes it as ``fused_vjp``'s ``saved``;
                  without it (``saved=None``) the fused rule computes everything itself.
* ``vjp_product_with`` -- optional, for speed only: per input ``i``, the input ``j`` such
                  that the rule's result is made of sums of products ``g[·] · xs[j][·]``, each
                  element of ``g`` at most once per sum (a matrix product's ``g @ bᵀ`` and
                  ``aᵀ @ g``), or ``None``. The tape's NaN/Inf check then proves a gradient
                  finite from ``g`` and ``xs[j]`` when they are smaller than it (see
                  :func:`autodiff_lab.kernels.finite.products_finite`), and tests the gradient
                  itself otherwise; ``tests/graph/test_optable.py`` checks the claim on every
                  entry that makes it;
* ``matrix``   -- one matrix-level derivative rule per input, ``matrix[i](M, g, ans, *xs, **attrs)``,
                  written in the matrix-expression language ``M``
                  (``autodiff_lab/engines/matrix_expr.py``: ``@``, ``M.T``, ``*`` as Hadamard
                  product, ``M.step``, ``M.sum_to``, convolution adjoints ...) on whole-tensor
                  expressions; the symbolic engine's matrix mode differentiates with them and
                  prints the formulas they make. Written from the maths, not from ``vjp``.

Fusions (:data:`FUSIONS`, for speed only, read by the tape alone): a pair of ops the tape
may run as one step -- a one-input op ``second`` applied to the result of ``first`` when
nothing else reads that result (ReLU or leaky ReLU after batch norm: the normalised values
are never stored and re-read; the second op's attributes, such as the slope, are passed to
the fused rules under keywords of their own). A :class:`Fusion` gives the pair's ``forward_saving`` and
``fused_vjp`` (the gradients of ``first``'s inputs from the gradient of ``second``'s
result), as in an op entry; the two entries stay the definition, and
``tests/graph/test_optable.py`` checks each fusion against their composition.

Conventions (PyTorch's, followed by every engine): relu'(0) = 0, abs'(0) = 0,
leaky_relu'(0) = alpha; maximum/minimum split the gradient evenly on ties, and so does the
max reduction; max pooling sends a window's gradient to its first maximum.

Adding an op: write one ``_register(Op(...))`` entry below, a public function in
``autodiff_lab/graph/functions.py``, and its tests in ``tests/graph/test_optable.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from autodiff_lab._lazy import lazy_module
from autodiff_lab.errors import LabelError, OpDefinitionError, UnknownOpError
from autodiff_lab.kernels import dispatch as K  # Numba/BLAS for real floats, else conv_reference

#: SymPy, imported at the first SymPy form evaluated: a tape or numeric gradient never is
sp = lazy_module("sympy")

Shape = tuple[int, ...]


class ShapeRuleError(Exception):
    """Raised by a shape rule; the graph builder turns it into a ShapeError with context."""


@dataclass(frozen=True)
class ScalarForm:
    """The op on Python floats, as source text, for code generated for a whole scalar graph
    (the tape engine's fast path for graphs like the sigmoid neuron).

    ``forward`` is an expression in ``{0}``, ``{1}``… (the inputs) and attribute names
    (``{alpha}``); ``vjp[i]`` is the contribution to input ``i`` in ``{g}`` (upstream
    gradient), ``{ans}`` (the result), the inputs and the attributes. Names available:
    ``exp log sqrt sin cos tanh`` from :mod:`math`. Same conventions as the numpy rules.
    """

    forward: str
    vjp: tuple[str | None, ...]


@dataclass(frozen=True)
class Op:
    """One primitive operation (see the module docstring for what each field means)."""

    name: str
    shape: Callable[..., Shape]
    forward: Callable[..., np.ndarray]
    vjp: Sequence[Callable[..., np.ndarray] | None]
    sympy: Callable[..., np.ndarray] | None
    label: str
    complex_safe: bool = True
    n_args: tuple[int, int | None] = (1, 1)
    attrs: dict[str, Any] = field(default_factory=dict)
    kink: Callable[..., bool] | None = None
    kink_coord: Callable[..., np.ndarray | None] | None = None
    kink_convention: str | None = None
    batched: Callable[..., np.ndarray] | None = None
    int_args: frozenset[int] = frozenset()
    float_result: bool = True
    decompose: Callable[..., Any] | None = None
    vjp_uses: frozenset[str] = frozenset({"inputs", "ans"})
    doc: str = ""
    matrix: Sequence[Callable[..., Any] | None] | None = None
    scalar: ScalarForm | None = None
    check_ints: Callable[..., None] | None = None
    #: element-wise with numpy broadcasting (each output element a function of the same
    #: element of each input): the expanded symbolic mode's size guard measures the SymPy
    #: form of such an op instead of assuming every output depends on every input
    elementwise: bool = False
    fused_vjp: Callable[..., tuple[np.ndarray | None, ...]] | None = None
    forward_saving: Callable[..., tuple[np.ndarray, Any]] | None = None
    vjp_product_with: tuple[int | None, ...] | None = None

    def vjp_for(self, i: int) -> Callable[..., np.ndarray] | None:
        """The reverse-mode rule for input ``i`` (variadic ops repeat their last rule)."""
        if i < len(self.vjp):
            return self.vjp[i]
        rule = self.vjp[-1]
        if rule is None:
            return None
        return lambda g, ans, *xs, **attrs: rule(g, ans, *xs, index=i, **attrs)

    def per_input_vjps(self, wanted: Sequence[bool], g: Any, ans: Any, *xs: Any,
                       **attrs: Any) -> tuple[np.ndarray | None, ...]:
        """The ``vjp`` rules of the wanted inputs, one call each (what a ``fused_vjp``
        returns, computed the plain way; fused rules fall back on it)."""
        return tuple(self.vjp_for(i)(g, ans, *xs, **attrs) if want else None
                     for i, want in enumerate(wanted))

    def differentiable_in(self, i: int) -> bool:
        """Whether the op has a derivative with respect to input ``i``."""
        return self.vjp_for(i) is not None

    def matrix_for(self, i: int) -> Callable[..., Any] | None:
        """The matrix-level derivative rule for input ``i`` (``None``: not differentiable or
        no rule); variadic ops repeat their last rule, with ``index=i``."""
        if self.matrix is None:
            return None
        if i < len(self.matrix):
            return self.matrix[i]
        rule = self.matrix[-1]
        if rule is None:
            return None
        return lambda M, g, ans, *xs, **attrs: rule(M, g, ans, *xs, index=i, **attrs)


OPS: dict[str, Op] = {}


#: names a graph uses for its leaves: no op may take them
RESERVED_NAMES = frozenset({"input", "parameter", "constant"})
_VJP_USES = frozenset({"inputs", "ans"})


def validate_op(op: Op) -> None:
    """Check every field of an entry (built-in or defined with ``adl.define_op``).

    Raises :class:`OpDefinitionError` naming the op and the field: a wrong kind of value,
    rules whose number does not match the op's arguments, a derivative rule (``matrix``,
    ``scalar``) for an input the op is not differentiable in.
    """
    def bad(field_name: str, why: str) -> OpDefinitionError:
        return OpDefinitionError(f"op {op.name!r}: field {field_name!r} {why}")

    if not isinstance(op.name, str) or not op.name.isidentifier():
        raise OpDefinitionError(f"an op's name must be a Python identifier, got {op.name!r}")
    if op.name in RESERVED_NAMES:
        raise OpDefinitionError(f"{op.name!r} is the op of a graph's leaves; choose another name")
    for name in ("shape", "forward"):
        if not callable(getattr(op, name)):
            raise bad(name, f"must be a function, got {type(getattr(op, name)).__name__}")
    lo, hi = op.n_args
    if not (isinstance(lo, int) and lo >= 1 and (hi is None or (isinstance(hi, int) and hi >= lo))):
        raise bad("n_args", f"must be (least, most or None) argument counts, got {op.n_args!r}")
    if isinstance(op.vjp, (str, bytes)) or not isinstance(op.vjp, Sequence) or not op.vjp:
        raise bad("vjp", "must be a list with one reverse-mode rule (or None) per input")
    if any(rule is not None and not callable(rule) for rule in op.vjp):
        raise bad("vjp", "must hold functions vjp[i](g, ans, *xs, **attrs) or None")
    if all(rule is None for rule in op.vjp):
        raise bad("vjp", "has no rule: an op must be differentiable in at least one input")
    expected = hi if hi is not None else 1
    if len(op.vjp) != expected:
        raise bad("vjp", f"has {len(op.vjp)} rule(s) for an op of {hi} argument(s)"
                  if hi is not None else "of a variadic op must be one rule, repeated per input")
    if op.matrix is not None:
        if isinstance(op.matrix, (str, bytes)) or not isinstance(op.matrix, Sequence) \
                or len(op.matrix) != len(op.vjp):
            raise bad("matrix", f"must be a list of {len(op.vjp)} rule(s) (or None), one per "
                      "entry of 'vjp'")
        for i, (rule, vjp) in enumerate(zip(op.matrix, op.vjp)):
            if rule is not None and not callable(rule):
                raise bad("matrix", f"rule {i} must be a function matrix[i](M, g, ans, *xs, "
                          "**attrs) or None")
            if rule is not None and vjp is None:
                raise bad("matrix", f"has a rule for input {i}, which 'vjp' marks as not "
                          "differentiable")
    if op.vjp_product_with is not None:
        n = hi if hi is not None else len(op.vjp)
        pairs = op.vjp_product_with
        if not isinstance(pairs, tuple) or len(pairs) != len(op.vjp) or hi is None or not all(
                j is None or (type(j) is int and 0 <= j < n and j != i and op.vjp[i] is not None)
                for i, j in enumerate(pairs)):
            raise bad("vjp_product_with", f"must be a tuple of one argument position (or None) per "
                      f"entry of 'vjp', each another input than its own, got {pairs!r}")
    for name in ("sympy", "kink", "batched", "decompose", "check_ints"):
        value = getattr(op, name)
        if value is not None and not callable(value):
            raise bad(name, f"must be a function or None, got {type(value).__name__}")
    if not isinstance(op.label, str) or not op.label:
        raise bad("label", "must be a non-empty string (how a drawing labels the node)")
    if not isinstance(op.doc, str):
        raise bad("doc", "must be a string")
    for name in ("complex_safe", "float_result", "elementwise"):
        if not isinstance(getattr(op, name), bool):
            raise bad(name, f"must be True or False, got {getattr(op, name)!r}")
    if not isinstance(op.attrs, dict) or not all(isinstance(k, str) and k.isidentifier()
                                                 for k in op.attrs):
        raise bad("attrs", "must be a dict {attribute name: default value}")
    if not (isinstance(op.vjp_uses, frozenset) and op.vjp_uses <= _VJP_USES):
        raise bad("vjp_uses", f"must be a set of 'inputs' and 'ans', got {op.vjp_uses!r}")
    if not (isinstance(op.int_args, frozenset) and all(
            isinstance(i, int) and 0 <= i < (hi if hi is not None else len(op.vjp))
            for i in op.int_args)):
        raise bad("int_args", f"must be a set of argument positions, got {op.int_args!r}")
    if op.scalar is not None and (not isinstance(op.scalar, ScalarForm)
                                  or len(op.scalar.vjp) != len(op.vjp)):
        raise bad("scalar", "must be a ScalarForm with one rule per entry of 'vjp'")


def _register(op: Op) -> Op:
    if op.name in OPS:
        raise OpDefinitionError(f"op {op.name!r} is defined twice")
    validate_op(op)
    OPS[op.name] = op
    return op


def get_op(name: str) -> Op:
    """The table entry for ``name``; an :class:`UnknownOpError` listing the known ops otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op {name!r} (an op of your own must be defined with adl.define_op "
            f"before a graph using it is traced or loaded); the op table has: "
            f"{', '.join(sorted(OPS))}"
        ) from None


@dataclass(frozen=True)
class Fusion:
    """``second(first(*xs))`` as one op, for the tape (see the module docstring):
    ``forward_saving(*xs, **attrs) -> (result, saved)`` and
    ``fused_vjp(wanted, saved, g, ans, *xs, **attrs)`` -> the gradients of ``first``'s
    inputs, ``g`` and ``ans`` being the gradient and the value of ``second``'s result.
    ``vjp_uses`` as for an op (``"inputs"``: ``first``'s inputs).

    ``attrs`` are ``first``'s attributes and, under their own keywords, ``second``'s:
    ``second_attrs`` names every attribute of ``second`` as ``(attribute, keyword)``, the
    keyword none of ``first``'s attributes (leaky ReLU's slope ``alpha`` as
    ``leaky_alpha``); :meth:`step_attrs` makes them for a pair of steps."""

    first: str
    second: str
    forward_saving: Callable[..., tuple[np.ndarray, Any]]
    fused_vjp: Callable[..., tuple[np.ndarray | None, ...]]
    vjp_uses: frozenset[str] = frozenset({"inputs", "ans"})
    second_attrs: tuple[tuple[str, str], ...] = ()

    def step_attrs(self, first_attrs: dict[str, Any], second_attrs: dict[str, Any]
                   ) -> dict[str, Any] | None:
        """The keywords of the fused rules for a ``first`` step with ``first_attrs`` and a
        ``second`` step with ``second_attrs`` (its defaults where not given), or ``None``
        when ``second_attrs`` has an attribute the fusion does not take."""
        names = dict(self.second_attrs)
        if not set(second_attrs) <= set(names):
            return None
        defaults = OPS[self.second].attrs
        return {**first_attrs, **{kw: second_attrs.get(name, defaults[name])
                                  for name, kw in names.items()}}

    def as_op(self) -> Op:
        """The pair as an :class:`Op` the tape can put on its tape (not in :data:`OPS`)."""
        first, second = OPS[self.first], OPS[self.second]
        n = first.n_args[1] or first.n_args[0]

        def rule(i: int) -> Callable[..., np.ndarray]:
            def vjp_i(g, ans, *xs, **attrs):
                wanted = tuple(k == i for k in range(len(xs)))
                return self.fused_vjp(wanted, None, g, ans, *xs, **attrs)[i]
            return vjp_i

        return Op(name=f"{self.first}+{self.second}", shape=first.shape,
                  forward=lambda *xs, **attrs: self.forward_saving(*xs, **attrs)[0],
                  vjp=tuple(rule(i) for i in range(n)), sympy=None,
                  label=f"{first.label}+{second.label}", n_args=first.n_args,
                  attrs=self.step_attrs(dict(first.attrs), {}), vjp_uses=self.vjp_uses,
                  fused_vjp=self.fused_vjp,
                  forward_saving=self.forward_saving,
                  doc=f"{self.second} of {self.first}, as one step")


#: fusions the tape may apply, by (first op, second op)
FUSIONS: dict[tuple[str, str], Fusion] = {}


def _register_fusion(fusion: Fusion) -> Fusion:
    key = (fusion.first, fusion.second)
    if key in FUSIONS or fusion.first not in OPS or fusion.second not in OPS:
        raise ValueError(f"fusion {key} is defined twice or names an unknown op")
    names = [name for name, _ in fusion.second_attrs]
    keywords = [kw for _, kw in fusion.second_attrs]
    if (sorted(names) != sorted(OPS[fusion.second].attrs) or len(set(keywords)) != len(keywords)
            or set(keywords) & set(OPS[fusion.first].attrs)):
        raise ValueError(f"fusion {key} must name each attribute of {fusion.second!r} once, "
                         f"under a keyword that is not an attribute of {fusion.first!r}")
    FUSIONS[key] = fusion
    return fusion


# --------------------------------------------------------------------------------------
# helpers shared by many entries
# --------------------------------------------------------------------------------------

def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _is_int(v: Any) -> bool:
    """A true integer (Python or numpy), not a bool, a float or a string."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting of shapes, with our error message."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeRuleError(
            "operands could not be broadcast together: " + " and ".join(_fmt(s) for s in shapes)
        ) from None


def unbroadcast(g: np.ndarray, shape: Shape) -> np.ndarray:
    """Sum ``g`` over the axes broadcasting added or stretched, so it gets ``shape`` back."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1
    )
    out = np.add.reduce(g, axis=axes, keepdims=True) if axes else g
    return out if out.shape == tuple(shape) else out.reshape(shape)


def _same_shape(s: Shape, **_: Any) -> Shape:
    return s


def _ew(fn: Callable[..., Any], n: int = 1) -> Callable[..., np.ndarray]:
    """Element-wise SymPy form from a scalar function (object arrays in, object array out)."""
    vec = np.frompyfunc(fn, n, 1)

    def apply(*xs: np.ndarray, **_: Any) -> np.ndarray:
        return np.asarray(vec(*xs), dtype=object)

    return apply


def _poly(forward: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Batched form of a forward that already accepts extra leading axes."""
    return lambda lead, *xs, **attrs: forward(*xs, **attrs)


def _align(lead: int, xs: Sequence[np.ndarray], nominal_nd: int) -> list[np.ndarray]:
    """Give every operand ``nominal_nd`` axes after its ``lead`` batch axes (size-1 axes
    inserted after the batch axes), so numpy broadcasting lines up the nominal axes."""
    out = []
    for x in xs:
        missing = nominal_nd - (x.ndim - lead)
        out.append(x.reshape(x.shape[:lead] + (1,) * missing + x.shape[lead:]) if missing > 0 else x)
    return out


def _poly_broadcast(forward: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Batched form of a broadcasting element-wise forward."""
    def batched(lead: int, *xs: np.ndarray, **attrs: Any) -> np.ndarray:
        return forward(*_align(lead, xs, max(x.ndim - lead for x in xs)), **attrs)
    return batched


def _is_real(x: np.ndarray) -> bool:
    return not np.iscomplexobj(x)


def _re(x: np.ndarray) -> np.ndarray:
    return x.real if np.iscomplexobj(x) else x


def __getattr__(name: str) -> Any:
    """``relu`` and ``relu_step``, the SymPy functions of ReLU's form, live in
    :mod:`autodiff_lab.graph.sympy_functions` (defining them imports SymPy)."""
    if name in ("relu", "relu_step"):
        from autodiff_lab.graph import sympy_functions
        return getattr(sympy_functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sympy(name: str) -> Callable[[Any], Any]:
    """The SymPy function ``sympy.<name>`` as a form, looked up when first applied."""
    return lambda x: getattr(sp, name)(x)


def _sp_relu(x: sp.Expr) -> sp.Expr:
    from autodiff_lab.graph.sympy_functions import relu
    return relu(x)


def _sp_maximum(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    # (a + b + |a - b|) / 2: with real symbols its derivative is (1 + sign(a - b)) / 2,
    # which splits the gradient evenly on ties, as the numpy rule does.
    return (a + b + sp.Abs(a - b)) / 2


def _sp_minimum(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    return (a + b - sp.Abs(a - b)) / 2


# --------------------------------------------------------------------------------------
# element-wise binary ops (numpy broadcasting; the rules un-broadcast the gradient)
# --------------------------------------------------------------------------------------

def _binary(name: str, forward: Callable, vjp_a: Callable, vjp_b: Callable, sym: Callable,
            label: str, *, complex_safe: bool = True, kink: Callable | None = None,
            kink_convention: str | None = None,
            uses: frozenset[str] = frozenset({"inputs"}), doc: str = "",
            matrix: tuple[Callable, Callable] | None = None) -> Op:
    return _register(Op(
        name=name, n_args=(2, 2),
        shape=lambda a, b: broadcast_shapes(a, b),
        forward=forward,
        vjp=(lambda g, ans, a, b: unbroadcast(vjp_a(g, ans, a, b), a.shape),
             lambda g, ans, a, b: unbroadcast(vjp_b(g, ans, a, b), b.shape)),
        sympy=_ew(sym, 2), label=label, complex_safe=complex_safe, kink=kink,
        kink_coord=None if kink is None else _difference_coord,
        kink_convention=kink_convention,
        batched=_poly_broadcast(forward), vjp_uses=uses, doc=doc, elementwise=True,
        matrix=None if matrix is None else (
            lambda M, g, ans, a, b: M.sum_to(matrix[0](M, g, ans, a, b), a.shape),
            lambda M, g, ans, a, b: M.sum_to(matrix[1](M, g, ans, a, b), b.shape)),
    ))


_binary("add", np.add, lambda g, ans, a, b: g, lambda g, ans, a, b: g,
        lambda a, b: a + b, "+", uses=frozenset(), doc="a + b",
        matrix=(lambda M, g, ans, a, b: g, lambda M, g, ans, a, b: g))
_binary("sub", np.subtract, lambda g, ans, a, b: g, lambda g, ans, a, b: -g,
        lambda a, b: a - b, "−", uses=frozenset(), doc="a − b",
        matrix=(lambda M, g, ans, a, b: g, lambda M, g, ans, a, b: -g))
_binary("mul", np.multiply, lambda g, ans, a, b: g * b, lambda g, ans, a, b: g * a,
        lambda a, b: a * b, "×", doc="a · b (element-wise)",
        matrix=(lambda M, g, ans, a, b: g * b, lambda M, g, ans, a, b: g * a))
_binary("div", np.divide, lambda g, ans, a, b: g / b, lambda g, ans, a, b: -g * ans / b,
        lambda a, b: a / b, "÷", uses=frozenset({"inputs", "ans"}), doc="a / b",
        matrix=(lambda M, g, ans, a, b: g / b, lambda M, g, ans, a, b: -(g * a) / (b * b)))


def _tie_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # on a tie the real parts are equal, so a + (b − a)/2 keeps a's real part exactly and
    # the complex step sees half of each perturbation: the engines' even split
    return a + (b - a) / 2


def _maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if _is_real(a) and _is_real(b):
        return np.maximum(a, b)
    return np.where(_re(a) > _re(b), a, np.where(_re(a) < _re(b), b, _tie_mean(a, b)))


def _minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if _is_real(a) and _is_real(b):
        return np.minimum(a, b)
    return np.where(_re(a) < _re(b), a, np.where(_re(a) > _re(b), b, _tie_mean(a, b)))


def _difference_coord(lead: int, a: np.ndarray, b: np.ndarray, **_: Any) -> np.ndarray:
    """Kink coordinate of a choice between a and b (maximum, minimum, l1): a − b."""
    a, b = _align(lead, (a, b), max(a.ndim, b.ndim) - lead)
    return a - b


def _window_coord(flat: np.ndarray) -> np.ndarray | None:
    """Kink coordinates of a maximum over the last axis: x_i − (max of the others), i.e.
    top1 − top2 for the (first) maximum and x_i − top1 for the rest; 0 on a tie. −inf
    entries (padding) never win and never tie."""
    if flat.shape[-1] < 2:
        return None
    re = np.array(_re(flat), dtype=np.float64)  # a copy: the maximum is masked out below
    first = np.argmax(re, axis=-1)[..., None]
    top1 = np.take_along_axis(flat, first, axis=-1)
    np.put_along_axis(re, first, -np.inf, axis=-1)
    second = np.argmax(re, axis=-1)[..., None]
    alone = np.take_along_axis(re, second, axis=-1) == -np.inf
    with np.errstate(invalid="ignore"):
        out = flat - top1
        gap = np.where(alone, np.inf, top1 - np.take_along_axis(flat, second, axis=-1))
    np.put_along_axis(out, first, gap.astype(out.dtype), axis=-1)
    return out


def _share_first(a: np.ndarray, b: np.ndarray, first_wins: np.ndarray) -> np.ndarray:
    """1 where ``a`` is chosen, 0.5 on ties, 0 elsewhere, NaN where a or b is NaN (in the
    dtype of a and b)."""
    dtype = np.result_type(a, b)
    share = np.where(_re(a) == _re(b), 0.5, first_wins).astype(dtype)
    nan = np.isnan(_re(a)) | np.isnan(_re(b))
    if nan.any():
        share = np.where(nan, np.nan, share).astype(dtype, copy=False)
    return share


_binary("maximum", _maximum,
        lambda g, ans, a, b: g * _share_first(a, b, _re(a) > _re(b)),
        lambda g, ans, a, b: g * _share_first(b, a, _re(b) > _re(a)),
        _sp_maximum, "max",
        kink=lambda a, b: bool(np.any(_re(a) == _re(b))), kink_convention="mean",
        doc="element-wise maximum",
        # d max(a, b)/da = (1 + sign(a − b))/2: 1, 0, or ½ on a tie
        matrix=(lambda M, g, ans, a, b: g * (1 + M.sign(a - b)) / 2,
                lambda M, g, ans, a, b: g * (1 + M.sign(b - a)) / 2))
_binary("minimum", _minimum,
        lambda g, ans, a, b: g * _share_first(a, b, _re(a) < _re(b)),
        lambda g, ans, a, b: g * _share_first(b, a, _re(b) < _re(a)),
        _sp_minimum, "min",
        kink=lambda a, b: bool(np.any(_re(a) == _re(b))), kink_convention="mean",
        doc="element-wise minimum",
        matrix=(lambda M, g, ans, a, b: g * (1 - M.sign(a - b)) / 2,
                lambda M, g, ans, a, b: g * (1 - M.sign(b - a)) / 2))


# --------------------------------------------------------------------------------------
# element-wise unary ops
# --------------------------------------------------------------------------------------

def _unary(name: str, forward: Callable, vjp: Callable, sym: Callable, label: str, *,
           attrs: dict[str, Any] | None = None, complex_safe: bool = True,
           kink: Callable | None = None, kink_coord: Callable | None = None,
           kink_convention: str | None = None, uses: frozenset[str] = frozenset({"inputs"}),
           decompose: Callable | None = None, doc: str = "", matrix: Callable | None = None) -> Op:
    return _register(Op(
        name=name, shape=_same_shape, forward=forward, vjp=(vjp,), label=label,
        sympy=_ew(sym) if not attrs else (lambda x, **a: _ew(lambda v: sym(v, **a))(x)),
        attrs=attrs or {}, complex_safe=complex_safe, kink=kink, batched=_poly(forward),
        kink_coord=kink_coord if kink_coord is not None or kink is None else _identity_coord,
        kink_convention=kink_convention,
        vjp_uses=uses, decompose=decompose, doc=doc, matrix=None if matrix is None else (matrix,),
        elementwise=True,
    ))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -709 gives the right 0
        return 1.0 / (1.0 + np.exp(-x))


_REAL_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _relu(x: np.ndarray) -> np.ndarray:
    fast = K.relu_forward(x)
    if fast is not None:
        return fast
    return np.maximum(x, 0, out=K.recycled_like(x)) if _is_real(x) else x * (x.real > 0)


def _relu_vjp(g: np.ndarray, ans: np.ndarray, x: np.ndarray) -> np.ndarray:
    # read from the result: relu(x) > 0 exactly where x > 0, and is NaN where x is, so the
    # tape keeps relu's result (the next layer's input, kept anyway) and not its argument
    y = x if ans is None else ans  # callers without the result pass None
    fast = K.relu_backward(g, y)
    if fast is not None:
        return fast
    out = K.recycled_like(y) if type(g) is np.ndarray and g.shape == y.shape and \
        g.dtype == y.dtype else None
    if out is not None:  # relu'(y) (np.heaviside, as _relu_grad) then times g, in one array
        return np.multiply(g, np.heaviside(y, y.dtype.type(0), out=out), out=out)
    return g * _relu_grad(y)


def _nan_where_nan(step: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``step`` (a local derivative made by comparisons) with NaN where ``x`` is NaN: a
    comparison says False at a NaN, which would turn a NaN into a zero gradient."""
    nan = np.isnan(_re(x))
    if nan.any():
        return np.where(nan, np.nan, step).astype(step.dtype, copy=False)
    return step


def _relu_grad(x: np.ndarray) -> np.ndarray:
    """relu'(x): 1 for x > 0, 0 for x ≤ 0 (relu'(0) = 0), NaN at a NaN."""
    if type(x) is np.ndarray and x.dtype in _REAL_FLOATS:  # one ufunc call (small arrays)
        return np.heaviside(x, x.dtype.type(0))
    return _nan_where_nan((_re(x) > 0).astype(x.dtype), x)


def _leaky_relu(x: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    fast = K.leaky_relu_forward(x, alpha)
    if fast is not None:
        return fast
    return np.where(_re(x) > 0, x, alpha * x)


def _leaky_relu_vjp(g: np.ndarray, ans: np.ndarray, x: np.ndarray, alpha: float = 0.01
                    ) -> np.ndarray:
    fast = K.leaky_relu_backward(g, x, alpha)
    if fast is not None:
        return fast
    return g * _nan_where_nan(np.where(_re(x) > 0, 1, alpha).astype(x.dtype), x)


def _abs(x: np.ndarray) -> np.ndarray:
    # numpy's abs of a complex number is its modulus, which breaks the complex step
    return np.abs(x) if _is_real(x) else x * np.sign(x.real)


def _at_zero(x: np.ndarray, **_: Any) -> bool:
    return bool(np.any(_re(x) == 0))


def _identity_coord(lead: int, x: np.ndarray, **_: Any) -> np.ndarray:
    """Kink coordinate of an op whose kink is at x = 0 (relu, abs, sqrt): x itself."""
    return x


_unary("neg", np.negative, lambda g, ans, x: -g, lambda x: -x, "−x",
       uses=frozenset(), doc="−x",
       matrix=lambda M, g, ans, x: -g)
_unary("reciprocal", np.reciprocal, lambda g, ans, x: -g * ans * ans, lambda x: 1 / x, "1/x",
       uses=frozenset({"ans"}), doc="1 / x;  d(1/x) = −1/x²",
       matrix=lambda M, g, ans, x: -g / (x * x))
_unary("exp", np.exp, lambda g, ans, x: g * ans, _sympy("exp"), "exp",
       uses=frozenset({"ans"}), doc="eˣ;  d(eˣ) = eˣ",
       matrix=lambda M, g, ans, x: g * ans)
_unary("log", np.log, lambda g, ans, x: g / x, _sympy("log"), "log", doc="natural logarithm",
       matrix=lambda M, g, ans, x: g / x)
_unary("sqrt", np.sqrt, lambda g, ans, x: g * 0.5 / ans, _sympy("sqrt"), "√",
       kink=_at_zero, uses=frozenset({"ans"}), doc="√x (infinite slope at 0)",
       matrix=lambda M, g, ans, x: g / (2 * ans))
_unary("sin", np.sin, lambda g, ans, x: g * np.cos(x), _sympy("sin"), "sin", doc="sin x;  d sin = cos",
       matrix=lambda M, g, ans, x: g * M.cos(x))
_unary("cos", np.cos, lambda g, ans, x: -g * np.sin(x), _sympy("cos"), "cos", doc="cos x;  d cos = −sin",
       matrix=lambda M, g, ans, x: -(g * M.sin(x)))
_unary("tanh", np.tanh, lambda g, ans, x: g * (1 - ans * ans), _sympy("tanh"), "tanh",
       uses=frozenset({"ans"}), doc="tanh;  d tanh = 1 − tanh²",
       matrix=lambda M, g, ans, x: g * (1 - ans * ans))
_unary("sigmoid", _sigmoid, lambda g, ans, x: g * ans * (1 - ans),
       lambda x: 1 / (1 + sp.exp(-x)), "σ", uses=frozenset({"ans"}),
       decompose=lambda F, x: F.reciprocal(F.exp(F.neg(x)) + 1),
       doc="σ(x) = 1 / (1 + e⁻ˣ);  dσ/dx = σ(1 − σ)",
       matrix=lambda M, g, ans, x: g * ans * (1 - ans))
_unary("relu", _relu, _relu_vjp, _sp_relu, "relu", uses=frozenset({"ans"}),
       kink=_at_zero, kink_convention="negative",
       doc="max(0, x);  relu'(x) = 1 for x > 0, else 0 (relu'(0) = 0)",
       matrix=lambda M, g, ans, x: g * M.step(x))
_unary("leaky_relu", _leaky_relu, _leaky_relu_vjp,
       lambda x, alpha=0.01: sp.Piecewise((x, x > 0), (sp.Float(alpha) * x, True)),
       "leaky_relu", attrs={"alpha": 0.01}, kink=_at_zero, kink_convention="negative",
       doc="x for x > 0, else alpha·x (derivative alpha at 0)",
       matrix=lambda M, g, ans, x, alpha=0.01: g * (M.step(x) + alpha * (1 - M.step(x))))
_unary("abs", _abs, lambda g, ans, x: g * np.sign(_re(x)).astype(x.dtype), _sympy("Abs"), "|x|",
       kink=_at_zero, kink_convention="mean", doc="|x| (abs'(0) = 0)",
       matrix=lambda M, g, ans, x: g * M.sign(x))


def _pow_vjp(g: np.ndarray, ans: np.ndarray, x: np.ndarray, exponent: float = 2.0) -> np.ndarray:
    if exponent == 0:
        return np.zeros_like(g * x)
    return g * (exponent * x ** (exponent - 1))


_unary("pow", lambda x, exponent=2.0: x ** exponent, _pow_vjp,
       lambda x, exponent=2.0: x ** (sp.Integer(exponent) if float(exponent).is_integer()
                                     else sp.Float(exponent)),
       "xᵖ", attrs={"exponent": 2.0},
       kink=lambda x, exponent=2.0: bool(exponent < 1 and np.any(_re(x) == 0)),
       kink_coord=lambda lead, x, exponent=2.0: x if exponent < 1 else None,
       doc="x ** p for a constant exponent p",
       # p = 0: exactly zero (as the VJP, whatever flows in); p = 1: g itself (x⁰ = 1)
       matrix=lambda M, g, ans, x, exponent=2.0:
       M.zeros(x.shape) if exponent == 0 else g * exponent * x ** (exponent - 1))


# --------------------------------------------------------------------------------------
# reductions (axes are stored as negative numbers so extra leading axes pass through)
# --------------------------------------------------------------------------------------

def _reduce_shape(s: Shape, axes: tuple[int, ...] = (), keepdims: bool = False) -> Shape:
    for a in axes:
        if not -len(s) <= a < 0:
            raise ShapeRuleError(f"axis {a + len(s)} is out of range for shape {_fmt(s)}")
    pos = {len(s) + a for a in axes}
    if keepdims:
        return tuple(1 if i in pos else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i not in pos)


def _expand_to(g: np.ndarray, x_shape: Shape, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Give a reduced gradient back its reduced axes (size 1) so it broadcasts against x."""
    if keepdims:
        return g
    nd = len(x_shape)
    kept = [1 if (i - nd) in axes else d for i, d in enumerate(x_shape)]
    return g.reshape(g.shape[: g.ndim - (nd - len(axes))] + tuple(kept))


def _count(x_shape: Shape, axes: tuple[int, ...]) -> int:
    return int(np.prod([x_shape[a] for a in axes])) if axes else 1


def _sum_vjp(g, ans, x, axes=(), keepdims=False):
    return np.broadcast_to(_expand_to(g, x.shape, axes, keepdims), x.shape)


def _mean_vjp(g, ans, x, axes=(), keepdims=False):
    return _sum_vjp(g, ans, x, axes, keepdims) / _count(x.shape, axes)


def _reduced_last(x, axes):
    """x with the reduced axes moved to the end and flattened into one."""
    moved = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
    return moved.reshape(moved.shape[: moved.ndim - len(axes)] + (-1,))


def _max_reduce(x, axes=(), keepdims=False):
    if _is_real(x):
        return np.max(x, axis=axes, keepdims=keepdims)
    flat = _reduced_last(x, axes)
    arg = np.argmax(flat.real, axis=-1)[..., None]
    top = np.take_along_axis(flat, arg, axis=-1)
    # ties (equal real parts) share the complex step evenly, as the engines share the
    # gradient; top's real part is kept exactly
    hit = flat.real == top.real
    out = (top + ((flat - top) * hit).sum(axis=-1, keepdims=True) / hit.sum(axis=-1, keepdims=True))[..., 0]
    return out.reshape(_reduce_shape(x.shape, axes, keepdims)) if keepdims else out


def _max_coord(lead, x, axes=(), keepdims=False):
    return _window_coord(_reduced_last(x, axes)) if axes else None


def _max_vjp(g, ans, x, axes=(), keepdims=False):
    top = _expand_to(ans, x.shape, axes, keepdims)
    hit = (_re(x) == _re(top)).astype(x.dtype)
    share = hit / hit.sum(axis=axes, keepdims=True)  # ties split the gradient evenly
    return share * _expand_to(g, x.shape, axes, keepdims)


def _max_ties(x, axes=(), keepdims=False):
    top = np.max(_re(x), axis=axes, keepdims=True)
    return bool(np.any((_re(x) == top).sum(axis=axes) > 1))


def _sp_reduce(fn: Callable) -> Callable:
    def apply(x, axes=(), keepdims=False):
        moved = np.moveaxis(x, axes, tuple(range(-len(axes), 0)))
        flat = moved.reshape(moved.shape[: moved.ndim - len(axes)] + (-1,))
        out = np.empty(flat.shape[:-1], dtype=object)
        for idx in np.ndindex(out.shape):
            out[idx] = fn(list(flat[idx]))
        out = out.reshape(_reduce_shape(x.shape, axes, keepdims)) if keepdims else out
        return np.asarray(out, dtype=object)
    return apply


def _sp_max(items: list) -> sp.Expr:
    out = items[0]
    for item in items[1:]:
        out = _sp_maximum(out, item)
    return out


def _max_matrix(M, g, ans, x, axes=(), keepdims=False):
    kept = M.kept_shape(x.shape, axes)
    hit = M.equal(x, M.broadcast_to(M.reshape(ans, kept), x.shape))
    share = hit / M.sum(hit, axes, keepdims=True)  # ties share the gradient evenly
    return share * M.broadcast_to(M.reshape(g, kept), x.shape)


_MATRIX_REDUCE = {
    "sum": lambda M, g, ans, x, axes=(), keepdims=False:
        M.broadcast_to(M.reshape(g, M.kept_shape(x.shape, axes)), x.shape),
    "mean": lambda M, g, ans, x, axes=(), keepdims=False:
        M.broadcast_to(M.reshape(g, M.kept_shape(x.shape, axes)), x.shape) / _count(x.shape, axes),
    "max": _max_matrix,
}


for _name, _fwd, _vjp, _sym, _label, _kink in (
    ("sum", lambda x, axes=(), keepdims=False: np.sum(x, axis=axes, keepdims=keepdims),
     _sum_vjp, _sp_reduce(lambda v: sp.Add(*v)), "Σ", None),
    ("mean", lambda x, axes=(), keepdims=False: np.mean(x, axis=axes, keepdims=keepdims),
     _mean_vjp, _sp_reduce(lambda v: sp.Add(*v) / len(v)), "mean", None),
    ("max", _max_reduce, _max_vjp, _sp_reduce(_sp_max), "max", _max_ties),
):
    _register(Op(
        name=_name, shape=_reduce_shape, forward=_fwd, vjp=(_vjp,), sympy=_sym, label=_label,
        attrs={"axes": (), "keepdims": False}, kink=_kink, batched=_poly(_fwd),
        kink_coord=_max_coord if _kink is not None else None,
        vjp_uses=frozenset({"inputs"}) if _name != "max" else frozenset({"inputs", "ans"}),
        doc=f"{_name} over the given axes", matrix=(_MATRIX_REDUCE[_name],),
    ))


# --------------------------------------------------------------------------------------
# shape ops
# --------------------------------------------------------------------------------------

def _reshape_shape(s: Shape, shape: Shape = ()) -> Shape:
    if math.prod(s) != math.prod(shape):
        raise ShapeRuleError(f"cannot reshape {_fmt(s)} ({math.prod(s)} elements) into "
                             f"{_fmt(shape)} ({math.prod(shape)} elements)")
    return tuple(shape)


_register(Op(
    name="reshape", shape=_reshape_shape,
    forward=lambda x, shape=(): np.reshape(x, shape),
    vjp=(lambda g, ans, x, shape=(): np.reshape(g, x.shape),),
    sympy=lambda x, shape=(): np.reshape(x, shape), label="reshape", attrs={"shape": ()},
    batched=lambda lead, x, shape=(): np.reshape(x, x.shape[:lead] + tuple(shape)),
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, shape=(): M.reshape(g, x.shape),),
    doc="same elements, new shape (row-major order)",
))


def _transpose_shape(s: Shape, axes: Shape = ()) -> Shape:
    if sorted(axes) != list(range(len(s))):
        raise ShapeRuleError(f"axes {axes} are not a permutation of the {len(s)} axes of {_fmt(s)}")
    return tuple(s[a] for a in axes)


def _transpose_batched(lead, x, axes=()):
    return np.transpose(x, tuple(range(lead)) + tuple(a + lead for a in axes))


_register(Op(
    name="transpose", shape=_transpose_shape,
    forward=lambda x, axes=(): np.transpose(x, axes),
    vjp=(lambda g, ans, x, axes=(): np.transpose(g, np.argsort(axes)),),
    sympy=lambda x, axes=(): np.transpose(x, axes), label="ᵀ", attrs={"axes": ()},
    batched=_transpose_batched, vjp_uses=frozenset(),
    matrix=(lambda M, g, ans, x, axes=(): M.transpose(g, tuple(np.argsort(axes))),),
    doc="permute the axes",
))


def _broadcast_to_shape(s: Shape, shape: Shape = ()) -> Shape:
    if broadcast_shapes(s, tuple(shape)) != tuple(shape):
        raise ShapeRuleError(f"cannot broadcast {_fmt(s)} to {_fmt(tuple(shape))}")
    return tuple(shape)


def _broadcast_batched(lead, x, shape=()):
    nominal = x.ndim - lead
    x = x.reshape(x.shape[:lead] + (1,) * (len(shape) - nominal) + x.shape[lead:])
    return np.broadcast_to(x, x.shape[:lead] + tuple(shape))


_register(Op(
    name="broadcast_to", shape=_broadcast_to_shape,
    forward=lambda x, shape=(): np.broadcast_to(x, shape),
    vjp=(lambda g, ans, x, shape=(): unbroadcast(g, x.shape),),
    sympy=lambda x, shape=(): np.broadcast_to(x, shape), label="broadcast",
    attrs={"shape": ()}, batched=_broadcast_batched, vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, shape=(): M.sum_to(g, x.shape),),
    doc="repeat along new or size-1 axes",
))


_INDEX_KEYS: dict[Any, tuple] = {}


def index_key(key: tuple) -> tuple:
    """Our serialisable index key -> a numpy key (remembered: the index rules ask for the
    same few keys on every call)."""
    try:
        return _INDEX_KEYS[key]
    except (KeyError, TypeError):  # new, or unhashable (lists from a JSON graph)
        pass
    out = _numpy_key(key)
    if len(_INDEX_KEYS) < 4096:
        try:
            _INDEX_KEYS[key] = out
        except TypeError:
            pass
    return out


def _numpy_key(key: tuple) -> tuple:
    out: list[Any] = []
    for item in key:
        kind = item[0]
        if kind == "int":
            out.append(item[1])
        elif kind == "slice":
            out.append(slice(item[1], item[2], item[3]))
        elif kind == "newaxis":
            out.append(None)
        else:
            raise ShapeRuleError(f"unknown index item {item!r}")
    return tuple(out)


def _check_index_key(key: Any) -> None:
    """An index key (e.g. from a JSON graph) must be made of ('int', i), ('slice', a, b, c)
    and ('newaxis',) items with integer parts: numpy would read 1.5 or True differently."""
    if not isinstance(key, (tuple, list)):
        raise ShapeRuleError(f"index key must be a sequence of items, got key={key!r}")
    for item in key:
        ok = isinstance(item, (tuple, list)) and len(item) >= 1 and (
            (item[0] == "int" and len(item) == 2 and _is_int(item[1]))
            or (item[0] == "slice" and len(item) == 4
                and all(p is None or _is_int(p) for p in item[1:]) and item[3] != 0)
            or (item[0] == "newaxis" and len(item) == 1))
        if not ok:
            raise ShapeRuleError(f"bad index item {item!r} in key={key!r}: items are "
                                 "('int', i), ('slice', start, stop, step) with integer or "
                                 "None parts and a non-zero step, or ('newaxis',)")


def _index_shape(s: Shape, key: tuple = ()) -> Shape:
    _check_index_key(key)
    used = sum(1 for item in key if item[0] != "newaxis")
    if used > len(s):
        raise ShapeRuleError(f"too many indices ({used}) for shape {_fmt(s)}")
    dim = 0
    for item in key:
        if item[0] == "int":
            if not -s[dim] <= item[1] < s[dim]:
                raise ShapeRuleError(f"index {item[1]} is out of bounds for axis {dim} "
                                     f"of size {s[dim]} (shape {_fmt(s)})")
        if item[0] != "newaxis":
            dim += 1
    return np.empty(s, dtype=np.bool_)[index_key(key)].shape


def _index_vjp(g, ans, x, key=()):
    out = np.zeros(x.shape, dtype=g.dtype)
    out[index_key(key)] = g
    return out


_register(Op(
    name="index", shape=_index_shape,
    forward=lambda x, key=(): x[index_key(key)],
    vjp=(_index_vjp,), sympy=lambda x, key=(): x[index_key(key)], label="[ ]",
    attrs={"key": ()},
    batched=lambda lead, x, key=(): x[(slice(None),) * lead + index_key(key)],
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, key=(): M.scatter(g, key, x.shape),),
    doc="basic indexing and slicing x[key]",
))


def _concat_shape(*shapes: Shape, axis: int = -1) -> Shape:
    first = shapes[0]
    if not -len(first) <= axis < 0:
        raise ShapeRuleError(f"axis {axis + len(first)} is out of range for shape {_fmt(first)}")
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first))
                                       if i != len(first) + axis):
            raise ShapeRuleError("cannot concatenate shapes " + ", ".join(_fmt(t) for t in shapes)
                                 + f" along axis {len(first) + axis}")
    out = list(first)
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def _concat_vjp(g, ans, *xs, axis=-1, index=0):
    start = sum(x.shape[axis] for x in xs[:index])
    sl = [slice(None)] * g.ndim
    sl[axis] = slice(start, start + xs[index].shape[axis])
    return g[tuple(sl)]


def _concat_batched(lead, *xs, axis=-1):
    full = np.broadcast_shapes(*(x.shape[:lead] for x in xs))
    return np.concatenate([np.broadcast_to(x, full + x.shape[lead:]) for x in xs], axis=axis)


def _concat_matrix(M, g, ans, *xs, axis=-1, index=0):
    start = sum(x.shape[axis] for x in xs[:index])
    key = [("slice", None, None, None)] * g.ndim
    key[axis] = ("slice", start, start + xs[index].shape[axis], None)
    return M.index(g, tuple(key))


_register(Op(
    name="concatenate", n_args=(1, None), shape=_concat_shape,
    forward=lambda *xs, axis=-1: np.concatenate(xs, axis=axis),
    vjp=(_concat_vjp,), sympy=lambda *xs, axis=-1: np.concatenate(xs, axis=axis),
    label="concat", attrs={"axis": -1}, batched=_concat_batched,
    vjp_uses=frozenset({"inputs"}),
    matrix=(_concat_matrix,),
    doc="join along an existing axis",
))


# --------------------------------------------------------------------------------------
# matrix product (numpy's matmul semantics, including 1-D operands and batch broadcasting)
# --------------------------------------------------------------------------------------

def _matmul_shape(a: Shape, b: Shape) -> Shape:
    if len(a) == 0 or len(b) == 0:
        raise ShapeRuleError(f"matmul needs arrays, not scalars: {_fmt(a)} @ {_fmt(b)}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeRuleError(f"matmul {_fmt(a)} @ {_fmt(b)}: inner dimensions {a2[-1]} and "
                             f"{b2[-2]} differ")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _as_matrices(g: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Promote 1-D operands of a matmul to matrices, and g along with them."""
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a.ndim == 1:
        g = g[..., None, :] if b.ndim != 1 else g[..., None]
    if b.ndim == 1:
        g = g[..., None]
    return g, a2, b2


def _matmul_forward(a, b, out=None):
    """a @ b (into ``out`` when given; else two matrices' product into a recycled array)."""
    return np.matmul(a, b, out=out) if out is not None else K.matmul(a, b)


def _matmul_vjp_a(g, ans, a, b):
    if a.ndim == 2 and b.ndim == 2:  # one product, nothing to promote or sum
        return K.matmul(g, b.T)
    g2, a2, b2 = _as_matrices(g, a, b)
    return unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)


def _matmul_vjp_b(g, ans, a, b):
    if a.ndim == 2 and b.ndim == 2:  # one product (the common case)
        flags = b.flags
        if flags.f_contiguous and not flags.c_contiguous:
            # b is a transposed view (a Linear layer's x @ Wᵀ): give the gradient b's layout,
            # (gᵀa)ᵀ, so the transpose rule hands W a contiguous gradient and no copy is made
            return K.matmul(g.T, a).T
        return K.matmul(a.T, g)
    g2, a2, b2 = _as_matrices(g, a, b)
    if b.ndim == 2 and a2.ndim == 2 and b.flags.f_contiguous and not b.flags.c_contiguous:
        return (g2.T @ a2).T
    return unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)


def _matmul_batched(lead, a, b):
    """a @ b for each copy. The copies' ``lead`` axes stay in front and the user's own batch
    axes are lined up after them (size-1 axes inserted there), so numpy's broadcasting never
    pairs a copy axis with a batch axis; 1-D operands are promoted to matrices the way
    matmul promotes them and the promoted axis is dropped again."""
    vec_a, vec_b = a.ndim - lead == 1, b.ndim - lead == 1
    a2 = a[..., None, :] if vec_a else a
    b2 = b[..., None] if vec_b else b
    out = np.matmul(*_align(lead, (a2, b2), max(a2.ndim, b2.ndim) - lead))
    if vec_a:
        out = out[..., 0, :]
    return out[..., 0] if vec_b else out


def _matmul_matrix(which: int) -> Callable:
    """dL/da = G bᵀ, dL/db = aᵀ G (vectors promoted to matrices and back)."""
    def rule(M, g, ans, a, b):
        a2 = M.reshape(a, (1,) + a.shape) if a.ndim == 1 else a
        b2 = M.reshape(b, b.shape + (1,)) if b.ndim == 1 else b
        g2 = M.reshape(g, _matmul_shape(a2.shape, b2.shape))
        if which == 0:
            return M.reshape(M.sum_to(g2 @ M.T(b2), a2.shape), a.shape)
        return M.reshape(M.sum_to(M.T(a2) @ g2, b2.shape), b.shape)
    return rule


_register(Op(
    name="matmul", n_args=(2, 2), shape=_matmul_shape, forward=_matmul_forward,
    vjp=(_matmul_vjp_a, _matmul_vjp_b), sympy=lambda a, b: np.asarray(np.matmul(a, b), dtype=object),
    label="@", batched=_matmul_batched, vjp_uses=frozenset({"inputs"}),
    vjp_product_with=(1, 0), matrix=(_matmul_matrix(0), _matmul_matrix(1)),
    doc="matrix product a @ b;  d(a@b)/da = g bᵀ, d(a@b)/db = aᵀ g",
))


# --------------------------------------------------------------------------------------
# convolution, pooling, up-sampling (images are (N, C, H, W), weights (F, C/groups, kh, kw))
# --------------------------------------------------------------------------------------

def _lead_merge(lead: int, fn: Callable, x: np.ndarray, *rest: np.ndarray, **attrs: Any):
    """Run an (N, C, H, W) op on input with extra leading axes by folding them into N."""
    front = x.shape[: lead + 1]
    y = fn(x.reshape((-1,) + x.shape[lead + 1:]), *rest, **attrs)
    return y.reshape(front + y.shape[1:])


def _lead_shape(lead: int, *xs: np.ndarray | None) -> Shape:
    """The copies' axes of a batched call: the broadcast of every operand's lead axes."""
    return tuple(np.broadcast_shapes(*(x.shape[:lead] for x in xs if x is not None)))


def _conv_copies(lead: int, conv: Callable, x: np.ndarray, w: np.ndarray, groups: int,
                 transpose: bool = False) -> np.ndarray:
    """A convolution-like ``conv(x, w, groups)`` for each copy of x and w (``transpose``:
    the weight is (C_in, F/groups, kh, kw), as conv_transpose2d has it).

    Weights shared by all copies: the copies are folded into the image axis N. Weights
    that differ per copy (perturbed weights) on a shared image: the P copies' filters are
    stacked into one convolution with P times as many filters per group. Both differ: the
    copies become P times as many channel groups, so copy p only meets its own channels
    and filters. The output channels are unfolded again in every case.
    """
    if all(d == 1 for d in w.shape[:lead]):
        return _lead_merge(lead, lambda y: conv(y, w.reshape(w.shape[lead:]), groups), x)
    batch = _lead_shape(lead, x, w)
    p = math.prod(batch)
    ws = np.broadcast_to(w, batch + w.shape[lead:]).reshape((p,) + w.shape[lead:])
    if all(d == 1 for d in x.shape[:lead]):
        x0 = x.reshape(x.shape[lead:])
        if transpose:  # (P, C_in, F/g, …) -> (C_in, P·F/g, …): group g's outputs are (p, f)
            stacked = ws.transpose(1, 0, 2, 3, 4).reshape((ws.shape[1], -1) + ws.shape[3:])
        else:  # (P, F, …) -> (g, P, F/g, …) -> (g·P·F/g, …)
            stacked = ws.reshape((p, groups, -1) + ws.shape[2:]).transpose(1, 0, 2, 3, 4, 5)
            stacked = stacked.reshape((-1,) + ws.shape[2:])
        out = conv(x0, np.ascontiguousarray(stacked), groups)  # (N, g·P·F/g, H', W')
        n = out.shape[0]
        out = out.reshape((n, groups, p, -1) + out.shape[2:]).transpose(2, 0, 1, 3, 4, 5)
        return out.reshape(batch + (n, -1) + out.shape[4:])
    xs = np.broadcast_to(x, batch + x.shape[lead:]).reshape((p,) + x.shape[lead:])
    n, c = xs.shape[1:3]
    folded = xs.transpose(1, 0, 2, 3, 4).reshape((n, p * c) + xs.shape[3:])
    out = conv(np.ascontiguousarray(folded), np.ascontiguousarray(ws.reshape((-1,) + ws.shape[2:])),
               groups * p)
    out = out.reshape((n, p, -1) + out.shape[2:]).transpose(1, 0, 2, 3, 4)
    return out.reshape(batch + out.shape[1:])


def _add_channel_bias(lead: int, out: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """out (…copies, N, F, H, W) + b (…copies, F) per channel."""
    if b is None:
        return out
    return out + b.reshape(b.shape[:lead] + (1, b.shape[-1], 1, 1))


def _conv_attrs() -> dict[str, Any]:
    return {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}


def _int_pair(op: str, name: str, value: Any, low: int) -> tuple[int, int]:
    """Attribute ``name`` of ``op`` as a pair of integers ≥ ``low`` (JSON lists accepted);
    a ShapeRuleError naming the attribute and its value for anything else (bools, floats,
    strings, other lengths, values below ``low``)."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value))):
        raise ShapeRuleError(f"{op} {name} must be an integer or a pair of integers, "
                             f"got {name}={value!r}")
    pair = (int(value[0]), int(value[1]))
    if min(pair) < low:
        raise ShapeRuleError(f"{op} {name} must be at least {low} on both axes, got {name}={pair}")
    return pair


def _groups(op: str, groups: Any) -> int:
    if not _is_int(groups) or groups < 1:
        raise ShapeRuleError(f"{op} groups must be an integer ≥ 1, got groups={groups!r}")
    return int(groups)


def _nonempty_image(op: str, x: Shape, what: str = "input") -> None:
    if min(x[1:]) < 1:
        raise ShapeRuleError(f"{op} needs a non-empty {what} (N, C, H, W) with C, H, W ≥ 1, "
                             f"got {_fmt(x)}")


def _conv2d_shape(x: Shape, w: Shape, b: Shape | None = None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), groups=1) -> Shape:
    if len(x) != 4 or len(w) != 4:
        raise ShapeRuleError(f"conv2d needs input (N, C, H, W) and weight (F, C/groups, kh, kw); "
                             f"got {_fmt(x)} and {_fmt(w)}")
    stride = _int_pair("conv2d", "stride", stride, 1)
    padding = _int_pair("conv2d", "padding", padding, 0)
    dilation = _int_pair("conv2d", "dilation", dilation, 1)
    groups = _groups("conv2d", groups)
    n, c, h, wd = x
    f, cg, kh, kw = w
    _nonempty_image("conv2d", x)
    if kh < 1 or kw < 1 or cg < 1 or f < 1:
        raise ShapeRuleError(f"conv2d weight {_fmt(w)} is empty (kernel size {kh}×{kw}, "
                             f"{f} filters, {cg} channels per group)")
    if c % groups:
        raise ShapeRuleError(f"conv2d groups={groups}: the input's {c} channels are not "
                             f"divisible by groups")
    if f % groups:
        raise ShapeRuleError(f"conv2d groups={groups}: the weight's {f} filters are not "
                             f"divisible by groups (weight {_fmt(w)})")
    if cg * groups != c:
        raise ShapeRuleError(f"conv2d with groups={groups}: input has {c} channels, weight "
                             f"{_fmt(w)} expects {cg * groups}")
    if b is not None and tuple(b) != (f,):
        raise ShapeRuleError(f"conv2d bias must have shape ({f},), got {_fmt(b)}")
    ho = K.conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = K.conv_output_size(wd, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        raise ShapeRuleError(f"conv2d kernel {kh}×{kw} with dilation={dilation} (spanning "
                             f"{span[0]}×{span[1]} pixels) does not fit the padded input "
                             f"{h + 2 * padding[0]}×{wd + 2 * padding[1]} (input {h}×{wd}, "
                             f"padding={padding})")
    return (n, f, ho, wo)


def _conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    out = K.conv2d_forward(x, w, stride, padding, dilation, groups)
    return out if b is None else out + b[:, None, None]


def _conv2d_batched(lead, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                    groups=1):
    out = _conv_copies(lead, lambda y, v, grp: K.conv2d_forward(y, v, stride, padding,
                                                                dilation, grp), x, w, groups)
    return _add_channel_bias(lead, out, b)


def _conv2d_fused_vjp(wanted, saved, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0),
                      dilation=(1, 1), groups=1):
    """Input and weight gradients from one call (one patch matrix of g, where the kernels
    can), and the bias gradient."""
    dx, dw = K.conv2d_backward(g, x, w, stride, padding, dilation, groups, tuple(wanted[:2]))
    if b is None:
        return dx, dw
    return dx, dw, (g.sum(axis=(0, 2, 3)) if wanted[2] else None)


_register(Op(
    name="conv2d", n_args=(2, 3), shape=_conv2d_shape, forward=_conv2d,
    vjp=(lambda g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1:
         K.conv2d_backward_input(g, w, x.shape, stride, padding, dilation, groups),
         lambda g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1:
         K.conv2d_backward_weight(g, x, w.shape, stride, padding, dilation, groups),
         lambda g, ans, x, w, b=None, **attrs: g.sum(axis=(0, 2, 3))),
    sympy=lambda x, w, b=None, **a: np.asarray(_conv2d(x, w, b, **a), dtype=object),
    label="conv2d", attrs=_conv_attrs(), batched=_conv2d_batched,
    vjp_uses=frozenset({"inputs"}), fused_vjp=_conv2d_fused_vjp,
    matrix=(lambda M, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1:
            M.conv2d_input_grad(g, w, x.shape, stride, padding, dilation, groups),
            lambda M, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1:
            M.conv2d_weight_grad(g, x, w.shape, stride, padding, dilation, groups),
            lambda M, g, ans, x, w, b=None, **attrs: M.sum(g, (0, 2, 3))),
    doc="2-D cross-correlation (what deep learning calls convolution), optional bias",
))


def _conv_relu_forward_saving(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                              groups=1):
    fast = K.conv2d_relu_forward(x, w, b, stride, padding, dilation, groups)
    if fast is not None:
        return fast, None
    return _relu(_conv2d(x, w, b, stride, padding, dilation, groups)), None


def _conv_relu_fused_vjp(wanted, saved, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0),
                         dilation=(1, 1), groups=1):
    """relu's rule (read from its result) applied as the convolution's kernels read g, and
    the convolution's rules, in one pass where the kernels can; else one after the other."""
    fast = None
    if wanted[0] or wanted[1]:
        fast = K.conv2d_relu_backward(g, ans, x, w, stride, padding, dilation, groups,
                                      (bool(wanted[0]), bool(wanted[1])))
    if fast is None:
        return _conv2d_fused_vjp(wanted, None, _relu_vjp(g, ans, None), None, x, w, b, stride,
                                 padding, dilation, groups)
    if b is None:
        return fast
    # the kernels took finite g and ans: relu's rule is plain masking here (its kernel:
    # np.where(ans > 0, g, 0) took 3.2 ms for 16×32×40×40 float32, the kernel 0.4)
    return fast + ((_relu_vjp(g, ans, None).sum(axis=(0, 2, 3)) if wanted[2] else None),)


_register_fusion(Fusion("conv2d", "relu", _conv_relu_forward_saving, _conv_relu_fused_vjp))


def _convT_shape(x: Shape, w: Shape, b: Shape | None = None, stride=(1, 1), padding=(0, 0),
                 output_padding=(0, 0), dilation=(1, 1), groups=1) -> Shape:
    if len(x) != 4 or len(w) != 4:
        raise ShapeRuleError(f"conv_transpose2d needs input (N, C, H, W) and weight "
                             f"(C, F/groups, kh, kw); got {_fmt(x)} and {_fmt(w)}")
    name = "conv_transpose2d"
    stride = _int_pair(name, "stride", stride, 1)
    padding = _int_pair(name, "padding", padding, 0)
    output_padding = _int_pair(name, "output_padding", output_padding, 0)
    dilation = _int_pair(name, "dilation", dilation, 1)
    groups = _groups(name, groups)
    n, c, h, wd = x
    cin, fg, kh, kw = w
    _nonempty_image(name, x)
    if kh < 1 or kw < 1 or fg < 1:
        raise ShapeRuleError(f"conv_transpose2d weight {_fmt(w)} is empty (kernel size "
                             f"{kh}×{kw}, {fg} filters per group)")
    if c % groups:
        raise ShapeRuleError(f"conv_transpose2d groups={groups}: the input's {c} channels are "
                             f"not divisible by groups")
    if cin != c:
        raise ShapeRuleError(f"conv_transpose2d: input has {c} channels, weight {_fmt(w)} "
                             f"expects {cin} (groups={groups})")
    f = fg * groups
    if b is not None and tuple(b) != (f,):
        raise ShapeRuleError(f"conv_transpose2d bias must have shape ({f},), got {_fmt(b)}")
    for axis in (0, 1):  # PyTorch's rule: the extra rows must be reachable by a stride or a tap
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ShapeRuleError(f"conv_transpose2d output_padding={output_padding} must be "
                                 f"smaller than stride={stride} or dilation={dilation} on each "
                                 f"axis")
    ho = K.conv_transpose2d_output_size(h, kh, stride[0], padding[0], output_padding[0], dilation[0])
    wo = K.conv_transpose2d_output_size(wd, kw, stride[1], padding[1], output_padding[1],
                                        dilation[1])
    if ho < 1 or wo < 1:
        raise ShapeRuleError(f"conv_transpose2d output would be {ho}×{wo}: padding={padding} "
                             f"crops more than the {h}×{wd} input with kernel {kh}×{kw}, "
                             f"stride={stride} and dilation={dilation} produce")
    return (n, f, ho, wo)


def _convT_conv_size(out_hw: tuple[int, int], w_shape: Shape, stride, padding, dilation
                     ) -> tuple[int, int]:
    """Output size of the *convolution* of a transpose convolution's (Ho, Wo) result: the
    input size, plus ⌊output_padding / stride⌋ rows (columns) when output_padding ≥ stride
    (possible with dilation): rows of the convolution the transpose convolution never fills."""
    return (K.conv_output_size(out_hw[0], w_shape[2], stride[0], padding[0], dilation[0]),
            K.conv_output_size(out_hw[1], w_shape[3], stride[1], padding[1], dilation[1]))


def _pad_bottom_right(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``a`` (N, C, H, W) with zero rows and columns appended up to ``hw``."""
    extra = (hw[0] - a.shape[-2], hw[1] - a.shape[-1])
    if extra == (0, 0):
        return a
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, extra[0]), (0, extra[1])])


def _convT(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1),
           groups=1):
    # the transpose convolution is the input-gradient of the convolution with the same
    # weight, taken from an (Ho, Wo) image; that convolution may have more outputs than x
    # (output_padding ≥ stride), which the transpose convolution treats as zeros
    out_shape = _convT_shape(x.shape, w.shape, None, stride, padding, output_padding, dilation,
                             groups)
    xc = _pad_bottom_right(x, _convT_conv_size(out_shape[2:], w.shape, stride, padding, dilation))
    out = K.conv2d_backward_input(xc, w, out_shape, stride, padding, dilation, groups)
    return out if b is None else out + b[:, None, None]


def _convT_vjp_x(g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                 dilation=(1, 1), groups=1):
    out = K.conv2d_forward(g, w, stride, padding, dilation, groups)
    h, wd = x.shape[2:]
    return out if out.shape[2:] == (h, wd) else np.ascontiguousarray(out[:, :, :h, :wd])


def _convT_vjp_w(g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                 dilation=(1, 1), groups=1):
    xc = _pad_bottom_right(x, _convT_conv_size(g.shape[2:], w.shape, stride, padding, dilation))
    return K.conv2d_backward_weight(xc, g, w.shape, stride, padding, dilation, groups)


def _convT_matrix_x(M, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                    dilation=(1, 1), groups=1):
    # the adjoint of the transpose convolution is the convolution, less the rows and
    # columns past x's size (output_padding ≥ stride)
    out = M.conv2d(g, w, stride, padding, dilation, groups)
    if out.shape[2:] == x.shape[2:]:
        return out
    whole = ("slice", None, None, None)
    return M.index(out, (whole, whole, ("slice", 0, x.shape[2], None),
                         ("slice", 0, x.shape[3], None)))


def _convT_batched(lead, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                   dilation=(1, 1), groups=1):
    out = _conv_copies(lead, lambda y, v, grp: _convT(y, v, None, stride, padding,
                                                      output_padding, dilation, grp),
                       x, w, groups, transpose=True)
    return _add_channel_bias(lead, out, b)


_register(Op(
    name="conv_transpose2d", n_args=(2, 3), shape=_convT_shape, forward=_convT,
    vjp=(_convT_vjp_x, _convT_vjp_w, lambda g, ans, x, w, b=None, **a: g.sum(axis=(0, 2, 3))),
    sympy=lambda x, w, b=None, **a: np.asarray(_convT(x, w, b, **a), dtype=object),
    label="conv_transpose2d", attrs={**_conv_attrs(), "output_padding": (0, 0)},
    batched=_convT_batched, vjp_uses=frozenset({"inputs"}),
    # the adjoint of the transpose convolution is the convolution itself
    matrix=(_convT_matrix_x,
            lambda M, g, ans, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
            dilation=(1, 1), groups=1:
            M.conv2d_weight_grad(x, g, w.shape, stride, padding, dilation, groups),
            lambda M, g, ans, x, w, b=None, **attrs: M.sum(g, (0, 2, 3))),
    doc="transpose convolution (the adjoint of conv2d in its input), optional bias",
))


def _pool_shape(x: Shape, kernel=(2, 2), stride=(2, 2), padding=(0, 0), name="pool") -> Shape:
    if len(x) != 4:
        raise ShapeRuleError(f"{name} needs input (N, C, H, W), got {_fmt(x)}")
    kernel = _int_pair(name, "kernel", kernel, 1)
    stride = _int_pair(name, "stride", stride, 1)
    padding = _int_pair(name, "padding", padding, 0)
    _nonempty_image(name, x)
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ShapeRuleError(f"{name} padding={padding} must be at most half the kernel "
                             f"{kernel} on each axis")
    ho = K.conv_output_size(x[2], kernel[0], stride[0], padding[0], 1)
    wo = K.conv_output_size(x[3], kernel[1], stride[1], padding[1], 1)
    if ho < 1 or wo < 1:
        raise ShapeRuleError(f"{name} window kernel={kernel} does not fit the input "
                             f"{x[2]}×{x[3]} with padding={padding}")
    return (x[0], x[1], ho, wo)


def _pool_attrs() -> dict[str, Any]:
    return {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}


def _sp_max_pool(x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
    cols = K.im2col(x, kernel, stride, padding, (1, 1), pad_value=-sp.oo)
    n, c, kh, kw, ho, wo = cols.shape
    out = np.empty((n, c, ho, wo), dtype=object)
    for idx in np.ndindex(out.shape):
        out[idx] = sp.Max(*cols[idx[0], idx[1], :, :, idx[2], idx[3]].ravel())
    return out


def _pool_batched(forward: Callable) -> Callable:
    """Batched form of a pooling forward: the copies are folded into the image axis N."""
    def batched(lead, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        return _lead_merge(lead, lambda y: forward(y, kernel, stride, padding), x)
    return batched


def _max_pool_coord(lead: int, x: np.ndarray, kernel, stride, padding) -> np.ndarray | None:
    """Kink coordinates of max pooling: per window, each element minus the largest other
    (padding counts as −inf), shape (*lead, N, C, Ho, Wo, kh·kw)."""
    front = x.shape[: lead + 1]
    cols = K.im2col(x.reshape((-1,) + x.shape[lead + 1:]), kernel, stride, padding, (1, 1),
                    pad_value=-np.inf)
    n, c, kh, kw, ho, wo = cols.shape
    coord = _window_coord(np.moveaxis(cols.reshape(n, c, kh * kw, ho, wo), 2, -1))
    return None if coord is None else coord.reshape(front + coord.shape[1:])


_register(Op(
    name="max_pool2d",
    shape=lambda x, **a: _pool_shape(x, name="max_pool2d", **a),
    forward=lambda x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
        K.max_pool2d_forward(x, kernel, stride, padding),
    vjp=(lambda g, ans, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
         K.max_pool2d_backward(g, x, kernel, stride, padding),),
    sympy=_sp_max_pool, label="max_pool", attrs=_pool_attrs(),
    kink=lambda x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
        K.max_pool2d_ties(x, kernel, stride, padding),
    kink_coord=lambda lead, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
        _max_pool_coord(lead, x, kernel, stride, padding),
    batched=_pool_batched(K.max_pool2d_forward),
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
            M.maxpool_grad(g, x, kernel, stride, padding),),
    doc="maximum over sliding windows (padding counts as −∞)",
))

_register(Op(
    name="avg_pool2d",
    shape=lambda x, **a: _pool_shape(x, name="avg_pool2d", **a),
    forward=lambda x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
        K.avg_pool2d_forward(x, kernel, stride, padding),
    vjp=(lambda g, ans, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
         K.avg_pool2d_backward(g, x.shape, kernel, stride, padding),),
    sympy=lambda x, kernel=(2, 2), stride=(2, 2), padding=(0, 0): np.asarray(
        K.avg_pool2d_forward(x, kernel, stride, padding), dtype=object),
    label="avg_pool", attrs=_pool_attrs(),
    batched=_pool_batched(K.avg_pool2d_forward),
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0):
            M.avgpool_grad(g, x.shape, kernel, stride, padding),),
    doc="mean over sliding windows (padded zeros count: count_include_pad=True)",
))


def _upsample_shape(x: Shape, scale=(2, 2), name: str = "upsample") -> Shape:
    if len(x) < 2:
        raise ShapeRuleError(f"{name} needs at least 2 axes (…, H, W), got {_fmt(x)}")
    scale = _int_pair(name, "scale", scale, 1)
    return x[:-2] + (x[-2] * scale[0], x[-1] * scale[1])


def _upsample(x, scale=(2, 2)):
    fast = K.upsample_nearest_forward(x, scale)
    if fast is not None:
        return fast
    return np.repeat(np.repeat(x, scale[0], axis=-2), scale[1], axis=-1)


def _upsample_vjp(g, ans, x, scale=(2, 2)):
    fast = K.upsample_nearest_backward(g, x.shape, scale)
    if fast is not None:
        return fast
    h, w = x.shape[-2:]
    return g.reshape(g.shape[:-2] + (h, scale[0], w, scale[1])).sum(axis=(-3, -1))


_register(Op(
    name="upsample", shape=_upsample_shape, forward=_upsample, vjp=(_upsample_vjp,),
    sympy=_upsample, label="upsample", attrs={"scale": (2, 2)}, batched=_poly(_upsample),
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, scale=(2, 2): M.sum(M.reshape(
        g, x.shape[:-2] + (x.shape[-2], scale[0], x.shape[-1], scale[1])), (-3, -1)),),
    doc="nearest-neighbour up-sampling by integer factors",
))


# Bilinear up-sampling with PyTorch's align_corners=False: output pixel o of an axis of
# length n (scale s) samples the input at src = (o + ½)/s − ½, clamped to [0, n − 1], and
# blends the two input pixels around it. For an integer s the output rows o = s·i + r of
# one phase r all sit at the same offset δ_r = (2r + 1 − s)/(2s) ∈ (−½, ½) from input row i,
# so each phase is a blend of x and x shifted by one row (edge repeated): vectorised slices,
# no per-pixel loop, and the adjoint is the same slices sent the other way.

def _bilinear_phases(s: int) -> list[tuple[Any, int]]:
    """(|δ_r| as an exact fraction, direction: +1 blends with the next row, −1 the
    previous) for each phase r of scale ``s``."""
    from fractions import Fraction
    out = []
    for r in range(s):
        d = Fraction(2 * r + 1 - s, 2 * s)
        out.append((abs(d), 1 if d >= 0 else -1))
    return out


def _shifted(x: np.ndarray, axis: int, direction: int) -> np.ndarray:
    """``x`` moved by one along ``axis``, edge repeated: x[min(i+1, n−1)] (+1) or x[max(i−1, 0)] (−1)."""
    n = x.shape[axis]
    idx = np.minimum(np.arange(n) + 1, n - 1) if direction > 0 else np.maximum(np.arange(n) - 1, 0)
    return np.take(x, idx, axis=axis)


def _shifted_adjoint(g: np.ndarray, axis: int, direction: int) -> np.ndarray:
    """The adjoint of :func:`_shifted`: each row's gradient goes to the row it was read from."""
    n = g.shape[axis]
    out = np.zeros_like(g)
    src = [slice(None)] * g.ndim
    dst = [slice(None)] * g.ndim
    if direction > 0:  # y[i] = x[i + 1] for i < n − 1, y[n − 1] = x[n − 1]
        src[axis], dst[axis] = slice(0, n - 1), slice(1, n)
    else:              # y[i] = x[i − 1] for i > 0, y[0] = x[0]
        src[axis], dst[axis] = slice(1, n), slice(0, n - 1)
    out[tuple(dst)] = g[tuple(src)]
    edge = [slice(None)] * g.ndim
    edge[axis] = slice(n - 1, n) if direction > 0 else slice(0, 1)
    out[tuple(edge)] += g[tuple(edge)]
    return out


def _phase(a: np.ndarray, axis: int, r: int, s: int) -> tuple:
    key = [slice(None)] * a.ndim
    key[axis] = slice(r, None, s)
    return tuple(key)


def _bilinear_axis(x: np.ndarray, s: int, axis: int, number: Callable[[Any], Any] = float
                   ) -> np.ndarray:
    """``x`` up-sampled by ``s`` along ``axis`` (``number`` turns the exact weights into
    the array's kind of number: floats, or SymPy rationals for the symbolic form)."""
    if s == 1:
        return x
    shape = list(x.shape)
    shape[axis] *= s
    out = np.empty(shape, dtype=x.dtype)
    neighbours = {d: _shifted(x, axis, d) for d in (1, -1)}
    for r, (d, direction) in enumerate(_bilinear_phases(s)):
        out[_phase(out, axis, r, s)] = number(1 - d) * x + number(d) * neighbours[direction] \
            if d else x
    return out


def _bilinear_axis_adjoint(g: np.ndarray, s: int, axis: int) -> np.ndarray:
    if s == 1:
        return g
    own = None
    to_neighbour: dict[int, Any] = {}
    for r, (d, direction) in enumerate(_bilinear_phases(s)):
        gr = g[_phase(g, axis, r, s)]
        own = float(1 - d) * gr if own is None else own + float(1 - d) * gr
        if d:
            part = float(d) * gr
            to_neighbour[direction] = part if direction not in to_neighbour \
                else to_neighbour[direction] + part
    for direction, part in to_neighbour.items():
        own = own + _shifted_adjoint(part, axis, direction)
    return own


def _upsample_bilinear(x, scale=(2, 2)):
    fast = K.upsample_bilinear_forward(x, scale)
    if fast is not None:
        return fast
    return _bilinear_axis(_bilinear_axis(x, scale[0], -2), scale[1], -1)


def _upsample_bilinear_vjp(g, ans, x, scale=(2, 2)):
    fast = K.upsample_bilinear_backward(g, x.shape, scale)
    if fast is not None:
        return fast
    return _bilinear_axis_adjoint(_bilinear_axis_adjoint(g, scale[1], -1), scale[0], -2)


def _sp_upsample_bilinear(x, scale=(2, 2)):
    def rational(f: Any) -> Any:
        return sp.Rational(f.numerator, f.denominator)
    out = _bilinear_axis(np.asarray(x, dtype=object), scale[0], -2, rational)
    return _bilinear_axis(out, scale[1], -1, rational)


def bilinear_matrix(n: int, s: int) -> np.ndarray:
    """The (s·n, n) matrix of bilinear up-sampling of a length-n axis (align_corners=False),
    built pixel by pixel from PyTorch's source-index formula."""
    a = np.zeros((n * s, n))
    for o in range(n * s):
        src = max((o + 0.5) / s - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        a[o, i0] += 1 - lam
        a[o, i1] += lam
    return a


def _upsample_bilinear_matrix(M, g, ans, x, scale=(2, 2)):
    # Y = A_H X A_Wᵀ on the last two axes, so dL/dX = A_Hᵀ G A_W
    h, w = x.shape[-2:]
    a_h, a_w = M.const(bilinear_matrix(h, scale[0])), M.const(bilinear_matrix(w, scale[1]))
    return M.T(a_h) @ g @ a_w


_register(Op(
    name="upsample_bilinear",
    shape=lambda x, scale=(2, 2): _upsample_shape(x, scale, "upsample_bilinear"),
    forward=_upsample_bilinear, vjp=(_upsample_bilinear_vjp,), sympy=_sp_upsample_bilinear,
    label="bilinear", attrs={"scale": (2, 2)}, batched=_poly(_upsample_bilinear),
    vjp_uses=frozenset(),  # linear: the rule reads only the input's shape
    matrix=(_upsample_bilinear_matrix,),
    doc="bilinear up-sampling by integer factors (PyTorch's align_corners=False: edges "
        "repeated, no corner alignment)",
))


# --------------------------------------------------------------------------------------
# batch normalisation: x (N, C) or (N, C, H, W); statistics per channel over the other axes
# --------------------------------------------------------------------------------------

def _bn_axes(ndim: int) -> tuple[int, ...]:
    """Negative axes batch norm reduces over: every axis but the channel axis (axis 1)."""
    return tuple(a - ndim for a in range(ndim) if a != 1)


def _bn_shape(x: Shape, gamma: Shape, beta: Shape, mean: Shape | None = None,
              var: Shape | None = None, training=True, eps=1e-5) -> Shape:
    if len(x) not in (2, 4):
        raise ShapeRuleError(f"batch_norm needs input (N, C) or (N, C, H, W), got {_fmt(x)}")
    c = x[1]
    for label, s in (("gamma", gamma), ("beta", beta), ("running mean", mean),
                     ("running var", var)):
        if s is not None and tuple(s) != (c,):
            raise ShapeRuleError(f"batch_norm {label} must have shape ({c},) for input {_fmt(x)}, "
                                 f"got {_fmt(s)}")
    if training and mean is not None:
        raise ShapeRuleError("batch_norm in training mode takes (x, gamma, beta) only")
    if not training and (mean is None or var is None):
        raise ShapeRuleError("batch_norm in evaluation mode needs running mean and variance")
    return x


def _chan(v: np.ndarray, nd: int) -> np.ndarray:
    """A per-channel vector (…, C) shaped to broadcast against (…, N, C[, H, W])."""
    return v.reshape(v.shape[:-1] + (1, v.shape[-1]) + (1,) * (nd - 2))


def _bn_stats(x, nd, training, mean, var):
    axes = _bn_axes(nd)
    if training:
        mu = x.mean(axis=axes, keepdims=True)
        d = x - mu
        return d, (d * d).mean(axis=axes, keepdims=True)
    return x - _chan(mean, nd), _chan(var, nd)


def _batch_norm(x, gamma, beta, mean=None, var=None, training=True, eps=1e-5, nd=None):
    if nd is None:
        fast = K.batch_norm_forward(x, gamma, beta, mean, var, training, eps)
        if fast is not None:
            return fast
    nd = nd or x.ndim
    d, v = _bn_stats(x, nd, training, mean, var)
    return d / np.sqrt(v + eps) * _chan(gamma, nd) + _chan(beta, nd)


def _bn_parts(x, mean, var, training, eps):
    nd = x.ndim
    d, v = _bn_stats(x, nd, training, mean, var)
    inv = 1.0 / np.sqrt(v + eps)
    return d * inv, inv, _bn_axes(nd)


def _bn_vjp_x(g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    fast = K.batch_norm_backward(g, x, gamma, beta, mean, var, training, eps, "x")
    if fast is not None:
        return fast
    xhat, inv, axes = _bn_parts(x, mean, var, training, eps)
    scale = _chan(gamma, x.ndim) * inv  # γ/√(σ² + ε), factored out (so an infinite γ stays Inf)
    if not training:
        return scale * g
    return scale * (g - g.mean(axis=axes, keepdims=True)
                    - xhat * (g * xhat).mean(axis=axes, keepdims=True))


def _bn_vjp_gamma(g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    fast = K.batch_norm_backward(g, x, gamma, beta, mean, var, training, eps, "gamma")
    if fast is not None:
        return fast
    xhat, _, axes = _bn_parts(x, mean, var, training, eps)
    return (g * xhat).sum(axis=axes)


def _bn_forward_saving(x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    fast = K.batch_norm_forward_saving(x, gamma, beta, mean, var, training, eps)
    if fast is not None:
        return fast
    return _batch_norm(x, gamma, beta, mean, var, training, eps), None


def _bn_fused_vjp(wanted, saved, g, ans, x, gamma, beta, mean=None, var=None, training=True,
                  eps=1e-5):
    """x, γ and β from one pass over g and x (the three rules share Σg and Σg·x̂), with the
    forward's batch statistics; the running statistics' rules (evaluation) as they are."""
    first = tuple(wanted[:3])
    fast = K.batch_norm_backward_all(g, x, gamma, beta, mean, var, training, eps, first, saved)
    if fast is None:
        return OPS["batch_norm"].per_input_vjps(wanted, g, ans, x, gamma, beta, mean, var,
                                                training=training, eps=eps)
    rest = [(_bn_vjp_mean, _bn_vjp_var)[i - 3](g, ans, x, gamma, beta, mean, var, training, eps)
            if want else None for i, want in enumerate(wanted[3:], start=3)]
    return tuple(fast) + tuple(rest)


def _bn_vjp_beta(g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    return g.sum(axis=_bn_axes(x.ndim))


def _bn_vjp_mean(g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    return -(g * _chan(gamma / np.sqrt(var + eps), x.ndim)).sum(axis=_bn_axes(x.ndim))


def _bn_vjp_var(g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    xhat, inv, axes = _bn_parts(x, mean, var, training, eps)
    return (-0.5 * g * _chan(gamma, x.ndim) * xhat * inv * inv).sum(axis=axes)


def _sp_batch_norm(x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    nd = x.ndim
    d, v = _bn_stats(x, nd, training, mean, var)
    root = _ew(lambda t: sp.sqrt(t + sp.Float(eps)))(v)
    return np.asarray(d / root * _chan(gamma, nd) + _chan(beta, nd), dtype=object)


def _bn_batched(lead, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    nd = x.ndim - lead
    return _batch_norm(x, gamma, beta, mean, var, training, eps, nd=nd)


def _bn_matrix_xhat(M, x, mean, var, training, eps):
    """x̂ = (x − μ)/√(σ² + ε) and 1/√(σ² + ε), as matrix expressions."""
    axes = _bn_axes(x.ndim)
    if training:
        d = x - M.mean(x, axes, keepdims=True)
        inv = 1 / M.sqrt(M.mean(d * d, axes, keepdims=True) + eps)
    else:
        d = x - M.channel(mean, x.ndim)
        inv = 1 / M.sqrt(M.channel(var, x.ndim) + eps)
    return d * inv, inv


def _bn_matrix_x(M, g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    axes = _bn_axes(x.ndim)
    xhat, inv = _bn_matrix_xhat(M, x, mean, var, training, eps)
    gg = g * M.channel(gamma, x.ndim)
    if not training:
        return gg * inv
    # the batch statistics depend on x too: subtract the mean gradient and its x̂ component
    return inv * (gg - M.mean(gg, axes, keepdims=True) - xhat * M.mean(gg * xhat, axes, keepdims=True))


def _bn_matrix_gamma(M, g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    return M.sum(g * _bn_matrix_xhat(M, x, mean, var, training, eps)[0], _bn_axes(x.ndim))


def _bn_matrix_beta(M, g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    return M.sum(g, _bn_axes(x.ndim))


def _bn_matrix_mean(M, g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    return -M.sum(g * M.channel(gamma / M.sqrt(var + eps), x.ndim), _bn_axes(x.ndim))


def _bn_matrix_var(M, g, ans, x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    xhat, inv = _bn_matrix_xhat(M, x, mean, var, training, eps)
    return M.sum(-0.5 * (g * M.channel(gamma, x.ndim) * xhat * inv * inv), _bn_axes(x.ndim))


_register(Op(
    name="batch_norm", n_args=(3, 5), shape=_bn_shape,
    forward=lambda x, gamma, beta, mean=None, var=None, training=True, eps=1e-5:
        _batch_norm(x, gamma, beta, mean, var, training, eps),
    vjp=(_bn_vjp_x, _bn_vjp_gamma, _bn_vjp_beta, _bn_vjp_mean, _bn_vjp_var),
    sympy=_sp_batch_norm, label="batch_norm", attrs={"training": True, "eps": 1e-5},
    batched=_bn_batched, vjp_uses=frozenset({"inputs"}),
    fused_vjp=_bn_fused_vjp, forward_saving=_bn_forward_saving,
    matrix=(_bn_matrix_x, _bn_matrix_gamma, _bn_matrix_beta, _bn_matrix_mean, _bn_matrix_var),
    doc="(x − μ)/√(σ² + ε)·γ + β per channel; training: batch statistics (biased variance), "
        "evaluation: the running statistics given as inputs",
))


def _batch_stats_shape(x: Shape) -> Shape:
    if len(x) not in (2, 4):
        raise ShapeRuleError(f"batch_stats needs input (N, C) or (N, C, H, W), got {_fmt(x)}")
    if math.prod(x) // max(x[1], 1) < 2:
        raise ShapeRuleError(f"batch_stats needs more than 1 value per channel, got input {_fmt(x)}")
    return (2, x[1])


def _batch_stats_numpy(x: np.ndarray, nd: int) -> np.ndarray:
    """[mean; unbiased variance] per channel of x (``nd`` axes after any leading copies):
    the definition (numpy and SymPy object arrays alike)."""
    axes = _bn_axes(nd)
    count = math.prod(x.shape[a] for a in axes)
    mu = x.mean(axis=axes, keepdims=True)
    d = x - mu
    var = (d * d).sum(axis=axes) * (1.0 / (count - 1))
    return np.stack([mu.reshape(var.shape), var], axis=-2)


def _batch_stats(x: np.ndarray) -> np.ndarray:
    fast = K.batch_stats(x)
    return fast if fast is not None else _batch_stats_numpy(x, x.ndim)


def _batch_stats_vjp(g: np.ndarray, ans: np.ndarray, x: np.ndarray) -> np.ndarray:
    nd = x.ndim
    count = math.prod(x.shape[a] for a in _bn_axes(nd))
    d = x - _chan(ans[..., 0, :], nd)
    return _chan(g[..., 0, :], nd) / count + _chan(g[..., 1, :], nd) * (2.0 / (count - 1)) * d


def _batch_stats_matrix(M, g, ans, x):
    """d mean/dx = 1/m, d var/dx = 2(x − mean)/(m − 1), per channel."""
    nd = x.ndim
    count = math.prod(x.shape[a] for a in _bn_axes(nd))

    def row(a, i):
        return M.channel(M.index(a, (("int", i), ("slice", None, None, None))), nd)
    return row(g, 0) / count + row(g, 1) * (2.0 / (count - 1)) * (x - row(ans, 0))


_register(Op(
    name="batch_stats", shape=_batch_stats_shape, forward=_batch_stats,
    vjp=(_batch_stats_vjp,), sympy=lambda x: np.asarray(_batch_stats_numpy(x, x.ndim),
                                                        dtype=object),
    label="batch stats", vjp_uses=frozenset({"inputs", "ans"}),
    batched=lambda lead, x: _batch_stats_numpy(x, x.ndim - lead),
    matrix=(_batch_stats_matrix,),
    doc="per channel (axis 1) of x (N, C) or (N, C, H, W): [mean; unbiased variance], shape "
        "(2, C) -- what batch norm's running statistics take from a batch (one pass)",
))


def _bn_relu_forward_saving(x, gamma, beta, mean=None, var=None, training=True, eps=1e-5):
    fast = K.batch_norm_relu_forward_saving(x, gamma, beta, mean, var, training, eps)
    if fast is not None:
        return fast
    return _relu(_batch_norm(x, gamma, beta, mean, var, training, eps)), None


def _bn_act_vjps(fast, act_vjp, wanted, g, ans, x, gamma, beta, mean, var, training, eps):
    """The gradients of act(batch_norm(x)) from the fused kernels' x, γ and β gradients
    ``fast`` (``None``: none, then the two entries' own rules, one after the other) and the
    running statistics' rules as they are; ``act_vjp(g, ans, y)`` is the activation's rule."""
    if fast is None:
        y = _batch_norm(x, gamma, beta, mean, var, training, eps)
        return OPS["batch_norm"].per_input_vjps(wanted, act_vjp(g, ans, y), y, x, gamma,
                                                beta, mean, var, training=training, eps=eps)
    if not any(wanted[3:]):
        return tuple(fast) + (None,) * len(wanted[3:])
    dy = act_vjp(g, ans, _batch_norm(x, gamma, beta, mean, var, training, eps))
    rest = [(_bn_vjp_mean, _bn_vjp_var)[i - 3](dy, ans, x, gamma, beta, mean, var, training, eps)
            if want else None for i, want in enumerate(wanted[3:], start=3)]
    return tuple(fast) + tuple(rest)


def _bn_relu_fused_vjp(wanted, saved, g, ans, x, gamma, beta, mean=None, var=None,
                       training=True, eps=1e-5):
    """relu's rule (read from its result: r > 0 exactly where the normalised value is) and
    batch norm's x, γ and β rules in one pass; the running statistics' rules as they are."""
    fast = K.batch_norm_relu_backward_all(g, ans, x, gamma, beta, mean, var, training, eps,
                                          tuple(wanted[:3]), saved)
    return _bn_act_vjps(fast, _relu_vjp, wanted, g, ans, x, gamma, beta, mean, var,
                        training, eps)


_register_fusion(Fusion("batch_norm", "relu", _bn_relu_forward_saving, _bn_relu_fused_vjp))


def _bn_leaky_relu_forward_saving(x, gamma, beta, mean=None, var=None, training=True,
                                  eps=1e-5, leaky_alpha=0.01):
    fast = K.batch_norm_leaky_relu_forward_saving(x, gamma, beta, mean, var, training, eps,
                                                  leaky_alpha)
    if fast is not None:
        return fast
    return _leaky_relu(_batch_norm(x, gamma, beta, mean, var, training, eps), leaky_alpha), None


def _bn_leaky_relu_fused_vjp(wanted, saved, g, ans, x, gamma, beta, mean=None, var=None,
                             training=True, eps=1e-5, leaky_alpha=0.01):
    """leaky_relu's rule (read from its result when the slope is positive and finite: then
    r > 0 exactly where the normalised value is) and batch norm's x, γ and β rules in one
    pass; other slopes take the two entries' rules."""
    fast = K.batch_norm_leaky_relu_backward_all(g, ans, x, gamma, beta, mean, var, training,
                                                eps, leaky_alpha, tuple(wanted[:3]), saved)
    return _bn_act_vjps(fast, lambda g, ans, y: _leaky_relu_vjp(g, ans, y, leaky_alpha),
                        wanted, g, ans, x, gamma, beta, mean, var, training, eps)


_register_fusion(Fusion("batch_norm", "leaky_relu", _bn_leaky_relu_forward_saving,
                        _bn_leaky_relu_fused_vjp, second_attrs=(("alpha", "leaky_alpha"),)))


# --------------------------------------------------------------------------------------
# softmax family and losses
# --------------------------------------------------------------------------------------

def _softmax_axis_shape(x: Shape, axis: int = -1) -> Shape:
    if not -len(x) <= axis < 0:
        raise ShapeRuleError(f"axis {axis + len(x)} is out of range for shape {_fmt(x)}")
    return x


def _log_softmax(x, axis=-1):
    shift = np.max(_re(x), axis=axis, keepdims=True)  # a real shift keeps the complex step valid
    z = x - shift
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def _softmax(x, axis=-1):
    return np.exp(_log_softmax(x, axis))


def _sp_log_softmax(x, axis=-1):
    lse = _ew(sp.log)(np.sum(_ew(sp.exp)(x), axis=axis, keepdims=True))
    return np.asarray(x - lse, dtype=object)


def _sp_softmax(x, axis=-1):
    e = _ew(sp.exp)(x)
    return np.asarray(e / np.sum(e, axis=axis, keepdims=True), dtype=object)


_register(Op(
    name="log_softmax", shape=_softmax_axis_shape, forward=_log_softmax,
    vjp=(lambda g, ans, x, axis=-1: g - np.exp(ans) * g.sum(axis=axis, keepdims=True),),
    sympy=_sp_log_softmax, label="log_softmax", attrs={"axis": -1}, batched=_poly(_log_softmax),
    vjp_uses=frozenset({"ans"}),
    matrix=(lambda M, g, ans, x, axis=-1: g - M.exp(ans) * M.sum(g, (axis,), keepdims=True),),
    doc="x − log Σ exp(x) along an axis (shifted for stability)",
))
_register(Op(
    name="softmax", shape=_softmax_axis_shape, forward=_softmax,
    vjp=(lambda g, ans, x, axis=-1: ans * (g - (g * ans).sum(axis=axis, keepdims=True)),),
    sympy=_sp_softmax, label="softmax", attrs={"axis": -1}, batched=_poly(_softmax),
    vjp_uses=frozenset({"ans"}),
    matrix=(lambda M, g, ans, x, axis=-1: ans * (g - M.sum(g * ans, (axis,), keepdims=True)),),
    doc="exp(x) / Σ exp(x) along an axis",
))


def _reduce_loss(per_item: np.ndarray, reduction: str, lead: int = 0) -> np.ndarray:
    axes = tuple(range(lead, per_item.ndim))
    return np.add.reduce(per_item, axis=axes) if reduction == "sum" else \
        per_item.mean(axis=axes)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise ShapeRuleError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _ce_shape(logits: Shape, labels: Shape, reduction: str = "mean") -> Shape:
    _check_reduction(reduction)
    if len(logits) < 1 or tuple(labels) != tuple(logits[:-1]):
        raise ShapeRuleError(f"softmax_cross_entropy needs logits (…, K) and integer labels (…); "
                             f"got logits {_fmt(logits)} and labels {_fmt(labels)}")
    return ()


def check_labels(labels: Any, classes: int) -> None:
    """Raise :class:`LabelError` unless ``labels`` are integers in ``0 … classes − 1``; the
    message names the first bad label, where it is and ``classes``. Every rule that indexes
    with labels calls this first (numpy would wrap −1 round to K − 1, and a Numba kernel
    would read or write outside the array)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise LabelError(f"class labels must be integers, got dtype {labels.dtype}")
    if labels.size == 0:
        return
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LabelError(f"class label {labels[idx]} (at index {idx}) is out of range for "
                         f"K = {classes} classes: labels must be 0 … {classes - 1}")


def _ce_check_ints(i: int, labels: Any, logits: Shape, labels_shape: Shape, **attrs: Any) -> None:
    check_labels(labels, logits[-1])


def _ce_forward(logits, labels, reduction="mean", lead=0):
    check_labels(labels, logits.shape[-1])
    fast = None if lead else K.softmax_cross_entropy_forward(logits, labels, reduction)
    if fast is not None:
        return fast
    logp = _log_softmax(logits)
    picked = np.take_along_axis(logp, np.asarray(labels, dtype=np.intp)[..., None], axis=-1)
    return -_reduce_loss(picked[..., 0], reduction, lead)


def _ce_vjp(g, ans, logits, labels, reduction="mean"):
    check_labels(labels, logits.shape[-1])
    fast = K.softmax_cross_entropy_backward(g, logits, labels, reduction)
    if fast is not None:
        return fast
    p = _softmax(logits)
    np.put_along_axis(p, np.asarray(labels, dtype=np.intp)[..., None],
                      np.take_along_axis(p, np.asarray(labels, dtype=np.intp)[..., None],
                                         axis=-1) - 1, axis=-1)
    scale = g if reduction == "sum" else g / (logits.size // logits.shape[-1])
    return p * scale


def _sp_ce(logits, labels, reduction="mean"):
    logp = _sp_log_softmax(logits)
    labels = np.asarray(labels)
    if labels.dtype == object:
        raise TypeError("the expanded SymPy form of softmax_cross_entropy needs numeric labels")
    picked = np.take_along_axis(logp, labels.astype(np.intp)[..., None], axis=-1)[..., 0]
    total = sp.Add(*picked.ravel())
    return np.asarray(-(total if reduction == "sum" else total / picked.size), dtype=object)


def _ce_batched(lead, logits, labels, reduction="mean"):
    batch = _lead_shape(lead, logits, labels)
    return _ce_forward(np.broadcast_to(logits, batch + logits.shape[lead:]),
                       np.broadcast_to(labels, batch + labels.shape[lead:]), reduction, lead)


_register(Op(
    name="softmax_cross_entropy", n_args=(2, 2), shape=_ce_shape, forward=_ce_forward,
    vjp=(_ce_vjp, None), sympy=_sp_ce, label="softmax CE", attrs={"reduction": "mean"},
    int_args=frozenset({1}), check_ints=_ce_check_ints,
    batched=_ce_batched,
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, logits, labels, reduction="mean":
            g * (M.apply("softmax", logits) - M.onehot(labels, logits.shape[-1]))
            / (1 if reduction == "sum" else math.prod(logits.shape[:-1])), None),
    doc="−mean log softmax(logits)[label] over the batch; d/dlogits = (softmax − onehot)/N",
))


def _pair_loss_shape(pred: Shape, target: Shape, reduction: str = "sum", name: str = "") -> Shape:
    _check_reduction(reduction)
    if tuple(pred) != tuple(target):
        raise ShapeRuleError(f"{name} needs prediction and target of one shape; got "
                             f"{_fmt(pred)} and {_fmt(target)}")
    return ()


def _difference(pred, target):
    """pred − target, a new array the callers may change in place: recycled (no page
    faults) for two real float arrays of one shape and dtype."""
    same = (type(pred) is np.ndarray and type(target) is np.ndarray
            and pred.shape == target.shape and pred.dtype == target.dtype)
    return np.subtract(pred, target, out=K.recycled_like(pred) if same else None)


def _mse_saving(pred, target, reduction="sum"):
    """The loss and, for big real arrays of one shape, the difference ``pred − target``
    it was computed from (else ``None``), which the fused rule scales instead of
    computing again: one pass over the inputs for the loss (:func:`.kernels.dispatch.
    difference_squares`) and none for its gradient, where numpy takes three and two."""
    fast = K.difference_squares(pred, target) if reduction in ("sum", "mean") else None
    if fast is None:
        return _mse(pred, target, reduction), None
    d, total = fast
    return d.dtype.type(0.5 * (total if reduction == "sum" else total / max(d.size, 1))), d


def _mse(pred, target, reduction="sum", lead=0):
    if lead == 0 and reduction in ("sum", "mean") and type(pred) is np.ndarray \
            and type(target) is np.ndarray:
        fast = K.difference_squares(pred, target)
        if fast is not None:  # the saving forward's arithmetic, so both give one value
            d, total = fast
            return d.dtype.type(0.5 * (total if reduction == "sum" else total / max(d.size, 1)))
    d = _difference(pred, target)
    square = np.multiply(d, d, out=d) if type(d) is np.ndarray else d * d
    return 0.5 * _reduce_loss(square, reduction, lead)


def _mse_scaled(d, sign: int, g, reduction: str, into=None):
    """``sign · g · d`` ('sum') or ``sign · g · d / N`` ('mean'): the rule's last step,
    into ``into`` (an array of d's shape and dtype) where d's dtype holds the result."""
    scale = sign * (g if reduction == "sum" else g / max(d.size, 1))
    if into is not None and np.result_type(scale, d) == d.dtype:
        return np.multiply(d, scale, out=into)
    return scale * d


def _mse_vjp(sign: int) -> Callable:
    def rule(g, ans, pred, target, reduction="sum"):
        d = _difference(pred, target)
        return _mse_scaled(d, sign, g, reduction, d if type(d) is np.ndarray else None)
    return rule


def _mse_fused_vjp(wanted, saved, g, ans, pred, target, reduction="sum"):
    """Both gradients from one difference: the target's is the prediction's negated, which
    is exactly what its own rule computes (−(d·s) and d·(−s) round alike), so the pair costs
    one pass over the inputs instead of two: on the 16-8-16 MLP, every input differentiated,
    4.7 % of the gradient (paired rounds, 84 against 87 µs). With ``saved``, the forward's
    difference (:func:`_mse_saving`), the inputs are not read at all; ``saved`` is left as
    it is (a second backward pass of the same call may read it again)."""
    if saved is not None:
        first = 1 if wanted[0] else -1
        grad = _mse_scaled(saved, first, g, reduction, K.recycled_like(saved))
        return ((grad if wanted[0] else None),
                (np.negative(grad) if wanted[0] and wanted[1] else grad if wanted[1] else None))
    if not wanted[0]:
        return None, _MSE_TARGET(g, ans, pred, target, reduction)
    grad = _MSE_PRED(g, ans, pred, target, reduction)
    return grad, (np.negative(grad) if wanted[1] else None)


def _sp_pair_loss(fn: Callable) -> Callable:
    def apply(pred, target, reduction="sum"):
        terms = [fn(p, t) for p, t in zip(np.ravel(pred), np.ravel(target))]
        total = sp.Add(*terms)
        return np.asarray(total if reduction == "sum" else total / max(len(terms), 1), dtype=object)
    return apply


def _pair_loss_matrix(derivative: Callable, sign: int) -> Callable:
    """d loss/d pred (sign +1) or d loss/d target (sign −1), scaled by g (and 1/N for 'mean')."""
    def rule(M, g, ans, pred, target, reduction="sum"):
        local = g * derivative(M, pred - target)
        if reduction == "mean":
            local = local / max(math.prod(pred.shape), 1)
        return local if sign > 0 else -local
    return rule


_MSE_PRED, _MSE_TARGET = _mse_vjp(1), _mse_vjp(-1)

_register(Op(
    name="mse", n_args=(2, 2), shape=lambda p, t, **a: _pair_loss_shape(p, t, name="mse", **a),
    forward=_mse, vjp=(_MSE_PRED, _MSE_TARGET), fused_vjp=_mse_fused_vjp,
    forward_saving=_mse_saving,
    sympy=_sp_pair_loss(lambda p, t: (p - t) ** 2 / 2), label="½‖ŷ−y‖²",
    attrs={"reduction": "sum"},
    batched=lambda lead, p, t, reduction="sum": _mse(p, t, reduction, lead),
    vjp_uses=frozenset({"inputs"}),
    matrix=(_pair_loss_matrix(lambda M, d: d, 1), _pair_loss_matrix(lambda M, d: d, -1)),
    doc="½ Σ (ŷ − y)² ('sum', the default) or ½ mean (ŷ − y)² ('mean'); d/dŷ = ŷ − y",
))


def _l1(pred, target, reduction="sum", lead=0):
    return _reduce_loss(_abs(pred - target), reduction, lead)


def _l1_vjp(sign: int) -> Callable:
    def rule(g, ans, pred, target, reduction="sum"):
        s = np.sign(_re(pred - target)).astype(np.result_type(pred, target))
        scale = g if reduction == "sum" else g / max(s.size, 1)
        return (sign * scale) * s
    return rule


_register(Op(
    name="l1", n_args=(2, 2), shape=lambda p, t, **a: _pair_loss_shape(p, t, name="l1", **a),
    forward=_l1, vjp=(_l1_vjp(1), _l1_vjp(-1)),
    sympy=_sp_pair_loss(lambda p, t: sp.Abs(p - t)), label="‖ŷ−y‖₁",
    attrs={"reduction": "sum"},
    kink=lambda p, t, **a: bool(np.any(_re(p) == _re(t))),
    kink_coord=_difference_coord, kink_convention="mean",
    batched=lambda lead, p, t, reduction="sum": _l1(p, t, reduction, lead),
    vjp_uses=frozenset({"inputs"}),
    matrix=(_pair_loss_matrix(lambda M, d: M.sign(d), 1),
            _pair_loss_matrix(lambda M, d: M.sign(d), -1)),
    doc="Σ |ŷ − y| ('sum') or mean |ŷ − y| ('mean'); derivative sign(ŷ − y), 0 at ties",
))


# --------------------------------------------------------------------------------------
# scalar forms (straight-line Python on floats) of the ops a scalar graph is made of
# --------------------------------------------------------------------------------------

# NaN in, NaN out, as in the numpy rules: a comparison is False at a NaN, so every chain of
# comparisons ends in a branch that returns the NaN instead of a number
_SIGN = "(1.0 if {d} > 0 else (-1.0 if {d} < 0 else (0.0 if {d} == 0 else {d})))"
_SCALAR_FORMS: dict[str, ScalarForm] = {
    "add": ScalarForm("{0} + {1}", ("{g}", "{g}")),
    "sub": ScalarForm("{0} - {1}", ("{g}", "-{g}")),
    "mul": ScalarForm("{0} * {1}", ("{g} * {1}", "{g} * {0}")),
    "div": ScalarForm("{0} / {1}", ("{g} / {1}", "-{g} * {ans} / {1}")),
    "maximum": ScalarForm(
        "({0} if {0} >= {1} or {0} != {0} else {1})",
        ("{g} * (1.0 if {0} > {1} else (0.5 if {0} == {1} else (0.0 if {0} < {1} else {0} - {1})))",
         "{g} * (1.0 if {1} > {0} else (0.5 if {0} == {1} else (0.0 if {1} < {0} else {0} - {1})))")),
    "minimum": ScalarForm(
        "({0} if {0} <= {1} or {0} != {0} else {1})",
        ("{g} * (1.0 if {0} < {1} else (0.5 if {0} == {1} else (0.0 if {0} > {1} else {0} - {1})))",
         "{g} * (1.0 if {1} < {0} else (0.5 if {0} == {1} else (0.0 if {1} > {0} else {0} - {1})))")),
    "neg": ScalarForm("-{0}", ("-{g}",)),
    "reciprocal": ScalarForm("1.0 / {0}", ("-{g} * {ans} * {ans}",)),
    "exp": ScalarForm("exp({0})", ("{g} * {ans}",)),
    "log": ScalarForm("log({0})", ("{g} / {0}",)),
    "sqrt": ScalarForm("sqrt({0})", ("{g} * 0.5 / {ans}",)),
    "sin": ScalarForm("sin({0})", ("{g} * cos({0})",)),
    "cos": ScalarForm("cos({0})", ("-{g} * sin({0})",)),
    "tanh": ScalarForm("tanh({0})", ("{g} * (1.0 - {ans} * {ans})",)),
    "sigmoid": ScalarForm("1.0 / (1.0 + exp(-{0}))", ("{g} * {ans} * (1.0 - {ans})",)),
    "relu": ScalarForm("(0.0 if {0} <= 0 else {0})",
                       ("({g} if {0} > 0 else ({g} * 0.0 if {0} <= 0 else {0}))",)),
    "leaky_relu": ScalarForm("({0} if {0} > 0 else {alpha} * {0})",
                             ("({g} if {0} > 0 else ({alpha} * {g} if {0} <= 0 else {0}))",)),
    "abs": ScalarForm("abs({0})", ("{g} * " + _SIGN.format(d="{0}"),)),
    "pow": ScalarForm("{0} ** {exponent}",
                      ("({g} * {exponent} * {0} ** ({exponent} - 1.0) if {exponent} != 0 "
                       "else 0.0)",)),
    # one-element losses: 'sum' and 'mean' agree
    "mse": ScalarForm("0.5 * ({0} - {1}) * ({0} - {1})", ("{g} * ({0} - {1})", "-{g} * ({0} - {1})")),
    "l1": ScalarForm("abs({0} - {1})", ("{g} * " + _SIGN.format(d="({0} - {1})"),
                                        "-{g} * " + _SIGN.format(d="({0} - {1})"))),
}
for _name, _form in _SCALAR_FORMS.items():
    OPS[_name] = replace(OPS[_name], scalar=_form)


# --------------------------------------------------------------------------------------
# dropout: x times a given keep-mask (0/1 integers), scaled by 1/(1 − p) ("inverted" dropout)
# --------------------------------------------------------------------------------------
# The mask is an integer input of the graph, like class labels: random numbers are drawn
# outside the graph (by the Dropout layer, from its seeded generator, once per step), so
# the op itself is deterministic and every engine computes the same function of x.

def _dropout_scale(p: float) -> float:
    """1/(1 − p), the factor that keeps E[output] = x; 0 when everything is dropped."""
    return 1.0 / (1.0 - p) if p < 1 else 0.0


def _dropout_shape(x: Shape, mask: Shape, p: float = 0.5) -> Shape:
    if not 0.0 <= p <= 1.0:
        raise ShapeRuleError(f"dropout probability p must be in [0, 1], got {p}")
    try:
        fits = tuple(np.broadcast_shapes(x, mask)) == tuple(x)
    except ValueError:
        fits = False
    if not fits:
        raise ShapeRuleError(f"dropout mask {_fmt(mask)} must have the shape of the input "
                             f"{_fmt(x)} (or broadcast to it, e.g. one entry per channel)")
    return x


def _dropout(x: np.ndarray, mask: np.ndarray, p: float = 0.5) -> np.ndarray:
    # the mask in x's dtype times a scalar of x's dtype: float32 stays float32
    keep = np.asarray(mask).astype(x.dtype, copy=False)
    return x * (keep * x.dtype.type(_dropout_scale(p)))


def _sp_dropout(x: np.ndarray, mask: np.ndarray, p: float = 0.5) -> np.ndarray:
    if mask is None or np.asarray(mask).dtype == object:
        raise TypeError("the expanded SymPy form of dropout needs the numeric mask")
    scale = sp.Rational(1, 1) / (1 - sp.nsimplify(p)) if p < 1 else sp.S.Zero
    keep = np.broadcast_to(np.asarray(mask), np.shape(x))
    return np.asarray(x * np.vectorize(lambda k: sp.Integer(int(k)) * scale, otypes=[object])(keep),
                      dtype=object)


_register(Op(
    name="dropout", n_args=(2, 2), shape=_dropout_shape, forward=_dropout,
    # d(x·m·s)/dx = m·s; the mask is data (integers), not differentiable, like labels
    vjp=(lambda g, ans, x, mask, p=0.5: _dropout(g, mask, p), None),
    sympy=_sp_dropout, label="dropout", attrs={"p": 0.5},
    int_args=frozenset({1}),
    complex_safe=True,  # linear in x
    kink=None,          # linear in x: no non-differentiable points
    # the mask (not perturbed) carries size-1 leading axes: numpy broadcasting does the rest
    batched=lambda lead, x, mask, p=0.5: _dropout(x, mask, p),
    vjp_uses=frozenset({"inputs"}),
    matrix=(lambda M, g, ans, x, mask, p=0.5: g * mask * _dropout_scale(p), None),
    doc="x · mask / (1 − p): inverted dropout with a given 0/1 keep-mask (an integer input); "
        "d/dx = mask / (1 − p)",
))
