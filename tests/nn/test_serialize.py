"""nn.save / nn.load: architecture and weights in one .npz, atomic writes, clear errors."""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from autodiff_lab import nn
from autodiff_lab.errors import CheckpointError

RNG = np.random.default_rng(8)


class TwoHeads(nn.Module):
    """A user model with keyword-only and tuple arguments and a submodule argument."""

    def __init__(self, body: nn.Module, sizes: tuple[int, int] = (2, 3), *, scale: float = 1.0):
        super().__init__()
        self.body = body
        self.heads = nn.ModuleList([nn.Linear(4, s) for s in sizes])
        self.scale = scale

    def forward(self, x):
        h = self.body(x)
        return self.heads[0](h) * self.scale, self.heads[1](h)


class Stack(nn.Sequential):
    """A container subclass with its own constructor: saved by its own arguments."""

    def __init__(self, width: int, depth: int = 2):
        super().__init__(*[nn.Linear(width, width) for _ in range(depth)])


MODELS = {
    "sequential_subclass": lambda: Stack(3, depth=3),
    "neuron": lambda: nn.SigmoidNeuron(),
    "inpainting": lambda: nn.InpaintingMLP(16, 8),
    "dncnn": lambda: nn.DnCNN(depth=4, channels=4),
    "dncnn32": lambda: nn.DnCNN(depth=3, channels=2, dtype="float32"),
    "linear_classifier": lambda: nn.LinearClassifier(16, 3),
    "mlp_classifier": lambda: nn.MLPClassifier(16, 5, 3),
    "sequential": lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.BatchNorm2d(2, momentum=None), nn.LeakyReLU(0.2), nn.MaxPool2d(2), nn.Upsample(2),
        nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2), nn.AvgPool2d(2), nn.Dropout(0.1),
        nn.Flatten(), nn.Identity(), nn.Tanh(), nn.Sigmoid()),
    "ordered": lambda: nn.Sequential(OrderedDict([("fc", nn.Linear(3, 4)), ("act", nn.ReLU())])),
    "user": lambda: TwoHeads(nn.Sequential(nn.Linear(5, 4), nn.ReLU()), (2, 6), scale=0.5),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_rebuilds_architecture_and_weights(name, tmp_path):
    model = MODELS[name]()
    if name.startswith("dncnn") or name == "sequential":  # give BN non-default statistics
        model(RNG.random((2, 1, 8, 8)))
    path = tmp_path / "model.npz"
    nn.save(model, path)
    loaded = nn.load(path)
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])
    assert [p.name for p in loaded.parameters()] == [p.name for p in model.parameters()]
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_loaded_model_computes_the_same(tmp_path):
    model = nn.DnCNN(depth=4, channels=4, rng=0)
    model(RNG.random((3, 1, 8, 8)))  # training step: running statistics move
    noisy = RNG.random((9, 11))
    nn.save(model, tmp_path / "d.npz")
    np.testing.assert_array_equal(nn.load(tmp_path / "d.npz").denoise(noisy), model.denoise(noisy))


def test_a_model_cast_after_construction_keeps_its_dtype(tmp_path):
    model = nn.MLPClassifier(4, 3, 2).float()
    nn.save(model, tmp_path / "m.npz")
    assert nn.load(tmp_path / "m.npz").dtype == np.float32


def test_save_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    nn.save(nn.Linear(2, 2, rng=0), path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        nn.save(nn.Linear(2, 2, rng=1), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


def test_corrupt_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.npz"
    nn.save(nn.MLPClassifier(6, 4, 2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.npz.*truncated or corrupt"):
        nn.load(path)
    path.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"m\.npz.*not a model file"):
        nn.load(path)
    np.savez(path, weight=np.zeros(3))
    with pytest.raises(CheckpointError, match="no architecture"):
        nn.load(path)
    with pytest.raises(CheckpointError, match="no such file"):
        nn.load(tmp_path / "missing.npz")
    # a damaged member: flip bytes inside the compressed/stored data
    nn.save(nn.Linear(30, 30), path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("weight.npy")
    start = info.header_offset + 30 + len(info.filename) + 200
    raw[start:start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        nn.load(path)


def test_unknown_class_and_other_architecture(tmp_path):
    path = tmp_path / "m.npz"

    class Local(nn.Module):
        def __init__(self, n: int = 2):
            super().__init__()
            self.fc = nn.Linear(n, n)

        def forward(self, x):
            return self.fc(x)

    nn.save(Local(), path)
    assert isinstance(nn.load(path), Local)  # defined in this process: found
    # the same file naming a class nobody defines
    arrays = dict(np.load(path))
    arrays["__architecture__"] = np.array(str(arrays["__architecture__"]).replace("Local", "Gone"))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"m\.npz.*unknown model class '.*Gone'"):
        nn.load(path)
    # weights of another configuration under the same architecture entry
    arrays = dict(np.load(path))
    arrays["__architecture__"] = np.array(str(arrays["__architecture__"]).replace("Gone", "Local"))
    arrays["fc.weight"] = np.zeros((3, 3))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \(3, 3\)"):
        nn.load(path)


def test_unsaveable_arguments_are_named():
    class Odd(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

    with pytest.raises(CheckpointError, match="Odd argument 0.*ndarray"):
        nn.save(Odd(np.zeros(3)), "unused.npz")
