"""Every ```python block of the README and of docs/*.md runs as written.

Each page's blocks run in order in one namespace, in a temporary folder (pages write
pictures and checkpoints). A block opts out only with the marker ``<!-- no-run -->`` on the
line before it, for code that belongs in a file of the package rather than in a session.
"""

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, runs) of every ```python block."""
    blocks = []
    for m in FENCE.finditer("\n" + text):
        line = text.count("\n", 0, max(m.start("code") - 1, 0)) + 1
        blocks.append((line, m.group("code") + "\n", m.group("before").strip() != NO_RUN))
    return blocks


def test_block_extraction_and_opt_out():
    text = "intro\n```python\nx = 1\n```\n\n<!-- no-run -->\n```python\nimport not_a_module\n```\n"
    assert [(code, runs) for _, code, runs in python_blocks(text)] == [
        ("x = 1\n", True), ("import not_a_module\n", False)]


def test_opt_outs_are_rare():
    skipped = [(p.name, line) for p in PAGES for line, _, runs in python_blocks(p.read_text())
               if not runs]
    assert len(skipped) <= 3, skipped


@pytest.fixture
def clean_op_table():
    """Ops a page defines with adl.define_op are removed afterwards: the tests that sweep
    the whole table must not see them."""
    from autodiff_lab.graph import custom
    before = set(custom.CUSTOM_OPS)
    yield
    for name in set(custom.CUSTOM_OPS) - before:
        custom.remove_op(name)


def _readme(ns, folder):
    assert (folder / "neuron.svg").read_text().lstrip().startswith("<")
    assert abs(ns["r"].grads["w"][0] + 0.19661193324148185) < 1e-9


def _nn(ns, folder):
    assert ns["out"].batch_size == 36
    assert ns["gw"].shape == (4,) and ns["gx"].shape == (16, 4)
    assert 0.0 <= ns["accuracy"] <= 1.0


def _training(ns, folder):
    h = ns["history"]                  # the resumed run of the second example
    assert h.stopped == "completed" and h.epoch == [1, 2] and h.steps == 20
    import json
    run = folder / "runs" / "inpainting"            # the first example's run
    assert (run / "checkpoint.npz").is_file() and (run / "loss.svg").is_file()
    first = json.loads((run / "metrics.json").read_text())
    assert first["stopped"] == "completed" and first["steps"] == 20
    assert len(first["history"]["val_loss"]) == 2
    health = first["history"]["health"]             # the gradient checks along the way
    assert [s for s, _ in health] == [5, 10, 15, 20] and max(e for _, e in health) < 1e-4


#: what a page's code must have done, beyond running (keyed by path from the repository root)
CHECKS = {"README.md": _readme, "docs/nn.md": _nn, "docs/training.md": _training}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch, clean_op_table):
    blocks = [(line, code) for line, code, runs in python_blocks(page.read_text()) if runs]
    if not blocks:
        pytest.skip(f"{page.name} has no Python blocks")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # pages show warnings on purpose (kinks, casts)
        for line, code in blocks:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
    check = CHECKS.get(str(page.relative_to(ROOT)))
    if check is not None:
        check(namespace, tmp_path)
