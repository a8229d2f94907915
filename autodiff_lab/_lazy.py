"""Modules imported on first use, so that ``import autodiff_lab`` stays fast.

SymPy alone takes about half a second to import, and only the symbolic engine, the
formulas and the op table's SymPy forms need it; a tape or numeric gradient never does.
Modules that use it write ``sp = lazy_module("sympy")`` instead of ``import sympy as sp``:
``sp.exp`` then imports SymPy at its first use and is a plain attribute afterwards.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it at the first attribute looked up.

    Each attribute is copied onto this object when first read, so later look-ups cost
    what an ordinary module attribute costs. Use only the attributes (``sp.Symbol``), never
    the object itself where a real module is expected.
    """

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    @property
    def module(self) -> ModuleType:
        """The real module (imported now if it was not yet)."""
        return importlib.import_module(self._lazy_name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and inspect probe dunders: do not import
            raise AttributeError(attr)
        value = getattr(self.module, attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports the module at its first attribute use
    (typed ``Any`` so that ``sp.Expr`` in annotations and ``sp.exp(x)`` type-check)."""
    return LazyModule(name)
