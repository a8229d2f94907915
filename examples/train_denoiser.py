"""Case study: the DnCNN-style denoiser (σ = 25/255) trained within a time budget:
PSNR on camera, coins and text.

    python examples/train_denoiser.py              # into runs/denoiser/ (see --help for the options)
    python examples/train_denoiser.py --quick      # a smoke run in seconds

The same as ``autodiff-lab train denoiser [options]``; the study itself is
autodiff_lab/studies/denoiser.py and docs/casestudies.md shows what it writes.
"""

from __future__ import annotations

import sys

from autodiff_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "denoiser", *sys.argv[1:]]))
