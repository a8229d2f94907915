"""``autodiff_lab.nn``: a small PyTorch-like stack whose layers build the shared graph.

Layers call the public ``adl`` functions (``adl.matmul``, ``adl.conv2d``,
``adl.batch_norm`` ...), so a model evaluates eagerly on numpy arrays and, inside
``adl.trace``, records the same graph every engine (tape, symbolic, numeric) can
differentiate. Parameters become graph inputs named by their module path, PyTorch's
``state_dict()`` keys::

    from autodiff_lab import nn
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 784))
    loss = nn.MSELoss()
    g = adl.trace(lambda x, y: loss(model(x), y), x=X, y=Y)
    r = adl.gradient(g, {**model.state_dict(), "x": X, "y": Y}, engine="tape")
    r.grads["0.weight"]

``nn.compile_step`` does the tracing, compiling, feeding and bookkeeping of a training
step; ``nn.fit`` is the whole training loop (checkpoints, resume, gradient health checks);
``nn.save`` / ``nn.load`` write and rebuild whole models. See docs/training.md.
"""

from autodiff_lab.errors import CheckpointError
from autodiff_lab.nn import init
from autodiff_lab.nn.activation import Flatten, LeakyReLU, ReLU, Sigmoid, Tanh
from autodiff_lab.nn.container import ModuleList, Sequential
from autodiff_lab.nn.conv import Conv2d, ConvTranspose2d
from autodiff_lab.nn.diagram import ModuleTrace, module_graph, render_modules, trace_modules
from autodiff_lab.nn.dropout import Dropout
from autodiff_lab.nn.hourglass import Hourglass
from autodiff_lab.nn.linear import Identity, Linear
from autodiff_lab.nn.losses import CrossEntropyLoss, L1Loss, MSELoss
from autodiff_lab.nn.models import DnCNN, InpaintingMLP, LinearClassifier, MLPClassifier, SigmoidNeuron
from autodiff_lab.nn.module import (
    LoadResult,
    Module,
    default_generator,
    get_default_dtype,
    manual_seed,
    set_default_dtype,
)
from autodiff_lab.nn.norm import BatchNorm1d, BatchNorm2d
from autodiff_lab.nn.parameter import Parameter
from autodiff_lab.nn.pooling import AvgPool2d, MaxPool2d, Upsample
from autodiff_lab.nn.residual import ResidualBlock
from autodiff_lab.nn.serialize import load, save
from autodiff_lab.nn.step import CompiledStep, StepOutput, compile_step, evaluate, predict
from autodiff_lab.nn.unet import ConvBlock, UNet

__all__ = [
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "CheckpointError", "CompiledStep", "Conv2d",
    "ConvBlock", "Hourglass", "ResidualBlock", "UNet",
    "ConvTranspose2d", "CrossEntropyLoss", "DnCNN", "Dropout", "Flatten", "Identity",
    "InpaintingMLP", "L1Loss", "LeakyReLU", "Linear", "LinearClassifier", "LoadResult",
    "MLPClassifier", "MSELoss", "MaxPool2d", "Module", "ModuleList", "Parameter", "ReLU",
    "Sequential", "Sigmoid", "SigmoidNeuron", "StepOutput", "Tanh", "Upsample", "compile_step",
    "default_generator", "evaluate", "get_default_dtype", "init", "load", "manual_seed",
    "ModuleTrace", "module_graph", "predict", "render_modules", "trace_modules", "save", "set_default_dtype",
]

# optimisers and schedules: nn/optim.py, nn/schedules.py
from autodiff_lab.nn.optim import SGD, Adam, AdamW, Optimizer  # noqa: E402
from autodiff_lab.nn.schedules import CosineLR, StepLR  # noqa: E402

__all__ += ["SGD", "Adam", "AdamW", "CosineLR", "Optimizer", "StepLR"]

# the training loop: nn/train.py (checkpoints: nn/checkpoint.py, gradient checks: nn/health.py)
from autodiff_lab.errors import TrainingDiverged, TrainingInterrupted  # noqa: E402
from autodiff_lab.nn.train import History, Sampler, StepInfo, fit  # noqa: E402

__all__ += ["History", "Sampler", "StepInfo", "TrainingDiverged", "TrainingInterrupted", "fit"]
