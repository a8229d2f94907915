"""Batch normalisation (training and evaluation) for real float arrays.

Arrays are viewed as ``(N, C, S)`` (``S = H·W``, or 1 for ``(N, C)`` input); statistics
are per channel over N and S. The kernels loop over channels (serially with one Numba
thread for the call, the default -- over channel ranges on the convolution kernels'
Python threads for large arrays; in parallel otherwise, see :data:`PARALLEL_MIN`),
accumulate in float64 (a float32 mean over 10⁵ values loses digits otherwise) and compute the variance
with two passes (mean first), the numerically safe way.

Each kernel does all of one channel's work in one go: the forward takes the mean, the
variance and writes the normalised values; the backward takes Σg and Σg·x̂ (the gradients
of β and γ) and writes the gradient of x. A channel of a DnCNN activation is ~100 kB, so
the later passes over it read from cache and the array crosses memory once per rule. The
forward returns its statistics, and the backward takes them back instead of computing them
again. The sums may be reassociated (so LLVM vectorises them); never ``nnan``/``ninf``, so
NaN and Inf go through as in the numpy rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import prange

from autodiff_lab.kernels import blas, conv_fast, memory, threads
from autodiff_lab.kernels.numba_cache import cached_njit

#: parallel loops run only when :func:`.threads.many` allows (see :mod:`.threads`)
ONE_THREAD_FLAG = True

_SUMS = {"reassoc", "contract"}

#: the activation applied after the normalisation (``act`` in the kernels)
NONE, RELU, LEAKY = 0, 1, 2


@cached_njit(nogil=True, fastmath=_SUMS)
def _mean_var(x, ch):  # pragma: no cover - numba
    """The mean and the biased variance of channel ``ch`` of ``x`` (N, C, S), in float64
    (two passes, the second from cache)."""
    n, s = x.shape[0], x.shape[2]
    m = n * s
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
    return mu, acc2 / m


@cached_njit(nogil=True)
def _channel_stats_serial(x, mean, var, ch0, ch1):  # pragma: no cover - numba
    for ch in range(ch0, ch1):
        mean[ch], var[ch] = _mean_var(x, ch)


@cached_njit(parallel=True)
def _channel_stats_parallel(x, mean, var):  # pragma: no cover - numba
    for ch in prange(x.shape[1]):
        mean[ch], var[ch] = _mean_var(x, ch)


@cached_njit(nogil=True, fastmath=_SUMS)
def _forward_channel(ch, x, gamma, beta, eps, training, act, alpha, mean, var, par, out
                     ):  # pragma: no cover - numba
    """Normalise channel ``ch``, then apply the activation ``act`` (:data:`NONE`,
    :data:`RELU` or :data:`LEAKY`, slope ``alpha`` in x's dtype); with ``training`` take (and
    write) its batch statistics into ``mean``/``var`` first, else read them from there.
    ``par`` (C, 3), of x's dtype, holds each channel's μ, scale and shift rounded to that
    dtype, so a float32 array is normalised in float32 arithmetic (twice the lanes; the
    statistics stay float64)."""
    n, s = x.shape[0], x.shape[2]
    if training:
        mean[ch], var[ch] = _mean_var(x, ch)
    par[ch, 0] = mean[ch]
    par[ch, 1] = gamma[ch] / np.sqrt(var[ch] + eps)
    par[ch, 2] = beta[ch]
    mu_t, scale, shift = par[ch, 0], par[ch, 1], par[ch, 2]
    # (x − μ)·scale + β, not x·scale + (β − μ·scale): with an infinite scale the latter is
    # Inf − Inf = NaN where the numpy rule gives ±Inf
    for i in range(n):
        src = x[i, ch]
        dst = out[i, ch]
        if act == RELU:
            for k in range(s):
                v = (src[k] - mu_t) * scale + shift
                dst[k] = 0 if v <= 0 else v  # a NaN stays NaN, as in relu
        elif act == LEAKY:
            for k in range(s):
                v = (src[k] - mu_t) * scale + shift
                dst[k] = v if v > 0 else alpha * v  # as leaky_relu: NaN stays NaN
        else:
            for k in range(s):
                dst[k] = (src[k] - mu_t) * scale + shift


@cached_njit(nogil=True)
def _forward_serial(x, gamma, beta, eps, training, act, alpha, mean, var, par, out, ch0, ch1
                    ):  # pragma: no cover - numba
    for ch in range(ch0, ch1):
        _forward_channel(ch, x, gamma, beta, eps, training, act, alpha, mean, var, par, out)


@cached_njit(parallel=True)
def _forward_parallel(x, gamma, beta, eps, training, act, alpha, mean, var, par, out
                      ):  # pragma: no cover - numba
    for ch in prange(x.shape[1]):
        _forward_channel(ch, x, gamma, beta, eps, training, act, alpha, mean, var, par, out)


@cached_njit
def _through_relu(gv, rv):  # pragma: no cover - numba
    """relu's rule from its result r = relu(y): g where r > 0 (y > 0), g·0 where r = 0
    (y ≤ 0), NaN where r is NaN (y is NaN) -- what relu's rule gives from y."""
    d = gv if rv > 0 else gv * 0
    return d if rv == rv else rv


