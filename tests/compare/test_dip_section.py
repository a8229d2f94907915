"""``autodiff-lab compare dip``: the Deep Image Prior's part of the report (a miniature run),
its files, and the page in headless Chromium."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from autodiff_lab import cli
from autodiff_lab.compare import dip_section

sys.path.insert(0, str(Path(__file__).parent))
from chromium_devtools import Browser, find_chromium  # noqa: E402


@pytest.fixture(scope="module")
def dip_report(tmp_path_factory):
    """``compare dip --quick`` with an even smaller run (32×32, 8 steps)."""
    out = tmp_path_factory.mktemp("dip") / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr(dip_section, "QUICK_CROP", 32)
    mp.setattr(dip_section, "QUICK_STEPS", 8)
    try:
        assert cli.main(["compare", "dip", "--quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        mp.undo()
    return out


def test_dip_case_files_and_tables(dip_report):
    case = dip_report / "dip"
    for name in ("dip_run.csv", "dip_run.json", "dip_agreement.csv", "dip_agreement.json",
                 "run/dip_curve.png", "run/dip_curve.svg", "run/dip_panel.png", "run/metrics.json"):
        assert (case / name).stat().st_size > 0, name
    with (case / "dip_run.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "PSNR dB", "vs Gaussian", "step"]
    assert [r[0] for r in rows[1:5]] == ["noisy input", rows[2][0], "DIP, best step (f(z + noise))",
                                         "DIP, f(z) without the input noise, best"]
    assert json.loads((case / "dip_run.json").read_text())["shape"] == [1, 32, 32]
    agreement = json.loads((case / "dip_agreement.json").read_text())
    engines = [r["engine"] for r in agreement]
    assert engines[0] == "tape" and "symbolic (matrix mode)" in engines
    assert any(e.startswith("numeric") for e in engines)
    assert max(r["relative_error"] for r in agreement if r["engine"] != "numeric (central)") < 1e-10
    page = (dip_report / "report.html").read_text()
    for text in ("Deep Image Prior: the fit", "every engine on a U-Net gradient",
                 "dip/run/dip_curve.png", "autodiff-lab train dip"):
        assert text in page, text


def test_dip_is_a_case_of_all_and_named_alone(capsys):
    from autodiff_lab.compare.cases import CASES
    from autodiff_lab.compare.cli import _cases

    class Args:
        examples = ["all"]
        values = None
    assert "dip" in [s.name for s in _cases(Args)]
    Args.examples = ["DIP", "dip"]
    assert [s.name for s in _cases(Args)] == ["dip"]
    assert CASES["dip"].sections == ["dip_run", "dip_agreement"]


def test_dip_page_in_headless_chromium(dip_report, tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page is not "
                    "checked in a browser")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open((dip_report / "report.html").resolve().as_uri())
        state = browser.evaluate("""(async () => {
            await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
            return {images: document.images.length,
                    decoded: [...document.images].every(i => i.complete && i.naturalWidth > 0),
                    broken: [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src),
                    tables: document.querySelectorAll('table').length,
                    width: document.documentElement.scrollWidth,
                    viewport: window.innerWidth};
        })()""")
    finally:
        browser.close()
    assert state["images"] >= 2 and state["decoded"], state["broken"]
    assert state["tables"] >= 2
    assert state["width"] <= state["viewport"] + 1
