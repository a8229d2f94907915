"""``import autodiff_lab`` and a tape gradient load neither SymPy nor the other heavy
libraries only other features need; those features import them at first use.

The whole-process checks run in fresh subprocesses, so they do not depend on what other
tests imported before. Their graphs are small enough that no Numba kernel is compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autodiff_lab._lazy import LazyModule, lazy_module

ROOT = Path(__file__).resolve().parents[1]
#: needed only by the symbolic engine and formulas, drawings to files, reports, progress bars
HEAVY = ("sympy", "matplotlib", "jinja2", "tqdm", "graphviz")


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_and_a_tape_gradient_load_no_heavy_library():
    out = _run(f"""
        import sys
        import numpy as np
        import autodiff_lab as adl
        from autodiff_lab import examples as E
        after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
        ex = E.sigmoid_neuron()
        r = adl.gradient(ex.graph, ex.values, engine="tape")
        ex = E.mlp(d_in=6, hidden=4, batch=3)
        p = adl.engine("tape").compile(ex.graph, wrt=list(ex.graph.parameters))
        r = p(ex.values)
        assert np.all(np.isfinite(r.grads["W1"]))
        print(after_import, sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.split() == ["[]", "[]"], out


def test_features_built_on_sympy_import_it_at_first_use():
    # in a process where SymPy is not loaded yet: the symbolic engines, formulas, the op
    # table's SymPy forms, tracing and drawing all work and agree with the tape engine
    out = _run("""
        import sys
        import numpy as np
        import autodiff_lab as adl
        from autodiff_lab import examples as E
        from autodiff_lab.graph import optable
        assert "sympy" not in sys.modules
        g = adl.trace(lambda w, x: adl.relu(w[0] * x[0] + w[1] * x[1] + w[2]) + adl.exp(w[0]),
                      w=(3,), x=(2,))
        vals = {"w": np.array([2.0, -3.0, 4.0]), "x": np.array([-1.0, -2.0])}
        tape = adl.gradient(g, vals, engine="tape")
        assert "sympy" not in sys.modules
        for mode in ("expanded", "matrix"):
            sym = adl.gradient(g, vals, engine="symbolic", mode=mode)
            np.testing.assert_allclose(sym.grads["w"], tape.grads["w"], rtol=1e-12)
        assert "sympy" in sys.modules
        import sympy as sp
        x = sp.Symbol("x", real=True)
        relu = optable.relu  # the SymPy function of relu's form, defined on first use
        assert isinstance(relu, type) and issubclass(relu, sp.Function)
        form = optable.OPS["relu"].sympy(np.array([x], dtype=object))[0]
        assert sp.diff(form, x) == optable.relu_step(x)
        assert optable.OPS["tanh"].sympy(np.array([x], dtype=object))[0] == sp.tanh(x)
        ex = E.mlp(d_in=3, hidden=2, batch=2)
        assert "W1" in str(adl.formula(ex.graph, wrt=["W1"]))
        assert "digraph" in adl.render(g, values=vals, grads=tape.grads)
        assert callable(adl.compare.step_sweep)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_lazy_module_imports_at_first_attribute_and_keeps_it():
    mod = lazy_module("json")
    assert isinstance(mod, LazyModule) and "lazy module 'json'" in repr(mod)
    assert "dumps" not in vars(mod)
    assert mod.dumps([1]) == "[1]"
    assert vars(mod)["dumps"] is sys.modules["json"].dumps  # later look-ups are plain
    assert mod.module is sys.modules["json"]


def test_lazy_module_does_not_import_for_dunder_probes():
    mod = lazy_module("a_module_that_does_not_exist_here")
    assert not hasattr(mod, "__wrapped__")  # copy, pickle, inspect ask for these
    with pytest.raises(ModuleNotFoundError):  # a missing module fails at first use
        _ = mod.anything