@cached_njit
def _through_leaky(gv, rv, alpha):  # pragma: no cover - numba
    """leaky_relu's rule from its result r = leaky_relu(y) for a slope 0 < alpha < ∞ (then
    r > 0 exactly where y > 0, and r is NaN exactly where y is): g where r > 0, alpha·g
    where r ≤ 0, NaN where r is NaN -- what leaky_relu's rule gives from y."""
    s = alpha * gv
    return gv if rv > 0 else (s if rv <= 0 else rv)


@cached_njit(nogil=True, fastmath=_SUMS)
def _backward_channel(ch, g, x, mean, var, gamma, eps, training, want_x, act, alpha, r,
                      par, sum_g, sum_gx, out):  # pragma: no cover - numba
    """Channel ``ch``: Σg and Σg·x̂ into ``sum_g``/``sum_gx`` (float64 sums); with
    ``want_x`` the gradient of x into ``out``: γ·inv·(g − Σg/m − (x − μ)·inv·Σ(g·x̂)/m) in
    training, γ·inv·g in evaluation, in x's dtype (``par`` (C, 4) as in
    :func:`_forward_channel`).

    With ``act`` :data:`RELU` (:data:`LEAKY`), ``g`` is the gradient of ``r`` =
    relu(batch_norm(x)) (leaky_relu, slope ``alpha``): a first pass writes that rule's
    result into ``out`` (which then has x's shape even when the gradient of x is not
    wanted), the sums read it back from cache, and the last pass turns it into the
    gradient of x in place."""
    n, s = x.shape[0], x.shape[2]
    m = n * s
    inv = 1.0 / np.sqrt(var[ch] + eps)
    par[ch, 0] = mean[ch]
    mu_t = par[ch, 0]
    if act != NONE:  # the activation's rule into out: a loop of its own vectorises
        for i in range(n):
            gi, ri, oi = g[i, ch], r[i, ch], out[i, ch]
            if act == RELU:
                for k in range(s):
                    oi[k] = _through_relu(gi[k], ri[k])
            else:
                for k in range(s):
                    oi[k] = _through_leaky(gi[k], ri[k], alpha)
    a = 0.0
    b = 0.0
    for i in range(n):
        gi = out[i, ch] if act != NONE else g[i, ch]
        xi = x[i, ch]
        for k in range(s):
            gv = gi[k]
            a += gv
            b += gv * (xi[k] - mu_t)
    b = b * inv
    sum_g[ch] = a
    sum_gx[ch] = b
    if not want_x:
        return
    par[ch, 1] = gamma[ch] * inv
    scale = par[ch, 1]
    a_t = b_t = mu_t  # (read only in training)
    if training:
        par[ch, 2] = a / m
        par[ch, 3] = inv * b / m
        a_t, b_t = par[ch, 2], par[ch, 3]
    for i in range(n):
        src = out[i, ch] if act != NONE else g[i, ch]
        xi = x[i, ch]
        dst = out[i, ch]
        if training:
            for k in range(s):
                dst[k] = scale * (src[k] - a_t - (xi[k] - mu_t) * b_t)
        else:
            for k in range(s):
                dst[k] = scale * src[k]


