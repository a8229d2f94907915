"""The README's Python example runs as written, and its two set-up commands are the ones CI uses."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes neuron.svg
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "neuron.svg").read_text().lstrip().startswith("<")
    assert abs(namespace["r"].grads["w"][0] + 0.19661193324148185) < 1e-9


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert commands[:2] == ["pip install . && autodiff-lab compare",
                            'pip install ".[dev,docs]" && python -m pytest -q']
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet ".[dev,docs]" && python -m pytest -q' in ci
