"""Deep Image Prior (Ulyanov, Vedaldi, Lempitsky, CVPR 2018): denoising with no training set.

A randomly initialised network f (the paper's hourglass, :class:`nn.Hourglass`, or a
U-Net) is fitted to ONE noisy image y from a fixed random code z
(noise, N × C × H × W, drawn once), minimising ½‖f(z) − y‖² with Adam. The network's
structure makes natural images easy to produce and noise hard: it fits the image first and
the noise later, so the PSNR of f(z) against the *clean* image rises, peaks, and declines
as the net starts reproducing the noise too. Stopping early (at the peak) denoises.

:func:`run` does the experiment for a :class:`DIPConfig` and returns its metrics; it writes

* ``dip_curve.png/.svg``: PSNR of f(z) against the clean image and against the noisy
  target, per step, with the noisy input's PSNR, the best Gaussian filter's and (with
  ``dncnn=``) a trained DnCNN's as reference lines, and the peak marked;
* ``dip_panel.png/.svg``: clean, noisy, Gaussian, (DnCNN,) the best step's output, and
  snapshots of f(z) at chosen steps;
* ``dip_best.png`` (the output at the best step), ``dip_final.png``, ``noisy.png``, and
  ``images.npz`` with every image of the panel;
* ``metrics.json``: best step and PSNR, final PSNR, noisy and Gaussian PSNR (and σ), wall
  time, steps per second, the machine's load, the curve and the configuration.

The best step is chosen with the clean image (an oracle stopping time, as the paper's
curves show it); the final PSNR is what running on without that oracle gives.

From the shell: ``autodiff-lab train dip`` (:mod:`autodiff_lab.studies.dip_train`, the
shared options of the case studies) or ``python -m autodiff_lab.studies.dip`` (every setting
of the network; ``add_arguments`` / ``main`` are its command-line layer).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.kernels import tiered

#: the auxiliary output through which the traced loss hands back f(z) at every step
OUTPUT_KEY = "dip.output"
#: the networks a run can fit
ARCHITECTURES = ("unet", "hourglass")
#: how far above the best Gaussian filter a run is expected to get (metrics record when)
TARGET_MARGIN_DB = 1.5


@dataclass
class DIPConfig:
    """One Deep Image Prior run. Defaults: the 256×256 centre crop of ``camera``, σ = 25/255,
    the paper's hourglass network (:class:`nn.Hourglass`: five levels of 16, 32, 64, 128,
    128 channels that each start with a stride-2 convolution, 4-channel skips on the two
    deepest levels, bilinear up-sampling, leaky ReLU, batch norm), a 32-channel code with
    fresh noise of std 1/30 added at every step, Adam at lr 0.01 decaying (half cosine) to
    0.0005 over steps 1,500–2,300, and moving averages (0.99) of the outputs and of the
    weights (docs/dip.md has the search behind them)."""

    #: a name of ``data.load_gray_images``, an image file (grey or RGB), or an array
    image: Any = "camera"
    crop: int | None = 256         #: side of the centre crop (None or 0: the whole image)
    sigma: float = 25 / 255        #: noise standard deviation on the [0, 1] scale
    steps: int = 4000              #: Adam steps (gradient evaluations)
    every: int = 10                #: record the curve every ``every`` steps
    lr: float = 0.01
    #: step after which the learning rate decays (cosine) from ``lr`` to ``lr_final`` over
    #: ``lr_decay_steps`` steps and then stays there; None = a constant ``lr``
    lr_decay_start: int | None = 1500
    lr_decay_steps: int = 800      #: length of that decay, in steps
    lr_final: float = 0.0005       #: the learning rate after the decay
    #: levels of the network (the image side must be a multiple of 2**depth)
    depth: int = 5
    #: channels per level (or one int: the first level's, see growth). None: the
    #: hourglass's 16, 32, 64, 128, 128 (:func:`default_hourglass_widths`), the U-Net's 8,
    #: 16, 32, 32, ... with its bottleneck last (:func:`default_widths`)
    width: int | tuple[int, ...] | None = None
    growth: int = 1                #: channel factor per level when width is one int (U-Net)
    #: "hourglass" (:class:`nn.Hourglass`, the paper's network: levels that each start by
    #: halving, skips off each level's input) or "unet" (:class:`nn.UNet`)
    architecture: str = "hourglass"
    #: channels of each skip connection, or one count per level (full resolution first; 0:
    #: no skip at that level). "auto": the hourglass's 4 on its two deepest levels and none
    #: above (the paper's 0, 0, 0, 4, 4), the U-Net's 4 everywhere; None: the U-Net's
    #: encoder features unprojected
    skip_channels: int | tuple[int, ...] | str | None = "auto"
    code_channels: int = 32        #: channels of the random code z (as the paper)
    code_scale: float = 0.1        #: z ~ U(0, code_scale), as the paper draws it
    #: std of fresh noise added to z at every step (as the paper: 1/30; 0 = off); the curve
    #: then also records f(z) without it
    input_noise: float = 1 / 30
    #: the input noise's std after the learning-rate decay (it follows the same cosine);
    #: None = ``input_noise`` throughout
    input_noise_final: float | None = None
    down: str = "conv"             #: "conv" (stride 2) or "maxpool"
    up: str = "bilinear"           #: "bilinear", "nearest" or "transpose"
    activation: str = "leaky_relu"
    ema: float = 0.99              #: exponential moving average of the outputs (as the paper); 0 = off
    #: exponential moving average of the weights (Polyak averaging), 0 = off: the curve then
    #: also records f(z) of the averaged network, one forward pass of one network
    weight_ema: float = 0.99
    snapshots: tuple[int, ...] = ()  #: steps whose f(z) the panel shows (() = spread over the run)
    seed: int = 0                  #: seeds the noise, the code z and the weights
    dncnn: str | None = None       #: a trained DnCNN (nn.save file) to compare with
    out: str = "runs/dip"          #: folder for the figures and metrics.json
    engine: str = "tape"
    max_seconds: float | None = None  #: stop the loop after this much wall time
    progress: bool = True          #: print a line every tenth of the run
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form notes kept in metrics.json

    @classmethod
    def quick(cls, **overrides: Any) -> DIPConfig:
        """A run of a few seconds (64×64 crop, small net, 40 steps, the learning rate decaying
        over steps 25–35) that exercises everything."""
        base = dict(crop=64, steps=40, every=5, depth=3, width=8, code_channels=8, ema=0.9,
                    weight_ema=0.9, lr_decay_start=25, lr_decay_steps=10,
                    out="runs/dip-quick", progress=False)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> DIPConfig:
        """Refuse bad settings with one line naming the value and what is expected."""
        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
        integer("steps", 1)
        integer("every", 1)
        integer("depth", 1)
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture must be one of {', '.join(map(repr, ARCHITECTURES))}, "
                             f"got {self.architecture!r}")
        hourglass = self.architecture == "hourglass"
        levels = self.depth if hourglass else self.depth + 1
        if self.width is None:
            self.width = default_hourglass_widths(self.depth) if hourglass else \
                default_widths(self.depth)
        if hourglass and not isinstance(self.width, (tuple, list)):
            self.width = (self.width,) * self.depth
        widths = self.width if isinstance(self.width, (tuple, list)) else (self.width,)
        if not widths or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                             for v in widths):
            raise InputError(f"width must be a positive integer or one per level, got {self.width!r}")
        if isinstance(self.width, (tuple, list)) and len(self.width) != levels:
            which = "depth = " if hourglass else "depth + 1 = "
            raise InputError(f"width needs {which}{levels} counts (one per level"
                             f"{'' if hourglass else ', the bottleneck last'}), got "
                             f"{len(self.width)}: {tuple(self.width)}")
        integer("growth", 1)
        integer("code_channels", 1)
        if self.skip_channels == "auto":
            self.skip_channels = default_hourglass_skips(self.depth) if hourglass else 4
        if isinstance(self.skip_channels, (tuple, list)):
            if len(self.skip_channels) != self.depth or any(
                    isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
                    for k in self.skip_channels):
                raise InputError(f"skip_channels needs one integer >= 0 per level (depth = "
                                 f"{self.depth}), got {tuple(self.skip_channels)}")
            self.skip_channels = tuple(int(k) for k in self.skip_channels)
        elif self.skip_channels is not None:
            integer("skip_channels", 1)
        integer("seed", 0)
        if self.crop is not None:
            integer("crop", 0)
        if self.lr_decay_start is not None:
            integer("lr_decay_start", 0)
        integer("lr_decay_steps", 1)
        for name in ("lr", "code_scale", "lr_final"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if self.input_noise_final is not None and self.lr_decay_start is None:
            raise InputError("input_noise_final needs lr_decay_start (the noise decays with the "
                             "learning rate)")
        for name in ("sigma", "input_noise") + (("input_noise_final",)
                                                  if self.input_noise_final is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a number >= 0, got {v!r}")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise InputError(f"ema must be in [0, 1) (0 = off; the paper uses 0.99), got "
                             f"{self.ema!r}")
        if not (isinstance(self.weight_ema, (int, float)) and 0 <= self.weight_ema < 1):
            raise InputError(f"weight_ema must be in [0, 1) (0 = off), got {self.weight_ema!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InputError(f"max_seconds must be positive, got {self.max_seconds!r}")
        bad = [s for s in self.snapshots if isinstance(s, bool) or not isinstance(s, (int, np.integer))
               or not 1 <= s <= self.steps]
        if bad:
            raise InputError(f"snapshot steps must be integers in 1..{self.steps} (the step "
                             f"count), got {bad}")
        from autodiff_lab.nn.unet import ACTIVATIONS, DOWN_MODES, UP_MODES
        for name, allowed in (("down", DOWN_MODES), ("up", UP_MODES),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}, got "
                                 f"{getattr(self, name)!r}")
        return self


def learning_rate(config: DIPConfig, t: int) -> float:
    """The learning rate of step ``t`` (1-based): ``config.lr`` up to ``lr_decay_start``,
    then a half cosine down to ``lr_final`` over ``lr_decay_steps`` steps, then ``lr_final``.
    A late decay shrinks Adam's step-to-step jitter of the weights once the fit has risen,
    as averaging the weights would (docs/dip.md)."""
    start = config.lr_decay_start
    if start is None or t <= start:
        return float(config.lr)
    frac = min(1.0, (t - start) / config.lr_decay_steps)
    return float(config.lr_final + (config.lr - config.lr_final) * (1 + np.cos(np.pi * frac)) / 2)


def input_noise_std(config: DIPConfig, t: int) -> float:
    """The std of the noise added to the code at step ``t``: ``input_noise``, or with
    ``input_noise_final`` set, moving from ``input_noise`` to it on the learning rate's cosine."""
    if config.input_noise_final is None or config.lr_decay_start is None or t <= config.lr_decay_start:
        return float(config.input_noise)
    frac = min(1.0, (t - config.lr_decay_start) / config.lr_decay_steps)
    return float(config.input_noise_final
                 + (config.input_noise - config.input_noise_final) * (1 + np.cos(np.pi * frac)) / 2)


