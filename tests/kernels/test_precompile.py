"""``autodiff-lab precompile`` reports each kernel it had to compile, with nested ones
marked (their time is inside their caller's), and leaves the dispatch thresholds as they
were. The real workloads compile for tens of seconds with an empty cache, so a stand-in
workload with two fresh, uncached kernels is used here."""

from __future__ import annotations

import argparse

import numba
import numpy as np
import pytest

from autodiff_lab.errors import InputError
from autodiff_lab.kernels import dispatch
from autodiff_lab.kernels import precompile as P


def _fresh_kernels():
    def inner(x):  # pragma: no cover - numba
        return x * 2.0

    inner.__module__ = "autodiff_lab.kernels.standin"
    inner_jit = numba.njit(cache=False)(inner)

    def outer(x):  # pragma: no cover - numba
        return inner_jit(x) + 1.0

    outer.__module__ = "autodiff_lab.kernels.standin"
    return numba.njit(cache=False)(outer)


def test_precompile_reports_compiled_kernels_and_restores_thresholds(monkeypatch, capsys):
    outer = _fresh_kernels()
    seen = {}

    def workloads(dtype):
        def run():
            seen["thresholds"] = (dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES)
            assert outer(np.ones(3, dtype))[0] == 3.0
        return [(f"stand-in {dtype}", run)]

    before = (dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES)
    monkeypatch.setattr(P, "workloads", workloads)
    lines = []
    compiled = P.precompile(["float64"], echo=lines.append)
    assert seen["thresholds"] == (1, 1)  # small inputs take the full-size kernels
    assert (dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES) == before
    assert [(k.kernel, k.nested) for k in compiled] == [
        ("standin._fresh_kernels.<locals>.inner", True),
        ("standin._fresh_kernels.<locals>.outer", False)]
    assert all(k.seconds > 0 and k.workload == "stand-in float64" for k in compiled)
    assert "float64" in compiled[1].signature
    assert len(lines) == 1 and "2 kernel(s) compiled" in lines[0] and "(inside the next)" in lines[0]
    # again: nothing left to compile
    assert P.precompile(["float64"]) == []

    monkeypatch.setattr(P, "workloads", lambda dtype: [])
    assert P.run(argparse.Namespace(dtype=["float32"])) == 0
    assert "0 kernel(s) compiled" in capsys.readouterr().out


def test_precompile_refuses_an_unknown_dtype():
    with pytest.raises(InputError, match="float16"):
        P.precompile(["float16"])


def test_precompile_command_is_listed(capsys):
    from autodiff_lab.cli import main
    with pytest.raises(SystemExit):
        main(["precompile", "--help"])
    assert "--dtype" in capsys.readouterr().out
