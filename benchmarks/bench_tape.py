"""Speed of the reverse-mode tape engine next to PyTorch, JAX and hand-written numpy.

    python benchmarks/bench_tape.py                 # full run: benchmarks/results/bench_tape-<time>.json
    python benchmarks/bench_tape.py --json out.json # ... or to the file given
    python benchmarks/bench_tape.py --quick         # fewer repeats
    python benchmarks/bench_tape.py --coretype ""   # let OpenBLAS pick its kernels

Workloads: the sigmoid neuron (gradient of 5 scalars, float64); the inpainting MLP
784-256-784, batch 64, L = ½‖W2·relu(W1·x) − y‖² without biases (the formula of the case
study), gradient w.r.t. W1 and W2; DnCNN-lite 16×1×40×40 with 5 plain 3×3 convolutions of 32
channels (``examples.dncnn(batch_norm=False)``: conv+bias+relu, 3 × conv+relu, conv; loss
½ mean((noisy − net) − clean)²), gradient w.r.t. every weight. The same graph in every
framework. Times are medians of interleaved rounds: in each round every framework times its
calls once, in an order shuffled anew each round (so no function always follows the
same one), after a short pause and untimed calls (two, or 10 ms of them). Each peer
(PyTorch, JAX) runs in a process of its own that serves those rounds on request: its rounds
alternate with ours in time, so a machine whose speed drifts (this one by up to 2x over
minutes) weighs on every framework alike, and with a pause of 0.2 s (SETTLE) whenever the
next call belongs to another framework or process, so that the thread pools of the last one
(OpenBLAS, OpenMP, Eigen) have stopped spinning. (Without the pause, those pools still spin
while the next framework runs; on two cores that cost PyTorch up to 2.3x its time alone.) Ours and the
hand-written numpy share this process (both are numpy + OpenBLAS). ``--same-process`` times
everything in one process, interleaved, as earlier versions did.

Environment, identical for every framework (set here before numpy is imported):
OPENBLAS_CORETYPE=SkylakeX on a CPU with AVX-512 (numpy's OpenBLAS otherwise picks Haswell
kernels there; SkylakeX measured 1.6–1.8× faster for matmul), OpenBLAS's own pick on a CPU
without it (``benchmarks/_cpu.py``), 2 threads everywhere (OMP, OpenBLAS, MKL,
Numba, torch.set_num_threads). PyTorch and JAX are optional: install them with
``pip install -r benchmarks/requirements-peers.txt``; a peer that does not import is reported
as "not installed" (in the table and in the flat ``records`` of the JSON), and no target is
decided against it.

The BLAS's share: for the MLP, the five matrix products of one gradient are also timed alone
(no autodiff: ``mlp_products``), through numpy's BLAS, which ours calls, and through
PyTorch's (MKL in its wheels), in the same interleaved rounds. Every framework needs at least
these products, so when numpy's BLAS alone takes more than 0.8 of PyTorch's whole step, the
"0.8× PyTorch" target is out of reach on that machine whatever the tape does; the table says
so next to the MLP's targets.

Memory: each framework computes 200 float32 DnCNN-lite gradients in a fresh process; the
table gives the RSS added over the set-up after 10, 100 and 200 calls, its high-water mark
during the first 100 (the target's measure: after a call PyTorch has handed its activations
back to the allocator, which may or may not have returned them to the system, so its RSS
after a call moved between 1 and 29 MB over runs while its peak stayed 34–51 MB) and the
growth from call 10 to 200. The kernels are loaded first on a small DnCNN that takes the
same kernels (1/8 of the pixels) and reported apart: Numba's compiled kernels, like
PyTorch's libraries, are paid once per process; the warm-up's data is freed before the
set-up.

"ours" is the compiled tape program with ``anomaly=False`` (PyTorch does not check
either); the default, anomaly on (the value, outputs and gradients checked for NaN/Inf once
per call), is reported next to it with its cost in per cent; its target is decided on
the two timed back to back, round after round (paired_cost). "cold" is the first
call of a freshly compiled program in this process (Numba cache warm); "cold start" times a
fresh Python process from its start to the end of its first float32 DnCNN gradient (its exit
afterwards reported apart), next to PyTorch doing the same, and, where SciPy is installed
(JAX brings it), once more with SciPy hidden, as a plain install of autodiff_lab sees it
(Numba imports scipy.linalg at its first kernel when it can); "first-ever compile" does the
same with an empty Numba cache directory (medians of interleaved rounds, see cold_starts).
These children cache their modules' bytecode, as Python does by default and pip at install
(this machine sets PYTHONDONTWRITEBYTECODE=1: an editable checkout then compiled all of our
modules in every process, about 0.1-0.3 s of a 1 s start).
"""

from __future__ import annotations

import argparse
import os
import sys

THREADS = "2"


def _set_env(coretype: str) -> None:
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    else:
        os.environ.pop("OPENBLAS_CORETYPE", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = THREADS


def _early_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--coretype", default=None,
                    help="OPENBLAS_CORETYPE for every framework (default: SkylakeX on a CPU with "
                         "AVX-512, else unset; \"\" leaves it unset)")
    ap.add_argument("--json", default=None,
                    help="output JSON path (default: a new benchmarks/results/bench_tape-<time>.json; "
                         "the committed results are never overwritten unless named here)")
    ap.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    ap.add_argument("--small-only", action="store_true",
                    help="only the small array graphs (vector neuron, MLP 16-8-16)")
    ap.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process runs")
    ap.add_argument("--no-memory", action="store_true", help="skip the RSS measurements")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # one RSS run
    ap.add_argument("--peer-child", default=None, help=argparse.SUPPRESS)  # one peer's timings
    ap.add_argument("--same-process", action="store_true",
                    help="time the peers in this process, interleaved with ours (default: each "
                         "peer in a process of its own, serving rounds interleaved with ours)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc keeps freed memory (mallopt) -- for every framework in the run; "
                         "see autodiff_lab/kernels/memory.py")
    args = ap.parse_args()
    if args.coretype is None:
        from _cpu import default_coretype  # benchmarks/ is on sys.path when run

        args.coretype = default_coretype()
    return args


ARGS = _early_args() if __name__ == "__main__" else None
if ARGS is not None:
    _set_env(ARGS.coretype)

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import autodiff_lab as adl  # noqa: E402
from autodiff_lab import examples as E  # noqa: E402
from autodiff_lab.kernels import conv_reference as R  # noqa: E402

HERE = Path(__file__).resolve().parent

# per-call times of the peers measured earlier on this machine (ms), kept in the results for
# reference; never used to decide a target (a peer that did not run is "not installed")
QUOTED = {
    ("sigmoid", "float64"): {"torch": 0.059, "jax": 0.0115},
    ("mlp", "float64"): {"torch": 2.40, "jax": 2.14, "numpy": 1.95},
    ("mlp", "float32"): {"torch": 1.17, "jax": 0.79, "numpy": 0.83},
    ("dncnn", "float64"): {"torch": 255.0, "jax": 89.0, "numpy": 251.0},
    ("dncnn", "float32"): {"torch": 24.4, "jax": 44.6, "numpy": 159.0},
}


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------

#: seconds of pause before a call when the one before it was another framework's: OpenBLAS
#: threads spin for up to about 0.1 s after their last call (2^28 cycles by default), OpenMP
#: and Eigen threads for less; the pause lets them all sleep
SETTLE = 0.2


