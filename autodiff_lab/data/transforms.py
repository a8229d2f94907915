"""What the training case studies do to their data, in numpy, vectorised.

* damage and sample: :func:`random_block_mask` (inpainting), :func:`random_patches`
  (denoiser training set), :func:`batches` (shuffled mini-batch indices per epoch);
* classical baselines: :func:`gaussian_filter`, :func:`best_gaussian_filter`,
  :func:`median_filter`;
* files and scores: :func:`read_image`, :func:`write_image`, :func:`confusion_matrix`.

Random functions take ``rng``: a ``numpy.random.Generator`` (its state advances, so the next
call draws new numbers), an int seed, or ``None`` for seed 0 -- results are reproducible.
Image borders are handled by reflection with the edge pixel repeated
(``d c b a | a b c d | d c b a``, numpy's ``"symmetric"``, scipy.ndimage's ``"reflect"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, NonFiniteError

__all__ = ["random_block_mask", "random_patches", "batches", "gaussian_filter", "best_gaussian_filter",
           "median_filter", "read_image", "write_image", "confusion_matrix", "DEFAULT_SIGMAS"]

#: σ grid (pixels) that :func:`best_gaussian_filter` searches by default
DEFAULT_SIGMAS = tuple(np.round(np.arange(0.25, 3.01, 0.25), 2).tolist())


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise InputError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _real_array(name: str, x: Any) -> np.ndarray:
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


# -- damage and sampling -------------------------------------------------------------------------

def random_block_mask(images: Any, block: int = 12,
                      rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hide one random ``block``×``block`` square of every image: returns (masked, mask).

    ``images`` is (N, H, W) or flattened square images (N, H·W), e.g. (N, 28, 28) or (N, 784);
    the outputs have its shape and (floating) dtype, ``mask`` is 1 where a pixel is kept and
    0 in the block. The block lies wholly inside the image, its corner uniform over the
    (H − block + 1)² positions.
    """
    x = _real_array("images", images)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise InputError(f"flattened images (N, D) need a square D, got shape {x.shape}")
        h = w = side
    elif x.ndim == 3:
        h, w = x.shape[1:]
    else:
        raise InputError(f"images must be (N, H, W) or (N, H·W), got shape {x.shape}")
    block = _positive_int("block", block)
    if block > min(h, w):
        raise InputError(f"a {block}×{block} block does not fit in {h}×{w} images")
    gen = _rng(rng)
    n = x.shape[0]
    top = gen.integers(0, h - block + 1, n)
    left = gen.integers(0, w - block + 1, n)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    hidden = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + block)
              & (cols >= left[:, None, None]) & (cols < left[:, None, None] + block))
    mask = (~hidden).astype(x.dtype).reshape(x.shape)
    return x * mask, mask


def random_patches(images: Mapping[str, Any] | Sequence[Any], size: int = 40, count: int = 1024,
                   rng: np.random.Generator | int | None = None, augment: bool = True) -> np.ndarray:
    """``count`` random ``size``×``size`` patches, (count, 1, size, size) float32.

    ``images`` is a list or dict of 2-D arrays (e.g. :func:`~autodiff_lab.data.load_gray_images`).
    Every patch position of every image is equally likely (so a larger image gives more
    patches). With ``augment`` each patch is also flipped and rotated by a random one of
    the 8 symmetries of the square (90° rotations × mirror), the DnCNN recipe.
    """
    items = list(images.items()) if isinstance(images, Mapping) else list(enumerate(images))
    if not items:
        raise InputError("random_patches needs at least one image")
    size = _positive_int("size", size)
    count = _positive_int("count", count)
    arrays = []
    for key, img in items:
        a = _real_array(f"image {key!r}", img)
        if a.ndim != 2:
            raise InputError(f"image {key!r} must be 2-D (grey), got shape {a.shape}")
        if min(a.shape) < size:
            raise InputError(f"image {key!r} of shape {a.shape} is smaller than a {size}×{size} patch")
        arrays.append(a)
    gen = _rng(rng)
    positions = np.array([(a.shape[0] - size + 1) * (a.shape[1] - size + 1) for a in arrays], dtype=float)
    which = gen.choice(len(arrays), size=count, p=positions / positions.sum())
    out = np.empty((count, size, size), dtype=np.float32)
    offsets = np.arange(size)
    for k, a in enumerate(arrays):
        idx = np.flatnonzero(which == k)
        if idx.size == 0:
            continue
        top = gen.integers(0, a.shape[0] - size + 1, idx.size)
        left = gen.integers(0, a.shape[1] - size + 1, idx.size)
        out[idx] = a[(top[:, None] + offsets)[:, :, None], (left[:, None] + offsets)[:, None, :]]
    if augment:
        mode = gen.integers(0, 8, count)
        for m in range(1, 8):
            idx = np.flatnonzero(mode == m)
            if idx.size:
                p = out[idx]
                if m >= 4:
                    p = p[:, :, ::-1]
                out[idx] = np.rot90(p, k=m % 4, axes=(1, 2))
    return out[:, None]


