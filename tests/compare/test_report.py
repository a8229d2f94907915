"""``autodiff-lab compare``: arguments and their errors, the report's files, and the page in a
real browser (headless Chromium over its DevTools protocol)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from autodiff_lab import cli
from autodiff_lab.compare import cases as case_registry
from autodiff_lab.examples import ALIASES, BUILTIN, canonical_name, sigmoid_neuron

sys.path.insert(0, str(Path(__file__).parent))
from chromium_devtools import Browser, find_chromium  # noqa: E402


def _compare(argv, capsys):
    status = cli.main(["compare", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def neuron_report(tmp_path_factory):
    """One quick end-to-end run of ``compare neuron --quick``, shared by the tests below."""
    out = tmp_path_factory.mktemp("report") / "out"
    assert cli.main(["compare", "neuron", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


# --- arguments and errors -----------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--engines", ""], "no engine given; choose from families tape, symbolic, numeric"),
    (["--engines", "tape,hessian"], "unknown engine 'hessian'; choose from"),
    (["no_such_case"], "neither an example (neuron, chain, inpainting, denoiser, classifier"),
    (["neuron", "--values", "v.npz"], "--values goes with a graph file"),
])
def test_bad_arguments_get_one_line_naming_the_choices(argv, message, capsys, tmp_path):
    status, _, err = _compare([*argv, "--out", str(tmp_path / "r")], capsys)
    assert status == 1 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / "report.html").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "soon"])
def test_bad_budget_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "neuron", "--budget", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--budget" in err and "number of seconds" in err


@pytest.mark.parametrize("argv", [["--reference", "exact"], ["--threads", "0"], ["--bogus"]])
def test_other_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "--help" in err


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    file = tmp_path / "taken.txt"
    file.write_text("x")
    for flag in ("--out", "-o"):
        status, _, err = _compare(["neuron", flag, str(file)], capsys)
        assert status == 1 and "is an existing file" in err and len(err.strip().splitlines()) == 1
    status, _, err = _compare(["neuron", "--out", str(file / "sub")], capsys)
    assert status == 1 and "cannot write the report" in err
    assert file.read_text() == "x"


def test_one_vocabulary_of_example_names_with_aliases(capsys):
    assert list(BUILTIN) == ["neuron", "chain", "inpainting", "denoiser", "classifier"]
    assert set(case_registry.CASES) == set(BUILTIN) | {"dip"}  # dip: a study, not an example
    for old in ("sigmoid", "sigmoid_neuron", "mlp", "dncnn", "scalar_chain", "inpainting_mlp"):
        assert canonical_name(old) == ALIASES[old]
    for command in ("compare", "render", "summary"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "neuron, chain, inpainting, denoiser, classifier" in text
        assert "sigmoid, sigmoid_neuron" in text and "mlp, inpainting_mlp" in text
    # the same name is the same graph in every subcommand
    assert cli.main(["summary", "mlp"]) == 0
    assert "W1: shape (64, 784)" in capsys.readouterr().out


def test_an_existing_report_is_never_overwritten(neuron_report, capsys, monkeypatch):
    before = (neuron_report / "report.html").stat().st_mtime_ns
    monkeypatch.setattr(case_registry.CASES["chain"], "sections", ["graph"])
    assert cli.main(["compare", "chain", "--quick", "--out", str(neuron_report),
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (neuron_report / "report.html").stat().st_mtime_ns == before
    made = re.search(r"wrote (\S+report\.html)", err).group(1)
    assert Path(made).parent.name.startswith(neuron_report.name + "-")
    shutil.rmtree(Path(made).parent)


def test_ctrl_c_keeps_finished_sections_and_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(case_registry.SECTIONS, "stop", interrupted)
    monkeypatch.setattr(case_registry.CASES["chain"], "sections", ["graph", "stop", "accuracy"])
    status, _, err = _compare(["chain", "--quick", "--out", str(tmp_path / "r"), "--no-progress"],
                              capsys)
    assert status == 130 and "Traceback" not in err and "interrupted" in err
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Interrupted" in page and "The graph" in page and "Accuracy" not in page


def test_a_graph_file_render_accepts_is_accepted(tmp_path, capsys):
    ex = sigmoid_neuron()
    ex.graph.save(tmp_path / "g.json")
    np.savez(tmp_path / "v.npz", **ex.values)
    assert cli.main(["render", str(tmp_path / "g.json")]) == 0  # render takes it without values
    capsys.readouterr()
    for extra in (["--values", str(tmp_path / "v.npz")], []):  # no values: random ones, said so
        out = tmp_path / ("with" if extra else "without")
        status, text, err = _compare([str(tmp_path / "g.json"), *extra, "--quick", "--engines",
                                      "tape,central", "--out", str(out), "--no-progress"], capsys)
        assert status == 0, err
        data = json.loads((out / "report.json").read_text())
        rows = {r["engine"]: r for r in data["g"]["accuracy"]["rows"]}
        assert set(rows) == {"tape", "numeric-central"} and rows["tape"]["rel_error"] < 1e-15
        assert ("random values" in (out / "report.html").read_text()) is not bool(extra)


# --- the report's files -------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


def test_report_files_tables_and_figures(neuron_report):
    from PIL import Image

    case = neuron_report / "neuron"
    for name in ("accuracy", "speed", "step_sweep"):
        assert (case / f"{name}.csv").read_text().count("\n") >= 3
        json.loads((case / f"{name}.json").read_text())
    for stem in ("error_vs_time", "step_sweep", "graph", "graph_primitive", "neuron_pictures"):
        assert (case / f"{stem}.svg").read_text().lstrip().startswith("<")
        with Image.open(case / f"{stem}.png") as im:
            assert im.size[0] >= 400 and im.size[1] >= 200
    for stem in ("error_vs_time", "step_sweep", "neuron_pictures"):  # slide-sized, text as paths
        with Image.open(case / f"{stem}.png") as im:
            assert im.size == (1599, 900)
        svg = (case / f"{stem}.svg").read_text()
        assert "Helvetica" not in svg and "<text" not in svg
    page = (neuron_report / "report.html").read_text()
    for words in ("Reference: the expanded SymPy derivative evaluated with mpmath", "Accuracy",
                  "Speed and memory", "× forward", "Error against time",
                  "Finite differences: error against the step", "Overview"):
        assert words in page
    parser = _Links()
    parser.feed(page)
    local = [x for x in parser.links if not re.match(r"[a-z]+:|#", x)]
    assert len(parser.images) >= 4 and len(local) >= 12
    missing = [x for x in local if not (neuron_report / x).is_file()]
    assert not missing
    assert "sigmoid_neuron" not in json.loads((neuron_report / "report.json").read_text())


def test_page_in_headless_chromium(neuron_report, tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page is not "
                    "checked in a browser")
    browser = Browser(tmp_path / "profile")
    try:
        browser.open((neuron_report / "report.html").resolve().as_uri())
        state = browser.evaluate("""(async () => {
            await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
            return {title: document.title,
                    images: document.images.length,
                    decoded: [...document.images].every(i => i.complete && i.naturalWidth > 0),
                    broken: [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src),
                    sizes: [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth,
                                                          i.naturalHeight, i.clientWidth]),
                    tables: document.querySelectorAll('table').length,
                    width: document.documentElement.scrollWidth,
                    viewport: window.innerWidth};
        })()""")
        shot = browser.screenshot(tmp_path / "report.png")
    finally:
        browser.close()
    assert state["title"].startswith("autodiff_lab")
    assert state["images"] >= 4 and state["decoded"], state["broken"]
    sizes = {src: (w, h, shown) for src, w, h, shown in state["sizes"]}
    for figure in ("neuron/graph.png", "neuron/graph_primitive.png", "neuron/training.png",
                   "neuron/neuron_pictures.png"):  # every figure, the pictures included
        assert figure in sizes and min(sizes[figure]) > 0, (figure, sizes.get(figure))
    assert state["tables"] >= 3
    assert state["width"] <= state["viewport"] + 1  # nothing wider than the window
    from PIL import Image
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and im.size[1] > 2000


def test_graphs_too_big_to_draw_get_a_summary_drawing(tmp_path, monkeypatch):
    import autodiff_lab as adl
    import autodiff_lab.render
    from autodiff_lab.compare.cases import CaseContext, graph_file_case
    from autodiff_lab.compare.harness import parse_engines
    from autodiff_lab.compare.sections import graph_section

    def long_sum(x):
        total = x[0]
        for i in range(1, 30):
            total = total + adl.sin(x[i]) * x[i]
        return total

    g = adl.trace(long_sum, x=(30,))
    monkeypatch.setattr(autodiff_lab.render, "MAX_NODES", 50)  # stands for 2,000: faster
    assert len(g) > 50
    spec = graph_file_case("long", g, {"x": np.linspace(0, 1, 30)}, "a long sum")
    ctx = CaseContext(spec, spec.build(True), ["x"], tmp_path / "long", tmp_path, True,
                      parse_engines("tape"), 1.0, echo=lambda text: None)
    sec = graph_section(ctx)
    assert "more than the 50 drawn node by node" in " ".join(sec.paragraphs)
    assert [f.png for f in sec.figures] == ["long/graph_summary.png"]
    assert (tmp_path / "long" / "graph_summary.svg").is_file()