@cached_njit(nogil=True)
def _backward_serial(g, x, mean, var, gamma, eps, training, want_x, act, alpha, r, par,
                     sum_g, sum_gx, out, ch0, ch1):  # pragma: no cover - numba
    for ch in range(ch0, ch1):
        _backward_channel(ch, g, x, mean, var, gamma, eps, training, want_x, act, alpha, r,
                          par, sum_g, sum_gx, out)


@cached_njit(parallel=True)
def _backward_parallel(g, x, mean, var, gamma, eps, training, want_x, act, alpha, r, par,
                       sum_g, sum_gx, out):  # pragma: no cover - numba
    for ch in prange(x.shape[1]):
        _backward_channel(ch, g, x, mean, var, gamma, eps, training, want_x, act, alpha, r,
                          par, sum_g, sum_gx, out)


#: arrays of at least this many elements, with two or more channels, run their channels
#: in parallel when Numba has more than one thread for the call; below, or with one thread
#: (the default, :data:`.dispatch.kernel_threads`), one serial loop: a parallel launch of
#: Numba's ``workqueue`` layer costs 140-180 µs even on one thread, about what batch norm
#: of a 2 MB U-Net activation takes.
PARALLEL_MIN = 1 << 18


def _parallel(x3: np.ndarray) -> bool:
    return x3.shape[1] > 1 and x3.size >= PARALLEL_MIN and threads.many()


