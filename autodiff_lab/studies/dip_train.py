"""``autodiff-lab train dip``: the Deep Image Prior (:mod:`autodiff_lab.studies.dip`) as a
case study, with the run-folder rules of the others.

    autodiff-lab train dip                          # camera's 256×256 centre, runs/dip/
    autodiff-lab train dip --image photo.png --steps 1500 --ema 0.99 --out runs/photo
    autodiff-lab train dip --minutes 10             # stop after 10 minutes of fitting
    autodiff-lab train dip --quick                  # a 64×64 crop, 40 steps: seconds

The run writes ``run.json`` (the settings), then the figures, ``images.npz`` and
``metrics.json`` of :func:`autodiff_lab.studies.dip.run`. There is no model to keep: the
result is the image (``dip_best.png``), and a run is not resumed (Ctrl-C writes what the
steps done show and exits with 130). ``python -m autodiff_lab.studies.dip`` has every
setting of the network; this command has the shared vocabulary plus ``--image``,
``--steps`` and ``--ema``.
"""

from __future__ import annotations

from typing import Any

from autodiff_lab.errors import InputError
from autodiff_lab.studies.common import RunFolder, StudyOptions, StudyResult

NAME = "dip"
SUMMARY = ("Deep Image Prior: a random network fitted to one noisy image (σ = 25/255), stopped "
           "early: PSNR curve rising, peaking and declining, against the best Gaussian filter")
#: the engines that can fit the network (the numeric one would need two forward passes per
#: parameter per step)
ENGINES = ("tape", "symbolic")
DEFAULT_ENGINE = "tape"
RESUMABLE = False


def config_for(options: StudyOptions, out: str | None = None) -> Any:
    """The :class:`~autodiff_lab.studies.dip.DIPConfig` the options describe (checked)."""
    from autodiff_lab.studies import dip

    engine = options.engine or DEFAULT_ENGINE
    if engine == "numeric":
        base = dip.DIPConfig.quick() if options.quick else dip.DIPConfig()
        params = dip.build_model(base.validate(), 1).num_parameters
        raise InputError(f"the numeric engine would need {2 * params:,} forward evaluations of the "
                         f"network per step ({params:,} parameters); use --engine tape or symbolic "
                         "(numeric gradients are checked on the U-Net by `autodiff-lab compare "
                         "dip`, along random directions)")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r} for the dip study; choose one of "
                         f"{', '.join(ENGINES)}")
    given: dict[str, Any] = {"seed": options.seed, "engine": engine,
                             "progress": not options.quiet}
    for key in ("image", "steps", "ema"):
        value = getattr(options, key, None)
        if value is not None:
            given[key] = value
    if options.minutes is not None:
        given["max_seconds"] = 60.0 * float(options.minutes)
    if out is not None:
        given["out"] = out
    config = dip.DIPConfig.quick(**given) if options.quick else dip.DIPConfig(**given)
    config.validate()
    if config.image not in dip.builtin_images():
        # no --crop here: a user's image is cut to its largest centred square the network takes
        side = dip.fitting_crop(config)
        if side >= 2 ** config.depth:
            config.crop = side
    return config


def run(options: StudyOptions, folder: RunFolder) -> StudyResult:
    """Fit the network to the noisy image in the run folder; the summary lines as notes."""
    from autodiff_lab.studies import dip

    if options.epochs is not None:
        raise InputError("the Deep Image Prior counts Adam steps, not epochs: use --steps N")
    config = config_for(options, str(folder.path))
    dip.load_clean_image(config)  # a bad image is refused before the folder is made
    folder.write_settings(NAME, options, {"image": dip.image_label(config.image),
                                          "steps": config.steps, "ema": config.ema,
                                          "max_seconds": config.max_seconds})
    from autodiff_lab.errors import TrainingInterrupted
    try:
        metrics = dip.run(config)
    except TrainingInterrupted:
        raise  # the steps done are written
    except KeyboardInterrupt:
        folder.discard_if_unused()  # before the first step: no folder stays behind
        raise
    files = sorted(p for p in folder.path.iterdir() if p.is_file())
    folder.record(*files)
    notes = dip.summary(metrics).splitlines()[:-1]  # the last line names the folder
    return StudyResult(NAME, folder.path, metrics, files, notes)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "NAME", "SUMMARY", "config_for", "run"]
