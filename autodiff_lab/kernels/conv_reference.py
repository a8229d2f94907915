"""Reference (numpy) convolution, transpose convolution and pooling, with their adjoints.

Layout is PyTorch's: images ``(N, C, H, W)``, convolution weights ``(F, C // groups, kh, kw)``.
Everything is written with slicing and ``tensordot`` only, so it runs unchanged on float,
complex and ``object`` (SymPy) arrays. The patch ("im2col") view used by every function is

    cols[n, c, i, j, oh, ow] = x_padded[n, c, i*dh + oh*sh, j*dw + ow*sw]

and the adjoint of building it ("col2im") adds each patch entry back where it came from.
"""

from __future__ import annotations

import numpy as np

Pair = tuple[int, int]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution or pooling window sliding along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad_image(x: np.ndarray, padding: Pair, value: float = 0) -> np.ndarray:
    """Pad the last two axes of ``x`` by ``padding`` on both sides (works on object arrays)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    width = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    return np.pad(x, width, mode="constant", constant_values=value)


def im2col(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
           pad_value: float = 0) -> np.ndarray:
    """Patches of ``x`` (N, C, H, W) as an array (N, C, kh, kw, Ho, Wo)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    (sh, sw), (dh, dw) = stride, dilation
    ho = conv_output_size(h, kh, sh, padding[0], dh)
    wo = conv_output_size(w, kw, sw, padding[1], dw)
    xp = pad_image(x, padding, pad_value)
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                                  j * dw: j * dw + sw * (wo - 1) + 1: sw]
    return cols


def col2im(cols: np.ndarray, x_shape: tuple[int, ...], stride: Pair, padding: Pair,
           dilation: Pair) -> np.ndarray:
    """Adjoint of :func:`im2col`: add every patch entry back to its pixel."""
    n, c, h, w = x_shape
    _, _, kh, kw, ho, wo = cols.shape
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
               j * dw: j * dw + sw * (wo - 1) + 1: sw] += cols[:, :, i, j]
    return xp[:, :, ph: ph + h, pw: pw + w]


def _group_split(a: np.ndarray, axis: int, groups: int) -> list[np.ndarray]:
    return np.split(a, groups, axis=axis) if groups > 1 else [a]


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int = 1) -> np.ndarray:
    """Cross-correlation ``out[n,f] = sum_c,i,j w[f,c,i,j] x_pad[n,c,oh*s+i*d,ow*s+j*d]``."""
    cols = im2col(x, w.shape[2:], stride, padding, dilation)
    outs = []
    for cg, wg in zip(_group_split(cols, 1, groups), _group_split(w, 0, groups)):
        # (Fg, Cg, kh, kw) x (N, Cg, kh, kw, Ho, Wo) -> (Fg, N, Ho, Wo); patches on the right,
        # so tensordot's copy of them keeps (Ho, Wo) innermost (the other order is ~20x slower)
        outs.append(np.tensordot(wg, cg, axes=([1, 2, 3], [1, 2, 3])))
    out = np.concatenate(outs, axis=0) if groups > 1 else outs[0]
    return np.moveaxis(out, 0, 1)


