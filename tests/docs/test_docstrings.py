"""The examples in the public docstrings run and print what they say (doctest)."""

import doctest
import importlib

import numpy as np
import pytest

import autodiff_lab as adl

MODULES = [
    "autodiff_lab.graph.functions", "autodiff_lab.graph.graph", "autodiff_lab.graph.custom",
    "autodiff_lab.engines", "autodiff_lab.engines.base", "autodiff_lab.checks", "autodiff_lab.formula",
    "autodiff_lab.functional", "autodiff_lab.render",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    tests = finder.find(module, name, globs={"np": np, "adl": adl})
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see above)"


def test_every_public_function_of_adl_has_an_example():
    import inspect
    missing = []
    for name in adl.__all__:
        obj = getattr(adl, name)
        if inspect.isfunction(obj) or name == "render":
            doc = inspect.getdoc(obj if name != "render" else adl.render.render) or ""
            if ">>>" not in doc:
                missing.append(name)
    assert not missing, f"public functions without an example in their docstring: {missing}"


def test_help_of_gradient_lists_the_engines_and_their_options():
    import pydoc
    text = pydoc.render_doc(adl.gradient, renderer=pydoc.plaintext)
    for word in ('"tape"', '"numeric"', '"symbolic"', "anomaly", "keep_all", "method", "step",
                 "estimate_error", "batch_size", "max_evaluations", "progress", "mode",
                 "max_tree_size", "precision", "max_nodes", "check_finite", "cache",
                 "five_point", "richardson", "complex", "expanded"):
        assert word in text, word
    import importlib
    import inspect

    from autodiff_lab.engines import ENGINES
    for name, where in ENGINES.items():
        module, cls = where.split(":")
        params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
        for option in list(params)[1:]:
            assert f"``{option}=" in text, (name, option)
