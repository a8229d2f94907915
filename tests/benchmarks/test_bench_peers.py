"""benchmarks/bench_peers.py with its peers absent: every comparison is still a row ("peer not
installed"), no target is reported met, and the results go to the file named (JSON + CSV in
the shared table format of benchmarks/_table.py)."""

import csv
import json
from pathlib import Path

import pytest
from bench_loader import load as _load

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def absent_run(tmp_path_factory):
    """One quick run: autograd fails to import (monkeypatched), the others --without."""
    bench = _load("bench_peers")
    real = bench.try_import

    def failing(name):
        if name.split(".")[0] == "autograd":
            return None, "ModuleNotFoundError: No module named 'autograd'"
        return real(name)

    bench.try_import = failing
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    assert bench.main(["--quick", "--without", "numdifftools,sympy", "--json", str(out)]) == 0
    return bench, out


def test_absent_peers_are_rows_saying_so(absent_run):
    bench, out = absent_run
    data = json.loads(out.read_text())
    table = _load("_table")
    assert data["columns"] == list(table.COLUMNS)
    rows = data["rows"]
    ours_workloads = {r["workload"] for r in rows if r["framework"].startswith("ours")}
    for peer in bench.PEERS:
        mine = [r for r in rows if r["framework"] == peer]
        assert mine, f"{peer}: no row at all (a comparison was dropped silently)"
        for r in mine:
            assert r["value"] is None and r["note"].startswith(table.NOT_INSTALLED), r
            assert r["ratio_to_ours"] is None
        assert {r["workload"] for r in mine} <= ours_workloads
        assert data["meta"]["peers"][peer].startswith(table.NOT_INSTALLED)
    # every workload of each part names its peer: reverse mode autograd, FD numdifftools ...
    for workload in ours_workloads:
        assert any(r["workload"] == workload and not r["framework"].startswith("ours")
                   for r in rows), f"{workload}: no peer row"
    # our own rows were measured
    assert all(r["value"] is not None for r in rows if r["framework"] == "ours"
               and r["metric"] == "time per gradient")


def test_no_target_is_met_against_a_missing_peer(absent_run):
    _, out = absent_run
    targets = json.loads(out.read_text())["meta"]["targets"]
    assert targets, "the targets were not checked at all"
    for t in targets:
        assert t["verdict"] == f"not checked: {t['peer']} not installed", t


def test_csv_has_the_same_columns_and_rows(absent_run):
    _, out = absent_run
    table = _load("_table")
    with out.with_suffix(".csv").open() as fh:
        lines = list(csv.reader(fh))
    assert tuple(lines[0]) == table.COLUMNS
    assert len(lines) - 1 == len(json.loads(out.read_text())["rows"])


def test_table_module_formats_and_default_path(tmp_path, monkeypatch):
    table = _load("_table")
    t = table.Table("demo")
    t.add("mlp", "ours", "time per gradient", 2.0, "ms")
    t.add("mlp", "torch", "time per gradient", 3.0, "ms")
    t.not_installed("mlp", "jax", "time per gradient", "ms")
    t.add_frameworks("dncnn", "time per gradient", "ms", {"ours": 4.0, "torch": 2.0, "jax": None})
    t.fill_ratios()
    assert t.rows[-2].ratio_to_ours == 0.5 and t.rows[-1].note == table.NOT_INSTALLED
    text = t.text().splitlines()
    assert text[0].split() == ["workload", "framework", "metric", "value", "unit",
                               "ratio-to-ours", "note"]
    assert "1.5" in text[3] and table.NOT_INSTALLED in text[4]
    assert table.target_verdict(None, lambda r: r >= 1, peer_ran=False, peer="jax") == \
        "not checked: jax not installed"
    assert table.target_verdict(1.5, lambda r: r >= 1) == "met"
    assert table.target_verdict(0.5, lambda r: r >= 1) == "MISSED"
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    path, csv_path = t.save()
    assert path.parent == tmp_path and path.name.startswith("demo-") and csv_path.exists()
    back = table.load(path)
    assert [r.cells() for r in back.rows] == [r.cells() for r in t.rows]


def test_benchmarks_write_new_timestamped_files_by_default():
    """Scripts writing through _table save to default_path (a new file) unless --json."""
    assert "%Y%m%d-%H%M%S" in (BENCH / "_table.py").read_text()
    for name in ("bench_peers.py", "bench_unet.py"):
        assert "table.save(args.json)" in (BENCH / name).read_text(), name
