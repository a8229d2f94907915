"""Deep Image Prior: denoise one image by fitting a random U-Net to it, and stop early.

    python examples/deep_image_prior.py --quick             # seconds: a 64×64 crop, 40 steps
    python examples/deep_image_prior.py                     # the documented run (docs/dip.md)
    python examples/deep_image_prior.py --ema 0.99 --dncnn runs/dncnn/model.npz
    python examples/deep_image_prior.py --docs              # also draw docs/img/unet.png/svg

Every option of ``autodiff-lab train dip`` works here (``--help``): the image (a built-in
name or a PNG), the crop, the step count, the U-Net's shape, the learning rate, the moving
average of the outputs. The figures and ``metrics.json`` go to ``--out``; ``--docs`` also
writes the layer-level drawing of the network the run uses to ``docs/img``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autodiff_lab import nn
from autodiff_lab.studies import dip

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def draw_network(config: dip.DIPConfig, folder: Path) -> None:
    """The run's U-Net at block level (one box per block, skip connections dashed), at the
    size of a 64×64 input so the shapes stay short."""
    model = dip.build_model(config, 1)
    nn.render_modules(model, (1, config.code_channels, 64, 64), folder / "unet", level=1,
                      align_skips=True, title=f"the Deep Image Prior's U-Net (depth {config.depth}, "
                                              f"widths {model.channels}), on a 64×64 code")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dip.add_arguments(parser)
    parser.add_argument("--docs", action="store_true",
                        help=f"also draw the U-Net to {DOCS_IMG}/unet.png and .svg")
    args = parser.parse_args(argv)
    config = dip.config_from_args(args)
    if args.docs:
        draw_network(config, DOCS_IMG)
    metrics = dip.run(config)
    print(dip.summary(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
