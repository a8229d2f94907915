"""The OpenBLAS kernel family the benchmarks ask for, chosen from what this CPU can run.

numpy's OpenBLAS picks its Haswell kernels on the AVX-512 machines these benchmarks were
first run on, and its SkylakeX kernels measured 1.6-1.8x faster there for matmul, so every
framework is started with ``OPENBLAS_CORETYPE=SkylakeX`` when the CPU has AVX-512. A CPU
without it (an AMD Zen 3, an older Intel) would die on the first SkylakeX instruction
("Illegal instruction"), so there the variable is left unset and OpenBLAS picks for itself.

Pure Python, without numpy, on purpose: the scripts read it before numpy loads its BLAS.
"""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def default_coretype(cpuinfo: Path = CPUINFO) -> str:
    """``"SkylakeX"`` on a CPU with AVX-512 (F, BW, VL, DQ), else ``""``: OpenBLAS's own pick."""
    needed = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    return "SkylakeX" if needed <= cpu_flags(cpuinfo) else ""


def set_default_coretype() -> None:
    """``OPENBLAS_CORETYPE`` = :func:`default_coretype`, unless the caller's environment set
    it already; nothing where the default is OpenBLAS's own pick."""
    coretype = default_coretype()
    if coretype:
        os.environ.setdefault("OPENBLAS_CORETYPE", coretype)
