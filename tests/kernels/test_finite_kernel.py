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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_finite_refuses_every_nan_inf_and_bound_too_large(dtype):
    rng = np.random.default_rng(1)
    p, q = rng.standard_normal((64, 30)).astype(dtype), rng.standard_normal((64, 20)).astype(dtype)
    assert finite.products_finite(p, q, p.size)
    for factor in (0, 1):
        for bad in (np.nan, np.inf, -np.inf):
            for pos in (0, 7, -1):
                pair = [p.copy(), q.copy()]
                pair[factor].reshape(-1)[pos] = bad
                assert not finite.products_finite(*pair, 64), (factor, bad, pos)
    huge = p.copy()
    huge[5, 5] = -np.finfo(dtype).max / 1e3  # 1e3 terms of it could overflow, 10 cannot
    assert finite.products_finite(huge, np.ones_like(q), 10)
    assert not finite.products_finite(huge, np.ones_like(q), 1000)
    # what it cannot read is "not proven", never "finite"
    assert not finite.products_finite(p[:, ::2], q, 64)  # not contiguous
    assert not finite.products_finite(p, q.astype(np.float16 if dtype == np.float32 else np.float32), 64)
    assert not finite.products_finite(p[:0], q, 64)
    assert not finite.products_finite(p.astype(np.complex128), q.astype(np.complex128), 64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_product_proven_finite_is_finite_even_next_to_overflow(dtype):
    # factors scaled so that terms·max|p|·max|q| sweeps across the dtype's largest number:
    # wherever the proof says finite, the product computed in that dtype is
    rng = np.random.default_rng(2)
    top = np.finfo(dtype).max
    proven = refused = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for exponent in np.linspace(0.3, 0.52, 45):
            p = (rng.uniform(0.5, 1.0, (40, 16)) * float(top) ** exponent).astype(dtype)
            q = (rng.uniform(0.5, 1.0, (40, 24)) * float(top) ** (0.5 - 0.02 * rng.random())).astype(dtype)
            finite_product = bool(np.isfinite(p.T @ q).all())
            if finite.products_finite(p, q, p.size):
                proven += 1
                assert finite_product, exponent
            else:
                refused += 1
    assert proven and refused  # the sweep crossed the bound