def _passed(step: int, seconds: float) -> dict[str, Any]:
    """The record of the first step at least TARGET_MARGIN_DB above the Gaussian filter."""
    return {"margin_db": TARGET_MARGIN_DB, "step": step, "seconds": round(seconds, 2)}


def _seconds_at(curve: dict[str, list], step: int) -> float | None:
    """Training seconds when ``step`` was done: the curve's time at the first recorded step
    at or after it (the curve is recorded every ``every`` steps)."""
    at = int(np.searchsorted(curve["step"], step))
    return curve["seconds"][at] if at < len(curve["seconds"]) else None


def default_hourglass_widths(depth: int) -> tuple[int, ...]:
    """The study's hourglass channels for ``depth`` levels: 16 at the first (which works at
    half resolution), doubling to at most 128 (16, 32, 64, 128, 128 for depth 5; the paper
    starts at 8, which rose more slowly per step here, docs/dip.md)."""
    return tuple(min(16 * 2 ** lvl, 128) for lvl in range(depth))


def default_hourglass_skips(depth: int) -> tuple[int, ...]:
    """The paper's skip widths for ``depth`` levels: 4 channels on the two deepest levels,
    none above (0, 0, 0, 4, 4 for depth 5), so that no skip brings full-resolution detail,
    and with it the noise, to the output early."""
    return tuple(4 if lvl >= depth - 2 else 0 for lvl in range(depth))


