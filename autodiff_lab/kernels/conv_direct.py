"""Direct 3×3 convolutions with one input or one output channel: a denoiser's first layer
(conv+bias+ReLU, DnCNN: 1 → 32 channels) and its last (32 → 1), forward.

With one input channel, im2col builds a patch matrix 9 times the image for a product whose
inner dimension is 9, and the bias and the ReLU are two more passes over the 32-channel
result: 0.97 ms for 16×1×40×40 → 32 (float32, one thread, CPU time). Here each output row
is one loop of nine multiply-adds over three rows of the zero-padded image, with the bias
and the ReLU in the same loop: 0.53 ms. With one output channel, im2col's patch matrix is
9·C times the output (30 MB for 16×32×40×40): 1.13 ms; here four padded channels at a time
add their 36 products to the output rows: 0.81 ms. (The weight gradient stays with im2col
and BLAS: written as nine sums per output row it took 1.6 ms against 0.75 for ReLU's rule
and im2col together -- loops of 40 elements spend their time starting.)

NaN and Inf: the kernels return ``None`` when an operand or a value before the ReLU (or
the result) is not finite, and the caller runs im2col or the ops' own rules, whose NaN and
Inf pattern is the reference's.
"""

from __future__ import annotations

import numpy as np

from autodiff_lab.kernels import conv_fast, finite, memory
from autodiff_lab.kernels.numba_cache import cached_njit

#: no parallel loop of its own: those of conv_fast it calls ask :func:`.threads.many`
ONE_THREAD_FLAG = True

Pair = tuple[int, int]


@cached_njit(nogil=True)
def _forward(x, w, bias, ph, pw, relu, y, n0, n1):  # pragma: no cover - numba
    """y[n, f] = relu(bias[f] + Σ_{i,j} w[f, 0, i, j]·x_pad[n, 0, oh + i, ow + j]) for images
    n0..n1. (With ``relu``, a NaN or an infinite value before it stays non-finite in y:
    v − v.)"""
    h, wd = x.shape[2], x.shape[3]
    n_f, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    xp = np.zeros((ho + 2, wo + 2), dtype=x.dtype)
    for n in range(n0, n1):
        for i in range(h):
            row = xp[i + ph]
            src = x[n, 0, i]
            for j in range(wd):
                row[j + pw] = src[j]
        for f in range(n_f):
            w00, w01, w02 = w[f, 0, 0, 0], w[f, 0, 0, 1], w[f, 0, 0, 2]
            w10, w11, w12 = w[f, 0, 1, 0], w[f, 0, 1, 1], w[f, 0, 1, 2]
            w20, w21, w22 = w[f, 0, 2, 0], w[f, 0, 2, 1], w[f, 0, 2, 2]
            b = bias[f]
            for oh in range(ho):
                r0, r1, r2 = xp[oh], xp[oh + 1], xp[oh + 2]
                o = y[n, f, oh]
                for ow in range(wo):
                    v = (b + w00 * r0[ow] + w01 * r0[ow + 1] + w02 * r0[ow + 2]
                         + w10 * r1[ow] + w11 * r1[ow + 1] + w12 * r1[ow + 2]
                         + w20 * r2[ow] + w21 * r2[ow + 1] + w22 * r2[ow + 2])
                    o[ow] = (v if v > 0 else v - v) if relu else v


@cached_njit(nogil=True)
def _forward_to_one(x, wq, ph, pw, y, n0, n1):  # pragma: no cover - numba
    """y[n, 0] = Σ_c Σ_{i,j} w[0, c, i, j]·x_pad[n, c, oh + i, ow + j] for images n0..n1.
    Four channels at a time: ``wq`` (⌈C/4⌉, 4, 3, 3) holds the weights, zero beyond C, and
    each pass adds the 36 products of four padded channels to the output rows (one pass
    per channel measured 0.85 ms against im2col's 1.1 for 16×32×40×40: too many short
    loops)."""
    n_ch, h, wd = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    xp = np.zeros((4, ho + 2, wo + 2), dtype=x.dtype)
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                y[n, 0, oh, ow] = 0
        for q in range(wq.shape[0]):
            for k in range(4):
                c = 4 * q + k
                if c < n_ch:
                    for i in range(h):
                        for j in range(wd):
                            xp[k, i + ph, j + pw] = x[n, c, i, j]
                # beyond C: the last channel's finite pixels, times a zero weight
            for oh in range(ho):
                for ow in range(wo):
                    v = y[n, 0, oh, ow]
                    for k in range(4):
                        for i in range(3):
                            for j in range(3):
                                v += wq[q, k, i, j] * xp[k, oh + i, ow + j]
                    y[n, 0, oh, ow] = v


def _image_blocks(n: int) -> list[tuple[int, int]]:
    """One block per image (the threads of :func:`conv_fast._run_blocks` share them)."""
    return [(i, i + 1) for i in range(n)]


def conv2d_forward(x: np.ndarray, w: np.ndarray, padding: Pair, bias: np.ndarray | None = None,
                   relu: bool = False) -> np.ndarray | None:
    """The 3×3 stride-1 cross-correlation of ``x`` (N, 1, H, W) with ``w`` (F, 1, 3, 3),
    zero padding ``padding`` (0..2 on each side), plus ``bias`` (F,), through a ReLU when
    asked; ``None`` when an operand or a value before the ReLU is not finite."""
    n, _, h, wd = x.shape
    f = w.shape[0]
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, wd + 2 * pw - 2
    bias = np.zeros(f, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
    if not finite.all_finite((x, w, bias)):
        return None
    y = memory.empty((n, f, ho, wo), x.dtype)

    def work(blocks: list[tuple[int, int]]) -> None:
        for n0, n1 in blocks:
            _forward(x, w, bias, ph, pw, bool(relu), y, n0, n1)

    with np.errstate(all="ignore"):  # an overflow is seen below, and declined
        conv_fast._run_blocks(work, _image_blocks(n))
    return y if finite.all_finite_1(y) else None


def conv2d_forward_to_one(x: np.ndarray, w: np.ndarray, padding: Pair) -> np.ndarray | None:
    """The 3×3 stride-1 cross-correlation of ``x`` (N, C, H, W) with ``w`` (1, C, 3, 3) --
    one output channel, a denoiser's last layer -- zero padding ``padding`` (0..2); ``None``
    when an operand or the result is not finite."""
    n, _, h, wd = x.shape
    ph, pw = padding
    ho, wo = h + 2 * ph - 2, wd + 2 * pw - 2
    if not finite.all_finite((x, w)):
        return None
    c = x.shape[1]
    wq = np.zeros((-(-c // 4) * 4, 3, 3), dtype=x.dtype)
    wq[:c] = w[0]
    wq = wq.reshape(-1, 4, 3, 3)
    y = memory.empty((n, 1, ho, wo), x.dtype)

    def work(blocks: list[tuple[int, int]]) -> None:
        for n0, n1 in blocks:
            _forward_to_one(x, wq, ph, pw, y, n0, n1)

    with np.errstate(all="ignore"):  # an overflow is seen below, and declined
        conv_fast._run_blocks(work, _image_blocks(n))
    return y if finite.all_finite_1(y) else None
