"""The tape's compile-time memory plan, the memory repeated calls hold, and results that
stay the caller's after the next call."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import examples as E


def _small_dncnn(dtype: str = "float32") -> E.Example:
    return E.dncnn(batch=2, size=12, channels=8, depth=4, batch_norm=True, dtype=dtype)


@pytest.mark.parametrize("options", [{}, {"anomaly": False}, {"keep_all": True}])
def test_memory_bytes_is_a_consistent_plan(options):
    ex = _small_dncnn()
    program = adl.engine("tape", **options).compile(ex.graph, wrt=list(ex.graph.parameters))
    plan = program.buffer_plan(4)
    assert program.memory_bytes == plan.arena_bytes == sum(plan.buffer_bytes)
    # no smaller than what is alive at once, no larger than a buffer for every value
    assert plan.peak_live_bytes <= plan.arena_bytes <= plan.total_bytes
    assert program.memory_bytes <= program.memory_bytes_keep_all
    if not options.get("keep_all"):
        assert plan.arena_bytes < plan.total_bytes  # buffers are reused
    for key, b in plan.slots.items():  # each value or gradient in a buffer of its size
        nbytes = int(np.prod(ex.graph.node(key[1])["shape"], dtype=np.int64)) * 4
        assert plan.buffer_bytes[b] == nbytes
    assert program.memory_report(8) == 2 * program.memory_report(4)


def test_successive_calls_return_independent_results():
    ex = _small_dncnn("float64")
    wrt = list(ex.graph.parameters)
    for options in ({}, {"anomaly": False}, {"keep_all": True}):
        program = adl.engine("tape", **options).compile(ex.graph, wrt=wrt)
        first = program(ex.values)
        kept = {k: v.copy() for k, v in first.grads.items()}
        kept_value = np.array(first.value, copy=True)
        kept_nodes = {v: a.copy() for v, a in (first.node_values or {}).items()}
        other = dict(ex.values, noisy=ex.values["noisy"] * 3.0 + 1.0)
        second = program(other)
        for k in wrt:
            np.testing.assert_array_equal(first.grads[k], kept[k], err_msg=k)
            assert not np.may_share_memory(first.grads[k], second.grads[k])
        np.testing.assert_array_equal(first.value, kept_value)
        for v, a in kept_nodes.items():
            np.testing.assert_array_equal(first.node_values[v], a)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_repeated_calls_do_not_grow_memory():
    ex = _small_dncnn()
    program = adl.engine("tape").compile(ex.graph, wrt=list(ex.graph.parameters))
    for _ in range(10):
        program(ex.values)
    gc.collect()
    after_10 = _rss_bytes()
    for _ in range(190):
        program(ex.values)
    gc.collect()
    grown = _rss_bytes() - after_10
    assert grown < 4 << 20, f"RSS grew by {grown / 1e6:.1f} MB from call 10 to call 200"


def test_results_written_in_place_match_the_allocating_run():
    # mul's and the first add's results die in the forward pass: they go to arena buffers
    def f(x, w):
        h = adl.sin(adl.exp(x) + 1.0) * 2.0 + x
        return adl.sum(adl.tanh(h @ w) * 3.0 + 1.0)

    g = adl.trace(f, x=adl.param((64, 80)), w=adl.param((80, 70)))
    fast = adl.engine("tape", anomaly=False).compile(g)
    plain = adl.engine("tape", anomaly=False, keep_all=True).compile(g)
    assert fast.in_place_bytes > 0 and plain.in_place_bytes == 0
    rng = np.random.default_rng(0)
    for _ in range(3):  # the buffers are reused from call to call
        values = {"x": rng.normal(size=(64, 80)), "w": rng.normal(size=(80, 70)) / 9}
        got, want = fast(values), plain(values)
        np.testing.assert_allclose(got.value, want.value, rtol=1e-13)
        for k in ("x", "w"):
            np.testing.assert_allclose(got.grads[k], want.grads[k], rtol=1e-12, err_msg=k)
    f32 = {k: v.astype(np.float32) for k, v in values.items()}  # cast to the graph's float64
    np.testing.assert_allclose(fast(f32).grads["w"], plain(f32).grads["w"], rtol=1e-12)


@pytest.mark.parametrize("n", [7, 1 << 16])  # the numpy rule and the fast kernel
def test_relu_rule_from_the_result_equals_the_rule_from_the_argument(n):
    from autodiff_lab.graph.optable import OPS
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    x[:5] = [0.0, -0.0, np.nan, np.inf, -np.inf]
    g = rng.normal(size=n)
    rule = OPS["relu"].vjp[0]
    ans = OPS["relu"].forward(x)
    np.testing.assert_array_equal(rule(g, ans, np.zeros(())), rule(g, None, x))
    assert OPS["relu"].vjp_uses == frozenset({"ans"})


def test_dncnn_keeps_relu_results_not_the_convolutions_before_them():
    ex = E.dncnn(batch=2, size=8, channels=4, depth=5, batch_norm=False)
    program = adl.engine("tape", anomaly=False).compile(ex.graph, wrt=list(ex.graph.parameters))
    # (read from the graph: the tape runs each conv+relu pair as one step, fused)
    g = ex.graph.nx
    convs_into_relu = {u for v, d in g.nodes(data=True) if d.get("op") == "relu"
                       for u in g.predecessors(v)}
    assert convs_into_relu and not convs_into_relu & program.kept


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fast_finite_check_finds_every_nan_and_inf(dtype):
    from autodiff_lab.engines.tape import _all_finite, _nonfinite
    rng = np.random.default_rng(2)
    for n in (3, 4096, 5000, 12288):
        a = rng.normal(size=n).astype(dtype)
        assert not _nonfinite(a) and _all_finite([a])
        assert not _nonfinite(np.full(n, np.finfo(dtype).max, dtype))  # the sum overflows
        for bad in (np.nan, np.inf, -np.inf):
            for i in (0, n // 2, n - 1):
                b = a.copy()
                b[i] = bad
                assert not _all_finite([b]), (n, bad, i)
                assert not _all_finite([np.repeat(b, 2)[::2]])  # not contiguous
