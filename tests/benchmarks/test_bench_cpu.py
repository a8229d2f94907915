"""The benchmarks ask for OpenBLAS's SkylakeX kernels only where the CPU can run them."""

from pathlib import Path

from bench_loader import load

cpu = load("_cpu")

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl
"""
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 fma bmi2 vaes
"""
HALF = "flags\t: avx2 avx512f\n"  # AVX-512 F alone: SkylakeX kernels need BW, VL and DQ too


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_avx512_cpu_gets_skylakex(tmp_path):
    assert cpu.default_coretype(_write(tmp_path, INTEL)) == "SkylakeX"


def test_cpu_without_avx512_is_left_to_openblas(tmp_path):
    assert cpu.default_coretype(_write(tmp_path, ZEN3)) == ""
    assert cpu.default_coretype(_write(tmp_path, HALF)) == ""


def test_flags_are_read_from_the_first_cpu(tmp_path):
    flags = cpu.cpu_flags(_write(tmp_path, ZEN3 + "\n" + INTEL))
    assert "avx2" in flags and "vaes" in flags and "avx512f" not in flags


def test_missing_cpuinfo_means_no_flags(tmp_path):
    assert cpu.cpu_flags(tmp_path / "absent") == frozenset()
    assert cpu.default_coretype(tmp_path / "absent") == ""


def test_this_machine_can_run_what_is_chosen():
    flags = cpu.cpu_flags()
    assert cpu.default_coretype() in ("", "SkylakeX")
    if cpu.default_coretype():
        assert "avx512f" in flags
