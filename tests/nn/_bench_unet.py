"""benchmarks/bench_unet.py's PyTorch twins of our networks, and the check that a twin
computes what ours does, for the tests of those twins."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import autodiff_lab as adl
from autodiff_lab.graph import functions as F


def load_bench_unet() -> ModuleType:
    """The benchmark script as a module (it is not part of the package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_unet.py"
    spec = importlib.util.spec_from_file_location("bench_unet", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def assert_twin_matches(model: Any, twin: str, x: np.ndarray, y: np.ndarray) -> None:
    """The benchmark's PyTorch twin ``twin`` (a function name of bench_unet) of ``model``,
    with our weights, gives the same loss ½‖f(x) − y‖² and the same gradients (float64)."""
    import torch
    theirs = getattr(load_bench_unet(), twin)(model, "float64")
    xt = torch.tensor(x, requires_grad=True)
    loss = 0.5 * ((theirs(xt) - torch.tensor(y)) ** 2).sum()
    loss.backward()
    g = adl.trace(lambda x, y: F.mse_loss(model(x), y, reduction="sum"), x=x, y=y)  # ½‖·‖²
    r = adl.gradient(g, {**model.state_dict(), "x": x, "y": y}, engine="tape")
    np.testing.assert_allclose(float(r.value), float(loss.detach()), rtol=1e-12)
    np.testing.assert_allclose(r.grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(r.grads[name], p.grad.numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=name)
