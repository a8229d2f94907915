"""The Python examples of docs/nn.md run as written (one namespace, in order)."""

import re
from pathlib import Path

DOC = (Path(__file__).resolve().parents[2] / "docs" / "nn.md").read_text()


def test_nn_guide_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for k, code in enumerate(blocks):
        exec(compile(code, f"docs/nn.md block {k}", "exec"), namespace)
    assert namespace["out"].batch_size == 36
    assert namespace["gw"].shape == (4,) and namespace["gx"].shape == (16, 4)
    assert 0.0 <= namespace["accuracy"] <= 1.0
