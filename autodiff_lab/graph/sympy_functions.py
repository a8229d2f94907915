"""ReLU's SymPy functions, ``relu(x)`` and its derivative ``relu_step(x)``.

Defining a SymPy function class imports SymPy, so they live here and not in the op table:
the op table's relu form imports this module the first time it is evaluated, and
``import autodiff_lab`` never pays for SymPy.
"""

from __future__ import annotations

import sympy as sp


class relu_step(sp.Function):  # noqa: N801 - printed as SymPy prints functions
    """1[x > 0] as a SymPy function: the derivative of relu, 0 at 0 (not Heaviside's 1/2)."""

    is_real = True

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number and x.is_comparable:
            return sp.S.One if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero

    _imp_ = staticmethod(lambda x: (x > 0) * 1.0)  # numpy arrays, floats and mpmath numbers


class relu(sp.Function):  # noqa: N801
    """max(0, x) as a SymPy function with relu'(x) = 1[x > 0], so relu'(0) = 0.

    Not Max (its derivative is Heaviside(x), 1/2 at 0) and not Piecewise (nested
    Piecewise conditions make SymPy's canonicalisation blow up on a conv + relu stack).
    """

    is_real = True

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number and x.is_comparable:
            return x if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return relu_step(self.args[0])

    _imp_ = staticmethod(lambda x: x * (x > 0))

