"""Module: registration, PyTorch's state-dict names and order, modes, repr, tracing names."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.errors import CheckpointError, TraceError

RNG = np.random.default_rng(3)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, rng=0)
        self.bn = nn.BatchNorm2d(c)
        self.scale = nn.Parameter(np.ones(1))
        self.register_buffer("calls", np.zeros(1))

    def forward(self, x):
        return adl.relu(self.bn(self.conv1(x))) * self.tensor("scale", x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1, rng=1)
        self.blocks = nn.ModuleList([Block(2), Block(2)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, rng=2))

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h) + h
        return self.head(h)


def test_sequential_state_dict_names_and_order_are_pytorchs():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                    "1.running_var", "1.num_batches_tracked", "3.weight"]
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                    "3.weight"]
    assert [p.name for p in m.parameters()] == [n for n, _ in m.named_parameters()]
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var",
                                                 "1.num_batches_tracked"]
    assert m.state_dict()["1.num_batches_tracked"].dtype == np.int64
    assert m.num_parameters == 4 * 3 + 3 + 3 + 3 + 3 * 2


def test_nested_model_names():
    net = Net()
    keys = list(net.state_dict())
    assert keys[:2] == ["stem.weight", "stem.bias"]
    assert keys[2:11] == ["blocks.0.scale", "blocks.0.calls", "blocks.0.conv1.weight",
                          "blocks.0.conv1.bias", "blocks.0.bn.weight", "blocks.0.bn.bias",
                          "blocks.0.bn.running_mean", "blocks.0.bn.running_var",
                          "blocks.0.bn.num_batches_tracked"]
    assert keys[-2:] == ["head.1.weight", "head.1.bias"]
    assert [n for n, _ in net.named_modules()][:5] == ["", "stem", "blocks", "blocks.0",
                                                       "blocks.0.conv1"]
    assert net.blocks[1].bn.path == "blocks.1.bn"
    assert net.blocks[1].bn.weight.name == "blocks.1.bn.weight"


def test_parameters_are_renamed_when_a_module_is_nested_later():
    lin = nn.Linear(2, 2)
    assert lin.weight.name == "weight"
    nn.Sequential(nn.Sequential(nn.ReLU(), lin))
    assert lin.weight.name == "0.1.weight" and lin.path == "0.1"


def test_attribute_order_and_reassignment():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Linear(1, 1)
            self.a = nn.Linear(1, 1)
            self.b = nn.Linear(1, 2)  # replaced in place: keeps its position

    assert list(M().state_dict()) == ["b.weight", "b.bias", "a.weight", "a.bias"]
    m = M()
    del m.a
    assert list(m.state_dict()) == ["b.weight", "b.bias"]


def test_state_dict_is_a_snapshot_and_load_state_dict_is_in_place():
    m = nn.Linear(3, 2, rng=0)
    sd = m.state_dict()
    weight = m.weight.data
    sd["weight"] += 1.0
    assert not np.array_equal(sd["weight"], m.weight.data)  # a copy
    m.load_state_dict(sd)
    assert m.weight.data is weight  # in place: optimisers keep their references
    np.testing.assert_array_equal(m.weight.data, sd["weight"])


def test_load_state_dict_casts_and_reports_differences():
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    sd = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert m[0].weight.dtype == np.float64
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(4, 3\) in the state dict but "
                                              r"\(2, 3\) in the model.*more difference"):
        m.load_state_dict(other.state_dict())
    with pytest.raises(CheckpointError, match="'1.running_var'.*not in the state dict"):
        m.load_state_dict({k: v for k, v in m.state_dict().items() if k != "1.running_var"})
    with pytest.raises(CheckpointError, match="'2.weight' is in the state dict but not in the model"):
        m.load_state_dict({**m.state_dict(), "2.weight": np.zeros(1)})
    result = m.load_state_dict({**m.state_dict(), "extra": np.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["extra"] and result.missing_keys == []
    result = m.load_state_dict({"0.weight": np.zeros((2, 3))}, strict=False)
    assert "0.bias" in result.missing_keys and np.all(m[0].weight.data == 0)
    with pytest.raises(CheckpointError):
        m.load_state_dict([1, 2])


def test_train_eval_and_repr():
    net = Net()
    assert net.training and all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert net.blocks[0].bn.training
    text = repr(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    assert text == ("Sequential(\n"
                    "  (0): Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
                    "  (1): ReLU()\n"
                    "  (2): MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))\n)")
    assert "(blocks): ModuleList(\n    (0): Block(" in repr(net)


def test_sequential_from_ordered_dict_and_indexing():
    m = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.Tanh())]))
    assert list(m.state_dict()) == ["fc.weight", "fc.bias"]
    assert isinstance(m[1], nn.Tanh) and len(m) == 2 and isinstance(m[0:1], nn.Sequential)
    m.append(nn.Linear(3, 1))
    assert "2.weight" in m.state_dict()


def test_traced_model_names_graph_inputs_by_module_path():
    net = Net()
    x = RNG.standard_normal((2, 1, 4, 4))
    g = adl.trace(lambda x: adl.sum(net(x)), x=x)
    assert set(g.parameters) == {n for n, _ in net.named_parameters()}
    # training mode: BN reads no running statistics; they are ignorable inputs
    assert "blocks.0.bn.running_mean" in g.ignorable_inputs
    assert "blocks.0.calls" in g.ignorable_inputs  # an unused buffer
    r = adl.gradient(g, {**net.state_dict(), "x": x})
    assert set(r.grads) == set(g.parameters) | {"x"}
    net.eval()
    g_eval = adl.trace(lambda x: adl.sum(net(x)), x=x)
    assert g_eval.node(g_eval.inputs["blocks.1.bn.running_var"])["role"] == "input"
    np.testing.assert_allclose(g_eval.evaluate({**net.state_dict(), "x": x})["out"],
                               np.sum(net(x)), rtol=1e-12)


def test_parameter_used_twice_is_one_graph_input():
    lin = nn.Linear(3, 3, rng=0)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    x = RNG.standard_normal((2, 3))
    g = adl.trace(lambda x: adl.sum(model(x)), x=x)
    # the first name, as named_parameters() gives it; PyTorch's state dict has both names
    assert list(g.parameters) == ["0.weight", "0.bias"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    r = adl.gradient(g, {**model.state_dict(), "x": x})
    num = adl.gradient(g, {**model.state_dict(), "x": x}, engine="numeric")
    np.testing.assert_allclose(r.grads["0.weight"], num.grads["0.weight"], rtol=1e-6)


def test_unknown_names_are_still_errors():
    m = nn.Linear(2, 1)
    g = adl.trace(lambda x: adl.sum(m(x)), x=(3, 2))
    with pytest.raises(adl.InputError, match="'typo'"):
        adl.gradient(g, {**m.state_dict(), "x": np.ones((3, 2)), "typo": 1.0})


def test_two_models_with_the_same_names_in_one_trace():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(TraceError, match="two different parameters are both named 'weight'"):
        adl.trace(lambda x: adl.sum(a(x) + b(x)), x=(1, 2))


def test_module_must_call_super_init():
    class Bad(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(1, 1)

    with pytest.raises(TraceError, match="super"):
        Bad()


def test_zero_grad_and_grads_after_a_step():
    m = nn.Linear(2, 1)
    step = nn.compile_step(m, nn.MSELoss(), np.ones((3, 2)), np.ones((3, 1)))
    step(np.ones((3, 2)), np.zeros((3, 1)))
    assert m.weight.grad is not None and m.weight.grad.shape == m.weight.shape
    m.zero_grad()
    assert m.weight.grad is None
