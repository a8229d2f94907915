"""Data for the case studies, shipped inside the package (nothing is downloaded).

* :func:`load_digits` -- 6,000 training and 1,000 test MNIST digits (28×28), 600/100 per class;
* :func:`load_gray_images` -- natural grey-scale images from scikit-image's samples;
* :func:`mask_pixels`, :func:`add_gaussian_noise`, :func:`extract_patches` -- how the
  inpainting and denoising case studies damage and cut them;
* from :mod:`.transforms`: :func:`random_block_mask`, :func:`random_patches`, :func:`batches`,
  the classical filters, :func:`read_image` / :func:`write_image`, :func:`confusion_matrix`.

Sources and licences are in ``DATA_NOTICE.md`` next to this file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from autodiff_lab.data.transforms import (  # noqa: F401 - re-exported
    DEFAULT_SIGMAS,
    batches,
    best_gaussian_filter,
    confusion_matrix,
    gaussian_filter,
    median_filter,
    random_block_mask,
    random_patches,
    read_image,
    write_image,
)
from autodiff_lab.errors import InputError

DATA_DIR = Path(__file__).resolve().parent

#: the test images of the denoiser (the rest are for training), as the data notice suggests
DENOISE_TEST_IMAGES = ("camera", "coins", "text")


@lru_cache(maxsize=2)
def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA_DIR / name) as data:
        return {k: data[k] for k in data.files}


def load_digits(split: str = "train", scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits of one split: images (N, 28, 28) and labels (N,).

    ``scale=True`` gives float64 images in [0, 1]; otherwise the original uint8.
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    data = _npz("mnist_6k1k.npz")
    images, labels = data[f"x_{split}"], data[f"y_{split}"].astype(np.int64)
    return (images / 255.0 if scale else images.copy()), labels


def load_gray_images(names: tuple[str, ...] | None = None, scale: bool = True) -> dict[str, np.ndarray]:
    """Natural grey images by name (all of them by default), float in [0, 1] when ``scale``."""
    data = _npz("gray_images.npz")
    names = tuple(data) if names is None else names
    unknown = [n for n in names if n not in data]
    if unknown:
        raise InputError(f"no image(s) {unknown}; available: {', '.join(data)}")
    return {n: (data[n] / 255.0 if scale else data[n].copy()) for n in names}


def mask_pixels(images: np.ndarray, fraction: float = 0.5, rng: np.random.Generator | None = None,
                kind: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Hide pixels: returns (masked images, mask with 1 = kept). ``kind`` is ``"random"``
    (each pixel dropped with probability ``fraction``) or ``"block"`` (a centred square
    covering ``fraction`` of the image)."""
    rng = rng or np.random.default_rng(0)
    if kind == "random":
        mask = (rng.random(images.shape) >= fraction).astype(images.dtype)
    elif kind == "block":
        h, w = images.shape[-2:]
        side_h, side_w = int(round(h * np.sqrt(fraction))), int(round(w * np.sqrt(fraction)))
        mask = np.ones(images.shape, dtype=images.dtype)
        top, left = (h - side_h) // 2, (w - side_w) // 2
        mask[..., top:top + side_h, left:left + side_w] = 0
    else:
        raise InputError(f"mask kind must be 'random' or 'block', got {kind!r}")
    return images * mask, mask


def add_gaussian_noise(images: np.ndarray, sigma: float = 25 / 255,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """Images plus white Gaussian noise of standard deviation ``sigma`` (25/255 is the
    standard DnCNN setting on a [0, 1] scale)."""
    rng = rng or np.random.default_rng(0)
    return images + rng.normal(0.0, sigma, images.shape)


def extract_patches(image: np.ndarray, size: int, count: int,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """``count`` random square patches (count, size, size) from a 2-D image."""
    rng = rng or np.random.default_rng(0)
    h, w = image.shape
    if size > min(h, w):
        raise InputError(f"patch size {size} is larger than the image {image.shape}")
    top = rng.integers(0, h - size + 1, count)
    left = rng.integers(0, w - size + 1, count)
    return np.stack([image[t:t + size, s:s + size] for t, s in zip(top, left)])


def psnr(estimate: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10·log10(peak² / MSE)."""
    mse = float(np.mean((np.asarray(estimate) - np.asarray(reference)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak ** 2 / mse)
