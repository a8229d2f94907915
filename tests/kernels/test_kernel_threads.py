"""Kernels on one Numba thread without touching Numba's thread count.

The dispatch asks the kernel modules that choose between a serial and a parallel loop
(``ONE_THREAD_FLAG``) for one thread through a flag of the calling Python thread; the other
modules get Numba's count set around the call, as before. Either way a kernel started with
``dispatch.kernel_threads = 1`` runs no parallel loop, and the caller's count is kept.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import numba
import numpy as np
import pytest

from autodiff_lab.kernels import dispatch, elementwise, softmax_ce_fast, threads

DISPATCH = Path(dispatch.__file__).read_text()
FAST_MODULES = sorted(set(re.findall(r'_fast\("([a-z_0-9]+)"\)', DISPATCH)))
BIG = 2 * elementwise.CHUNK + 5  # above the element-wise loops' parallel size


def _recording(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def record(*args, **kwargs):
        seen.append((name, numba.get_num_threads(), threads.one_thread()))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, record)


def test_one_thread_runs_the_serial_loop_and_keeps_numbas_count(monkeypatch):
    recorded: list[tuple[str, int, bool]] = []
    for name in ("_relu_forward_par", "_relu_forward_span"):
        _recording(monkeypatch, elementwise, name, recorded)
    monkeypatch.setattr(dispatch, "kernel_threads", 1)
    x = np.random.default_rng(0).standard_normal(BIG)
    before = numba.get_num_threads()
    out = dispatch.relu_forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert [name for name, _n, _one in recorded] == ["_relu_forward_span"]
    assert recorded[0][1] == before and recorded[0][2] is True
    assert numba.get_num_threads() == before and not threads.one_thread()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="Numba has one thread here")
def test_numbas_own_count_lets_the_parallel_loop_run(monkeypatch):
    recorded: list[tuple[str, int, bool]] = []  # (the serial loop is called from inside it)
    _recording(monkeypatch, elementwise, "_relu_forward_par", recorded)
    monkeypatch.setattr(dispatch, "kernel_threads", None)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        x = np.random.default_rng(1).standard_normal(BIG).astype(np.float32)
        np.testing.assert_array_equal(dispatch.relu_forward(x), np.maximum(x, 0))
    finally:
        numba.set_num_threads(before)
    assert [name for name, _n, _one in recorded] == ["_relu_forward_par"]


def test_a_module_without_the_flag_gets_numbas_count_set_to_one(monkeypatch):
    seen: list[tuple[str, int, bool]] = []
    _recording(monkeypatch, softmax_ce_fast, "_row_losses", seen)
    monkeypatch.setattr(dispatch, "kernel_threads", 1)
    before = numba.get_num_threads()
    logits = np.random.default_rng(2).standard_normal((6, 5))
    labels = np.arange(6) % 5
    assert dispatch.softmax_cross_entropy_forward(logits, labels, "mean") is not None
    assert seen == [("_row_losses", 1, False)]
    assert numba.get_num_threads() == before


def test_the_flag_is_put_back_after_a_kernel_raises(monkeypatch):
    def boom(*_args):
        assert threads.one_thread() and not threads.many()
        raise RuntimeError("inside the kernel")

    monkeypatch.setattr(elementwise, "relu_forward", boom)
    monkeypatch.setattr(dispatch, "kernel_threads", 1)
    with pytest.raises(RuntimeError, match="inside the kernel"):
        dispatch.relu_forward(np.ones(BIG))
    assert not threads.one_thread()


def test_set_one_thread_returns_the_previous_setting():
    assert threads.set_one_thread(True) is False
    try:
        assert threads.set_one_thread(True) is True and not threads.many()
    finally:
        threads.set_one_thread(False)
    assert not threads.one_thread()


@pytest.mark.parametrize("name", FAST_MODULES)
def test_a_flagged_module_decides_every_parallel_loop_by_the_flag(name):
    """A module that says ONE_THREAD_FLAG must not ask Numba's count itself (it would start
    a parallel loop under kernel_threads = 1); one with parallel loops it always starts must
    not say it (the dispatch then sets Numba's count to one around its calls)."""
    module = importlib.import_module(f"autodiff_lab.kernels.{name}")
    source = inspect.getsource(module)
    if getattr(module, "ONE_THREAD_FLAG", False):
        assert "get_num_threads" not in source
        if "prange" in source:
            assert "threads.many()" in source
    else:
        assert "prange" in source, f"{name} has no parallel loop: it can say ONE_THREAD_FLAG"
