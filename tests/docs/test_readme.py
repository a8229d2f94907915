"""The README's set-up commands are the ones CI runs (its Python example runs in
tests/docs/test_snippets.py, with every other page's code)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert commands[:2] == ["pip install . && autodiff-lab compare",
                            'pip install ".[dev,docs]" && python -m pytest -q']
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install --quiet ".[dev,docs]" && python -m pytest -q' in ci
