"""The ``autodiff-lab`` command: render and summary through ``main([...])``, and --help."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from autodiff_lab import cli
from autodiff_lab.examples import sigmoid_neuron


def test_render_sigmoid_writes_svg(tmp_path, capsys):
    target = tmp_path / "neuron.svg"
    assert cli.main(["render", "sigmoid", "-o", str(target)]) == 0
    text = "".join(ET.parse(target).getroot().itertext())
    assert "σ" in text and "0.7311" in text and "−0.1966" in text
    assert "wrote" in capsys.readouterr().err


def test_render_primitive_png_and_format_option(tmp_path):
    assert cli.main(["render", "sigmoid", "--primitive", "-o", str(tmp_path / "n.png")]) == 0
    assert (tmp_path / "n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["render", "chain", "--format", "svg", "-o", str(tmp_path / "chain")]) == 0
    assert (tmp_path / "chain").read_bytes().lstrip().startswith(b"<?xml")


def test_render_prints_dot_and_honours_switches(capsys):
    assert cli.main(["render", "sigmoid", "--primitive"]) == 0
    full = capsys.readouterr().out
    assert full.startswith("// autodiff_lab graph") and ">1/x<" in full and ">+1<" in full
    assert "0.7311" in full and "−0.5344" in full
    cli.main(["render", "sigmoid", "--no-grads"])
    no_grads = capsys.readouterr().out
    assert "0.7311" in no_grads and "−0.1966" not in no_grads
    cli.main(["render", "sigmoid", "--no-values", "--primitive"])
    no_values = capsys.readouterr().out
    assert "0.7311" not in no_values and "−0.5344" in no_values and ">1/x<" in no_values
    cli.main(["render", "sigmoid", "--no-legend", "--numbers", "nodes", "--digits", "2"])
    nodes = capsys.readouterr().out
    assert "forward value" not in nodes and ">0.73<" in nodes


def test_render_saved_graph_with_values_file(tmp_path, capsys):
    ex = sigmoid_neuron()
    ex.graph.save(tmp_path / "g.json")
    np.savez(tmp_path / "v.npz", **ex.values)
    assert cli.main(["render", str(tmp_path / "g.json")]) == 0
    assert "0.7311" not in capsys.readouterr().out  # a saved graph alone has no values
    assert cli.main(["render", str(tmp_path / "g.json"), "--values", str(tmp_path / "v.npz")]) == 0
    assert "0.7311" in capsys.readouterr().out


def test_non_scalar_output_is_drawn_without_gradients(tmp_path, capsys):
    import autodiff_lab as adl
    adl.trace(lambda x: adl.exp(x), x=(2,)).save(tmp_path / "g.json")
    np.savez(tmp_path / "v.npz", x=np.array([0.0, 1.0]))
    assert cli.main(["render", str(tmp_path / "g.json"), "--values", str(tmp_path / "v.npz")]) == 0
    captured = capsys.readouterr()
    assert "[1, 2.718]" in captured.out and "values only" in captured.err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli.main(["render", "no_such_example"]) == 1
    assert "neither a built-in example" in capsys.readouterr().err
    assert cli.main(["render", "sigmoid", "-o", str(tmp_path / "nowhere" / "n.svg")]) == 1
    assert cli.main(["render", "sigmoid", "--format", "png"]) == 1
    assert "needs -o" in capsys.readouterr().err


def test_summary(capsys):
    assert cli.main(["summary", "sigmoid"]) == 0
    out = capsys.readouterr().out
    assert "ops: add×2, mul×2, sigmoid×1" in out and "neuron: f = σ" in out
    assert cli.main(["summary", "sigmoid", "--primitive"]) == 0
    assert "reciprocal×1" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["render", "--help"], ["summary", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    assert "usage: autodiff-lab" in capsys.readouterr().out


def test_a_subcommand_is_one_registry_entry(monkeypatch, capsys):
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--times", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        print("hello " * args.times)
        return 3

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, cli.Command("hello", "greet", add_arguments,
                                                                     run)])
    assert cli.main(["hello", "--times", "2"]) == 3
    assert "hello hello" in capsys.readouterr().out


def test_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
