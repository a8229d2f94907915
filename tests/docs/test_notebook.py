"""examples/sigmoid_neuron.ipynb runs top to bottom in a real kernel, and its objects display
themselves: drawings as SVG, results and the gradient check as HTML, the formula as LaTeX."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install '.[dev]' for the notebook test")
nbclient = pytest.importorskip("nbclient", reason="pip install '.[dev]' for the notebook test")
pytest.importorskip("ipykernel", reason="pip install '.[dev]' for the notebook test")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "sigmoid_neuron.ipynb"


def test_sigmoid_neuron_notebook_runs_and_displays_inline(tmp_path, monkeypatch):
    # the kernel imports this checkout of autodiff_lab, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    rich = [o.data for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type in ("execute_result", "display_data")]
    svgs = [d["image/svg+xml"] for d in rich if "image/svg+xml" in d]
    htmls = [d["text/html"] for d in rich if "text/html" in d]
    assert len(svgs) >= 3 and any("0.7311" in s and "−0.1966" in s for s in svgs)  # values, gradients
    assert any("<svg" in h and "GradientResult" in h and "−0.196612" in h for h in htmls)
    assert any("gradcheck passed" in h for h in htmls)
    assert any("σ" in d.get("text/latex", "") or "sigma" in d.get("text/latex", "") for d in rich)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "stopped='completed'" in text and "accuracy" in text
    # tqdm.auto draws the training progress as a Jupyter widget when ipywidgets is present
    if _has("ipywidgets"):
        assert any("application/vnd.jupyter.widget-view+json" in d for d in rich), "progress bar is no widget"


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None
