"""benchmarks/bench_tape.py's cold start: the time to the first gradient is reported against
its targets (1 s with a warm Numba cache, 3 s with an empty one), with PyTorch next to it,
and its children are valid programs. (The fresh processes themselves are not run here.)"""

import sys

import pytest
from bench_loader import load


@pytest.fixture(scope="module")
def bench():
    return load("bench_tape")


def _result(warm, empty, torch):
    run = {"to_first_gradient_s": warm, "exit_s": 0.3, "process_s": warm + 0.3,
           "import_s": 0.3, "first_call_s": warm - 0.4}
    return {"rows": [], "memory": {}, "peers_absent": [], "cold_start_s": warm,
            "first_ever_compile_s": empty, "cold_start_torch_s": torch,
            "cold_start_runs": {"warm": [run, run], "empty": [], "torch": []},
            "environment": {"OPENBLAS_CORETYPE": "-", "threads": 2, "torch": None, "jax": None,
                            "numpy": "-", "keep_freed_memory": False,
                            "load_average": (0.0, 0.0, 0.0)}}


def test_cold_start_lines_give_the_verdict_against_each_target(bench):
    text = bench.table(_result(0.95, 4.2, 0.9))
    assert "warm Numba cache 0.95 s, met ≤ 1 s (runs 0.95, 0.95)" in text
    assert "empty cache (first-ever run) 4.20 s, MISSED ≤ 3 s" in text
    assert "PyTorch, the same network: 0.90 s" in text
    assert "met ≤ 3 s" in bench.table(_result(1.5, 2.5, None))
    assert "MISSED ≤ 1 s" in bench.table(_result(1.5, 2.5, None))


def test_cold_start_records_and_children(bench):
    recs = [r for r in bench.records(_result(0.95, 4.2, None))
            if r["metric"] == "fresh process to first gradient"]
    assert [(r["framework"], r["value"]) for r in recs] == [
        ("ours", 0.95), ("ours", 4.2), ("torch", None)]
    assert recs[2]["note"] == "not installed"
    for code in (bench._COLD_OURS, bench._COLD_TORCH):
        compile(code, "<child>", "exec")  # a syntax error would only show in a full run
    assert "set_num_threads(2)" in bench._COLD_TORCH


def test_cold_start_reports_the_background_compile_and_waits_for_it(bench):
    result = dict(_result(0.95, 1.5, None), first_ever_background_done_s=17.94)
    assert "background compile filled the cache 17.9 s after the start" in bench.table(result)
    assert "background compile" not in bench.table(_result(0.95, 1.5, None))
    assert '"background_pid": tiered.background_pid()' in bench._COLD_OURS
    import subprocess
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert bench._wait_gone(proc.pid, 5)  # ended and reaped: gone
