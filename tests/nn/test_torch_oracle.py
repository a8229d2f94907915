"""PyTorch as an optional oracle: the same weights (moved by state-dict name) give the same
forward values, gradients and running statistics. Skipped when torch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn

torch = pytest.importorskip("torch")
tnn = torch.nn

RNG = np.random.default_rng(17)


def to_torch(ours, theirs):
    """Copy our state dict into the torch module by name (the names must match exactly)."""
    theirs = theirs.double()  # first: loading into float32 tensors would round our weights
    sd = {k: torch.tensor(v) for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    return theirs


def compare(ours, theirs, x, atol=1e-10):
    """Forward and the gradients of sum(out · R) with respect to x and every parameter."""
    theirs = to_torch(ours, theirs)
    theirs.zero_grad()
    out = ours(x)
    weights = RNG.standard_normal(out.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-10, atol=atol)
    (yt * torch.tensor(weights)).sum().backward()
    g = adl.trace(lambda x: adl.sum(ours(x) * weights), x=x)
    r = adl.gradient(g, {**ours.state_dict(), "x": x})
    np.testing.assert_allclose(r.grads["x"], xt.grad.numpy(), rtol=1e-9, atol=atol)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(r.grads[name], p.grad.numpy(), rtol=1e-9, atol=atol,
                                   err_msg=name)
    return theirs


def test_linear():
    compare(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3, bias=False)),
            tnn.Sequential(tnn.Linear(5, 4), tnn.ReLU(), tnn.Linear(4, 3, bias=False)),
            RNG.standard_normal((6, 5)))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(0, 1), groups=2),
    dict(kernel_size=3, padding="same", dilation=2, bias=False),
])
def test_conv2d(kwargs):
    compare(nn.Conv2d(4, 6, **kwargs), tnn.Conv2d(4, 6, **kwargs), RNG.standard_normal((2, 4, 7, 8)))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=2, stride=2, groups=2),
    dict(kernel_size=3, dilation=2, padding=1, bias=False),
])
def test_conv_transpose2d(kwargs):
    compare(nn.ConvTranspose2d(4, 6, **kwargs), tnn.ConvTranspose2d(4, 6, **kwargs),
            RNG.standard_normal((2, 4, 3, 4)))


def test_pools_upsample_and_activations():
    x = RNG.standard_normal((2, 3, 6, 6))
    compare(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Upsample(scale_factor=2),
                          nn.AvgPool2d(2, stride=1, padding=1), nn.LeakyReLU(0.1), nn.Tanh(),
                          nn.Sigmoid(), nn.Flatten()),
            tnn.Sequential(tnn.MaxPool2d(3, stride=2, padding=1), tnn.Upsample(scale_factor=2),
                           tnn.AvgPool2d(2, stride=1, padding=1), tnn.LeakyReLU(0.1), tnn.Tanh(),
                           tnn.Sigmoid(), tnn.Flatten()), x)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_train_eval_and_running_statistics(momentum):
    ours = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=momentum))
    ours[1].weight.data[...] = RNG.uniform(0.5, 1.5, 3)
    ours[1].bias.data[...] = RNG.standard_normal(3)
    theirs = tnn.Sequential(tnn.Conv2d(2, 3, 3, padding=1), tnn.BatchNorm2d(3, momentum=momentum))
    theirs = to_torch(ours, theirs)
    step = nn.compile_step(ours, nn.MSELoss("sum"))
    for _ in range(3):  # traced training steps vs torch's training forward
        x, y = RNG.standard_normal((4, 2, 5, 5)), RNG.standard_normal((4, 3, 5, 5))
        out = step(x, y)
        theirs.zero_grad()
        loss = 0.5 * ((theirs(torch.tensor(x)) - torch.tensor(y)) ** 2).sum()
        loss.backward()
        assert out.loss == pytest.approx(loss.item(), rel=1e-10)
        for name, p in theirs.named_parameters():
            np.testing.assert_allclose(out.grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-10)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-10, err_msg=key)
    ours.eval()
    theirs.eval()
    compare(ours, theirs, RNG.standard_normal((2, 2, 5, 5)))


def test_batch_norm1d_and_eager_running_statistics():
    ours, theirs = nn.BatchNorm1d(4), tnn.BatchNorm1d(4).double()
    for _ in range(2):
        x = RNG.standard_normal((6, 4))
        ours(x)
        theirs(torch.tensor(x))
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
    x = RNG.standard_normal((3, 4, 5))
    np.testing.assert_allclose(ours(x), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10)


def test_losses():
    p, t = RNG.standard_normal((4, 5)), RNG.standard_normal((4, 5))
    pt, tt = torch.tensor(p), torch.tensor(t)
    # ours 'mean' is half of PyTorch's MSELoss; 'batch_mean' sums per sample, averages over N
    assert float(nn.MSELoss("mean")(p, t)) == pytest.approx(0.5 * tnn.MSELoss()(pt, tt).item())
    assert float(nn.MSELoss()(p, t)) == pytest.approx(
        0.5 * tnn.MSELoss(reduction="sum")(pt, tt).item() / 4)
    assert float(nn.L1Loss("mean")(p, t)) == pytest.approx(tnn.L1Loss()(pt, tt).item())
    z, y = RNG.standard_normal((6, 3)), RNG.integers(0, 3, 6)
    for reduction in ("mean", "sum"):
        zt = torch.tensor(z, requires_grad=True)
        ref = tnn.CrossEntropyLoss(reduction=reduction)(zt, torch.tensor(y))
        ref.backward()
        loss = nn.CrossEntropyLoss(reduction)
        assert float(loss(z, y)) == pytest.approx(ref.item(), rel=1e-12)
        grad = adl.grad(lambda z, y: loss(z, y))(z, y)
        np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10)


def test_dncnn_state_dict_loads_into_the_same_torch_layers():
    ours = nn.DnCNN(depth=4, channels=4)
    layers = [tnn.Conv2d(1, 4, 3, padding=1), tnn.ReLU()]
    for _ in range(2):
        layers += [tnn.Conv2d(4, 4, 3, padding=1, bias=False), tnn.BatchNorm2d(4), tnn.ReLU()]
    layers.append(tnn.Conv2d(4, 1, 3, padding=1))
    theirs = tnn.Module()
    theirs.layers = tnn.Sequential(*layers)
    theirs = to_torch(ours, theirs)
    ours.eval()
    theirs.eval()
    x = RNG.random((1, 1, 9, 10))
    np.testing.assert_allclose(ours(x), theirs.layers(torch.tensor(x)).detach().numpy(), rtol=1e-10)
