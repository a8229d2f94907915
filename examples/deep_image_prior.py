"""Deep Image Prior: denoise one image by fitting a random network to it, and stop early.

    python examples/deep_image_prior.py --quick             # seconds: a 64×64 crop, 40 steps
    python examples/deep_image_prior.py                     # the documented run (docs/dip.md)
    python examples/deep_image_prior.py --ema 0.99 --dncnn runs/dncnn/model.npz
    python examples/deep_image_prior.py --docs              # also draw docs/img/hourglass.png/svg
    python examples/deep_image_prior.py --threads 1         # one thread (a busy shared machine)

Every option of ``autodiff-lab train dip`` works here (``--help``): the image (a built-in
name or a PNG), the crop, the step count, the network (the paper's hourglass or the U-Net)
and its shape, the learning rate and its decay, the moving averages. The figures and
``metrics.json`` go to ``--out``; ``--docs`` also writes the layer-level drawing of the
network the run uses to ``docs/img``.
"""

from __future__ import annotations

import os
import sys

if "--threads" in sys.argv[:-1]:  # before numpy and Numba start their thread pools
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _n

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from autodiff_lab import nn  # noqa: E402
from autodiff_lab.studies import dip  # noqa: E402

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def draw_network(config: dip.DIPConfig, folder: Path) -> None:
    """The run's network at block level (one box per block, skip connections dashed), at
    the size of a 64×64 input so the shapes stay short: ``folder/hourglass.*`` or
    ``folder/unet.*``."""
    model = dip.build_model(config, 1)
    hourglass = config.architecture == "hourglass"
    widths = model.widths if hourglass else model.channels
    kind = "hourglass" if hourglass else "U-Net"
    nn.render_modules(model, (1, config.code_channels, 64, 64), folder / config.architecture,
                      level=1, align_skips=True,
                      title=f"the Deep Image Prior's {kind} (depth {config.depth}, widths "
                            f"{tuple(widths)}), on a 64×64 code")


def export_for_docs(run_dir: Path, folder: Path, name: str = "dip") -> list[Path]:
    """The run's curve (re-plotted from metrics.json, PNG and SVG) and its panel (as a grey
    PNG 1100 pixels wide, under 300 KB for the docs) as ``folder/<name>_curve.*`` and
    ``folder/<name>_panel.png``."""
    import json

    from PIL import Image

    metrics = json.loads((run_dir / "metrics.json").read_text())
    written = list(dip.plot_curve(metrics, folder / f"{name}_curve"))
    with Image.open(run_dir / "dip_panel.png") as img:
        grey = img.convert("L")
        width = min(1100, grey.width)
        grey = grey.resize((width, round(grey.height * width / grey.width)), Image.LANCZOS)
        target = folder / f"{name}_panel.png"
        grey.save(target, optimize=True)
    return [*written, target]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dip.add_arguments(parser)
    parser.add_argument("--docs", action="store_true",
                        help=f"also draw the network to {DOCS_IMG}/hourglass.png and .svg (unet.* "
                             "for --architecture unet) and copy the curve and the panel there "
                             "(dip_curve.*, dip_panel.png)")
    parser.add_argument("--threads", type=int, help="BLAS and Numba threads (on a machine other "
                        "jobs keep busy, 1 is much faster than 2: idle threads wait for each other)")
    parser.add_argument("--docs-name", default="dip", help="file prefix for --docs (default dip)")
    parser.add_argument("--export", metavar="RUN_DIR", type=Path,
                        help="only copy a finished run's curve and panel to docs/img")
    args = parser.parse_args(argv)
    if args.export:
        for path in export_for_docs(args.export, DOCS_IMG, args.docs_name):
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
        return 0
    config = dip.free_folder(dip.config_from_args(args), args.force)
    if args.docs:
        draw_network(config.validate(), DOCS_IMG)
    metrics = dip.run(config)
    print(dip.summary(metrics))
    if args.docs:
        export_for_docs(Path(config.out), DOCS_IMG, args.docs_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