def default_widths(depth: int) -> tuple[int, ...]:
    """The study's U-Net channels for ``depth``: 8 at full resolution, where a convolution
    costs most, doubling to at most 32 below (8, 16, 32, 32, 32 for depth 4)."""
    return tuple(min(8 * 2 ** lvl, 32) for lvl in range(depth + 1))


# --------------------------------------------------------------------------------------
# the image
# --------------------------------------------------------------------------------------

def _as_unit_image(name: str, img: Any) -> np.ndarray:
    """An image array as floats in [0, 1]: uint8 (÷ 255), uint16 (÷ 65535) or floats already
    in [0, 1]; anything else (bool, complex, signed integers, NaN, values outside [0, 1]) is
    our one-line error naming the image and what is expected."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    if a.dtype.kind != "f":
        raise InputError(f"image {name} has dtype {a.dtype}; the Deep Image Prior takes uint8, "
                         "uint16 or floating-point images in [0, 1]")
    if a.size and not np.all(np.isfinite(a)):
        raise InputError(f"image {name} holds NaN or Inf; expected values in [0, 1]")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise InputError(f"image {name} has values in [{a.min():.4g}, {a.max():.4g}]; a "
                         "floating-point image must lie in [0, 1] (divide 8-bit values by 255)")
    return a.astype(np.float64)


def _to_chw(name: str, img: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB as (C, H, W). An alpha channel that is opaque everywhere
    carries nothing and is dropped (PNGs saved as RGBA / grey + alpha); a real one is refused,
    as are other channel counts."""
    if img.ndim == 3 and img.shape[2] in (2, 4):
        alpha = img[..., -1]
        if np.all(alpha == alpha.flat[0]) and alpha.size and alpha.flat[0] >= 1.0:
            img = img[..., :-1] if img.shape[2] == 4 else img[..., 0]
        else:
            raise InputError(f"image {name} has {img.shape[2]} channels with a transparent alpha "
                             "channel; the Deep Image Prior takes grey (H, W) or RGB (H, W, 3) "
                             "images (flatten the transparency first)")
    if img.ndim == 3 and img.shape[2] == 3:
        return np.transpose(img, (2, 0, 1))
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0][None]
    if img.ndim == 2:
        return img[None]
    what = f"{img.shape[2]} channels" if img.ndim == 3 else f"{img.ndim} dimensions"
    raise InputError(f"image {name} has shape {img.shape} ({what}); the Deep Image Prior takes "
                     "grey (H, W) or RGB (H, W, 3) images")


def image_label(image: Any) -> str:
    """How a run names its image: the built-in name or path, or ``array HxW[xC]``."""
    if isinstance(image, np.ndarray):
        return "array " + "×".join(map(str, image.shape))
    return str(image)


def load_clean_image(config: DIPConfig) -> np.ndarray:
    """The clean image as (C, H, W) floats in [0, 1] (C = 1 grey, 3 RGB), centre-cropped and
    checked against the network's size rule. ``config.image`` is a built-in name, an image file
    or an array (see :func:`_as_unit_image`)."""
    name, chw = _read_image(config)
    return _crop_and_check(config, name, chw)


def builtin_images() -> tuple[str, ...]:
    """The names of the built-in grey images (``data.load_gray_images``)."""
    from autodiff_lab.data import load_gray_images
    return tuple(load_gray_images())


def fitting_crop(config: DIPConfig) -> int:
    """The side of the largest centred square of the image that the network takes (a multiple
    of 2**depth), at most ``config.crop``: what ``autodiff-lab train dip`` uses for a user's
    image, which has no --crop option."""
    _, chw = _read_image(config)
    side = min(chw.shape[1:]) // 2 ** config.depth * 2 ** config.depth
    return min(side, int(config.crop)) if config.crop else side


def _read_image(config: DIPConfig) -> tuple[str, np.ndarray]:
    """(the image's name for messages, the image as (C, H, W) in [0, 1])."""
    from autodiff_lab.data import load_gray_images, read_image

    if isinstance(config.image, np.ndarray):
        name = f"({image_label(config.image)}, dtype {config.image.dtype})"
        img = _as_unit_image(name, config.image)
    elif not isinstance(config.image, (str, os.PathLike)):
        raise InputError(f"image must be a built-in name, a path or an array, got "
                         f"{type(config.image).__name__}")
    else:
        name = str(config.image)
        known = load_gray_images()
        if name in known:
            img = known[name]
        elif Path(name).exists() or Path(name).suffix:
            img = read_image(name)  # our InputError for missing files, non-images, 16-bit files
        else:
            raise InputError(f"image {name!r} is neither a built-in image ({', '.join(known)}) "
                             "nor an image file")
        name = repr(name)
    return name, _to_chw(name, img)


