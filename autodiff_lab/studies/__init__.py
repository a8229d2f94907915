"""The training case studies, each one call (or ``autodiff-lab train NAME``):

* ``neuron``     -- a sigmoid neuron trained with each engine; equal loss curves, its graph;
* ``inpainting`` -- an MLP 784-256-784 that fills a hidden 12×12 block of digits;
* ``denoiser``   -- a DnCNN-style residual network for Gaussian noise σ = 25/255;
* ``classifier`` -- a linear classifier and a 2-layer MLP on the digits;
* ``dip``        -- the Deep Image Prior: a random U-Net fitted to one noisy image
  (:mod:`autodiff_lab.studies.dip`; ``dip_train`` is its adapter to this interface).

::

    from autodiff_lab import studies
    result = studies.run_study("inpainting", quick=True, out="runs/try")
    result.metrics["psnr"], result.folder, result.files

Each writes ``metrics.json``, its figures (PNG + SVG) and, except ``dip``, ``model.npz``
into a run folder
(see :mod:`autodiff_lab.studies.common` for the folder policy).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from autodiff_lab.errors import InputError
from autodiff_lab.studies.common import StudyOptions, StudyResult, prepare_run_folder

#: study name -> module
STUDIES = {
    "neuron": "autodiff_lab.studies.neuron",
    "inpainting": "autodiff_lab.studies.inpainting",
    "denoiser": "autodiff_lab.studies.denoiser",
    "classifier": "autodiff_lab.studies.classifier",
    "dip": "autodiff_lab.studies.dip_train",
}


def study_module(name: str) -> Any:
    """The module of study ``name``, or our error listing the valid names."""
    if name not in STUDIES:
        raise InputError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def run_study(name: str, options: StudyOptions | None = None, **kwargs: Any) -> StudyResult:
    """Run study ``name`` with ``options`` (or the same fields as keywords: ``quick=True``,
    ``out="runs/x"``, ``engine="symbolic"`` ...). Writes into the run folder and returns
    what it measured. A run whose engine is refused before the first step leaves no folder."""
    module = study_module(name)
    if options is None:
        for key in ("out", "resume"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        options = StudyOptions(**kwargs)
    elif kwargs:
        raise InputError("give either options or keyword settings, not both")
    folder = prepare_run_folder(name, options)
    try:
        result = module.run(options, folder)
    except KeyboardInterrupt as exc:  # nn.fit's TrainingInterrupted: the run is resumable
        exc.run_folder = folder.path  # type: ignore[attr-defined]
        raise
    except Exception:
        folder.discard_if_unused()
        raise
    result.folder_note = folder.note
    return result


__all__ = ["STUDIES", "StudyOptions", "StudyResult", "run_study", "study_module"]
