"""Batch normalisation (training and evaluation) for real float arrays, one pass per rule.

Arrays are viewed as ``(N, C, S)`` (``S = H·W``, or 1 for ``(N, C)`` input); statistics
are per channel over N and S. The kernels run in parallel over channels, accumulate in
float64 (a float32 mean over 10⁵ values loses digits otherwise) and compute the variance
with two passes (mean first), the numerically safe way.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from autodiff_lab.kernels import memory
from autodiff_lab.kernels.numba_cache import cached_njit


@cached_njit(parallel=True)
def _channel_stats(x):  # pragma: no cover - numba
    n, c, s = x.shape
    mean = np.empty(c)
    var = np.empty(c)
    m = n * s
    for ch in prange(c):
        acc = 0.0
        for i in range(n):
            for k in range(s):
                acc += x[i, ch, k]
        mu = acc / m
        acc2 = 0.0
        for i in range(n):
            for k in range(s):
                d = x[i, ch, k] - mu
                acc2 += d * d
        mean[ch] = mu
        var[ch] = acc2 / m
    return mean, var


@cached_njit(parallel=True)
def _normalise(x, mean, var, gamma, beta, eps, out):  # pragma: no cover - numba
    n, c, s = x.shape
    for ch in prange(c):
        scale = gamma[ch] / np.sqrt(var[ch] + eps)
        # (x − μ)·scale + β, not x·scale + (β − μ·scale): with an infinite scale the
        # latter is Inf − Inf = NaN where the numpy rule gives ±Inf
        mu = mean[ch]
        shift = beta[ch]
        for i in range(n):
            for k in range(s):
                out[i, ch, k] = (x[i, ch, k] - mu) * scale + shift


@cached_njit(parallel=True)
def _backward_sums(g, x, mean, var, eps):  # pragma: no cover - numba
    """Per channel: Σ g and Σ g·x̂."""
    n, c, s = x.shape
    sum_g = np.empty(c)
    sum_gx = np.empty(c)
    for ch in prange(c):
        inv = 1.0 / np.sqrt(var[ch] + eps)
        a = 0.0
        b = 0.0
        for i in range(n):
            for k in range(s):
                gv = g[i, ch, k]
                a += gv
                b += gv * (x[i, ch, k] - mean[ch]) * inv
        sum_g[ch] = a
        sum_gx[ch] = b
    return sum_g, sum_gx


@cached_njit(parallel=True)
def _backward_x(g, x, mean, var, gamma, eps, sum_g, sum_gx, training, out):  # pragma: no cover
    n, c, s = x.shape
    m = n * s
    for ch in prange(c):
        inv = 1.0 / np.sqrt(var[ch] + eps)
        scale = gamma[ch] * inv
        if training:
            # dx = γ·inv/m · (m·g − Σg − x̂·Σ(g·x̂))
            a = sum_g[ch] / m
            b = sum_gx[ch] / m
            for i in range(n):
                for k in range(s):
                    xh = (x[i, ch, k] - mean[ch]) * inv
                    out[i, ch, k] = scale * (g[i, ch, k] - a - xh * b)
        else:
            for i in range(n):
                for k in range(s):
                    out[i, ch, k] = scale * g[i, ch, k]


def _as3(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def _stats(x3: np.ndarray, mean: np.ndarray | None, var: np.ndarray | None, training: bool):
    if training:
        return _channel_stats(x3)
    return mean.astype(np.float64), var.astype(np.float64)


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                       mean: np.ndarray | None, var: np.ndarray | None, training: bool,
                       eps: float) -> np.ndarray:
    """(x − μ)/√(σ² + ε)·γ + β per channel (batch statistics when ``training``)."""
    x3 = _as3(x)
    mu, v = _stats(x3, mean, var, training)
    out = memory.empty(x3.shape, x3.dtype)
    _normalise(x3, mu, v, gamma.astype(np.float64), beta.astype(np.float64), float(eps), out)
    return out.reshape(x.shape)


def batch_norm_backward(g: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray | None,
                        var: np.ndarray | None, training: bool, eps: float, wanted: str
                        ) -> np.ndarray:
    """The gradient with respect to ``wanted`` ("x", "gamma" or "beta")."""
    x3, g3 = _as3(x), _as3(g)
    mu, v = _stats(x3, mean, var, training)
    sum_g, sum_gx = _backward_sums(g3, x3, mu, v, float(eps))
    if wanted == "beta":
        return sum_g.astype(x.dtype)
    if wanted == "gamma":
        return sum_gx.astype(x.dtype)
    out = memory.empty(x3.shape, x3.dtype)
    _backward_x(g3, x3, mu, v, gamma.astype(np.float64), float(eps), sum_g, sum_gx,
                bool(training), out)
    return out.reshape(x.shape)