def _run(serial: Callable, parallel: Callable, x3: np.ndarray, *args: Any) -> None:
    """One of the kernels over every channel of ``x3``: Numba's parallel loop when it has
    threads for the call (:func:`_parallel`); else the serial loop over channel ranges on
    the Python threads of the convolution kernels (:func:`.conv_fast._run_blocks`, as many
    as numpy's BLAS has threads) when the array takes at least :data:`PARALLEL_MIN`
    elements; else in this thread. The serial kernels release the GIL, so two threads run
    on two cores without a Numba launch (140-180 µs)."""
    c = x3.shape[1]
    if _parallel(x3):
        parallel(*args)
        return
    count = conv_fast.BLOCK_WORKERS if conv_fast.BLOCK_WORKERS is not None else blas.threads()
    count = min(int(count), c)
    if count <= 1 or x3.size < PARALLEL_MIN:
        serial(*args, 0, c)
        return
    bounds = [c * i // count for i in range(count + 1)]
    conv_fast._run_blocks(lambda part: [serial(*args, a, b) for a, b in part],
                          list(zip(bounds[:-1], bounds[1:])))


def _as3(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


Stats = tuple[np.ndarray, np.ndarray]
_ACTS = {None: NONE, "relu": RELU, "leaky_relu": LEAKY}


def _slope(alpha: float, dtype: np.dtype) -> np.generic:
    """``alpha`` rounded to ``dtype`` (to ±Inf past its range), as numpy's ``alpha * x``."""
    with np.errstate(over="ignore"):
        return dtype.type(alpha)


def batch_norm_forward_saving(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                              mean: np.ndarray | None, var: np.ndarray | None, training: bool,
                              eps: float, activation: str | None = None, alpha: float = 0.0
                              ) -> tuple[np.ndarray, Stats | None]:
    """(x − μ)/√(σ² + ε)·γ + β per channel (batch statistics when ``training``; then the
    ``activation`` "relu" or "leaky_relu" (slope ``alpha``, rounded to x's dtype as numpy's
    ``alpha * x`` rounds it) if given), and the batch statistics (float64 mean and biased
    variance; ``None`` in evaluation mode)."""
    x3 = _as3(x)
    c = x3.shape[1]
    if training:
        mu, v = np.empty(c), np.empty(c)
    else:
        mu, v = mean.astype(np.float64), var.astype(np.float64)
    out = memory.empty(x3.shape, x3.dtype)
    _run(_forward_serial, _forward_parallel, x3, x3, gamma.astype(np.float64),
         beta.astype(np.float64), float(eps), bool(training), _ACTS[activation],
         _slope(alpha, x3.dtype), mu, v, np.empty((c, 3), x3.dtype), out)
    return out.reshape(x.shape), ((mu, v) if training else None)


def batch_stats(x: np.ndarray) -> np.ndarray:
    """[mean; unbiased variance] per channel, (2, C) in x's dtype: the statistics kernel of
    the forward (float64 sums, two passes over each channel from cache)."""
    x3 = _as3(x)
    n, c, s = x3.shape
    mu, v = np.empty(c), np.empty(c)
    _run(_channel_stats_serial, _channel_stats_parallel, x3, x3, mu, v)
    count = n * s
    return np.stack([mu, v * (count / (count - 1))]).astype(x.dtype, copy=False)


def batch_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                       mean: np.ndarray | None, var: np.ndarray | None, training: bool,
                       eps: float) -> np.ndarray:
    """(x − μ)/√(σ² + ε)·γ + β per channel (batch statistics when ``training``)."""
    return batch_norm_forward_saving(x, gamma, beta, mean, var, training, eps)[0]


def batch_norm_backward_all(g: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                            mean: np.ndarray | None, var: np.ndarray | None, training: bool,
                            eps: float, wanted: tuple[bool, bool, bool],
                            stats: Stats | None = None, activation: str | None = None,
                            act_ans: np.ndarray | None = None, alpha: float = 0.0
                            ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The gradients with respect to x, γ and β (``None`` where ``wanted`` says no) from one
    pass. ``stats``: the forward's batch statistics (training only), else computed here.
    With ``activation`` ("relu", or "leaky_relu" with a slope ``alpha`` that is positive and
    finite in x's dtype), ``g`` is the gradient of ``act_ans``, the result of the
    activation of batch_norm(x), which the activation's rule reads instead of the
    normalised values."""
    x3, g3 = _as3(x), _as3(g)
    c = x3.shape[1]
    if not training:
        mu, v = mean.astype(np.float64), var.astype(np.float64)
    elif stats is not None:
        mu, v = stats
    else:
        mu, v = np.empty(c), np.empty(c)
        _run(_channel_stats_serial, _channel_stats_parallel, x3, x3, mu, v)
    want_x = bool(wanted[0])
    act = _ACTS[activation]
    out = (memory.empty(x3.shape, x3.dtype) if want_x or act != NONE
           else np.empty((0, c, 0), x3.dtype))
    sum_g, sum_gx = np.empty(c), np.empty(c)
    _run(_backward_serial, _backward_parallel, x3, g3, x3, mu, v, gamma.astype(np.float64),
         float(eps), bool(training), want_x, act, _slope(alpha, x3.dtype),
         _as3(act_ans) if act != NONE else x3, np.empty((c, 4), x3.dtype), sum_g, sum_gx, out)
    return (out.reshape(x.shape) if want_x else None,
            sum_gx.astype(x.dtype) if wanted[1] else None,
            sum_g.astype(x.dtype) if wanted[2] else None)


def batch_norm_backward(g: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray | None,
                        var: np.ndarray | None, training: bool, eps: float, wanted: str
                        ) -> np.ndarray:
    """The gradient with respect to ``wanted`` ("x", "gamma" or "beta")."""
    which = ("x", "gamma", "beta").index(wanted)
    mask = tuple(k == which for k in range(3))
    return batch_norm_backward_all(g, x, gamma, mean, var, training, eps, mask)[which]
