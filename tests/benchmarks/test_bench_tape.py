"""benchmarks/bench_tape.py's effective GFLOP/s and its targets."""

import numpy as np
import pytest
from bench_loader import load

import autodiff_lab as adl
from autodiff_lab import examples as E


@pytest.fixture(scope="module")
def bench():
    return load("bench_tape")


def test_conv_flops_of_the_dncnn_step(bench):
    # 16×40×40 outputs: the 1→32 layer 14.7 MFLOP forward (no input gradient: its input is
    # the data), three 32→32 layers 471.9 MFLOP each, the 32→1 layer 14.7 MFLOP; forward
    # 1.445 GFLOP, backward 2.875, 4.32 in all
    ex = E.dncnn(batch_norm=False, dtype="float32")
    flops = bench.conv_flops(ex.graph, list(ex.graph.parameters))
    assert flops == pytest.approx(2 * 16 * 1600 * 9 * (32 * 2 + 3 * 32 * 32 * 3 + 32 * 3))
    assert flops / 1e9 == pytest.approx(4.32, abs=0.005)
    assert bench.conv_flops(E.mlp().graph, ["W1"]) == 0


def test_targets_are_the_speed_goals_and_need_their_peer(bench):
    texts = {(w, d, t) for w, d, t, _, _ in bench.TARGETS}
    assert ("dncnn", "float32", "≤ 1.0× torch") in texts
    assert ("dncnn", "float32", "≥ 150 GFLOP/s effective") in texts
    assert ("mlp", "float64", "≤ 0.8× torch with anomaly on") in texts
    assert ("dncnn", "float64", "≤ 0.8× jax") in texts
    row = {"ours_ms": 30.0, "ours_anomaly_ms": 31.0, "gflops": 144.0}
    for w, d, _, peer, ok in bench.TARGETS:
        if (w, d) == ("dncnn", "float32") and peer is None:
            assert bench.target_verdict(row, peer, ok) == "MISSED"
        if peer == "torch":
            assert bench.target_verdict(row, peer, ok) == "not checked: torch not installed"
    fast = {**row, "torch_ms": 40.0, "ours_over_torch": 0.75}
    mlp = [(p, ok) for w, d, _, p, ok in bench.TARGETS if (w, d, p) == ("mlp", "float64", "torch")]
    assert bench.target_verdict(fast, *mlp[0]) == "met"  # 31 / 40 ≤ 0.8 with the check on
    assert bench.target_verdict({**fast, "ours_anomaly_ms": 33.0}, *mlp[0]) == "MISSED"


def test_a_peer_that_is_not_installed_gets_no_process(bench, monkeypatch):
    monkeypatch.setattr(bench, "_installed", lambda name: False)
    assert bench.PeerProcess.start("torch", None) is None


def test_interleaved_rounds_shuffle_the_order_and_pause_between_processes(bench, monkeypatch):
    order, sleeps = [], []
    monkeypatch.setattr(bench.time, "sleep", sleeps.append)

    def local_round(fn, inner):  # time_round, recorded
        order.append(fn())
        sleeps.append("local")
        return 1.0

    monkeypatch.setattr(bench, "time_round", local_round)

    class FakePeer:
        name = "peer"

        def ask(self, request):
            assert request == "w/float64 1"
            order.append("p")
            sleeps.append("peer")
            return 0.5

    fns = {name: (lambda name=name: name) for name in ("ours", "ours_anomaly", "numpy")}
    fns["p"] = bench.Remote(FakePeer(), "w/float64")
    med = bench.interleaved(fns, rounds=12, inner=1)
    assert med == {"ours": 1.0, "ours_anomaly": 1.0, "numpy": 1.0, "p": 0.5}
    rounds = [order[4 * r:4 * r + 4] for r in range(12)]
    assert len(order) == 48 and all(sorted(r) == sorted(fns) for r in rounds)
    # the order changes from round to round, and so does who comes right after the peer
    assert len({tuple(r) for r in rounds}) > 3
    assert len({order[i + 1] for i in range(47) if order[i] == "p"}) >= 2
    # a pause of SETTLE between a call here and one in the peer's process, either way, and
    # between the two frameworks of this process; none between calls of one framework
    assert len([s for s in sleeps if s != bench.SETTLE]) == 48
    position = 0
    for i, s in enumerate(sleeps):
        if s == bench.SETTLE:
            continue
        framework = order[position].split("_")[0]
        before = order[position - 1].split("_")[0] if position else None
        had_pause = i > 0 and sleeps[i - 1] == bench.SETTLE
        assert had_pause == (framework != before), order[max(0, position - 1):position + 1]
        position += 1