def _crop_and_check(config: DIPConfig, name: str, chw: np.ndarray) -> np.ndarray:
    h, w = chw.shape[1:]
    if config.crop:
        c = int(config.crop)
        if c > min(h, w):
            raise InputError(f"crop {c} is larger than the image {name} ({h}×{w}); use "
                             f"--crop {min(h, w)} or less")
        top, left = (h - c) // 2, (w - c) // 2
        chw = chw[:, top:top + c, left:left + c]
        h = w = c
    d = 2 ** config.depth
    if h % d or w % d or h < d or w < d:
        fix = (f"--crop {min(h, w) // d * d}" if min(h, w) >= d else "a larger image")
        raise InputError(f"the image is {h}×{w}, not a multiple of 2**depth = {d} on both sides "
                         f"(depth {config.depth}); use {fix} or a smaller --depth")
    if (h // d) * (w // d) < 2:
        raise InputError(f"the image {h}×{w} is too small for depth {config.depth}: the network's "
                         f"deepest level would be 1×1, too small for batch normalisation; use an "
                         f"image of at least {2 * d}×{d} or a smaller --depth")
    return np.ascontiguousarray(chw, dtype=np.float64)


def _gaussian_baseline(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The Gaussian filter (one σ for every channel, from the data module's grid) with the
    best PSNR against the clean image: (filtered, σ, PSNR)."""
    from autodiff_lab.data import DEFAULT_SIGMAS, best_gaussian_filter, gaussian_filter, psnr

    if noisy.shape[0] == 1:
        f, s, p = best_gaussian_filter(noisy[0], clean[0])
        return f[None], float(s), float(p)
    best = (noisy, 0.0, -np.inf)
    for s in DEFAULT_SIGMAS:
        f = gaussian_filter(noisy, s)
        p = psnr(f, clean)
        if p > best[2]:
            best = (f, float(s), float(p))
    return best


def _dncnn_baseline(path: str, noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, float]:
    """A trained DnCNN (saved with nn.save) applied to the same noisy image: (output, PSNR)."""
    from autodiff_lab import nn
    from autodiff_lab.data import psnr

    model = nn.load(path)
    if not hasattr(model, "denoise"):
        raise InputError(f"{path!r} holds a {type(model).__name__}, not a denoiser with a "
                         "denoise() method (a model saved by the DnCNN case study)")
    channels = getattr(model, "image_channels", noisy.shape[0])
    if channels != noisy.shape[0]:
        raise InputError(f"the DnCNN in {path!r} takes {channels}-channel images, the image has "
                         f"{noisy.shape[0]}")
    out = np.asarray(model.denoise(noisy[None]), dtype=np.float64)[0]
    return out, float(psnr(np.clip(out, 0, 1), clean))


# --------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------

def _recording_mse(pred: Any, target: Any) -> Any:
    """½‖pred − target‖², handing pred back as an auxiliary output of the traced step, so
    every step returns f(z) without a second forward pass."""
    from autodiff_lab.graph import functions as F
    from autodiff_lab.graph.tensor import Tensor

    if isinstance(pred, Tensor):
        pred.builder.aux_outputs[OUTPUT_KEY] = pred
    return F.mse_loss(pred, target, reduction="sum")


def _default_snapshots(steps: int) -> list[int]:
    picks = {max(1, round(steps * f)) for f in (0.02, 0.08, 0.25, 0.5)}
    return sorted(picks)


def build_model(config: DIPConfig, channels: int) -> Any:
    """The network of the run (float32), its weights drawn from the run's seed."""
    from autodiff_lab import nn
    if config.architecture == "hourglass":
        skips = config.skip_channels if isinstance(config.skip_channels, tuple) else \
            (config.skip_channels or 0,) * config.depth
        return nn.Hourglass(config.code_channels, channels, tuple(config.width), skips,
                            up=config.up if config.up != "transpose" else "bilinear",
                            activation=config.activation, output="sigmoid", dtype=np.float32,
                            rng=np.random.default_rng([config.seed, 2]))
    return nn.UNet(config.code_channels, channels, config.depth, config.width,
                   growth=config.growth, down=config.down, up=config.up,
                   skip_channels=config.skip_channels,
                   activation=config.activation, output="sigmoid", dtype=np.float32,
                   rng=np.random.default_rng([config.seed, 2]))


def run(config: DIPConfig) -> dict[str, Any]:
    """Fit the network to the noisy image (see the module docstring); returns the metrics
    (also written to ``<out>/metrics.json``)."""
    tiered.foreground()  # a fit of minutes: compile the kernels now
    from autodiff_lab import nn
    from autodiff_lab.data import psnr
    from autodiff_lab.nn.optim import Adam

    if not isinstance(config, DIPConfig):
        raise InputError(f"run needs a DIPConfig, got {type(config).__name__}")
    config.validate()
    started = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clean = load_clean_image(config)
    c, h, w = clean.shape
    noisy = clean + np.random.default_rng([config.seed, 0]).normal(0.0, config.sigma, clean.shape)
    z = np.random.default_rng([config.seed, 1]).uniform(
        0.0, config.code_scale, (1, config.code_channels, h, w)).astype(np.float32)
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    noisy_psnr = float(psnr(noisy, clean))
    gauss_img, gauss_sigma, gauss_psnr = _gaussian_baseline(noisy, clean)
    dncnn_img, dncnn_psnr = (None, None)
    if config.dncnn:
        dncnn_img, dncnn_psnr = _dncnn_baseline(config.dncnn, noisy, clean)

    model = build_model(config, c)
    target = noisy[None].astype(np.float32)
    step = nn.compile_step(model, _recording_mse, z, target, engine=config.engine)
    optimiser = Adam(model.parameters(), lr=config.lr)
    noise_rng = np.random.default_rng([config.seed, 3])
    snapshot_steps = sorted(set(config.snapshots)) or _default_snapshots(config.steps)

    curve: dict[str, list[float]] = {"step": [], "seconds": [], "psnr_clean": [], "psnr_noisy": [],
                                     "loss": [], "lr": []}
    if config.ema:
        curve["psnr_ema"] = []
    if config.input_noise:
        curve["psnr_code"] = []
    params = model.parameters()
    averaged = [p.data.copy() for p in params] if config.weight_ema else None
    if averaged is not None:
        curve["psnr_wavg"] = []
    wavg_best: tuple[float, int, np.ndarray | None] = (-np.inf, 0, None)
    code_best: tuple[float, int, np.ndarray | None] = (-np.inf, 0, None)
    snapshots: dict[int, np.ndarray] = {}
    best_psnr, best_step, best_img = -np.inf, 0, None
    ema_img = None
    beat: dict[str, Any] | None = None
    code_beat: dict[str, Any] | None = None
    loop_start = time.perf_counter()
    done = 0
    pred = None
    stopped = "completed"
    try:
        for t in range(1, config.steps + 1):
            std_t = input_noise_std(config, t)
            x = z if not config.input_noise else \
                z + noise_rng.normal(0.0, std_t, z.shape).astype(np.float32)
            result = step(x, target)
            p_t = np.asarray(result.outputs[OUTPUT_KEY][0], dtype=np.float64)
            lr_t = learning_rate(config, t)
            for group in optimiser.param_groups:
                group["lr"] = lr_t
            optimiser.step()
            if averaged is not None:
                beta = config.weight_ema
                for a, p in zip(averaged, params):
                    a *= beta
                    a += (1 - beta) * p.data
            pred, done = p_t, t
            p_clean = float(psnr(pred, clean))
            if config.ema:
                ema_img = pred if ema_img is None else config.ema * ema_img + (1 - config.ema) * pred
            if p_clean > best_psnr:
                best_psnr, best_step, best_img = p_clean, t, pred
            elapsed = time.perf_counter() - loop_start
            if beat is None and p_clean >= gauss_psnr + TARGET_MARGIN_DB:
                beat = _passed(t, elapsed)
            if t in snapshot_steps:
                snapshots[t] = pred
            out_of_time = config.max_seconds is not None and elapsed > config.max_seconds
            if t % config.every == 0 or t == 1 or t == config.steps or out_of_time:
                curve["step"].append(t)
                curve["seconds"].append(round(elapsed, 3))
                curve["psnr_clean"].append(round(p_clean, 4))
                curve["psnr_noisy"].append(round(float(psnr(pred, noisy)), 4))
                curve["loss"].append(float(result.loss))
                curve["lr"].append(lr_t)
                if config.ema:
                    curve["psnr_ema"].append(round(float(psnr(ema_img, clean)), 4))
                if config.input_noise:
                    # the output for the code itself, without the step's input noise (like
                    # a network with dropout evaluated without it): one forward pass
                    f_code = np.asarray(model(z), dtype=np.float64)[0]
                    p_code = float(psnr(f_code, clean))
                    curve["psnr_code"].append(round(p_code, 4))
                    if p_code > code_best[0]:
                        code_best = (p_code, t, f_code)
                    if code_beat is None and p_code >= gauss_psnr + TARGET_MARGIN_DB:
                        code_beat = _passed(t, elapsed)
                if averaged is not None:
                    f_avg = _averaged_output(model, params, averaged, z)
                    p_avg = float(psnr(f_avg, clean))
                    curve["psnr_wavg"].append(round(p_avg, 4))
                    if p_avg > wavg_best[0]:
                        wavg_best = (p_avg, t, f_avg)
            if config.progress and (t % max(1, config.steps // 10) == 0 or t == 1):
                print(f"step {t:>6}/{config.steps}  PSNR {p_clean:6.2f} dB (best {best_psnr:.2f} "
                      f"at {best_step})  vs noisy {curve['psnr_noisy'][-1]:6.2f} dB  "
                      f"{t / max(elapsed, 1e-9):.2f} steps/s", flush=True)
            if out_of_time:
                stopped = "time limit"
                break
    except KeyboardInterrupt:
        if pred is None:  # not one step done: nothing to show
            raise
        stopped = "interrupted"
        n = min(len(v) for v in curve.values())  # a step cut short between two appends
        for v in curve.values():
            del v[n:]
        if not curve["step"] or curve["step"][-1] != done:
            _record_last(curve, done, time.perf_counter() - loop_start, pred, clean, noisy, ema_img)
            curve["lr"].append(learning_rate(config, done))
            if "psnr_code" in curve:
                curve["psnr_code"].append(round(float(psnr(
                    np.asarray(model(z), dtype=np.float64)[0], clean)), 4))
            if "psnr_wavg" in curve and averaged is not None:
                curve["psnr_wavg"].append(round(float(psnr(
                    _averaged_output(model, params, averaged, z), clean)), 4))
    train_seconds = time.perf_counter() - loop_start
    assert pred is not None and best_img is not None
    final_psnr = float(psnr(pred, clean))

    metrics: dict[str, Any] = {
        "image": image_label(config.image), "shape": [c, h, w], "sigma": config.sigma,
        "steps": done, "stopped": stopped, "best_step": best_step, "best_psnr": round(best_psnr, 3),
        "final_psnr": round(final_psnr, 3), "decline_db": round(best_psnr - final_psnr, 3),
        "noisy_psnr": round(noisy_psnr, 3), "gaussian_psnr": round(gauss_psnr, 3),
        "gaussian_sigma": gauss_sigma, "best_minus_gaussian_db": round(best_psnr - gauss_psnr, 3),
        "beat_gaussian": beat,
        "dncnn_psnr": None if dncnn_psnr is None else round(dncnn_psnr, 3),
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(done / max(train_seconds, 1e-9), 3),
        "parameters": model.num_parameters, "engine": config.engine, "dtype": "float32",
        "load_average": [load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "cpu_count": os.cpu_count(),
        "threads": {v: os.environ.get(v) for v in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                    "OMP_NUM_THREADS")},
    }
    metrics["best_seconds"] = _seconds_at(curve, best_step)
    if config.ema:
        metrics["ema_final_psnr"] = round(float(psnr(ema_img, clean)), 3)
        metrics["ema_best_psnr"] = round(max(curve["psnr_ema"]), 3)
        metrics["ema_best_step"] = curve["step"][int(np.argmax(curve["psnr_ema"]))]
    for prefix, best in (("wavg", wavg_best), ("code", code_best)):
        if curve.get(f"psnr_{prefix}"):
            metrics.update({f"{prefix}_best_psnr": round(best[0], 3), f"{prefix}_best_step": best[1],
                            f"{prefix}_final_psnr": curve[f"psnr_{prefix}"][-1],
                            f"{prefix}_best_minus_gaussian_db": round(best[0] - gauss_psnr, 3),
                            f"{prefix}_best_seconds": _seconds_at(curve, best[1])})
    if curve.get("psnr_code"):
        metrics["code_beat_gaussian"] = code_beat
    _write_outputs(out_dir, config, metrics, curve, clean, noisy, gauss_img, dncnn_img, best_img,
                   pred, ema_img, snapshots, code_best[2])
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    metrics["curve"] = curve
    metrics["config"] = _config_record(config)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if stopped == "interrupted":
        from autodiff_lab.errors import TrainingInterrupted
        raise TrainingInterrupted(f"interrupted at step {done} of {config.steps}; the figures and "
                                  f"metrics.json of the steps done are in {out_dir}")
    return metrics


def _averaged_output(model: Any, params: list[Any], averaged: list[np.ndarray],
                     z: np.ndarray) -> np.ndarray:
    """f(z) of the network with the averaged weights: copied into the parameters for one
    forward pass and the trained weights put back (in place, so whatever holds the
    parameter arrays keeps seeing them)."""
    trained = [p.data.copy() for p in params]
    try:
        for p, a in zip(params, averaged):
            np.copyto(p.data, a)
        return np.asarray(model(z), dtype=np.float64)[0]
    finally:
        for p, w in zip(params, trained):
            np.copyto(p.data, w)


def _config_record(config: DIPConfig) -> dict[str, Any]:
    """The configuration as JSON-ready values (an image array by its shape)."""
    record = {f.name: getattr(config, f.name) for f in fields(config)}
    record["image"] = image_label(config.image)
    return json.loads(json.dumps(record, default=str))


def _record_last(curve: dict[str, list[float]], t: int, elapsed: float, pred: np.ndarray,
                 clean: np.ndarray, noisy: np.ndarray, ema_img: np.ndarray | None) -> None:
    """Add step ``t`` to the curve (the last step done of an interrupted run)."""
    from autodiff_lab.data import psnr
    curve["step"].append(t)
    curve["seconds"].append(round(elapsed, 3))
    curve["psnr_clean"].append(round(float(psnr(pred, clean)), 4))
    curve["psnr_noisy"].append(round(float(psnr(pred, noisy)), 4))
    curve["loss"].append(float(0.5 * np.sum((pred - noisy) ** 2)))
    if "psnr_ema" in curve and ema_img is not None:
        curve["psnr_ema"].append(round(float(psnr(ema_img, clean)), 4))


def _hwc(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) grey or (H, W, 3) colour, clipped to [0, 1] for display."""
    img = np.clip(img, 0.0, 1.0)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def plot_curve(metrics: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """The PSNR-vs-step figure of a run from its metrics (``metrics.json`` re-plots without
    running again): f(z) against the clean image and the noisy target (and the moving
    average), the references as lines, the peak as a star."""
    from autodiff_lab import figures

    curve, config = metrics["curve"], metrics["config"]
    out = "f(z + n)" if curve.get("psnr_code") else "f(z)"  # with input noise n
    # the curve is recorded every few steps, the peak at every step: draw the peak on it
    steps, clean = list(curve["step"]), list(curve["psnr_clean"])
    if metrics["best_step"] not in steps:
        at = int(np.searchsorted(steps, metrics["best_step"]))
        steps.insert(at, metrics["best_step"])
        clean.insert(at, metrics["best_psnr"])
    histories = {f"{out} vs clean image": (steps, clean),
                 f"{out} vs noisy target": (curve["step"], curve["psnr_noisy"])}
    if curve.get("psnr_code"):
        histories["f(z), the code without noise, vs clean"] = (curve["step"], curve["psnr_code"])
    if curve.get("psnr_wavg"):
        histories[f"f(z), averaged weights ({config['weight_ema']})"] = (curve["step"],
                                                                      curve["psnr_wavg"])
    if curve.get("psnr_ema"):
        histories[f"moving average ({config['ema']}) vs clean"] = (curve["step"], curve["psnr_ema"])
    refs = {"noisy input": metrics["noisy_psnr"],
            f"best Gaussian (σ = {metrics['gaussian_sigma']:g} px)": metrics["gaussian_psnr"]}
    if metrics.get("dncnn_psnr") is not None:
        refs["trained DnCNN"] = metrics["dncnn_psnr"]
    _, h, w = metrics["shape"]
    return figures.psnr_curves(
        histories, path, references=refs,
        marks={"peak": (metrics["best_step"], metrics["best_psnr"])},
        ylim=(metrics["noisy_psnr"] - 4.0, None),
        title=f"Deep Image Prior on {Path(str(config['image'])).stem} {h}×{w}, "
              f"σ = {config['sigma'] * 255:g}/255")


def _write_outputs(out_dir: Path, config: DIPConfig, metrics: dict[str, Any],
                   curve: dict[str, list[float]], clean: np.ndarray, noisy: np.ndarray,
                   gauss: np.ndarray, dncnn: np.ndarray | None, best: np.ndarray,
                   final: np.ndarray, ema: np.ndarray | None,
                   snapshots: dict[int, np.ndarray], code: np.ndarray | None = None) -> None:
    from autodiff_lab import figures
    from autodiff_lab.data import psnr, write_image

    write_image(out_dir / "dip_best.png", _hwc(best))
    write_image(out_dir / "dip_final.png", _hwc(final))
    write_image(out_dir / "noisy.png", _hwc(noisy))
    plot_curve({**metrics, "curve": curve, "config": _config_record(config)}, out_dir / "dip_curve")
    top = [("clean", clean, None), ("noisy", noisy, metrics["noisy_psnr"]),
           ("Gaussian", gauss, metrics["gaussian_psnr"])]
    if dncnn is not None:
        top.append(("DnCNN", dncnn, metrics["dncnn_psnr"]))
    top.append((f"DIP, step {metrics['best_step']}", best, metrics["best_psnr"]))
    if code is not None:
        top.append((f"f(z), step {metrics['code_best_step']}", code, metrics["code_best_psnr"]))
    if ema is not None:
        top.append(("avg., end", ema, metrics["ema_final_psnr"]))
    bottom = [(f"step {s}", img, float(psnr(img, clean))) for s, img in sorted(snapshots.items())]
    bottom.append((f"step {metrics['steps']} (end)", final, metrics["final_psnr"]))
    ncols = max(len(top), len(bottom))
    rows, captions = [], []
    for row in (top, bottom):
        cells = [_hwc(img) for _, img, _ in row] + [None] * (ncols - len(row))
        rows.append(cells)
        captions.append([f"{label}\n{p:.2f} dB" if p is not None else label
                         for label, _, p in row] + [""] * (ncols - len(row)))
    # captions of at most about 15 characters a line: six columns at slide size stay apart
    figures.image_panel(rows, out_dir / "dip_panel", captions=captions,
                        row_titles=["references", "f(z) during the fit"])
    # every image of the panel, to draw it again without running
    np.savez_compressed(out_dir / "images.npz", clean=clean, noisy=noisy, gaussian=gauss,
                        best=best, final=final, **({} if ema is None else {"ema": ema}),
                        **({} if code is None else {"code_best": code}),
                        **({} if dncnn is None else {"dncnn": dncnn}),
                        **{f"step_{k}": v for k, v in snapshots.items()})


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def _step_or_off(text: str) -> int | str:
    """A step number, or ``off`` (kept as the string, turned into None by config_from_args)."""
    if text.strip().lower() in ("off", "none"):
        return "off"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number or 'off', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``autodiff-lab train dip``."""
    d = DIPConfig()
    add = parser.add_argument
    add("--image", help=f"a built-in grey image (camera, astronaut, coins ...) or the path of a "
                        f"grey or RGB PNG (default {d.image})")
    add("--crop", type=int, help=f"side of the centre crop, 0 = whole image (default {d.crop}: the "
                                 "256×256 centre of camera)")
    add("--steps", type=int, help=f"Adam steps (default {d.steps})")
    add("--every", type=int, metavar="K", help=f"record the PSNR every K steps (default {d.every})")
    add("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    add("--lr-decay-start", type=_step_or_off, metavar="STEP",
        help="decay the learning rate after this step (cosine, to --lr-final over "
             f"--lr-decay-steps steps; default {d.lr_decay_start}); off: a constant rate")
    add("--lr-decay-steps", type=int, metavar="N",
        help=f"length of the decay in steps (default {d.lr_decay_steps})")
    add("--lr-final", type=float, help=f"learning rate after the decay (default {d.lr_final})")
    add("--input-noise-final", type=float, metavar="STD",
        help="the input noise's std after the learning-rate decay, which it follows "
             "(default: --input-noise throughout)")
    add("--ema", type=float, metavar="BETA",
        help=f"also average the outputs exponentially with this factor, 0 = off (default {d.ema}, "
             "as the paper)")
    add("--weight-ema", type=float, metavar="BETA",
        help="also average the weights exponentially with this factor and record f(z) of the "
             f"averaged network, 0 = off (default {d.weight_ema})")
    add("--sigma", type=float, help="noise standard deviation on the 0-255 scale (default 25)")
    add("--depth", type=int, help=f"levels of the network (default {d.depth})")
    add("--width", type=int, nargs="+",
        help="channels of the first level, or one count per level (default: the hourglass's "
             "16 32 64 128 128, doubling to 128 at most; the U-Net's 8 16 32 32 ..., bottleneck "
             "last)")
    add("--architecture", choices=ARCHITECTURES,
        help="the network: the paper's hourglass (each level starts by halving, skips off "
             f"each level's input) or the U-Net (default {d.architecture})")
    add("--growth", type=int, help=f"U-Net channel factor per level (default {d.growth})")
    add("--skip-channels", type=int, nargs="+",
        help="channels of each skip connection (U-Net: 0 = the encoder's features "
             "unprojected); or one count per level, full resolution first, 0 = no skip there "
             "(default: the hourglass's 0 ... 0 4 4, the U-Net's 4)")
    add("--code-channels", type=int, help=f"channels of the random input code (default {d.code_channels})")
    add("--input-noise", type=float, help=f"std of noise added to the code every step, 0 = off "
                                          f"(default {d.input_noise:.4g} = 1/30, as the paper)")
    add("--up", choices=("bilinear", "nearest", "transpose"), help=f"up-sampling (default {d.up})")
    add("--down", choices=("conv", "maxpool"), help=f"down-sampling (default {d.down})")
    add("--snapshots", type=int, nargs="+", metavar="STEP", help="steps shown in the panel")
    add("--seed", type=int, help="seed of the noise, the code and the weights (default 0)")
    add("--dncnn", metavar="MODEL.npz", help="a trained DnCNN (the DnCNN case study's model.npz) "
                                             "to compare with on the same noisy image")
    add("--engine", choices=("tape", "symbolic"), help="gradient engine (default tape)")
    add("--max-seconds", type=float, help="stop after this much training time")
    add("--out", help="output folder (default runs/dip, --quick: runs/dip-quick)")
    add("--quick", action="store_true",
        help="a few seconds: 64×64 crop, depth 3, width 8, 40 steps")
    add("--quiet", action="store_true", help="no progress lines")
    add("--force", action="store_true", help="overwrite the run in --out (by default a folder that "
                                             "holds a run is kept and DIR-YYYYmmdd-HHMMSS is used)")


def config_from_args(args: argparse.Namespace) -> DIPConfig:
    """The configuration the parsed options describe (unset options keep the defaults, or
    the quick run's with --quick)."""
    names = {f.name for f in fields(DIPConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "sigma" in given:
        given["sigma"] = given["sigma"] / 255.0
    if given.get("lr_decay_start") == "off":
        given["lr_decay_start"] = None
    if "skip_channels" in given:
        k = tuple(given["skip_channels"])
        given["skip_channels"] = (None if k[0] == 0 else k[0]) if len(k) == 1 else k
    if "width" in given:
        w = tuple(given["width"])
        given["width"] = w[0] if len(w) == 1 else w
    if "snapshots" in given:
        given["snapshots"] = tuple(given["snapshots"])
    if getattr(args, "quiet", False):
        given["progress"] = False
    return DIPConfig.quick(**given) if getattr(args, "quick", False) else DIPConfig(**given)


def summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"Deep Image Prior on {metrics['image']} {metrics['shape'][1]}×{metrics['shape'][2]}, "
             f"{metrics['steps']} steps in {metrics['train_seconds']:.1f} s "
             f"({metrics['steps_per_second']:.2f} steps/s)",
             f"  noisy input        {metrics['noisy_psnr']:6.2f} dB",
             f"  best Gaussian      {metrics['gaussian_psnr']:6.2f} dB "
             f"(σ = {metrics['gaussian_sigma']:g} px)"]
    if metrics.get("dncnn_psnr") is not None:
        lines.append(f"  trained DnCNN      {metrics['dncnn_psnr']:6.2f} dB")
    lines += [f"  DIP best           {metrics['best_psnr']:6.2f} dB at step {metrics['best_step']} "
              f"({metrics['best_minus_gaussian_db']:+.2f} dB vs Gaussian)",
              f"  DIP final          {metrics['final_psnr']:6.2f} dB ({-metrics['decline_db']:+.2f} dB "
              "vs the peak)"]
    for prefix, label in (("code", "f(z), no noise"), ("wavg", "averaged weights")):
        if f"{prefix}_best_psnr" in metrics:
            seconds = metrics.get(f"{prefix}_best_seconds")
            lines.append(f"  {label:<18} {metrics[f'{prefix}_best_psnr']:6.2f} dB at step "
                         f"{metrics[f'{prefix}_best_step']} "
                         f"({metrics[f'{prefix}_best_minus_gaussian_db']:+.2f} dB vs Gaussian"
                         + (f", {seconds:.0f} s in)" if seconds is not None else ")"))
    if "ema_final_psnr" in metrics:
        lines.append(f"  moving average     {metrics['ema_best_psnr']:6.2f} dB at best (step "
                     f"{metrics['ema_best_step']}), {metrics['ema_final_psnr']:.2f} dB at the end")
    lines.append(f"  figures and metrics.json in {metrics['config']['out']}")
    return "\n".join(lines)


def free_folder(config: DIPConfig, force: bool = False) -> DIPConfig:
    """Point ``config.out`` at a folder that holds no run, by the studies' rule: a folder
    holding one is kept and the run goes to ``DIR-YYYYmmdd-HHMMSS`` beside it (a note on
    standard error), unless ``force``."""
    import sys

    from autodiff_lab.studies.common import StudyOptions, prepare_run_folder
    folder = prepare_run_folder("dip", StudyOptions(out=Path(config.out), force=force))
    if folder.note:
        print(f"note: {folder.note}", file=sys.stderr)
    config.out = str(folder.path)
    return config


def main(args: argparse.Namespace) -> int:
    """``python -m autodiff_lab.studies.dip``: run with the parsed options (into a free run
    folder, see :func:`free_folder`) and print the summary."""
    metrics = run(free_folder(config_from_args(args), getattr(args, "force", False)))
    print(summary(metrics))
    return 0


def _cli(argv: Sequence[str] | None = None) -> int:
    from autodiff_lab.errors import AutodiffError
    parser = argparse.ArgumentParser(prog="python -m autodiff_lab.studies.dip",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except AutodiffError as exc:
        parser.exit(2, f"error: {exc}\n")
    except KeyboardInterrupt as exc:  # the steps done are written (TrainingInterrupted)
        parser.exit(130, f"{exc.args[0] if exc.args else 'interrupted'}\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(_cli())
