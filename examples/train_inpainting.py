"""Case study: the inpainting MLP 784-256-784 on digits with a hidden 12×12 block: test PSNR, panel.

    python examples/train_inpainting.py              # into runs/inpainting/ (see --help for the options)
    python examples/train_inpainting.py --quick      # a smoke run in seconds

The same as ``autodiff-lab train inpainting [options]``; the study itself is
autodiff_lab/studies/inpainting.py and docs/casestudies.md shows what it writes.
"""

from __future__ import annotations

import sys

from autodiff_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "inpainting", *sys.argv[1:]]))