class Remote:
    """A function timed in another process (:func:`serve`): ``measure(inner)`` asks that
    process for one round, which makes the same pause and two untimed calls as
    :func:`interleaved` does here, and returns its seconds per call."""

    def __init__(self, peer: PeerProcess, key: str) -> None:
        self.peer, self.key = peer, key

    def measure(self, inner: int) -> float:
        return self.peer.ask(f"{self.key} {inner}")


def interleaved(fns: dict[str, Callable[[], Any] | Remote], rounds: int, inner: int = 1
                ) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds.

    Each framework's thread pool keeps spinning for a while after its last call (OpenMP in
    PyTorch, Eigen in JAX, OpenBLAS in numpy and ours); whoever runs next on the two cores
    would pay for it. So before its timed calls each function gets a short pause and two
    untimed calls (more for a short one, see :func:`time_round`): with one, whichever
    function came right after the hand-written numpy DnCNN (a third of a second of OpenBLAS
    calls) still paid about 10 ms of a 33 ms call, with no page faults in it (measured: the
    float32 DnCNN's anomaly-off program 42.9 ms when it came after numpy, 33.1 ms when the
    anomaly-on one did, which then took 42.1; with two untimed calls both 34-36 ms). The
    order is shuffled anew each round, so that no function always comes after the same one
    (turning a fixed order by one place each round would keep every function's predecessor).
    A :class:`Remote` function runs in its own process. Whenever the next call belongs to
    another framework than the last one (the name's part before "_": ``ours`` and
    ``ours_anomaly`` are one, ``numpy`` another) or to another process, there is first a
    pause of :data:`SETTLE` seconds: the hand-written numpy's OpenBLAS threads spin for up to
    0.1 s after its last product, over the 20 ms pause and untimed calls of the next round
    (measured: our float32 DnCNN 29 ms right after two-thread products, 24.5 ms after
    itself).
    """
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    where: object = None  # the process and framework of the last call
    rng = np.random.default_rng(0)  # the same orders in every run
    for _ in range(rounds):
        for name in [names[i] for i in rng.permutation(len(names))]:
            fn = fns[name]
            here = (fn.peer if isinstance(fn, Remote) else None, name.split("_")[0])
            if here != where:
                time.sleep(SETTLE)
            where = here
            try:
                samples[name].append(fn.measure(inner) if isinstance(fn, Remote)
                                     else time_round(fn, inner))
            except PeerError as exc:  # that peer's process died: no more rounds of it
                print(f"  {name}: {exc}", file=sys.stderr)
                if name in names:
                    names.remove(name)
    return {k: float(np.median(v)) for k, v in samples.items() if v}


#: seconds of untimed calls (at least two) before a round's timed ones: after a pause, a
#: microsecond-sized call is slow until caches and the core's clock are back
WARM_S = 0.01


def time_round(fn: Callable[[], Any], inner: int) -> float:
    """One round of :func:`interleaved` for one function: a short pause, untimed calls (two,
    or more until :data:`WARM_S` has passed), then the seconds per call of ``inner`` timed
    ones (what a :class:`Remote` asks for)."""
    time.sleep(0.02)
    t0 = time.perf_counter()
    n = 0
    while n < 2 or time.perf_counter() - t0 < WARM_S:
        fn()
        n += 1
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def paired_cost(off: Callable[[], Any], on: Callable[[], Any], rounds: int, inner: int
                ) -> float:
    """The median over ``rounds`` of on's time over off's, the two timed back to back
    (:func:`time_round` each, which of them first alternating from round to round): the
    anomaly check's cost with the machine's drift taken out. In the interleaved rounds the
    two are apart, and the ratio of their medians swung from −26 % to +22 % between runs on
    graphs of a few microseconds."""
    ratios = []
    for r in range(rounds):
        first, second = (off, on) if r % 2 == 0 else (on, off)
        a, b = time_round(first, inner), time_round(second, inner)
        ratios.append(b / a if first is off else a / b)
    return float(np.median(ratios))


def first_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------

def load_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(THREADS))
    return torch


def load_jax() -> Any:
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def sigmoid_peers(torch: Any, jax: Any, values: dict[str, np.ndarray]) -> dict[str, Callable]:
    names = ["w0", "x0", "w1", "x1", "w2"]
    out: dict[str, Callable] = {}
    if torch is not None:
        ts = [torch.tensor(float(values[n]), dtype=torch.float64, requires_grad=True) for n in names]

        def torch_step():
            w0, x0, w1, x1, w2 = ts
            f = torch.sigmoid(w0 * x0 + w1 * x1 + w2)
            return torch.autograd.grad(f, ts)
        out["torch"] = torch_step
    if jax is not None:
        import jax.numpy as jnp

        def f(w0, x0, w1, x1, w2):
            return jax.nn.sigmoid(w0 * x0 + w1 * x1 + w2)
        grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))
        args = [jnp.asarray(float(values[n]), dtype=jnp.float64) for n in names]

        def jax_step():
            v, gs = grad(*args)
            return jax.block_until_ready(gs)
        out["jax"] = jax_step
    return out


def small_peers(torch: Any, jax: Any, kind: str, values: dict[str, np.ndarray]
                ) -> dict[str, Callable]:
    """Peers of the small array graphs: the vector neuron σ(w0·x0 + w1·x1 + w2) and the
    16-8-16 MLP with biases on a batch of 4 (gradients of every input, as ours)."""
    names = ["w", "x"] if kind == "neuron" else ["W1", "b1", "W2", "b2", "x", "y"]

    def f(np_, sigmoid, relu, *a):
        if kind == "neuron":
            w, x = a
            return sigmoid(w[0] * x[0] + w[1] * x[1] + w[2])
        W1, b1, W2, b2, x, y = a  # noqa: N806
        d = W2 @ relu(W1 @ x + b1) + b2 - y
        return 0.5 * np_.sum(d * d)
    out: dict[str, Callable] = {}
    if torch is not None:
        ts = [torch.tensor(values[n], requires_grad=True) for n in names]
        out["torch"] = lambda: torch.autograd.grad(f(torch, torch.sigmoid, torch.relu, *ts), ts)
    if jax is not None:
        import jax.numpy as jnp
        grad = jax.jit(jax.value_and_grad(lambda *a: f(jnp, jax.nn.sigmoid, jax.nn.relu, *a),
                                          argnums=tuple(range(len(names)))))
        args = [jnp.asarray(values[n]) for n in names]
        out["jax"] = lambda: jax.block_until_ready(grad(*args))
    return out


def mlp_peers(torch: Any, jax: Any, values: dict[str, np.ndarray]) -> dict[str, Callable]:
    W1, W2, x, y = (values[k] for k in ("W1", "W2", "x", "y"))
    out: dict[str, Callable] = {}

    def numpy_step():
        h = W1 @ x
        r = np.maximum(h, 0)
        d = W2 @ r - y
        loss = 0.5 * np.vdot(d, d)
        gW2 = d @ r.T
        gh = (W2.T @ d) * (h > 0)
        return loss, gh @ x.T, gW2
    out["numpy"] = numpy_step
    if torch is not None:
        tW1 = torch.tensor(W1, requires_grad=True)
        tW2 = torch.tensor(W2, requires_grad=True)
        tx, ty = torch.tensor(x), torch.tensor(y)

        def torch_step():
            loss = 0.5 * ((tW2 @ torch.relu(tW1 @ tx) - ty) ** 2).sum()
            return torch.autograd.grad(loss, [tW1, tW2])
        out["torch"] = torch_step
    if jax is not None:
        import jax.numpy as jnp

        def loss(W1_, W2_, x_, y_):
            d = W2_ @ jax.nn.relu(W1_ @ x_) - y_
            return 0.5 * jnp.sum(d * d)
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        args = [jnp.asarray(a) for a in (W1, W2, x, y)]

        def jax_step():
            return jax.block_until_ready(grad(*args))
        out["jax"] = jax_step
    return out


def mlp_products(torch: Any, values: dict[str, np.ndarray]) -> dict[str, Callable]:
    """The five matrix products of one MLP gradient and nothing else: the forward's ``W1·x``
    and ``W2·r``, the backward's ``d·rᵀ`` (dW2), ``W2ᵀ·d`` (dr) and ``gh·xᵀ`` (dW1), on the
    operands of one call, each the way round the tape's matmul rules take it -- through
    numpy's BLAS (``"numpy"``, in this process, where ours runs) and through PyTorch's
    (``"torch"``). Every framework's gradient needs at least these five products, so their
    time bounds the MLP's ratios: ours cannot come under 0.8× PyTorch's step while numpy's
    BLAS alone takes longer than that."""
    W1, W2, x, y = (values[k] for k in ("W1", "W2", "x", "y"))
    h = W1 @ x
    r = np.maximum(h, 0)
    d = W2 @ r - y
    gh = (W2.T @ d) * (h > 0)
    pairs = [(W1, x), (W2, r), (d, r.T), (W2.T, d), (gh, x.T)]
    # into arrays made once: a fresh 1.6 MB result is mapped afresh by malloc, a page fault
    # per 4 KiB (the tape's products, too, write into recycled arrays)
    results = [np.empty((a.shape[0], b.shape[1]), a.dtype) for a, b in pairs]
    out: dict[str, Callable] = {}

    def numpy_products():
        return [np.matmul(a, b, out=o) for (a, b), o in zip(pairs, results)]
    out["numpy"] = numpy_products
    if torch is not None:
        t_pairs = [(torch.from_numpy(a) if a.flags.c_contiguous else torch.from_numpy(a.T).T,
                    torch.from_numpy(b) if b.flags.c_contiguous else torch.from_numpy(b.T).T)
                   for a, b in pairs]  # the same memory, transposed views where numpy's are
        t_results = [torch.empty(o.shape, dtype=ta.dtype) for o, (ta, _) in zip(results, t_pairs)]

        def torch_products():
            return [torch.matmul(a, b, out=o) for (a, b), o in zip(t_pairs, t_results)]
        out["torch"] = torch_products
    return out


def dncnn_peers(torch: Any, jax: Any, values: dict[str, np.ndarray], depth: int = 5
                ) -> dict[str, Callable]:
    noisy, clean = values["noisy"], values["clean"]
    ws = [values[f"w{i}"] for i in range(depth)]
    b0 = values["b0"]
    pad, one = (1, 1), (1, 1)
    out: dict[str, Callable] = {}

    def numpy_step():  # hand-written with the numpy reference kernels (im2col + tensordot)
        hs, pre = [noisy], []
        h = noisy
        for i, w in enumerate(ws):
            z = R.conv2d_forward(h, w, one, pad, one)
            if i == 0:
                z = z + b0[:, None, None]
            if i < depth - 1:
                pre.append(z)
                h = np.maximum(z, 0)
                hs.append(h)
            else:
                h = z
        d = noisy - h - clean
        loss = 0.5 * np.mean(d * d)
        g = -d / d.size
        grads = [None] * depth
        for i in range(depth - 1, -1, -1):
            grads[i] = R.conv2d_backward_weight(g, hs[i], ws[i].shape, one, pad, one)
            if i > 0:
                g = R.conv2d_backward_input(g, ws[i], hs[i].shape, one, pad, one)
                g = g * (pre[i - 1] > 0)
        return loss, grads, g.sum(axis=(0, 2, 3))
    out["numpy"] = numpy_step
    if torch is not None:
        F = torch.nn.functional
        tws = [torch.tensor(w, requires_grad=True) for w in ws]
        tb0 = torch.tensor(b0, requires_grad=True)
        tn, tc = torch.tensor(noisy), torch.tensor(clean)

        def torch_step():
            h = torch.relu(F.conv2d(tn, tws[0], tb0, padding=1))
            for w in tws[1:-1]:
                h = torch.relu(F.conv2d(h, w, padding=1))
            noise = F.conv2d(h, tws[-1], padding=1)
            loss = 0.5 * ((tn - noise - tc) ** 2).mean()
            return torch.autograd.grad(loss, tws + [tb0])
        out["torch"] = torch_step
    if jax is not None:
        import jax.numpy as jnp
        from jax import lax

        def conv(h, w):
            return lax.conv_general_dilated(h, w, (1, 1), [(1, 1), (1, 1)],
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))

        def loss(params, n, c):
            wl, b = params
            h = jax.nn.relu(conv(n, wl[0]) + b[:, None, None])
            for w in wl[1:-1]:
                h = jax.nn.relu(conv(h, w))
            d = n - conv(h, wl[-1]) - c
            return 0.5 * jnp.mean(d * d)
        grad = jax.jit(jax.value_and_grad(loss))
        params = ([jnp.asarray(w) for w in ws], jnp.asarray(b0))
        jn, jc = jnp.asarray(noisy), jnp.asarray(clean)

        def jax_step():
            return jax.block_until_ready(grad(params, jn, jc))
        out["jax"] = jax_step
    return out


# --------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------

def ours(graph: Any, values: dict[str, np.ndarray], wrt: list[str]) -> dict[str, Any]:
    """Compile time, first-call time, and callables for the warm runs."""
    t0 = time.perf_counter()
    fast = adl.engine("tape", anomaly=False).compile(graph, wrt=wrt)
    compile_s = time.perf_counter() - t0
    cold_s = first_call(lambda: fast(values))
    checked = adl.engine("tape", anomaly=True).compile(graph, wrt=wrt)
    checked(values)
    fast.forward(values)
    return {"program": fast, "compile_s": compile_s, "cold_s": cold_s,
            "fns": {"ours": lambda: fast(values), "ours_anomaly": lambda: checked(values),
                    "ours_forward": lambda: fast.forward(values)}}


#: the child of :func:`cold_start`: prints its import time, then the wall-clock time
#: (``time.time()``) right after its first gradient, so the parent can tell the time to that
#: gradient from the time the process then takes to exit
_COLD_OURS = """\
import json, sys, time
t0 = time.perf_counter()
import autodiff_lab as adl
t_import = time.perf_counter() - t0
from autodiff_lab import examples as E
ex = E.dncnn(batch_norm=False, dtype='float32')
p = adl.engine('tape').compile(ex.graph, wrt=list(ex.graph.parameters))
t1 = time.perf_counter()
p(ex.values)
t_first = time.perf_counter() - t1
done = time.time()
from autodiff_lab.kernels import tiered
print(json.dumps({"import_s": t_import, "first_call_s": t_first, "done": done,
                  "sympy_imported": "sympy" in sys.modules,
                  "reference_path": not tiered.ready_dtypes,
                  "background_pid": tiered.background_pid()}))
"""

#: the same DnCNN-lite gradient (5 convolutions 3×3, 32 channels, bias on the first, ReLU,
#: loss ½ mean((noisy − net) − clean)²) written directly in PyTorch
_COLD_TORCH = """\
import json, time
t0 = time.perf_counter()
import torch
t_import = time.perf_counter() - t0
torch.set_num_threads(THREADS)
g = torch.Generator().manual_seed(0)
clean = torch.rand((16, 1, 40, 40), generator=g)
noisy = clean + 0.1 * torch.randn((16, 1, 40, 40), generator=g)
chans = [1, 32, 32, 32, 32, 1]
ws = [(torch.randn((chans[i + 1], chans[i], 3, 3), generator=g) * (2 / (9 * chans[i])) ** 0.5
       ).requires_grad_() for i in range(5)]
b0 = torch.zeros(32, requires_grad=True)
t1 = time.perf_counter()
h = noisy
for i, w in enumerate(ws):
    h = torch.nn.functional.conv2d(h, w, b0 if i == 0 else None, padding=1)
    if i < 4:
        h = torch.relu(h)
loss = 0.5 * (((noisy - h) - clean) ** 2).mean()
loss.backward()
t_first = time.perf_counter() - t1
print(json.dumps({"import_s": t_import, "first_call_s": t_first, "done": time.time()}))
""".replace("THREADS", THREADS)


#: prepended to :data:`_COLD_OURS` for the start a plain install of autodiff_lab sees:
#: without SciPy (not among our dependencies; JAX's install brings it). When SciPy is
#: installed, Numba imports ``scipy.linalg`` while loading its first kernel (to look for
#: BLAS), measured at 0.15–0.2 s of the warm-cache start.
_NO_SCIPY = "import sys\nsys.modules['scipy'] = None  # as if not installed\n"


def _scipy_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("scipy") is not None


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not our child) has ended; False after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.05)
    return False


def cold_start(empty_cache: bool, framework: str = "ours") -> dict[str, Any] | None:
    """A fresh Python process to its first float32 DnCNN-lite gradient (``ours``: the tape
    engine on ``examples.dncnn(batch_norm=False, dtype='float32')``; ``torch``: the same
    network in PyTorch). ``empty_cache``: with a new, empty Numba cache directory, so every
    kernel the gradient touches is compiled (a first-ever run).

    ``to_first_gradient_s`` is the time from starting the process to the end of its first
    gradient (the child reports that moment's wall-clock time); ``exit_s`` is what the
    process then takes to exit (the interpreter freeing its modules), reported apart;
    ``process_s`` is the whole run. The child runs with Python's bytecode cache on
    (``PYTHONDONTWRITEBYTECODE`` removed from its environment), as after a ``pip install``.
    When the child found its kernels neither compiled nor cached (``reference_path``: its
    first gradient ran on the numpy reference) it started
    the background compile (``autodiff_lab.kernels.tiered``); this waits for that process
    to end before the next run and reports ``background_done_s``, from the start of the
    child to the end of the background compile (``None``: none was started). ``None`` if
    the child failed (its error is printed).
    """
    code = {"torch": _COLD_TORCH, "ours_no_scipy": _NO_SCIPY + _COLD_OURS}.get(framework,
                                                                            _COLD_OURS)
    env = dict(os.environ)
    # Python's default: imported sources are cached as bytecode (__pycache__), as pip does
    # at install; with PYTHONDONTWRITEBYTECODE=1 (set on this machine) an editable checkout
    # compiled every one of our modules in every process, ~0.1 s of its start
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        if empty_cache:
            env["NUMBA_CACHE_DIR"] = tmp
        start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=600)
        wall = time.perf_counter() - t0
        child = (json.loads(proc.stdout.strip().splitlines()[-1])
                 if proc.returncode == 0 else {})
        pid = child.pop("background_pid", None)
        background = None
        if pid is not None and _wait_gone(pid, 600):
            background = time.time() - start
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    to_first = child.pop("done") - start
    return {"to_first_gradient_s": to_first, "exit_s": wall - to_first, "process_s": wall,
            "background_done_s": background, **child}


def cold_starts(rounds: int = 3, torch_installed: bool = True) -> dict[str, Any]:
    """:func:`cold_start` ``rounds`` times with a warm cache, with an empty one, and (when
    installed) for PyTorch, interleaved; the medians of the times to the first gradient
    and every run."""
    kinds = {"warm": (False, "ours"), "empty": (True, "ours")}
    if _scipy_installed():
        kinds["warm_no_scipy"] = (False, "ours_no_scipy")
    if torch_installed:
        kinds["torch"] = (False, "torch")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    cold_start(False)  # the kernels in the cache directory, as a warm-cache start finds them
    for _ in range(rounds):
        for kind, (empty, framework) in kinds.items():
            r = cold_start(empty, framework)
            if r is not None:
                runs[kind].append(r)

    def median(kind: str) -> float | None:
        vals = [r["to_first_gradient_s"] for r in runs[kind]]
        return float(np.median(vals)) if vals else None

    done = [r["background_done_s"] for r in runs["empty"] if r.get("background_done_s")]
    return {"cold_start_s": median("warm"), "first_ever_compile_s": median("empty"),
            "cold_start_no_scipy_s": median("warm_no_scipy") if "warm_no_scipy" in kinds
            else None,
            "cold_start_torch_s": median("torch") if torch_installed else None,
            # the empty-cache run's background compile, from the process's start to its end
            "first_ever_background_done_s": float(np.median(done)) if done else None,
            "cold_start_runs": runs}


# --------------------------------------------------------------------------------------
# memory: the RSS one program adds, each framework in a fresh process
# --------------------------------------------------------------------------------------

MEMORY_CALLS = (10, 100, 200)
#: the DnCNN that loads each framework's kernels before the measured one is set up: small
#: (1/8 of its pixels), but past the sizes where our convolutions switch kernels (Winograd
#: from 512 output tiles, two threads from two blocks), so it loads the ones measured
MEMORY_WARM_UP = {"batch": 2, "size": 40}


def _rss() -> int:
    """Resident set size of this process now (bytes), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Start this process's high-water mark of RSS (VmHWM) afresh from its RSS now (Linux:
    ``5`` to /proc/self/clear_refs); False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's high-water mark of RSS (bytes) since :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _maxrss()


def _dncnn_step(framework: str, ex: Any) -> Callable[[], Any]:
    """One DnCNN-lite gradient of ``ex`` in ``framework`` (ours: the tape program)."""
    wrt = list(ex.graph.parameters)
    if framework in ("ours", "ours_anomaly"):
        program = adl.engine("tape", anomaly=framework == "ours_anomaly").compile(ex.graph,
                                                                                 wrt=wrt)
        return lambda: program(ex.values)
    peers = dncnn_peers(load_torch() if framework == "torch" else None,
                        load_jax() if framework == "jax" else None, ex.values)
    return peers[framework]


def memory_child(framework: str) -> dict[str, Any]:
    """In this (fresh) process: load the framework's kernels on a small DnCNN that takes the
    same kernels (:data:`MEMORY_WARM_UP`; library cost, reported apart; our recycled arrays
    and kernel buffers of it are dropped, and every framework's free heap memory handed
    back), set up the benchmark's float32 DnCNN-lite (compile / tensors), then record the
    RSS after 10, 100 and 200 gradients and its high-water mark during the first 100."""
    lib0 = _rss()
    _dncnn_step(framework, E.dncnn(**MEMORY_WARM_UP, batch_norm=False, dtype="float32"))()
    if framework in ("ours", "ours_anomaly"):  # the warm-up's data goes; its kernels stay
        from autodiff_lab.kernels import conv_fast, memory
        conv_fast.clear_scratch()
        memory.clear_pool()
    from autodiff_lab.kernels.memory import release_freed_memory
    release_freed_memory()  # every framework alike: free heap memory back to the system
    lib = _rss()
    step = _dncnn_step(framework, E.dncnn(batch_norm=False, dtype="float32"))
    setup = _rss()
    reset = _reset_peak_rss()
    setup_peak = _peak_rss()
    after: dict[int, int] = {}
    peak = setup_peak
    for i in range(1, MEMORY_CALLS[-1] + 1):
        step()
        if i in MEMORY_CALLS:
            after[i] = _rss()
        if i == 100:
            peak = _peak_rss()
    return {"framework": framework, "library_mb": (lib - lib0) / 1e6,
            "process_before_mb": lib0 / 1e6,
            **{f"added_after_{i}_mb": (v - setup) / 1e6 for i, v in after.items()},
            "growth_10_to_200_mb": (after[200] - after[10]) / 1e6,
            # the high-water mark of the first 100 calls above the set-up (None where the
            # mark could not be reset and the calls did not raise it)
            "peak_added_mb": (peak - setup) / 1e6 if reset or peak > setup_peak else None}


def memory_rows(frameworks: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`memory_child` for each framework, each in its own process."""
    out: dict[str, dict[str, Any]] = {}
    for fw in frameworks:
        proc = subprocess.run([sys.executable, __file__, "--memory-child", fw,
                               "--coretype", os.environ.get("OPENBLAS_CORETYPE", "")],
                              capture_output=True, text=True, timeout=900, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            out[fw] = {"framework": fw, "error": proc.stderr.strip().splitlines()[-1:]}
            continue
        out[fw] = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = out[fw]["peak_added_mb"]
        print(f"  memory {fw}: +{out[fw]['added_after_100_mb']:.1f} MB after 100 calls, peak "
              + (f"+{peak:.1f} MB" if peak is not None else "not measured"), flush=True)
    return out


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.keep_freed_memory:
        from autodiff_lab.kernels.memory import keep_freed_memory
        keep_freed_memory()
    child = args.peer_child
    wanted = set() if args.no_peers else {"torch", "jax"}
    if child:
        wanted = {child}
    elif not args.same_process:  # peers run in processes of their own (see the docstring)
        wanted = set()
    torch = load_torch() if "torch" in wanted else None
    jax = load_jax() if "jax" in wanted else None
    quick = args.quick
    rows: list[dict[str, Any]] = []
    # peers in processes of their own, which serve interleaved rounds (see the docstring)
    separate = not (child or args.no_peers or args.same_process)
    procs = [p for p in (PeerProcess.start(n, args) for n in ("torch", "jax")) if p] \
        if separate else []
    served: dict[str, tuple[Callable[[], Any], int]] = {}  # a peer process's workloads

    def bench(workload: str, dtype: str, graph: Any, values: dict, wrt: list[str],
              peers: dict[str, Callable], rounds: int, inner: int) -> None:
        if child:  # set up this peer's function, warm, for the parent to ask for rounds
            if child in peers:
                peers[child]()  # warm-up (JAX traces and compiles here)
                served[f"{workload}/{dtype}"] = (peers[child], inner)
            return
        mine = ours(graph, values, wrt)
        for fn in peers.values():  # warm-up (JAX traces and compiles here)
            fn()
        remotes = {p.name: p.remote(workload, dtype) for p in procs}
        fns = {**mine["fns"], **peers, **{k: v for k, v in remotes.items() if v}}
        med = interleaved(fns, rounds, inner)
        paired = paired_cost(mine["fns"]["ours"], mine["fns"]["ours_anomaly"], rounds, inner)
        prog = mine["program"]
        fwd = med.pop("ours_forward")
        bwd = med["ours"] - fwd
        if prog.scalar_fast_path or prog.generated_path:  # forward() runs the general loop
            fwd = bwd = float("nan")
        row = {"workload": workload, "dtype": dtype,
               "ours_ms": med["ours"] * 1e3, "ours_anomaly_ms": med["ours_anomaly"] * 1e3,
               "anomaly_cost_paired": paired - 1,
               "ours_cold_ms": mine["cold_s"] * 1e3, "compile_ms": mine["compile_s"] * 1e3,
               "forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3,
               "backward_over_forward": bwd / fwd if fwd > 0 else None,
               "keep_freed_memory": bool(args.keep_freed_memory),
               "memory_bytes": prog.memory_report(np.dtype(dtype).itemsize),
               "memory_bytes_keep_all": prog.memory_report(np.dtype(dtype).itemsize, True),
               "scalar_fast_path": prog.scalar_fast_path,
               "generated_path": prog.generated_path,
               "quoted_ms": QUOTED.get((workload, dtype), {})}
        flops = conv_flops(graph, wrt)
        row["conv_gflop"] = flops / 1e9
        row["gflops"] = flops / med["ours"] / 1e9 if flops else None
        for peer in ("torch", "jax", "numpy"):
            if peer in med:
                row[f"{peer}_ms"] = med[peer] * 1e3
                row[f"ours_over_{peer}"] = med["ours"] / med[peer]
        rows.append(row)
        print(f"  {workload} {dtype}: ours {row['ours_ms']:.4g} ms", flush=True)

    products: dict[str, dict[str, float]] = {}  # the MLP's five products alone, per dtype

    def bench_products(dtype: str, peers: dict[str, Callable], rounds: int, inner: int) -> None:
        """:func:`mlp_products` in interleaved rounds, PyTorch's in its own process."""
        if child:
            if child in peers:
                peers[child]()
                served[f"mlp_products/{dtype}"] = (peers[child], inner)
            return
        for fn in peers.values():
            fn()
        remotes = {p.name: p.remote("mlp_products", dtype) for p in procs}
        med = interleaved({**peers, **{k: v for k, v in remotes.items() if v}}, rounds, inner)
        products[dtype] = {f"{k}_ms": v * 1e3 for k, v in med.items()}

    ex = E.sigmoid_neuron()
    bench("sigmoid", "float64", ex.graph, ex.values, list(ex.graph.inputs),
          sigmoid_peers(torch, jax, ex.values), rounds=7 if quick else 15,
          inner=500 if quick else 2000)
    # small array graphs (the tape's generated function): the vector neuron, MLP 16-8-16
    for kind, ex in (("neuron", E.sigmoid_neuron_vector()), ("mlp", E.mlp(16, 8, 4))):
        bench(f"{kind}_small", "float64", ex.graph, ex.values, list(ex.graph.inputs),
              small_peers(torch, jax, kind, ex.values), rounds=7 if quick else 15,
              inner=300 if quick else 1000)
    for dtype in () if args.small_only else ("float64", "float32"):
        ex = E.mlp(bias=False, dtype=dtype)
        bench("mlp", dtype, ex.graph, ex.values, ["W1", "W2"], mlp_peers(torch, jax, ex.values),
              rounds=10 if quick else 30, inner=3)
        bench_products(dtype, mlp_products(torch, ex.values), rounds=10 if quick else 30,
                       inner=3)
    for dtype in () if args.small_only else ("float64", "float32"):
        ex = E.dncnn(batch_norm=False, dtype=dtype)
        bench("dncnn", dtype, ex.graph, ex.values, list(ex.graph.parameters),
              dncnn_peers(torch, jax, ex.values), rounds=3 if quick else 15, inner=1)
    for dtype in () if args.small_only else ("float64",):
        ex = E.dncnn(batch_norm=True, dtype=dtype)  # batch norm: fused with the ReLU after it
        bench("dncnn_bn", dtype, ex.graph, ex.values, list(ex.graph.parameters), {},
              rounds=3 if quick else 9, inner=1)
    if child:
        serve(served)
        return {"rows": rows}
    for proc in procs:
        proc.close()
        wanted.add(proc.name)
    peers_present = [n for n in ("torch", "jax") if n in wanted]
    peers_absent = [] if args.no_peers else [n for n in ("torch", "jax") if n not in peers_present]
    memory: dict[str, Any] = {}
    if not (args.no_memory or args.small_only) and sys.platform.startswith("linux"):
        memory = memory_rows(["ours", "ours_anomaly", *peers_present])
    cold = {}
    if not (args.no_cold_start or args.small_only):
        cold = cold_starts(rounds=1 if args.quick else 3, torch_installed="torch" in wanted)
    return {
        "rows": rows, **cold, "memory": memory, "mlp_products": products,
        "peers_absent": peers_absent,
        "peers_skipped": bool(args.no_peers),
        "environment": {
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS default)"),
            "threads": int(THREADS), "python": platform.python_version(),
            "numpy": np.__version__, "machine": platform.machine(),
            "torch": _version("torch"), "jax": _version("jax"),
            "load_average": os.getloadavg(),
            "peers": "in this process, interleaved" if args.same_process else
                     "each in a process of its own, interleaved",
            "keep_freed_memory": bool(args.keep_freed_memory),
        },
    }


def _version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _installed(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


class PeerError(RuntimeError):
    """A peer's process ended or answered nonsense."""


class PeerProcess:
    """A peer (``torch`` or ``jax``) in a process of its own (:func:`serve`) that has set up
    every workload of this run and times one round of one of them when asked."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-child", name,
               "--coretype", args.coretype]
        cmd += ["--quick"] * bool(args.quick) + ["--small-only"] * bool(args.small_only)
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        ready = json.loads(self._line())
        self.keys: set[str] = set(ready["keys"])

    @classmethod
    def start(cls, name: str, args: argparse.Namespace) -> PeerProcess | None:
        """The peer's process, set up; None when the peer is not installed or failed."""
        if not _installed(name):
            return None
        try:
            return cls(name, args)
        except (PeerError, ValueError, KeyError) as exc:
            print(f"  {name}: its process failed to start: {exc}", file=sys.stderr)
            return None

    def _line(self) -> str:
        """The next answer (a line starting with "@"; anything else a library printed is
        skipped)."""
        while True:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise PeerError(f"the {self.name} process ended (exit code "
                                 f"{self.proc.poll()})")
            if line.startswith("@"):
                return line[1:]

    def ask(self, request: str) -> float:
        """Seconds per call of one round of the workload ``request`` names."""
        try:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise PeerError(f"the {self.name} process is gone ({exc})") from None
        try:
            return float(self._line())
        except ValueError as exc:
            raise PeerError(f"the {self.name} process answered {exc}") from None

    def remote(self, workload: str, dtype: str) -> Remote | None:
        key = f"{workload}/{dtype}"
        return Remote(self, key) if key in self.keys else None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def serve(steps: dict[str, tuple[Callable[[], Any], int]]) -> None:
    """The peer process's side: say which workloads it has set up, then time one round
    (:func:`time_round`) of each one asked for on stdin ("<workload>/<dtype> <inner>"),
    answering with its seconds per call, until "quit" or the end of input."""
    print("@" + json.dumps({"keys": sorted(steps)}), flush=True)
    for line in sys.stdin:
        request = line.split()
        if not request or request[0] == "quit":
            return
        fn, _ = steps[request[0]]
        print(f"@{time_round(fn, int(request[1]))!r}", flush=True)


def conv_flops(graph: Any, wrt: list[str]) -> float:
    """Multiply-adds ×2 of the direct convolutions one gradient needs: each conv2d's forward
    ``2·N·F·(C/groups)·kh·kw·Ho·Wo``, the same again for its weight gradient when the weight
    is differentiated, and again for its input gradient when the input is an op's result
    (the effective GFLOP/s divide this by the time, whatever algorithm ran)."""
    wanted = {graph.inputs[name] for name in wrt}
    total = 0.0
    for v in graph.nx.nodes:
        d = graph.node(v)
        if d.get("op") != "conv2d":
            continue
        args: dict[int, int] = {}
        for u, _, e in graph.nx.in_edges(v, data=True):
            for i in e["args"]:
                args[i] = u
        x, w = graph.node(args[0]), graph.node(args[1])
        n, f, ho, wo = d["shape"]
        c_per_group, kh, kw = w["shape"][1:]
        forward = 2.0 * n * f * c_per_group * kh * kw * ho * wo
        total += forward
        total += forward if args[1] in wanted else 0.0
        total += forward if x["role"] == "op" else 0.0
    return total


#: (workload, dtype, text, peer or None, check of the row); a target against a peer is decided
#: only when that peer ran
TARGETS = [
    ("sigmoid", "float64", "ours ≤ 5 µs", None, lambda r: r["ours_ms"] <= 0.005),
    ("neuron_small", "float64", "≤ jax", "jax", lambda r: r["ours_over_jax"] <= 1.0),
    ("mlp_small", "float64", "≤ jax", "jax", lambda r: r["ours_over_jax"] <= 1.0),
    ("mlp", "float64", "≤ 0.8× torch with anomaly on", "torch",
     lambda r: r["ours_anomaly_ms"] / r["torch_ms"] <= 0.8),
    ("mlp", "float32", "≤ 0.8× torch with anomaly on", "torch",
     lambda r: r["ours_anomaly_ms"] / r["torch_ms"] <= 0.8),
    ("dncnn", "float64", "≤ 0.8× jax", "jax", lambda r: r["ours_over_jax"] <= 0.8),
    ("dncnn", "float32", "≤ 1.0× torch", "torch", lambda r: r["ours_over_torch"] <= 1.0),
    ("dncnn", "float32", "≥ 150 GFLOP/s effective", None, lambda r: r["gflops"] >= 150),
]


def target_verdict(row: dict[str, Any], peer: str | None, ok: Callable[[dict[str, Any]], bool]
                   ) -> str:
    """'met', 'MISSED', or '<peer> not installed' when the peer did not run."""
    if peer is not None and f"ours_over_{peer}" not in row:
        return f"not checked: {peer} not installed"
    return "met" if ok(row) else "MISSED"


def products_share(result: dict[str, Any], dtype: str) -> dict[str, float] | None:
    """For the MLP in ``dtype``: the time of its five products alone (:func:`mlp_products`)
    through numpy's BLAS and through PyTorch's, each over PyTorch's whole step (keys
    ``numpy``, ``torch``, as far as measured); None without PyTorch's step or the products."""
    row = next((r for r in result["rows"] if (r["workload"], r["dtype"]) == ("mlp", dtype)),
               None)
    prod = (result.get("mlp_products") or {}).get(dtype)
    if row is None or not prod or not row.get("torch_ms"):
        return None
    return {k: prod[f"{k}_ms"] / row["torch_ms"] for k in ("numpy", "torch")
            if f"{k}_ms" in prod}


def products_table(result: dict[str, Any]) -> list[str]:
    """Lines on the MLP's five products alone against PyTorch's step (none when not
    measured)."""
    prods = result.get("mlp_products") or {}
    if not prods:
        return []
    lines = ["", "MLP 784-256-784: its five matrix products alone (the operands of one gradient, "
             "no autodiff) through numpy's BLAS (ours) and PyTorch's, against PyTorch's whole "
             "step; while numpy's BLAS alone takes more than 0.8 of that step, no program on "
             "it reaches 0.8× PyTorch",
             f"{'dtype':<8}{'numpy BLAS':>12}{'torch BLAS':>12}{'torch step':>12}"
             f"{'numpy/step':>12}{'torch/step':>12}"]
    for dtype, prod in prods.items():
        row = next((r for r in result["rows"] if (r["workload"], r["dtype"]) == ("mlp", dtype)),
                   {})
        share = products_share(result, dtype) or {}
        lines.append(f"{dtype:<8}{_fmt_ms(prod.get('numpy_ms')):>12}"
                     f"{_fmt_ms(prod.get('torch_ms')):>12}{_fmt_ms(row.get('torch_ms')):>12}"
                     + "".join(f"{share[k]:>12.2f}" if k in share else f"{'—':>12}"
                               for k in ("numpy", "torch")))
    return lines


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v / 1e3:.3g} s"
    return f"{v * 1e3:.1f} µs" if v < 0.1 else f"{v:.3g} ms"


def table(result: dict[str, Any]) -> str:
    head = (f"{'workload':<13}{'dtype':<8}{'ours':>10}{'cold':>10}{'anomaly':>10}{'+%':>7}"
            f"{'torch':>10}{'jax':>10}{'numpy':>10}{'/torch':>8}{'/jax':>7}{'/numpy':>8}"
            f"{'bwd/fwd':>8}{'arena MB':>9}{'GFLOP/s':>9}")
    peers = result.get("environment", {}).get("peers")
    lines = ([f"peers timed {peers} with ours (rounds alternate, {SETTLE} s pause between "
              f"frameworks); ours and numpy in this process"] if peers
             else []) + [head, "-" * len(head)]
    absent = result.get("peers_absent", [])

    def peer_ms(r: dict[str, Any], p: str) -> str:
        if p in absent:
            return "not inst."
        return _fmt_ms(r.get(f"{p}_ms"))

    for r in result["rows"]:
        def ratio(p: str) -> str:
            v = r.get(f"ours_over_{p}")
            return f"{v:.2f}" if v is not None else ("n/i" if p in absent else "—")
        cost = 100 * (r["ours_anomaly_ms"] / r["ours_ms"] - 1)
        bf = r["backward_over_forward"]
        bf = None if bf is None or bf != bf else bf  # NaN: no split on the scalar path
        gflops = f"{r['gflops']:.0f}" if r.get("gflops") else "—"
        lines.append(
            f"{r['workload']:<13}{r['dtype']:<8}{_fmt_ms(r['ours_ms']):>10}"
            f"{_fmt_ms(r['ours_cold_ms']):>10}{_fmt_ms(r['ours_anomaly_ms']):>10}{cost:>+7.0f}"
            f"{peer_ms(r, 'torch'):>10}{peer_ms(r, 'jax'):>10}"
            f"{_fmt_ms(r.get('numpy_ms')):>10}{ratio('torch'):>8}{ratio('jax'):>7}"
            f"{ratio('numpy'):>8}{(f'{bf:.2f}' if bf is not None else '—'):>8}"
            f"{r['memory_bytes'] / 1e6:>9.2f}"
            f"{gflops:>9}")
    if absent:
        lines.append(f"not installed (no timings, no targets decided against them): "
                     f"{', '.join(absent)}")
    lines.append("(+%: anomaly on over anomaly off; arena MB: program.memory_bytes, the planned "
                 "buffers for one call's values and gradients; GFLOP/s: the direct "
                 "convolutions' arithmetic of one gradient over its time, see conv_flops)")
    lines += products_table(result)
    mem = result.get("memory") or {}
    if mem:
        lines.append("")
        lines.append("RSS, DnCNN-lite float32 16×1×40×40, each framework in a fresh process: "
                     "MB added over the set-up (kernels already loaded by a small DnCNN that "
                     "takes the same kernels, its data freed; then compile / tensors); peak: "
                     "the high-water mark during the first 100 calls")
        lines.append(f"{'framework':<14}{'kernels':>9}{'+10 calls':>11}{'+100':>8}{'+200':>8}"
                     f"{'growth 10→200':>15}{'peak':>8}")
        for fw, m in mem.items():
            if "error" in m:
                lines.append(f"{fw:<14} failed: {m['error']}")
                continue
            pk = m["peak_added_mb"]
            lines.append(f"{fw:<14}{m['library_mb']:>9.1f}{m['added_after_10_mb']:>11.1f}"
                         f"{m['added_after_100_mb']:>8.1f}{m['added_after_200_mb']:>8.1f}"
                         f"{m['growth_10_to_200_mb']:>15.1f}"
                         f"{(f'{pk:.1f}' if pk is not None else '—'):>8}")
        for peer in absent:
            lines.append(f"{peer:<14} not installed")
    lines.append("")
    for r in result["rows"]:
        apart = r["ours_anomaly_ms"] / r["ours_ms"] - 1
        cost = r.get("anomaly_cost_paired", apart)  # results written before it: the medians
        lines.append(f"target {r['workload']} {r['dtype']}: anomaly on costs ≤ 5 %: "
                     f"{100 * cost:+.1f} % timed back to back, median of the rounds "
                     f"({100 * apart:+.1f} % from the interleaved medians) "
                     f"{'met' if cost <= 0.05 else 'MISSED'}")
    if mem.get("ours") and "error" not in mem["ours"]:
        m = mem["ours"]
        growth = m["growth_10_to_200_mb"]
        lines.append(f"target memory: RSS after 200 calls = after 10 (±2 MB): {growth:+.1f} MB "
                     f"{'met' if abs(growth) <= 2 else 'MISSED'}")
        t = mem.get("torch")
        if t is None or "error" in t:
            lines.append("target memory: peak RSS added by 100 gradients ≤ torch: not checked: "
                         "torch " + ("not installed" if "torch" in absent else "did not run"))
        else:
            mine, theirs = m["peak_added_mb"], t["peak_added_mb"]
            if mine is None or theirs is None:
                lines.append("target memory: peak RSS added by 100 gradients ≤ torch: not "
                             "checked: the high-water mark could not be reset")
            else:
                lines.append(f"target memory: peak RSS added by 100 gradients ≤ torch: "
                             f"{mine:.1f} vs {theirs:.1f} MB {'met' if mine <= theirs else 'MISSED'}")
    for workload, dtype, text, peer, ok in TARGETS:
        row = next((r for r in result["rows"] if r["workload"] == workload and r["dtype"] == dtype),
                   None)
        if row is not None:
            share = products_share(result, dtype) if workload == "mlp" else None
            why = (f" (its five products alone through numpy's BLAS: {share['numpy']:.2f} of "
                   f"PyTorch's step)" if share and "numpy" in share else "")
            lines.append(f"target {workload} {dtype}: {text}: {target_verdict(row, peer, ok)}"
                         f"{why}")
    for r in result["rows"]:
        if r["workload"] in ("mlp", "dncnn") and r["backward_over_forward"] is not None:
            lines.append(f"target {r['workload']} {r['dtype']}: backward/forward ≤ 3: "
                         f"{r['backward_over_forward']:.2f} "
                         f"{'met' if r['backward_over_forward'] <= 3 else 'MISSED'}")
    if result.get("cold_start_s") is not None or result.get("first_ever_compile_s") is not None:
        runs = result.get("cold_start_runs", {})

        def spread(kind: str) -> str:
            vals = [r["to_first_gradient_s"] for r in runs.get(kind, [])]
            return f" (runs {', '.join(f'{v:.2f}' for v in vals)})" if len(vals) > 1 else ""

        def verdict(v: float | None, limit: float) -> str:
            return "—" if v is None else f"{v:.2f} s, {'met' if v <= limit else 'MISSED'} ≤ {limit:g} s"

        lines.append("fresh process to its first float32 DnCNN gradient (median; process exit "
                     "not included): warm Numba cache "
                     f"{verdict(result.get('cold_start_s'), 1.0)}{spread('warm')}; empty cache "
                     f"(first-ever run) {verdict(result.get('first_ever_compile_s'), 3.0)}"
                     f"{spread('empty')}")
        if result.get("first_ever_background_done_s") is not None:
            lines.append("  empty cache: the first gradient on the numpy reference path; the "
                         "background compile filled the cache "
                         f"{result['first_ever_background_done_s']:.1f} s after the start")
        if result.get("cold_start_no_scipy_s") is not None:
            lines.append("  warm cache without SciPy (as a plain install of autodiff_lab: SciPy "
                         "is not a dependency; when installed, Numba imports scipy.linalg at its "
                         f"first kernel): {result['cold_start_no_scipy_s']:.2f} s"
                         f"{spread('warm_no_scipy')}")
        if result.get("cold_start_torch_s") is not None:
            lines.append(f"  PyTorch, the same network: {result['cold_start_torch_s']:.2f} s"
                         f"{spread('torch')}")
    env = result["environment"]
    lines.append(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, {env['threads']} threads, "
                 f"torch {env['torch']}, jax {env['jax']}, numpy {env['numpy']}, "
                 f"malloc keeps freed memory: {env['keep_freed_memory']}, "
                 f"load average at the end {tuple(round(x, 2) for x in env['load_average'])}")
    return "\n".join(lines)


def records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measurement as one flat record (workload, framework, metric, value, unit,
    ratio to ours, note) -- a peer that did not run gets a record saying so, never a
    missing row."""
    out: list[dict[str, Any]] = []

    def rec(workload: str, framework: str, metric: str, value: float | None, unit: str,
            ours: float | None = None, note: str = "") -> None:
        ratio = None if value is None or not ours else value / ours
        out.append({"workload": workload, "framework": framework, "metric": metric,
                    "value": value, "unit": unit, "ratio_to_ours": ratio, "note": note})

    absent = result.get("peers_absent", [])
    for r in result["rows"]:
        w = f"{r['workload']} {r['dtype']}"
        rec(w, "ours", "time per gradient", r["ours_ms"], "ms", r["ours_ms"], "anomaly=False")
        rec(w, "ours (anomaly on)", "time per gradient", r["ours_anomaly_ms"], "ms",
            r["ours_ms"], "the default: value, outputs and gradients checked for NaN/Inf")
        for peer in ("torch", "jax", "numpy"):
            if f"{peer}_ms" in r:
                rec(w, peer, "time per gradient", r[f"{peer}_ms"], "ms", r["ours_ms"])
            elif peer in absent:
                rec(w, peer, "time per gradient", None, "ms", note="not installed")
            elif peer != "numpy":
                rec(w, peer, "time per gradient", None, "ms",
                    note="not run (--no-peers)" if result.get("peers_skipped") else "no peer")
    for dtype, prod in (result.get("mlp_products") or {}).items():
        for fw in ("numpy", "torch"):
            if f"{fw}_ms" in prod:
                rec(f"mlp {dtype}", fw, "five matrix products alone", prod[f"{fw}_ms"], "ms",
                    note="the BLAS's share of a gradient: no autodiff, one call's operands")
    mem = result.get("memory") or {}
    ours_mem = (mem.get("ours") or {}).get("added_after_100_mb")
    ours_peak = (mem.get("ours") or {}).get("peak_added_mb")
    for fw, m in mem.items():
        w = "dncnn float32"
        if "error" in m:
            rec(w, fw, "peak RSS added by 100 gradients", None, "MB",
                note=f"failed: {m['error']}")
            continue
        rec(w, fw, "peak RSS added by 100 gradients", m["peak_added_mb"], "MB", ours_peak,
            "high-water mark over the set-up (compile / tensors), kernels loaded before")
        rec(w, fw, "RSS added by 100 gradients", m["added_after_100_mb"], "MB", ours_mem,
            "after the 100th call, over the set-up")
        rec(w, fw, "RSS growth, call 10 to 200", m["growth_10_to_200_mb"], "MB")
        rec(w, fw, "RSS of loading the kernels", m["library_mb"], "MB", note="library, once")
    if mem:
        for peer in absent:
            rec("dncnn float32", peer, "peak RSS added by 100 gradients", None, "MB",
                note="not installed")
    warm = result.get("cold_start_s")
    for key, fw, note in (("cold_start_s", "ours", "warm Numba cache"),
                          ("first_ever_compile_s", "ours", "empty Numba cache (first-ever run)"),
                          ("cold_start_no_scipy_s", "ours",
                           "warm Numba cache, SciPy hidden (a plain install has none)"),
                          ("cold_start_torch_s", "torch", "")):
        if key in result:
            rec("dncnn float32", fw, "fresh process to first gradient", result[key], "s", warm,
                note or ("not installed" if result[key] is None else ""))
    return out


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    args = ARGS or _early_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    if args.peer_child:  # serves rounds to the parent (see PeerProcess)
        run(args)
        return
    result = run(args)
    result["records"] = records(result)
    text = table(result)
    print()
    print(text)
    path = Path(args.json) if args.json else \
        HERE / "results" / f"bench_tape-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result["table"] = text
    path.write_text(json.dumps(result, indent=1, default=float))
    # the flat records also as the benchmarks' shared CSV (same columns as every benchmark)
    sys.path.insert(0, str(HERE))
    from _table import from_records
    _, csv_path = from_records("bench_tape", result["records"]).save(path.with_suffix(".table.json"))
    print(f"\nwrote {path} and {csv_path}")


if __name__ == "__main__":
    main()
