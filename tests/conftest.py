"""Test-wide settings: property tests are derandomised in CI (``CI=true``), so a run there is
reproducible; local runs draw fresh examples and may find new cases."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