def batches(n: int, batch_size: int, rng: np.random.Generator | int | None = None,
            drop_last: bool = False, shuffle: bool = True) -> Iterator[np.ndarray]:
    """Index arrays of one epoch over ``n`` examples, ``batch_size`` at a time.

    The order is a random permutation drawn from ``rng``: pass one Generator for the whole
    training run and each epoch (each call) gets a new order, the same in every run with the
    same seed. The last batch is shorter unless ``drop_last``; ``shuffle=False`` keeps 0..n−1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}")
    batch_size = _positive_int("batch_size", batch_size)
    order = _rng(rng).permutation(int(n)) if shuffle else np.arange(int(n))
    stop = (n // batch_size) * batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# -- classical filters -----------------------------------------------------------------------------

def _images_2d(name: str, image: Any) -> np.ndarray:
    a = _real_array(name, image)
    if a.ndim < 2:
        raise InputError(f"{name} must be an image (H, W) or a stack (..., H, W), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def gaussian_filter(image: Any, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of an image (H, W) or of each image of a stack (..., H, W).

    Separable: one 1-D pass along rows and one along columns, with a kernel of radius
    ``round(truncate·σ)`` normalised to sum 1, and the border reflected (edge repeated).
    ``sigma = 0`` returns a copy. The dtype of a floating input is kept.
    """
    a = _images_2d("image", image)
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"sigma must be a number, got {sigma!r}") from None
    if not math.isfinite(s) or s < 0:
        raise InputError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
    if s == 0:
        return a.copy()
    radius = max(1, int(truncate * s + 0.5))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / s) ** 2)
    kernel = (kernel / kernel.sum()).astype(a.dtype)
    out = a
    for axis in (-2, -1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = a.shape[axis]
        acc = np.zeros_like(a)
        window = [slice(None)] * a.ndim
        for k, weight in enumerate(kernel):  # 2r + 1 shifted slices, not a loop over pixels
            window[axis] = slice(k, k + n)
            acc += weight * padded[tuple(window)]
        out = acc
    return out


def best_gaussian_filter(noisy: Any, clean: Any, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                         peak: float = 1.0) -> tuple[np.ndarray, Any, Any]:
    """The Gaussian filter whose σ (from ``sigmas``) gives the highest PSNR against ``clean``.

    For one image (H, W): returns (filtered image, σ, PSNR in dB). For a stack (N, H, W), σ is
    chosen per image: (filtered stack, array of N σ, array of N PSNRs). Choosing σ with the
    clean image makes this an optimistic (oracle) classical baseline.
    """
    y = _images_2d("noisy", noisy)
    x = _images_2d("clean", clean)
    if y.shape != x.shape:
        raise InputError(f"noisy {y.shape} and clean {x.shape} must have the same shape")
    grid = [float(s) for s in sigmas]
    if not grid:
        raise InputError("sigmas must not be empty")
    stack = y.reshape((-1,) + y.shape[-2:])
    ref = x.reshape(stack.shape)
    best_img = np.empty_like(stack)
    best_sigma = np.full(stack.shape[0], np.nan)
    best_psnr = np.full(stack.shape[0], -np.inf)
    for s in grid:
        f = gaussian_filter(stack, s)
        mse = np.mean((f - ref) ** 2, axis=(-2, -1))
        with np.errstate(divide="ignore"):
            p = 10 * np.log10(peak ** 2 / mse)
        better = p > best_psnr
        best_img[better], best_sigma[better], best_psnr[better] = f[better], s, p[better]
    if y.ndim == 2:
        return best_img[0], float(best_sigma[0]), float(best_psnr[0])
    return best_img.reshape(y.shape), best_sigma.reshape(y.shape[:-2]), best_psnr.reshape(y.shape[:-2])


def median_filter(image: Any, size: int = 3) -> np.ndarray:
    """Median of each ``size``×``size`` neighbourhood (odd ``size``), border reflected;
    an image (H, W) or a stack (..., H, W)."""
    a = _images_2d("image", image)
    size = _positive_int("size", size)
    if size % 2 == 0:
        raise InputError(f"median filter size must be odd, got {size}")
    r = size // 2
    pad = [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(a, pad, mode="symmetric"), (size, size),
                                                       axis=(-2, -1))
    return np.median(windows, axis=(-2, -1)).astype(a.dtype, copy=False)


# -- files ----------------------------------------------------------------------------------------------

#: Pillow modes read as they are, and those converted first (palette, 1-bit, grey + alpha)
_MODES = {"L": "L", "RGB": "RGB", "RGBA": "RGBA", "1": "L", "P": "RGBA", "PA": "RGBA", "LA": "RGBA"}


def read_image(path: str | Path, scale: bool = True) -> np.ndarray:
    """An 8-bit grey or colour image file (PNG, or another format Pillow reads).

    Returns (H, W) for grey, (H, W, 3) for RGB, (H, W, 4) with alpha (palette and grey +
    alpha images become RGBA); float64 in [0, 1] when ``scale``, else uint8. 16-bit and floating-point images
    are refused with :class:`~autodiff_lab.errors.InputError`, as are missing files and
    files that are not images.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"no image file at {str(p)!r}" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        with Image.open(p) as img:
            mode = img.mode
            if mode not in _MODES:
                raise InputError(f"{str(p)!r} is a {mode!r} image; read_image reads 8-bit grey (L), "
                                 "RGB or RGBA images")
            if mode == "P" and "transparency" not in img.info:
                img = img.convert("RGB")
            elif _MODES[mode] != mode:
                img = img.convert(_MODES[mode])
            arr = np.asarray(img, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise InputError(f"{str(p)!r} is not an image file Pillow can read "
                         "(expected an 8-bit PNG, grey or colour)") from None
    except OSError as exc:  # truncated or corrupt files
        raise InputError(f"could not read the image {str(p)!r}: {exc}") from None
    return arr / 255.0 if scale else arr


def write_image(path: str | Path, array: Any) -> Path:
    """Write an 8-bit PNG: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA.

    Floating arrays are taken as [0, 1] and clipped to it (a denoised image may overshoot
    a little), then rounded to 0..255; integer arrays must already lie in 0..255. Parent
    folders are created. Returns the path written.
    """
    from PIL import Image

    p = Path(path)
    if p.suffix.lower() != ".png":
        raise InputError(f"write_image writes PNG files (lossless, so PSNRs survive); got {str(p)!r}")
    a = _real_array("the image", array)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.size == 0:
        raise InputError(f"an image to write must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise NonFiniteError(f"the image for {str(p)!r} holds NaN or Inf")
        u8 = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        if a.min() < 0 or a.max() > 255:
            raise InputError(f"integer image values must lie in 0..255, got {a.min()}..{a.max()}")
        u8 = a.astype(np.uint8)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(u8).save(p, format="PNG")
    return p


# -- scores ---------------------------------------------------------------------------------------------

def confusion_matrix(labels: Any, predictions: Any, k: int) -> np.ndarray:
    """(k, k) counts: entry [i, j] is how many examples of true class i were predicted j."""
    k = _positive_int("k", k)
    y = np.asarray(labels)
    yhat = np.asarray(predictions)
    if y.shape != yhat.shape or y.ndim != 1:
        raise InputError(f"labels {y.shape} and predictions {yhat.shape} must be 1-D of the same length")
    for name, v in (("labels", y), ("predictions", yhat)):
        if v.size and not np.issubdtype(v.dtype, np.integer):
            if not (np.issubdtype(v.dtype, np.floating) and np.all(v == np.round(v))):
                raise InputError(f"{name} must be integer class indices, got dtype {v.dtype}")
        if v.size and (v.min() < 0 or v.max() >= k):
            raise InputError(f"{name} must lie in 0..{k - 1}, got {v.min()}..{v.max()}")
    idx = y.astype(np.int64) * k + yhat.astype(np.int64)
    return np.bincount(idx, minlength=k * k).reshape(k, k)
