"""Every engine computes in the graph's dtypes, whatever float dtype the values come in.

The rule (one helper, :func:`autodiff_lab.graph.evaluate.check_values`, for all engines):
values are cast to the dtype of the graph's input; float32 → float64 is exact and silent;
a float64 array rounded to a float32 input warns with a DtypeCastWarning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import examples as E

ENGINES = [("tape", {}), ("numeric", {"method": "central"}), ("symbolic", {"mode": "matrix"}),
           ("symbolic", {"mode": "expanded"})]
IDS = ["tape", "numeric", "symbolic-matrix", "symbolic-expanded"]


def _mlp(dtype: str) -> E.Example:
    return E.mlp(d_in=3, hidden=2, batch=2, dtype=dtype)


@pytest.mark.parametrize("name,options", ENGINES, ids=IDS)
def test_float64_values_for_a_float32_graph_compute_in_float32_with_a_warning(name, options):
    ex = _mlp("float32")
    values = {k: v.astype(np.float64) + 1e-9 for k, v in ex.values.items()}  # not exact in f32
    with pytest.warns(adl.DtypeCastWarning, match="float32 in the graph; the float64 values"):
        r = adl.gradient(ex.graph, values, engine=name, **options)
    assert np.asarray(r.value).dtype == np.float32
    assert all(g.dtype == np.float32 for g in r.grads.values()), {k: g.dtype for k, g in r.grads.items()}


@pytest.mark.parametrize("name,options", ENGINES, ids=IDS)
def test_float32_values_for_a_float64_graph_compute_in_float64_silently(name, options):
    ex = _mlp("float64")
    values = {k: v.astype(np.float32) for k, v in ex.values.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", adl.DtypeCastWarning)
        r = adl.gradient(ex.graph, values, engine=name, **options)
        exact = adl.gradient(ex.graph, {k: v.astype(np.float64) for k, v in values.items()},
                             engine=name, **options)
    assert np.asarray(r.value).dtype == np.float64
    for k, g in r.grads.items():
        assert g.dtype == np.float64
        np.testing.assert_array_equal(g, exact.grads[k])


def test_float64_values_that_fit_float32_exactly_do_not_warn():
    ex = _mlp("float32")
    values = {k: v.astype(np.float64) for k, v in ex.values.items()}  # came from float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", adl.DtypeCastWarning)
        r = adl.gradient(ex.graph, values)
    assert r.value.dtype == np.float32


def test_python_numbers_are_converted_without_a_warning():
    g = adl.trace(lambda x: adl.sum(x * x), x=adl.spec((2,), "float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", adl.DtypeCastWarning)
        r = adl.gradient(g, {"x": [0.1, 0.2]})
        out = g.evaluate({"x": [0.1, 0.2]})["out"]
    assert r.grads["x"].dtype == np.float32 and out.dtype == np.float32


def test_a_value_too_large_for_float32_is_an_error():
    g = adl.trace(lambda x: adl.sum(x), x=adl.spec((2,), "float32"))
    with pytest.raises(adl.NonFiniteError, match="too large for the graph's float32"):
        g.evaluate({"x": np.array([1.0, 1e300])})


def test_gradcheck_of_a_float32_graph_runs_in_float64():
    ex = _mlp("float32")
    with pytest.warns(UserWarning, match="float32"):
        assert adl.gradcheck(ex.graph, ex.values)


def test_astype_gives_a_graph_of_that_dtype():
    ex = _mlp("float64")
    g32 = ex.graph.astype("float32")
    assert {g32.node(v)["dtype"] for v in g32.order} == {"float32"}
    assert g32.astype("float64") == ex.graph
    with pytest.raises(adl.InputError, match="float dtype"):
        ex.graph.astype("int64")
