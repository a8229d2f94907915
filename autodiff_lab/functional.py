"""Gradients of plain Python functions of arrays: ``adl.grad`` and ``adl.value_and_grad``.

::

    def loss(w, x, y):
        return adl.mse_loss(x @ w, y)

    dloss_dw = adl.grad(loss)                  # with respect to the first argument
    g = dloss_dw(w, x, y)                      # an array of w's shape
    value, (gw, gx) = adl.value_and_grad(loss, wrt=("w", "x"))(w, x, y)

Like ``jax.jit``, the function is traced on its first call and again for every new
combination of argument shapes and dtypes (a new batch size, float32 instead of float64);
each trace is compiled once with the chosen engine and cached. The function must be
traceable: written with the ``adl`` functions and operators, returning a scalar.
Integer arrays (class labels) are passed as integer inputs; other arguments are floats.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autodiff_lab.engines import engine as make_engine
from autodiff_lab.engines.base import Program
from autodiff_lab.errors import InputError, TraceError
from autodiff_lab.graph.graph import Graph, Spec, trace

#: traces kept per transformed function
CACHE_SIZE = 16

Wrt = int | str | Sequence[int | str]


class _Differentiated:
    """The function ``adl.grad`` / ``adl.value_and_grad`` return (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], wrt: Wrt, engine: str, options: dict[str, Any],
                 with_value: bool) -> None:
        if not callable(fn):
            raise TraceError(f"adl.grad needs a function, got {type(fn).__name__}")
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError):
            raise TraceError(f"adl.grad cannot read the arguments of {fn!r}") from None
        params = list(self.signature.parameters.values())
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise TraceError("adl.grad needs a function with named arguments (no *args or "
                             "**kwargs): each argument becomes a named input of the graph")
        self.fn = fn
        self.names = [p.name for p in params]
        self.single = isinstance(wrt, (int, str, np.integer))
        self.wrt = [self._name(w) for w in ([wrt] if self.single else list(wrt))]
        if not self.wrt:
            raise InputError("wrt names no argument to differentiate with respect to")
        if len(set(self.wrt)) != len(self.wrt):
            raise InputError(f"wrt lists an argument twice: {self.wrt}")
        self.engine = make_engine(engine, **options)
        self.with_value = with_value
        self._programs: OrderedDict[tuple, Program] = OrderedDict()
        self.traces = 0  #: how many times the function has been traced
        self.__name__ = f"{'value_and_grad' if with_value else 'grad'}({getattr(fn, '__name__', 'f')})"
        self.__doc__ = fn.__doc__

    def _name(self, w: Any) -> str:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not -len(self.names) <= int(w) < len(self.names):
                raise InputError(f"wrt={w}: the function has {len(self.names)} argument(s) "
                                 f"({', '.join(self.names)})")
            return self.names[int(w)]
        if isinstance(w, str):
            if w not in self.names:
                raise InputError(f"wrt={w!r} is not an argument of the function (its arguments: "
                                 f"{', '.join(self.names)})")
            return w
        raise InputError(f"wrt must be argument names or positions, got {w!r}")

    @property
    def graphs(self) -> list[Graph]:
        """The traced graphs currently cached (one per argument shapes and dtypes)."""
        return [p.graph for p in self._programs.values()]

    def _arrays(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InputError(f"{self.__name__}: {exc}") from None
        arrays: dict[str, np.ndarray] = {}
        for name, value in bound.arguments.items():
            arr = np.asarray(value)
            if arr.dtype == object or arr.dtype.kind not in "biufc":
                raise InputError(f"{self.__name__}: argument {name!r} is a "
                                 f"{type(value).__name__}, not an array of numbers; fix it with "
                                 "functools.partial or a closure")
            if arr.dtype.kind == "b" or (arr.dtype.kind in "iu" and (name in self.wrt or
                                                                    not isinstance(value, np.ndarray))):
                arr = arr.astype(np.float64)  # Python numbers and differentiated ints are floats
            arrays[name] = arr
        missing = [n for n in self.wrt if n not in arrays]
        if missing:
            raise InputError(f"{self.__name__}: no value given for {', '.join(missing)}, which is "
                             "differentiated")
        return arrays

    def _program(self, arrays: dict[str, np.ndarray]) -> Program:
        key = tuple((n, a.shape, a.dtype.str) for n, a in arrays.items())
        program = self._programs.get(key)
        if program is not None:
            self._programs.move_to_end(key)
            return program
        graph = trace(self.fn, **{n: Spec(a.shape, a.dtype) for n, a in arrays.items()})
        self.traces += 1
        program = self.engine.compile(graph, wrt=self.wrt)
        self._programs[key] = program
        if len(self._programs) > CACHE_SIZE:
            self._programs.popitem(last=False)
        return program

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays = self._arrays(args, kwargs)
        result = self._program(arrays)(arrays)
        grads = tuple(result.grads[n] for n in self.wrt)
        out = grads[0] if self.single else grads
        if self.with_value:
            return np.asarray(result.value)[()], out
        return out

    def __repr__(self) -> str:
        return f"<{self.__name__} wrt={self.wrt} engine={self.engine.name!r}>"


def grad(fn: Callable[..., Any], wrt: Wrt = 0, engine: str = "tape", **options: Any
         ) -> Callable[..., Any]:
    """The gradient of ``fn`` (a traceable function of arrays returning a scalar) as a
    function of the same arguments.

    Traced on the first call and again for each new combination of argument shapes and
    dtypes; each trace is compiled once and cached.

    Args:
        fn: a function of named array arguments written with the ``adl`` functions and
            operators, returning a scalar.
        wrt: the argument(s) to differentiate, by position or name; one gives an array of
            that argument's shape, a tuple or list gives a tuple of arrays.
        engine: ``"tape"`` (default), ``"symbolic"`` or ``"numeric"``.
        **options: the engine's options (see :func:`adl.gradient`), e.g. ``method="central"``.

    Examples:
        >>> def loss(w, x, y):
        ...     return adl.mse_loss(x @ w, y)
        >>> dloss = adl.grad(loss)                       # with respect to w
        >>> print(dloss(np.zeros(2), np.eye(2), np.array([1.0, 2.0])))
        [-1. -2.]
    """
    return _Differentiated(fn, wrt, engine, options, with_value=False)


def value_and_grad(fn: Callable[..., Any], wrt: Wrt = 0, engine: str = "tape", **options: Any
                   ) -> Callable[..., Any]:
    """Like :func:`grad`, but the function returns ``(value, gradient(s))``.

    Args:
        fn: a traceable function of named array arguments returning a scalar.
        wrt: the argument(s) to differentiate, by position or name.
        engine: ``"tape"`` (default), ``"symbolic"`` or ``"numeric"``.
        **options: the engine's options.

    Examples:
        >>> f = adl.value_and_grad(lambda w, x: adl.sum(adl.tanh(x * w)), wrt=("w", "x"))
        >>> value, (gw, gx) = f(np.zeros(2), np.ones(2))
        >>> print(value, gw, gx)
        0.0 [1. 1.] [0. 0.]
    """
    return _Differentiated(fn, wrt, engine, options, with_value=True)


__all__ = ["grad", "value_and_grad"]
