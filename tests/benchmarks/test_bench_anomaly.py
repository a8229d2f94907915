"""benchmarks/bench_anomaly.py: anomaly on against off on bench_tape.py's workloads."""

import pytest
from bench_loader import load


@pytest.fixture(scope="module")
def bench():
    return load("bench_anomaly")


def test_the_workloads_are_bench_tapes(bench):
    names = [w[0] for w in bench.workloads(["small", "mlp", "dncnn"])]
    assert names == ["sigmoid float64", "neuron_small float64", "mlp_small float64",
                     "mlp float64", "mlp float32", "dncnn float64", "dncnn float32",
                     "dncnn_bn float64"]
    assert [w[0] for w in bench.workloads(["small"])] == names[:3]


def test_measure_times_both_programs(bench):
    name, ex, wrt, _inner, _rounds = bench.workloads(["small"])[0]
    m = bench.measure(ex, wrt, inner=5, rounds=3)
    assert m["off"] > 0 and m["on"] > 0 and m["paired"] > 0
