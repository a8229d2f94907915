"""Case study: a linear classifier and a 2-layer MLP on the digits: accuracy, confusion matrices, templates.

    python examples/train_classifier.py              # into runs/classifier/ (see --help for the options)
    python examples/train_classifier.py --quick      # a smoke run in seconds

The same as ``autodiff-lab train classifier [options]``; the study itself is
autodiff_lab/studies/classifier.py and docs/casestudies.md shows what it writes.
"""

from __future__ import annotations

import sys

from autodiff_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "classifier", *sys.argv[1:]]))
