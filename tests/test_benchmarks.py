"""Benchmark scripts: a target is never reported met against a peer that did not run."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_tape():
    spec = importlib.util.spec_from_file_location("bench_tape", ROOT / "benchmarks" / "bench_tape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_against_missing_peers_are_not_met():
    bench = _bench_tape()
    row = {"workload": "mlp", "dtype": "float64", "ours_ms": 1.0}  # torch did not run
    for _workload, _dtype, _text, peer, ok in bench.TARGETS:
        verdict = bench.target_verdict(row, peer, ok) if peer else None
        if peer:
            assert verdict == f"not checked: {peer} not installed"
    assert bench.target_verdict({"ours_over_torch": 0.9}, "torch", lambda r: r["ours_over_torch"] <= 1) == "met"
    assert bench.target_verdict({"ours_over_torch": 1.9}, "torch", lambda r: r["ours_over_torch"] <= 1) == "MISSED"


def test_benchmarks_do_not_overwrite_committed_results_by_default():
    for name in ("bench_tape.py", "bench_symbolic.py", "bench_unet.py", "bench_peers.py",
                 "bench_train.py", "_table.py"):
        text = (ROOT / "benchmarks" / name).read_text()
        # a timestamped name of its own, or the shared table's (benchmarks/_table.py)
        assert "%Y%m%d-%H%M%S" in text or "table.save(args.json)" in text, name
        assert "issue" not in text.lower()
