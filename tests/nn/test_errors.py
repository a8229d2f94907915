"""Bad input gets our own error naming the layer (module path), the shapes and what was
expected -- from our code, not from deep inside numpy."""

from __future__ import annotations

import numpy as np
import pytest

import autodiff_lab as adl
from autodiff_lab import nn
from autodiff_lab.errors import CheckpointError, InputError, ShapeError, TraceError


def _both(model, shape, **kw):
    """Raise from an eager call and from a trace (both must give our error)."""
    errors = []
    for run in (lambda: model(np.ones(shape, **kw)), lambda: adl.trace(lambda x: model(x), x=shape)):
        with pytest.raises((ShapeError, InputError, TraceError)) as info:
            run()
        errors.append(str(info.value))
    return errors


def test_images_given_to_a_linear_model():
    mlp = nn.InpaintingMLP(784, 16)
    for message in _both(mlp, (2, 28, 28)):
        assert "layer 'fc1' (Linear(in_features=784" in message
        assert "expects input (N, 784), got (2, 28, 28)" in message and "flatten" in message


def test_mismatched_channels_between_layers():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3))
    for message in _both(model, (2, 1, 8, 8)):
        assert "layer '2' (Conv2d(32, 8" in message
        assert "expects 32 input channels" in message and "(2, 16, 8, 8) with 16 channels" in message
        assert "output of layer '1' (ReLU), shape (2, 16, 8, 8)" in message


def test_missing_batch_axis_and_too_small_images():
    conv = nn.Sequential(nn.Conv2d(1, 2, 5))
    for message in _both(conv, (1, 8, 8)):
        assert "layer '0'" in message and "x[None]" in message
    for message in _both(conv, (1, 1, 3, 3)):
        assert "layer '0' (Conv2d(1, 2" in message and "does not fit" in message
    pool = nn.Sequential(nn.Flatten(), nn.MaxPool2d(2))
    for message in _both(pool, (2, 1, 4, 4)):
        assert "layer '1' (MaxPool2d" in message and "(N, C, H, W), got shape (2, 16)" in message


def test_batch_norm_and_loss_shapes():
    bn = nn.Sequential(nn.BatchNorm2d(3))
    for message in _both(bn, (2, 4, 5, 5)):
        assert "layer '0' (BatchNorm2d(3" in message and "(N, 3, H, W), got (2, 4, 5, 5)" in message
    with pytest.raises(ShapeError, match=r"MSELoss.*prediction \(4, 784\) and target \(4, 28, 28\)"):
        nn.MSELoss()(np.ones((4, 784)), np.ones((4, 28, 28)))
    with pytest.raises(ShapeError, match=r"CrossEntropyLoss.*logits \(N, K\) and labels \(N,\)"):
        nn.CrossEntropyLoss()(np.ones((4, 3)), np.zeros(5, dtype=int))
    with pytest.raises(InputError, match="integer class labels"):
        nn.CrossEntropyLoss()(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(InputError, match="label 3 is out of range for 3 classes"):
        nn.CrossEntropyLoss()(np.ones((2, 3)), np.array([0, 3]))


def test_traced_dtype_mismatch_names_the_layer():
    model = nn.Sequential(nn.Linear(3, 2, dtype="float32"))
    with pytest.raises(TraceError, match=r"layer '0'.*float32.*input is float64.*astype"):
        adl.trace(lambda x: model(x), x=np.ones((2, 3)))


def test_bad_constructor_arguments():
    with pytest.raises(InputError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(InputError, match="padding='same' needs stride 1"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(InputError, match="in_features must be an int"):
        nn.Linear(0, 3)
    with pytest.raises(InputError, match="kernel_size must be an int or a pair"):
        nn.MaxPool2d((2, 2, 2))
    with pytest.raises(InputError, match="'nearest' or 'bilinear', got 'bicubic'"):
        nn.Upsample(2, mode="bicubic")
    with pytest.raises(InputError, match="reduction"):
        nn.MSELoss("avg")
    with pytest.raises(InputError, match="output_padding"):
        nn.ConvTranspose2d(1, 1, 3, stride=1, output_padding=1)


def test_load_state_dict_of_another_architecture():
    model = nn.DnCNN(depth=4, channels=8)
    with pytest.raises(CheckpointError, match=r"the state dict does not fit this DnCNN: "
                                              r"'layers.0.weight' has shape \(4, 1, 3, 3\)"):
        model.load_state_dict(nn.DnCNN(depth=4, channels=4).state_dict())
    with pytest.raises(CheckpointError, match=r"'layers.5.weight' has shape \(1, 8, 3, 3\) in the "
                                              r"state dict but \(8, 8, 3, 3\).*'layers.6.weight'"):
        model.load_state_dict(nn.DnCNN(depth=3, channels=8).state_dict())


def test_denoise_shapes():
    model = nn.DnCNN(depth=3, channels=2)
    assert model.denoise(np.zeros((5, 7))).shape == (5, 7)
    assert model.denoise(np.zeros((1, 5, 7))).shape == (1, 5, 7)
    assert model.denoise(np.zeros((2, 1, 5, 7))).shape == (2, 1, 5, 7)
    with pytest.raises(ShapeError, match=r"denoise expects .* got shape \(5,\)"):
        model.denoise(np.zeros(5))
