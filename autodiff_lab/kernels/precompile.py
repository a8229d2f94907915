"""``autodiff-lab precompile``: compile the Numba kernels into the cache ahead of time.

Numba compiles a kernel the first time it is called with new argument types and keeps the
machine code in its cache directory (see :mod:`.numba_cache`). With an empty cache the first
DnCNN-lite gradient therefore waits for every kernel it touches to compile (several seconds);
with a warm cache it only loads them. Running this once after installing -- or after
upgrading autodiff_lab or Numba, or on a new CPU, which all invalidate the cache -- moves
that wait out of the first real run.

It runs small gradients of the built-in examples on the tape engine (DnCNN-lite with and
without batch norm, the MLP, the softmax classifier) and one Adam and one SGD-with-momentum
step, in each dtype asked for, with the size thresholds of :mod:`.dispatch` lowered so that
the small inputs take the same fast kernels as full-size ones. Kernels that only other
graphs reach (pooling, transpose convolution, leaky ReLU, ...) still compile at their first
use. Each kernel is reported as compiled (with its time) or loaded from the cache.

When a dtype's workloads have run, :func:`precompile` writes the stamp :mod:`.tiered`
looks for, so later processes take the Numba kernels at once instead of the reference
path. :mod:`.tiered` runs this in a background process when a process finds the cache
empty; ``python -m autodiff_lab.kernels.precompile`` is the command without the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class KernelCompile:
    """One Numba kernel compiled for one signature: what, how long, and for which workload."""

    kernel: str
    signature: str
    seconds: float
    workload: str
    #: compiled while compiling another of our kernels, which calls it (its time is
    #: part of that kernel's)
    nested: bool = False


@contextlib.contextmanager
def _fast_paths_for_small_inputs() -> Iterator[None]:
    """Lower :mod:`.dispatch`'s size thresholds, so that small inputs reach the kernels
    full-size inputs reach (the kernels' types do not depend on sizes)."""
    from autodiff_lab.kernels import dispatch
    saved = dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES
    dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES = 1, 1
    try:
        yield
    finally:
        dispatch.ELEMENTWISE_MIN_SIZE, dispatch.WINOGRAD_MIN_TILES = saved


def _gradient(example: Any) -> Callable[[], Any]:
    import autodiff_lab as adl
    program = adl.engine("tape").compile(example.graph, wrt=list(example.graph.parameters))
    return lambda: program(example.values)


def _thin_conv_gradient(dtype: str) -> Callable[[], Any]:
    import autodiff_lab as adl
    from autodiff_lab.graph.graph import spec
    shapes = {"x": (2, 3, 9, 9), "w": (2, 3, 3, 3)}
    graph = adl.trace(lambda x, w: adl.sum(adl.relu(adl.conv2d(x, w, padding=1)) ** 2),
                      **{k: spec(v, dtype) for k, v in shapes.items()})
    rng = np.random.default_rng(0)
    values = {k: rng.standard_normal(v).astype(dtype) for k, v in shapes.items()}
    program = adl.engine("tape").compile(graph, wrt=["x", "w"])
    return lambda: program(values)


def _optimiser_steps(dtype: str) -> Callable[[], None]:
    from autodiff_lab.nn.optim import SGD, Adam
    from autodiff_lab.nn.parameter import Parameter

    def run() -> None:
        for make in (lambda ps: Adam(ps, lr=1e-3), lambda ps: SGD(ps, lr=1e-2, momentum=0.9)):
            p = Parameter(np.ones((4, 3), dtype), name="w")
            p.grad = np.full((4, 3), 0.5, dtype)
            make([p]).step()
    return run


def workloads(dtype: str) -> list[tuple[str, Callable[[], Any]]]:
    """(name, call) for each workload run in ``dtype``."""
    from autodiff_lab import examples as E
    out: list[tuple[str, Callable[[], Any]]] = [
        (f"dncnn {dtype}", _gradient(E.dncnn(batch=2, size=12, channels=16, batch_norm=False,
                                             dtype=dtype))),
        (f"dncnn+bn {dtype}", _gradient(E.dncnn(batch=2, size=12, channels=16, dtype=dtype))),
        (f"mlp {dtype}", _gradient(E.mlp(d_in=16, hidden=8, batch=4, dtype=dtype))),
        # a few output channels over several input channels: conv_fast's direct loops (the
        # DnCNN layers above take im2col, Winograd or conv_direct)
        (f"thin conv {dtype}", _thin_conv_gradient(dtype)),
        (f"optimisers {dtype}", _optimiser_steps(dtype)),
    ]
    if dtype == "float64":  # the classifier example is float64 only
        out.append(("classifier", _gradient(E.classifier(batch=8))))
    return out


def _kernel_name(dispatcher: Any) -> str:
    fn = dispatcher.py_func
    return f"{fn.__module__.removeprefix('autodiff_lab.kernels.')}.{fn.__qualname__}"


def precompile(dtypes: Sequence[str] = DTYPES,
               echo: Callable[[str], None] | None = None) -> list[KernelCompile]:
    """Run the workloads of :func:`workloads` in each of ``dtypes`` and return the kernels
    that had to be compiled (those found in the cache are not listed). ``echo`` gets one
    line per workload. Meant for a process of its own (the command): while it runs, the
    size thresholds of :mod:`.dispatch` are lowered for every thread of the process."""
    from numba.core import event

    from autodiff_lab.errors import InputError
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise InputError(f"precompile: unknown dtype {bad[0]!r} (choose from {', '.join(DTYPES)})")
    from autodiff_lab.kernels import tiered
    compiled: list[KernelCompile] = []
    saved_tiers = tiered.enabled
    tiered.enabled = False  # compile here and now: no reference path while warming up
    tiered.reset()
    try:
        with _fast_paths_for_small_inputs():
            for dtype in dtypes:
                for name, call in workloads(dtype):
                    t0 = time.perf_counter()
                    with event.install_recorder("numba:compile") as rec:
                        call()
                    starts: dict[int, float] = {}
                    open_kernels = 0  # ours being compiled: a kernel called by another is nested
                    mine = []
                    for stamp, ev in rec.buffer:
                        disp = ev.data["dispatcher"]
                        if not getattr(disp.py_func, "__module__", "").startswith("autodiff_lab"):
                            continue  # Numba's own helpers, compiled inside our kernels
                        if ev.is_start:
                            starts[id(ev.data)] = stamp
                            open_kernels += 1
                            continue
                        open_kernels -= 1
                        sig = ", ".join(str(a) for a in ev.data["args"])
                        mine.append(KernelCompile(_kernel_name(disp), sig,
                                                  stamp - starts.pop(id(ev.data), stamp), name,
                                                  nested=open_kernels > 0))
                    compiled.extend(mine)
                    if echo is not None:
                        spent = time.perf_counter() - t0
                        echo(f"{name:<20} {spent:6.2f} s, {len(mine)} kernel(s) compiled"
                             + (": " + ", ".join(f"{k.kernel} {k.seconds:.2f} s"
                                                + (" (inside the next)" if k.nested else "")
                                                for k in mine)
                                if mine else ""))
                tiered.write_stamp(dtype)
    finally:
        tiered.enabled = saved_tiers
        tiered.reset()
    return compiled


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``autodiff-lab precompile [--dtype float32|float64]``."""
    parser.add_argument("--dtype", choices=DTYPES, action="append",
                        help="compile for this dtype only (repeatable; default: both)")


def run(args: argparse.Namespace) -> int:
    """Compile, print what was compiled and where the cache is."""
    from autodiff_lab.kernels import numba_cache
    t0 = time.perf_counter()
    compiled = precompile(args.dtype or DTYPES, echo=print)
    total = sum(k.seconds for k in compiled if not k.nested)
    print(f"{len(compiled)} kernel(s) compiled in {total:.1f} s "
          f"({time.perf_counter() - t0:.1f} s in all); cache: {numba_cache.cache_location()}")
    if not numba_cache.caching_enabled:
        print("warning: no cache directory could be used, so nothing was kept for the next "
              "process (set NUMBA_CACHE_DIR to a writable directory)")
        return 1
    return 0


if __name__ == "__main__":  # ``python -m autodiff_lab.kernels.precompile``
    import sys
    _parser = argparse.ArgumentParser(prog="python -m autodiff_lab.kernels.precompile",
                                      description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