def conv2d_backward_input(g: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: Pair,
                          padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """Gradient of :func:`conv2d_forward` with respect to ``x``, given upstream ``g`` (N, F, Ho, Wo)."""
    cols = []
    for gg, wg in zip(_group_split(g, 1, groups), _group_split(w, 0, groups)):
        # (Fg, Cg, kh, kw) x (N, Fg, Ho, Wo) -> (Cg, kh, kw, N, Ho, Wo) (g on the right keeps
        # its (Ho, Wo) innermost in tensordot's copy)
        cols.append(np.tensordot(wg, gg, axes=([0], [1])))
    col = np.concatenate(cols, axis=0) if groups > 1 else cols[0]
    col = np.transpose(col, (3, 0, 1, 2, 4, 5))
    return col2im(col, x_shape, stride, padding, dilation)


def conv2d_backward_weight(g: np.ndarray, x: np.ndarray, w_shape: tuple[int, ...], stride: Pair,
                           padding: Pair, dilation: Pair, groups: int = 1) -> np.ndarray:
    """Gradient of :func:`conv2d_forward` with respect to the weights ``w``."""
    cols = im2col(x, w_shape[2:], stride, padding, dilation)
    parts = []
    for gg, cg in zip(_group_split(g, 1, groups), _group_split(cols, 1, groups)):
        # (N, Cg, kh, kw, Ho, Wo) x (N, Fg, Ho, Wo) -> (Cg, kh, kw, Fg): patches on the left,
        # so tensordot's copy of them keeps (Ho, Wo) innermost (the other order is ~20x slower)
        parts.append(np.moveaxis(np.tensordot(cg, gg, axes=([0, 4, 5], [0, 2, 3])), -1, 0))
    return np.concatenate(parts, axis=0) if groups > 1 else parts[0]


def conv_transpose2d_output_size(size: int, kernel: int, stride: int, padding: int,
                                 output_padding: int, dilation: int) -> int:
    """Output length of a transpose convolution along one axis (PyTorch's formula)."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _window_argmax(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Patches (N, C, kh·kw, Ho, Wo) of ``x`` (padding: −inf) and, per window, the position
    of its first maximum by real part: the first NaN if the window has one (numpy's argmax,
    PyTorch's pooling), and never a padding position, even when every pixel is −inf."""
    cols = im2col(x, kernel, stride, padding, (1, 1), pad_value=-np.inf)
    n, c, kh, kw, ho, wo = cols.shape
    flat = cols.reshape(n, c, kh * kw, ho, wo)
    arg = np.argmax(flat.real, axis=2)
    if any(padding):
        inside = im2col(np.ones((1, 1) + x.shape[2:]), kernel, stride, padding, (1, 1))
        inside = inside.reshape(kh * kw, ho, wo).astype(bool)
        first_inside = np.argmax(inside, axis=0)
        chosen_inside = np.take_along_axis(inside, arg.reshape(-1, ho, wo), axis=0)
        arg = np.where(chosen_inside.reshape(arg.shape), arg, first_inside)
    return flat, arg


def max_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Maximum over each window; padding counts as -inf; a NaN in the window gives NaN.
    Complex input: compared by real part."""
    flat, arg = _window_argmax(x, kernel, stride, padding)
    return np.take_along_axis(flat, arg[:, :, None], axis=2)[:, :, 0]


def max_pool2d_backward(g: np.ndarray, x: np.ndarray, kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """Route each window's gradient to its first maximum (PyTorch's convention at ties; the
    first NaN when the window has one)."""
    flat, arg = _window_argmax(x, kernel, stride, padding)
    n, c, _, ho, wo = flat.shape
    kh, kw = kernel
    gcols = np.zeros((n, c, kh * kw, ho, wo), dtype=g.dtype)
    np.put_along_axis(gcols, arg[:, :, None], g[:, :, None], axis=2)
    return col2im(gcols.reshape(n, c, kh, kw, ho, wo), x.shape, stride, padding, (1, 1))


def max_pool2d_ties(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> bool:
    """True when some window holds its maximum more than once (a kink of max pooling)."""
    cols = im2col(x.real, kernel, stride, padding, (1, 1), pad_value=-np.inf)
    n, c, kh, kw, ho, wo = cols.shape
    flat = cols.reshape(n, c, kh * kw, ho, wo)
    top = flat.max(axis=2, keepdims=True)
    return bool(np.any((flat == top).sum(axis=2) > 1))


def avg_pool2d_forward(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Mean over each window; padded zeros count in the mean (``count_include_pad=True``)."""
    cols = im2col(x, kernel, stride, padding, (1, 1))
    return cols.sum(axis=(2, 3)) / (kernel[0] * kernel[1])


def avg_pool2d_backward(g: np.ndarray, x_shape: tuple[int, ...], kernel: Pair, stride: Pair,
                        padding: Pair) -> np.ndarray:
    """Spread each window's gradient evenly over the window."""
    kh, kw = kernel
    n, c, ho, wo = g.shape
    share = (g / (kh * kw))[:, :, None, None]
    gcols = np.broadcast_to(share, (n, c, kh, kw, ho, wo))
    return col2im(np.ascontiguousarray(gcols), x_shape, stride, padding, (1, 1))
