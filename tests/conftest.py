"""Test-wide settings: property tests are derandomised in CI (``CI=true``), so a run there is
reproducible; local runs draw fresh examples and may find new cases.

Background compilation (:mod:`autodiff_lab.kernels.tiered`) is off for the whole suite,
in this process and in the subprocesses tests start: kernel tests must run the Numba
kernels, not the reference path a cold cache would pick. ``tests/test_tiered.py`` switches
it on where it is the subject."""

import os

os.environ["ADL_BACKGROUND_COMPILE"] = "0"

from hypothesis import settings  # noqa: E402

from autodiff_lab.kernels import tiered  # noqa: E402

tiered.enabled = False

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
