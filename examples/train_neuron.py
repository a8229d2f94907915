"""Case study: the sigmoid neuron trained with the tape, symbolic and numeric engines
(equal loss curves), its graph and its decision boundary.

    python examples/train_neuron.py              # into runs/neuron/ (see --help for the options)
    python examples/train_neuron.py --quick      # a smoke run in seconds

The same as ``autodiff-lab train neuron [options]``; the study itself is
autodiff_lab/studies/neuron.py and docs/casestudies.md shows what it writes.
"""

from __future__ import annotations

import sys

from autodiff_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "neuron", *sys.argv[1:]]))
