"""Big graphs are refused before any work (Graphviz would time out after minutes), and the
render package is both callable as ``adl.render`` and importable as a package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab.errors import GraphTooLargeError, RenderError
from autodiff_lab.render import MAX_NODES

ROOT = Path(__file__).resolve().parents[2]


def _chain(n_ops: int) -> adl.Graph:
    def f(x):
        for _ in range(n_ops):
            x = adl.sin(x)
        return adl.sum(x)
    return adl.trace(f, x=(2,))


BIG = _chain(MAX_NODES + 10)


def test_a_graph_above_the_limit_is_refused_at_once(tmp_path, monkeypatch):
    def no_graphviz(*_a, **_k):
        raise AssertionError("Graphviz must not run")
    monkeypatch.setattr("autodiff_lab.render.run_dot", no_graphviz)
    started = time.perf_counter()
    for call in (lambda: adl.render(BIG),
                 lambda: adl.render(BIG, values={"x": np.ones(2)}, grads=True,
                                    path=tmp_path / "g.svg"),
                 lambda: adl.render.to_svg(BIG)):
        with pytest.raises(GraphTooLargeError, match=r"2,01\d nodes.*summary\(\).*layer level"):
            call()
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "g.svg").exists()
    assert issubclass(GraphTooLargeError, RenderError)


def test_the_limit_can_be_raised_or_lifted():
    assert adl.render(BIG, max_nodes=len(BIG)).startswith("// autodiff_lab graph")
    assert adl.render(BIG, max_nodes=None).startswith("// autodiff_lab graph")
    with pytest.raises(GraphTooLargeError, match="more than the 5 drawn"):
        adl.render(_chain(5), max_nodes=5)
    with pytest.raises(adl.InputError, match="max_nodes"):
        adl.render(_chain(2), max_nodes=0)


def test_primitive_expansion_counts_too():
    g = adl.trace(lambda x: adl.sum(adl.sigmoid(adl.sigmoid(x))), x=(2,))
    adl.render(g, max_nodes=len(g))
    with pytest.raises(GraphTooLargeError):
        adl.render(g, primitive=True, max_nodes=len(g))


def test_jupyter_shows_the_summary_for_a_big_graph():
    assert BIG._repr_svg_() is None  # the text repr (the summary) is shown instead


def test_the_command_line_refuses_and_has_an_option(tmp_path):
    from autodiff_lab.cli import main

    BIG.save(tmp_path / "big.json")
    assert main(["render", str(tmp_path / "big.json"), "-o", str(tmp_path / "g.dot"),
                 "--max-nodes", "0"]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("// autodiff_lab graph")
    code = main(["render", str(tmp_path / "big.json"), "-o", str(tmp_path / "h.dot")])
    assert code != 0 and not (tmp_path / "h.dot").exists()


@pytest.mark.parametrize("code", [
    # a submodule first, then the function
    "import autodiff_lab.render.backend as b; import autodiff_lab; "
    "assert autodiff_lab.render.backend is b and callable(autodiff_lab.render); "
    "autodiff_lab.render(autodiff_lab.trace(lambda x: x * 2.0, x=()))",
    "from autodiff_lab.render import backend; import autodiff_lab as adl; "
    "assert adl.render.backend is backend and callable(adl.render)",
    # the function first, then submodules
    "import autodiff_lab as adl; g = adl.trace(lambda x: x * 2.0, x=()); adl.render(g); "
    "import autodiff_lab.render.dot; from autodiff_lab.render import numbers; "
    "import autodiff_lab.render.annotate as a; import inspect; "
    "assert adl.render(g) == adl.render.render(g) and adl.render.annotate is a; "
    "assert 'max_nodes' in inspect.signature(adl.render).parameters",
])
def test_render_package_and_function_in_any_import_order(code):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
