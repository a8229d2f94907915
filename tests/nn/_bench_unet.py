"""benchmarks/bench_unet.py loaded as a module, for the tests that check its PyTorch twins
of our networks against ours."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_bench_unet() -> ModuleType:
    """The benchmark script as a module (it is not part of the package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_unet.py"
    spec = importlib.util.spec_from_file_location("bench_unet", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
