"""Tiered kernels: with an empty Numba cache, calls take the numpy reference while one
background process fills the cache; then the Numba kernels, loaded from it.

The suite runs with the tiers off (tests/conftest.py); these tests switch them on, in
subprocesses with an empty temporary ``NUMBA_CACHE_DIR`` (float64 only: its kernels
compile in a few seconds) and in this process with the background start replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autodiff_lab.kernels import dispatch, numba_cache, tiered

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys, time
import numpy as np
import autodiff_lab as adl
from autodiff_lab.kernels import dispatch, tiered
tiered.background_dtypes = ("float64",)
rng = np.random.default_rng(0)
values = {"x": rng.standard_normal((2, 3, 9, 9)), "w": rng.standard_normal((4, 3, 3, 3))}
graph = adl.trace(lambda x, w: adl.sum(adl.relu(adl.conv2d(x, w, padding=1)) ** 2),
                  x=(2, 3, 9, 9), w=(4, 3, 3, 3))
def grads():
    r = adl.gradient(graph, values)
    return [float(r.value)] + [r.grads[k].tolist() for k in ("x", "w")]
first = grads()
out = {"first": first, "numba_loaded": "autodiff_lab.kernels.conv_fast" in sys.modules,
       "pid": tiered.background_pid(), "ready": sorted(map(str, tiered.ready_dtypes))}
dispatch.enabled = False
out["reference"] = grads()
dispatch.enabled = True
"""


