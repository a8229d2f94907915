"""How numbers are written in a drawing: scalars to a few significant digits, tensors as a
short summary. Kept apart from the DOT code so the formatting rules can be tested on their own.

Minus signs are the typographic "−" (U+2212), as in the textbook drawings, and the text is the
same on every platform (no locale, no repr), so the DOT text stays byte-identical.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MINUS = "\u2212"


def format_number(x: Any, digits: int = 4) -> str:
    """A scalar to ``digits`` significant digits: 0.73105858 → ``0.7311``, −0.19661 → ``−0.1966``.

    Integers print without a decimal point (``2``, ``−3``), very large or small numbers in a
    short exponent form (``1.235e5``, ``3e−7``); NaN and infinities as ``nan`` and ``∞``.
    """
    value = np.asarray(x)
    if value.size != 1:
        raise ValueError(f"format_number expects one number, got shape {value.shape}")
    item = value.reshape(()).item()
    if isinstance(item, complex):
        real, imag = format_number(item.real, digits), format_number(abs(item.imag), digits)
        sign = MINUS if item.imag < 0 or (item.imag == 0 and math.copysign(1, item.imag) < 0) else "+"
        return f"{real}{sign}{imag}i"
    if isinstance(item, bool):
        return str(item).lower()
    number = float(item)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "∞" if number > 0 else MINUS + "∞"
    text = f"{number:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    if text in ("-0", "0"):
        return "0"
    return text.replace("-", MINUS)


def format_summary(x: Any, digits: int = 4) -> str:
    """A tensor in one short line: ``mean 0.4987 [min 0, max 1]``; a one-element tensor as its
    number, an empty one as ``empty``."""
    arr = np.asarray(x)
    if arr.size == 0:
        return "empty"
    if arr.size == 1:
        return format_number(arr, digits)
    if np.iscomplexobj(arr):  # summarise the real part; the complex step is never drawn
        arr = arr.real
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return f"{bad} non-finite"
        return (f"mean {format_number(finite.mean(), digits)} [{format_number(finite.min(), digits)}, "
                f"{format_number(finite.max(), digits)}], {bad} non-finite")
    return (f"mean {format_number(arr.mean(), digits)} [{format_number(arr.min(), digits)}, "
            f"{format_number(arr.max(), digits)}]")


#: tensors with at most this many elements are written out in full
SMALL_TENSOR = 4


def is_summarised(shape: tuple[int, ...]) -> bool:
    """Whether a tensor of this shape is drawn as a summary rather than element by element."""
    return int(np.prod(shape, dtype=np.int64)) > SMALL_TENSOR


def format_elements(x: Any, digits: int = 4) -> str:
    """A small tensor element by element, nested like numpy: ``[2, −3, −3]``, ``[[1, 2], [3, 4]]``."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        return format_number(arr, digits)
    return "[" + ", ".join(format_elements(row, digits) for row in arr) + "]"


def format_value(x: Any, digits: int = 4) -> str:
    """A scalar as a number, a small tensor element by element, a larger one as its summary
    (the shape is drawn on the node)."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        return format_number(arr, digits)
    if not is_summarised(arr.shape):
        return format_elements(arr, digits)
    return format_summary(arr, digits)


def format_shape(shape: tuple[int, ...]) -> str:
    """``(3,)``, ``(64, 784)`` -- as numpy writes shapes, without the trailing ``L`` noise."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
