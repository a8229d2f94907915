"""The documentation site builds with warnings as errors, and its API reference covers every
public name of ``autodiff_lab`` and ``autodiff_lab.nn`` with an example."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import autodiff_lab as adl
from autodiff_lab import nn

ROOT = Path(__file__).resolve().parents[2]


def test_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs is not installed: pip install '.[docs]' to build the site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    api = (tmp_path / "site" / "api" / "adl" / "index.html").read_text()
    assert 'id="autodiff_lab.gradient"' in api and "five_point" in api
    assert (tmp_path / "site" / "img" / "neuron.png").exists()


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    nav = re.findall(r"^\s*- [^#\n:]*:\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert set(nav) <= pages, set(nav) - pages
    assert pages <= set(nav), f"pages left out of the nav: {pages - set(nav)}"


@pytest.mark.parametrize("module, page", [(adl, "adl.md"), (nn, "nn.md")])
def test_api_reference_documents_every_public_name_with_an_example(module, page):
    text = (ROOT / "docs" / "api" / page).read_text()
    documented = set(re.findall(r"^::: ([\w.]+)", text, re.M))
    for target, members in re.findall(r"^::: ([\w.]+)\n(?:    .*\n)*?\s+members: \[([^\]]*)\]", text, re.M):
        documented |= {f"{target}.{m.strip()}" for m in members.split(",") if m.strip()}
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    prefix = module.__name__
    missing, without_example = [], []
    for name in module.__all__:
        obj = getattr(module, name)
        here = {f"{prefix}.{name}", f"{getattr(obj, '__module__', '')}.{name}"}
        if not (here & documented or f"`{name}`" in text or f"`adl.{name}`" in text):
            missing.append(name)
        doc = getattr(obj, "__doc__", "") or ""
        if ">>>" not in doc and not re.search(rf"\b{re.escape(name)}\b", code):
            without_example.append(name)
    assert not missing, f"{page} does not document {missing}"
    assert not without_example, f"no example for {without_example} ({page} or the docstring)"
