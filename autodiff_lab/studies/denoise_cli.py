"""``autodiff-lab denoise NOISY.png -o OUT.png --model DIR/model.npz``: apply a trained
denoiser to your own image.

The image may be 8-bit grey or colour (RGB, or RGBA whose alpha is kept) of any size; a
colour image is denoised one channel at a time with the grey network. The network was
trained for Gaussian noise of σ = 25 on the 0..255 scale and does best near that level.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from autodiff_lab.errors import CheckpointError, InputError
from autodiff_lab.studies.cli import EXIT_INTERRUPTED, EXIT_USAGE, _one_line_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``autodiff-lab denoise``."""
    parser.description = (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip()
    parser.add_argument("image", metavar="NOISY.png",
                        help="the noisy image: 8-bit grey or colour PNG (colour: each channel "
                             "denoised separately), any size")
    parser.add_argument("-o", "--output", metavar="OUT.png", required=True,
                        help="where to write the clean estimate (PNG)")
    parser.add_argument("--model", metavar="MODEL.npz", required=True,
                        help="a trained denoiser: the model.npz of an `autodiff-lab train denoiser` "
                             "run (or its run folder)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.png if it exists")
    _one_line_errors(parser)


def load_denoiser(path: str | Path):
    """The DnCNN saved at ``path`` (a model file, or a run folder holding model.npz)."""
    from autodiff_lab import nn
    p = Path(path)
    if p.is_dir():
        p = p / "model.npz"
        if not p.is_file():
            raise InputError(f"--model {str(path)!r}: the folder holds no model.npz (expected a "
                             "denoiser run folder or its model.npz)")
    if not p.is_file():
        raise InputError(f"--model {str(path)!r}: no such file (expected the model.npz of a trained "
                         "denoiser)")
    try:
        model = nn.load(p)
    except CheckpointError as exc:
        raise InputError(f"--model {str(path)!r}: {exc}".replace(f"model file {str(p)!r}: ", "")) from None
    if not isinstance(model, nn.DnCNN):
        raise InputError(f"--model {str(path)!r} is a {type(model).__name__}, not a denoiser (expected "
                         "the model.npz of `autodiff-lab train denoiser`)")
    if model.image_channels != 1:
        raise InputError(f"--model {str(path)!r} denoises {model.image_channels}-channel images; this "
                         "command uses grey (1-channel) denoisers, one channel at a time")
    return model


def denoise_image(model, image: np.ndarray) -> np.ndarray:
    """The clean estimate of an image in [0, 1]: (H, W) grey, (H, W, 3) RGB or (H, W, 4)
    RGBA (the colour channels denoised one at a time, alpha kept); clipped to [0, 1]."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        return np.clip(model.denoise(img), 0.0, 1.0)
    colour = img[..., :3]
    out = np.stack([model.denoise(np.ascontiguousarray(colour[..., c])) for c in range(3)], axis=-1)
    out = np.clip(out, 0.0, 1.0)
    if img.shape[-1] == 4:
        out = np.concatenate([out, img[..., 3:]], axis=-1)
    return out


def run(args: argparse.Namespace) -> int:
    """Denoise the image and write it; every problem is one line on standard error."""
    from autodiff_lab.data import read_image, write_image

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        return _fail(f"-o {args.output!r}: the output must be a .png file (lossless)", EXIT_USAGE)
    if out.is_dir():
        return _fail(f"-o {args.output!r} is a folder; give the path of a .png file", EXIT_USAGE)
    if out.exists() and not args.force:
        return _fail(f"-o {args.output!r} already exists; use --force to overwrite it", EXIT_USAGE)
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        return _fail(f"-o {args.output!r}: the folder {str(parent)!r} is not writable", 1)
    try:
        image = read_image(args.image)
        model = load_denoiser(args.model)
        if image.ndim == 3 and image.shape[-1] not in (3, 4):
            raise InputError(f"{args.image!r} has {image.shape[-1]} channels; expected grey, RGB or RGBA")
        if min(image.shape[:2]) < 1:
            raise InputError(f"{args.image!r} is empty")
        clean = denoise_image(model, image)
    except InputError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing written", EXIT_INTERRUPTED)
    try:
        write_image(out, clean)
    except OSError as exc:
        return _fail(f"-o {args.output!r}: cannot write it ({exc.strerror or exc})", 1)
    kind = "grey" if image.ndim == 2 else "colour (each channel denoised)"
    print(f"denoise: wrote {out} ({image.shape[1]}×{image.shape[0]} {kind})", file=sys.stderr)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"autodiff-lab denoise: error: {message}", file=sys.stderr)
    return status


__all__ = ["add_arguments", "denoise_image", "load_denoiser", "run"]