def test_a_peer_process_serves_rounds_of_its_workloads(bench, monkeypatch, capsys):
    import io
    import json

    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(bench, "WARM_S", 0.0)
    calls = []
    monkeypatch.setattr(bench.sys, "stdin", io.StringIO("w/float32 4\nquit\nw/float32 1\n"))
    bench.serve({"w/float32": (lambda: calls.append(1), 4)})
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0][1:]) == {"keys": ["w/float32"]}
    assert len(lines) == 2 and lines[1].startswith("@") and float(lines[1][1:]) >= 0
    assert len(calls) == 2 + 4  # two untimed calls, four timed; nothing after "quit"


def test_the_peak_rss_is_the_high_water_mark_since_the_reset(bench):
    """The memory target's measure: RSS that came and went after the reset counts, RSS
    that came and went before it does not."""
    import numpy as np

    if not bench._reset_peak_rss():
        pytest.skip("the high-water mark cannot be reset here (not Linux)")
    big = np.ones(40 << 20, dtype=np.uint8)  # 40 MiB, touched, then freed
    del big
    assert bench._reset_peak_rss()
    start = bench._rss()
    assert bench._peak_rss() - start < 8 << 20
    again = np.ones(40 << 20, dtype=np.uint8)
    del again
    assert bench._peak_rss() - start > 30 << 20


def test_the_anomaly_cost_is_the_median_of_back_to_back_pairs(bench, monkeypatch):
    """Each round times off and on next to each other, which first alternating; the cost is
    the median of the rounds' ratios, so one slow round (the machine's drift) moves it
    little."""
    order = []
    times = iter([1.0, 1.1, 1.1, 1.0, 2.0, 2.2, 4.4, 4.0, 1.0, 1.04])

    def fake_round(fn, inner):
        order.append(fn())
        return next(times)

    monkeypatch.setattr(bench, "time_round", fake_round)
    cost = bench.paired_cost(lambda: "off", lambda: "on", rounds=5, inner=3)
    assert order == ["off", "on", "on", "off", "off", "on", "on", "off", "off", "on"]
    assert cost == pytest.approx(1.1)  # ratios 1.1, 1.1, 1.1, 1.1, 1.04


def test_the_mlp_products_alone_are_the_gradients_products(bench):
    ex = E.mlp(16, 8, 4, bias=False)
    numpy_products = bench.mlp_products(None, ex.values)
    assert set(numpy_products) == {"numpy"}
    W1, W2, x, y = (ex.values[k] for k in ("W1", "W2", "x", "y"))
    h, z, gW2, gr, gW1 = numpy_products["numpy"]()
    r = np.maximum(h, 0)
    d = W2 @ r - y
    assert np.allclose(z, W2 @ r)
    program = adl.engine("tape").compile(ex.graph, wrt=["W1", "W2"])
    got = program(ex.values).grads
    assert np.allclose(gW2, got["W2"])  # d·rᵀ is W2's gradient, gh·xᵀ W1's
    assert np.allclose(gW1, got["W1"])
    assert np.allclose(gr, W2.T @ d)


def test_the_table_gives_the_blas_share_next_to_the_mlp_targets(bench):
    row = {"workload": "mlp", "dtype": "float64", "ours_ms": 1.7, "ours_anomaly_ms": 1.75,
           "torch_ms": 1.6, "ours_over_torch": 1.7 / 1.6, "ours_cold_ms": 5.0,
           "backward_over_forward": 1.5, "memory_bytes": 4e6}
    result = {"rows": [row], "mlp_products": {"float64": {"numpy_ms": 1.44, "torch_ms": 1.2}},
              "environment": {"OPENBLAS_CORETYPE": "", "threads": 2, "torch": "x", "jax": None,
                              "numpy": "2", "keep_freed_memory": False,
                              "load_average": (0.1, 0.1, 0.1)}}
    assert bench.products_share(result, "float64") == pytest.approx({"numpy": 0.9, "torch": 0.75})
    assert bench.products_share(result, "float32") is None
    text = bench.table(result)
    assert "target mlp float64: ≤ 0.8× torch with anomaly on: MISSED (its five products alone " \
           "through numpy's BLAS: 0.90 of PyTorch's step)" in text
    assert "float64      1.44 ms      1.2 ms      1.6 ms        0.90        0.75" in text
    recs = [r for r in bench.records(result) if r["metric"] == "five matrix products alone"]
    assert {(r["framework"], r["value"]) for r in recs} == {("numpy", 1.44), ("torch", 1.2)}