def _child(code: str, cache: Path, tiers: str = "1") -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), ADL_BACKGROUND_COMPILE=tiers)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CHILD + textwrap.dedent(code)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = time.monotonic() - t0
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _close(a: list, b: list) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    for u, v in zip(a[1:], b[1:]):
        np.testing.assert_allclose(np.array(u), np.array(v), rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX sessions and locks")
def test_empty_cache_reference_first_background_fills_the_cache_then_numba(tmp_path):
    cache = tmp_path / "cache"
    # 1. first-ever run: the reference path, a background compile, and a prompt exit
    out = _child("print(json.dumps(out))", cache)
    assert not out["numba_loaded"] and out["ready"] == []
    assert out["first"] == out["reference"]  # the reference path itself: the same numbers
    pid = out["pid"]
    assert pid is not None
    try:
        assert _wait_gone(pid, 240), "the background compile did not end"
    finally:
        if _alive(pid):  # never leave it behind, even when the test fails
            os.kill(pid, 9)
    stamps = list((cache / "autodiff_lab-tiers").glob("*-float64.done"))
    assert len(stamps) == 1
    # 2. the next process: the Numba kernels, loaded from the cache, nothing compiled
    out = _child("""
        import numba
        from autodiff_lab.kernels import conv_fast
        disps = [v for v in vars(conv_fast).values() if isinstance(v, numba.core.registry.CPUDispatcher)]
        out["hits"] = sum(sum(d._cache_hits.values()) for d in disps)
        out["misses"] = sum(sum(d._cache_misses.values()) for d in disps)
        print(json.dumps(out))
    """, cache)
    assert out["numba_loaded"] and out["pid"] is None and "float64" in out["ready"]
    assert out["hits"] > 0 and out["misses"] == 0
    _close(out["first"], out["reference"])


def test_switched_off_by_the_environment_compiles_in_the_foreground(tmp_path):
    out = _child("print(json.dumps(out))", tmp_path / "cache", tiers="0")
    assert out["numba_loaded"] and out["pid"] is None
    assert not (tmp_path / "cache" / "autodiff_lab-tiers").exists()
    _close(out["first"], out["reference"])


@pytest.fixture
def tiers_on(monkeypatch, tmp_path):
    """Tiers on in this process, stamps in ``tmp_path``, the background start recorded."""
    started: list[str] = []
    monkeypatch.setattr(tiered, "enabled", True)
    monkeypatch.setattr(tiered, "stamp_dir", lambda: tmp_path)
    monkeypatch.setattr(tiered, "_start_background", started.append)
    tiered.reset()
    yield started
    tiered.reset()


def test_the_dispatcher_switches_once_the_stamp_appears(tiers_on, tmp_path, monkeypatch):
    a = np.ones(3)
    assert not dispatch.real_float(a) and tiers_on == ["float64"]
    tiered.write_stamp("float64")
    assert not dispatch.real_float(a)  # not looked at again within CHECK_INTERVAL
    monkeypatch.setattr(tiered, "CHECK_INTERVAL", 0.0)
    assert dispatch.real_float(a)
    assert np.dtype(np.float64) in tiered.ready_dtypes
    assert not dispatch.real_float(a.astype(np.float32))  # float32 is a cache of its own


def test_an_unusable_cache_means_compiling_in_the_foreground(tiers_on, monkeypatch):
    monkeypatch.setattr(tiered, "stamp_dir", lambda: None)  # caching off
    assert dispatch.real_float(np.ones(3, np.float32)) and tiers_on == []


def test_the_python_switch_and_the_suite_default():
    assert os.environ[tiered.ENV] == "0" and tiered.enabled is False and not tiered.is_on()
    assert dispatch.real_float(np.ones(3))


def test_cache_root_does_not_import_numba():
    code = ("import sys\nfrom autodiff_lab.kernels import numba_cache, tiered\n"
            "print(numba_cache.cache_root() is not None, tiered.stamp_path('float32') is not None,"
            " 'numba' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False"]
    assert numba_cache.cache_root() is not None


@pytest.mark.parametrize("state", ["caching off", "cache removed at exit"])
def test_no_lasting_cache_means_no_tiers(monkeypatch, state):
    started: list[str] = []
    monkeypatch.setattr(tiered, "enabled", True)
    monkeypatch.setattr(tiered, "_start_background", started.append)
    monkeypatch.setattr(numba_cache, "_CHECKED", True)
    if state == "caching off":
        monkeypatch.setattr(numba_cache, "caching_enabled", False)
    else:
        monkeypatch.setattr(numba_cache, "ephemeral", True)
    tiered.reset()
    try:
        assert tiered.stamp_dir() is None
        assert dispatch.real_float(np.ones(3, np.float32)) and started == []
    finally:
        tiered.reset()


def _tiers_on(monkeypatch):
    monkeypatch.setenv(tiered.ENV, "1")
    monkeypatch.setattr(tiered, "enabled", True)
    assert tiered.is_on()


def test_training_and_the_timed_commands_compile_in_the_foreground(monkeypatch):
    """Training and everything that times its calls must not run on the reference path."""
    from autodiff_lab import cli, nn

    _tiers_on(monkeypatch)
    model = nn.Linear(2, 1, rng=0)
    data = (np.ones((4, 2)), np.ones((4, 1)))
    nn.fit(model, nn.MSELoss(), nn.SGD(model.parameters(), lr=0.1), data, epochs=1,
           batch_size=4, progress=False)
    assert not tiered.is_on()

    ran: list[bool] = []
    for command in ("compare", "train", "denoise", "summary"):
        _tiers_on(monkeypatch)
        args = argparse.Namespace(command=command)
        monkeypatch.setattr(cli, "build_parser", lambda args=args: _FixedParser(args, ran))
        cli.main([])
        assert tiered.is_on() == (command == "summary"), command
    assert len(ran) == 4


class _FixedParser:
    """Stands in for the CLI's parser: returns the given arguments with a run that records."""

    def __init__(self, args, ran):
        self.args, self.ran = args, ran

    def parse_known_args(self, argv):
        self.args.run = lambda a: self.ran.append(True)
        return self.args, []


def test_timing_a_configuration_compiles_in_the_foreground(monkeypatch):
    import autodiff_lab as adl

    _tiers_on(monkeypatch)
    g = adl.trace(lambda x: adl.exp(x).sum(), x=(3,))
    adl.compare.speed(g, {"x": np.ones(3)}, engines="tape")
    assert not tiered.is_on()
