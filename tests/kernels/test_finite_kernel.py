"""The compiled NaN/Inf test over several arrays (the tape's generated-path check)."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff_lab.kernels import finite


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_finite_is_exact_for_every_position_layout_and_value(dtype):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) for s in [(3,), (4, 5), (2, 3, 2), ()]]
    arrays[1] = np.asfortranarray(arrays[1])
    arrays.append(rng.standard_normal((6, 4)).astype(dtype)[::2, 1:])  # not contiguous
    arrays.append(np.array([np.finfo(dtype).max] * 3, dtype))  # huge but finite: no sum
    for k in range(1, len(arrays) + 1):
        assert finite.checker(k)(*arrays[:k])
    for i, a in enumerate(arrays):
        for bad in (np.nan, np.inf, -np.inf):
            for pos in (0, a.size - 1):
                broken = [b.copy() for b in arrays]
                broken[i][np.unravel_index(pos, a.shape)] = bad
                assert not finite.checker(len(broken))(*broken), (i, bad, pos)
