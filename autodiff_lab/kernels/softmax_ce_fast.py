"""Softmax cross-entropy over the last axis, forward and gradient, one pass per row.

The forward needs only log Σ exp per row (shifted by the row maximum for stability); the
gradient is ``(softmax − onehot(label)) · scale``. Rows run in parallel. The kernels index
the logits with the labels, so the entry points check every label first: an out-of-range
label would otherwise read (or write) outside the array.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from autodiff_lab.errors import LabelError
from autodiff_lab.kernels.numba_cache import cached_njit


def _checked_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """The labels as a flat intp array, after checking they lie in 0 … k − 1."""
    flat = np.ascontiguousarray(labels, dtype=np.intp).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= k):
        bad = int(np.flatnonzero((flat < 0) | (flat >= k))[0])
        raise LabelError(f"class label {flat[bad]} (at flat index {bad}) is out of range for "
                         f"K = {k} classes: labels must be 0 … {k - 1}")
    return flat


@cached_njit(parallel=True)
def _row_losses(logits, labels, out):  # pragma: no cover - numba
    b, k = logits.shape
    for r in prange(b):
        top = logits[r, 0]
        for j in range(1, k):
            top = max(top, logits[r, j])
        acc = 0.0
        for j in range(k):
            acc += np.exp(logits[r, j] - top)
        out[r] = top + np.log(acc) - logits[r, labels[r]]


@cached_njit(parallel=True)
def _grad(logits, labels, scale, out):  # pragma: no cover - numba
    b, k = logits.shape
    for r in prange(b):
        top = logits[r, 0]
        for j in range(1, k):
            top = max(top, logits[r, j])
        acc = 0.0
        for j in range(k):
            e = np.exp(logits[r, j] - top)
            out[r, j] = e
            acc += e
        inv = 1.0 / acc
        for j in range(k):
            out[r, j] = out[r, j] * inv
        # (softmax − onehot) · scale, in that order (as the numpy rule): with an infinite
        # scale, softmax·scale − scale would be Inf − Inf = NaN
        out[r, labels[r]] -= 1
        for j in range(k):
            out[r, j] = out[r, j] * scale


def softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray, reduction: str
                                  ) -> np.ndarray:
    """−Σ (or mean) of log softmax(logits)[label] over all rows."""
    k = logits.shape[-1]
    rows = np.ascontiguousarray(logits).reshape(-1, k)
    per_row = np.empty(rows.shape[0], dtype=np.float64)
    _row_losses(rows, _checked_labels(labels, k), per_row)
    total = per_row.sum() if reduction == "sum" else per_row.mean()
    return np.asarray(total, dtype=logits.dtype)


def softmax_cross_entropy_backward(g: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                                   reduction: str) -> np.ndarray:
    """d loss / d logits, times the upstream scalar ``g``."""
    k = logits.shape[-1]
    rows = np.ascontiguousarray(logits).reshape(-1, k)
    scale = float(g) if reduction == "sum" else float(g) / max(rows.shape[0], 1)
    out = np.empty_like(rows)
    _grad(rows, _checked_labels(labels, k), scale, out)
    return out.reshape(logits.shape)
