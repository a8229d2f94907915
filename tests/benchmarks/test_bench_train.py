"""The training benchmark's memory floor of an Adam step."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmarks.bench_loader import load


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_adam_floor_moves_copies_of_the_parameters_and_stays_bounded(dtype):
    bench = load("bench_train")
    params = [np.arange(12, dtype=dtype).reshape(3, 4), np.ones(5, dtype)]
    before = [p.copy() for p in params]
    floor = bench.adam_bytes_floor(params)
    arrays = [[a.copy() for a in group] for group in floor.arrays]
    for _ in range(50):
        floor()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)  # the model is not touched
    for group, start in zip(floor.arrays, arrays):
        assert [a.size for a in group] == [start[0].size] * 4 and group[0].dtype == dtype
        # m ← g, v ← m, θ ← max(θ, v): after two calls v holds the old g, θ their maximum
        np.testing.assert_array_equal(group[1], start[1])
        np.testing.assert_array_equal(group[2], start[1])
        np.testing.assert_array_equal(group[0], np.maximum.reduce([start[0], start[1], start[2],
                                                                   start[3]]))

