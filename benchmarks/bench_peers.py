"""Side-by-side runs with HIPS autograd, numdifftools and SymPy on its own.

    python benchmarks/bench_peers.py                  # full run: results/bench_peers-<time>.json, .csv
    python benchmarks/bench_peers.py --quick          # fewer repeats, smaller network
    python benchmarks/bench_peers.py --json out.json  # ... or to the file given
    python benchmarks/bench_peers.py --without autograd,numdifftools   # run as if absent

The peers are optional (``pip install -r benchmarks/requirements-peers.txt``); one that
does not import is a row saying "peer not installed", and a target is never reported met
against it. Three comparisons, one table (``benchmarks/_table.py``: workload, framework,
metric, value, unit, ratio-to-ours, note; ratio = peer ÷ ours):

* **reverse mode** — our tape engine and ``autograd.grad`` on the sigmoid neuron, the
  2-layer sigmoid MLP of the swell table and the inpainting MLP 784-64-784 (batch 64):
  time per gradient (medians of interleaved rounds) and agreement with the tape.
* **finite differences** — our numeric engine (central, Richardson) and numdifftools
  (``nd.Gradient`` / ``nd.Derivative``, its default adaptive Richardson scheme, with
  ``full_output=True``) on the sigmoid neuron, the Squire–Trapp function and relu′ next to
  and on its kink: the value, the step chosen, the error estimate, the measured error
  against the exact derivative, the function evaluations.
* **symbolic** — SymPy alone (``sympy.diff`` + ``lambdify(cse=True)`` of the hand-written
  expression) against our symbolic engine's expanded and matrix modes on the neuron and the
  2-layer sigmoid MLP (D = 2, 4): compile seconds, time per gradient, agreement.

Timing is noisy on a shared machine: each workload's frameworks run in interleaved rounds
and the medians are reported, with the load average in the file.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import NOT_INSTALLED, OURS, Table, target_verdict, try_import  # noqa: E402

import autodiff_lab as adl  # noqa: E402
from autodiff_lab import examples as E  # noqa: E402
from autodiff_lab.engines.symbolic_expanded import sigmoid_mlp_example  # noqa: E402

PEERS = ("autograd", "numdifftools", "sympy")
MS = "ms"


# --- peers, timing ----------------------------------------------------------------------------

def load_peers(without: set[str]) -> dict[str, tuple[Any, str]]:
    """Each peer's module, or None and why (``without``: treated as not installed)."""
    out: dict[str, tuple[Any, str]] = {}
    for name in PEERS:
        if name in without:
            out[name] = (None, "--without")
            continue
        module, why = try_import("autograd.numpy" if name == "autograd" else name)
        if module is not None and name == "autograd":
            module, why = try_import("autograd")
        out[name] = (module, why)
    return out


def version(module: Any) -> str:
    found = getattr(module, "__version__", None)
    if found is None:
        from importlib import metadata
        try:
            found = metadata.version(module.__name__.split(".")[0])
        except metadata.PackageNotFoundError:
            found = "?"
    return str(found)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, inner: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, all run once per round (warm-up first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[key].append((time.perf_counter() - t0) / inner)
    return {k: float(np.median(v)) for k, v in times.items()}


def rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """‖a − b‖∞ / ‖b‖∞ over every key of b."""
    num = max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in b)
    den = max(float(np.max(np.abs(b[k]))) for k in b)
    return num / den if den else num


# --- reverse mode: autograd -------------------------------------------------------------------

def _autograd_loss(workload: str, anp: Any) -> Callable[..., Any]:
    sig = lambda z: 1.0 / (1.0 + anp.exp(-z))  # noqa: E731
    if workload == "neuron":
        return lambda w, x: sig(w[0] * x[0] + w[1] * x[1] + w[2])
    if workload.startswith("sigmoid-mlp"):
        return lambda W1, W2, x, y: 0.5 * anp.sum((sig(W2 @ sig(W1 @ x)) - y) ** 2)
    return lambda W1, b1, W2, b2, x, y: 0.5 * anp.sum(
        (W2 @ anp.maximum(W1 @ x + b1, 0.0) + b2 - y) ** 2)


def reverse_mode(table: Table, peers: dict[str, tuple[Any, str]], quick: bool) -> None:
    rounds = 5 if quick else 21
    d_mlp = 4 if quick else 8
    cases = [("neuron", E.sigmoid_neuron_vector(), ["w"], ["w", "x"])]
    g, v = sigmoid_mlp_example(d_mlp)
    cases.append((f"sigmoid-mlp-D{d_mlp} (reverse)", E.Example("sigmoid-mlp", g, v, ""), ["W1", "W2"],
                  ["W1", "W2", "x", "y"]))
    hidden, batch = (16, 8) if quick else (64, 64)
    ex = E.mlp(784, hidden, batch)
    cases.append((f"mlp-784-{hidden}-784-b{batch}", ex, ["W1", "b1", "W2", "b2"],
                  ["W1", "b1", "W2", "b2", "x", "y"]))
    ag, why = peers["autograd"]
    metric = "time per gradient"
    for workload, example, wrt, order in cases:
        tape = adl.engine("tape").compile(example.graph, wrt=wrt)
        ours = tape(example.values).grads
        fns: dict[str, Callable[[], Any]] = {OURS: lambda t=tape, e=example: t(e.values)}
        agrad = None
        if ag is not None:
            import autograd.numpy as anp
            loss = _autograd_loss(workload, anp)
            args = [np.asarray(example.values[n], dtype=np.float64) for n in order]
            agrad = ag.grad(loss, argnum=list(range(len(wrt))))
            fns["autograd"] = lambda f=agrad, a=args: f(*a)
        times = interleaved(fns, rounds, inner=20 if workload == "neuron" else 1)
        table.add(workload, OURS, metric, times[OURS] * 1e3, MS, "tape engine, compiled once")
        if agrad is None:
            table.not_installed(workload, "autograd", metric, MS, why)
            table.not_installed(workload, "autograd", "rel. difference to ours", "", why)
            continue
        got = dict(zip(wrt, fns["autograd"]()))
        table.add(workload, "autograd", metric, times["autograd"] * 1e3, MS,
                  f"autograd {version(ag)}, grad traced every call")
        table.add(workload, "autograd", "rel. difference to ours", rel_diff(got, ours), "",
                  "‖g − g_tape‖∞ / ‖g_tape‖∞")


# --- finite differences: numdifftools ---------------------------------------------------------

def squire_trapp(x: Any) -> Any:
    return np.exp(x) / np.sqrt(np.sin(x) ** 3 + np.cos(x) ** 3)


SQUIRE_TRAPP_X = 1.5
SQUIRE_TRAPP_EXACT = 4.053427893898620658


def _ours_fd(graph: Any, values: dict[str, Any], wrt: list[str], method: str
             ) -> tuple[np.ndarray, np.ndarray, float, int, list[str]]:
    """(derivative, estimate, step, evaluations, kink notes) of our numeric engine."""
    prog = adl.engine("numeric", method=method, progress=False).compile(graph, wrt=wrt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = prog(values)
    d = np.concatenate([np.ravel(r.grads[n]) for n in wrt])
    e = np.concatenate([np.ravel(r.error_estimate[n]) for n in wrt])
    step = max(float(np.max(r.info["steps"][n])) for n in wrt)
    notes = [type(w.message).__name__ for w in caught]
    kinks = r.info.get("kink_components") or []
    if kinks:
        notes.append(f"kink: {kinks[0]['resolution']}")
    return d, e, step, int(r.evaluations), notes


def finite_differences(table: Table, peers: dict[str, tuple[Any, str]], quick: bool) -> None:
    from autodiff_lab.graph import functions as F
    from autodiff_lab.graph.graph import param, trace

    nd, why = peers["numdifftools"]
    neuron = E.sigmoid_neuron_vector()
    w0 = neuron.values["w"]
    x0 = neuron.values["x"]
    z = float(w0 @ np.array([x0[0], x0[1], 1.0]))
    s = 1.0 / (1.0 + np.exp(-z))
    exact_neuron = s * (1 - s) * np.array([x0[0], x0[1], 1.0])

    st_graph = trace(lambda x: F.exp(x) / F.sqrt(F.sin(x) ** 3 + F.cos(x) ** 3), x=param(()))
    relu_graph = trace(lambda x: F.relu(x), x=param(()))
    # (workload, our graph, values, wrt, numpy function for the peer, x, exact derivative)
    cases: list[tuple[str, Any, dict[str, Any], list[str], Callable[[Any], Any], Any, Any, str]] = [
        ("neuron gradient", neuron.graph, neuron.values, ["w"],
         lambda w: 1.0 / (1.0 + np.exp(-(w[0] * x0[0] + w[1] * x0[1] + w[2]))), w0, exact_neuron,
         "gradient"),
        ("Squire-Trapp f'(1.5)", st_graph, {"x": np.asarray(SQUIRE_TRAPP_X)}, ["x"], squire_trapp,
         SQUIRE_TRAPP_X, np.array([SQUIRE_TRAPP_EXACT]), "derivative"),
        ("relu'(1e-5), next to the kink", relu_graph, {"x": np.asarray(1e-5)}, ["x"],
         lambda x: np.maximum(x, 0.0), 1e-5, np.array([1.0]), "derivative"),
        ("relu'(0), on the kink", relu_graph, {"x": np.asarray(0.0)}, ["x"],
         lambda x: np.maximum(x, 0.0), 0.0, None, "derivative"),
    ]
    for workload, graph, values, wrt, fn, x, exact, kind in cases:
        for method in ("central", "richardson"):
            d, e, step, evals, notes = _ours_fd(graph, values, wrt, method)
            fw = f"{OURS} ({method})"
            _fd_rows(table, workload, fw, d, e, step, evals, exact, "; ".join(notes))
        if nd is None:
            for metric in ("value", "error estimate", "measured error", "step", "evaluations"):
                table.not_installed(workload, "numdifftools", metric, "", why)
            continue
        calls = [0]

        def counted(v: Any, fn: Callable[[Any], Any] = fn) -> Any:
            calls[0] += 1  # one point per call (numdifftools passes x itself, not a batch)
            return fn(v)

        maker = nd.Gradient if kind == "gradient" else nd.Derivative
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = maker(counted, full_output=True)(x)
        d = np.ravel(res.estimate)
        e = np.ravel(res.error_estimate)
        step = float(np.max(res.final_step))
        _fd_rows(table, workload, "numdifftools", d, e, step, calls[0], exact,
                 f"numdifftools {version(nd)}, default adaptive Richardson")
    # the times per call, interleaved
    rounds = 3 if quick else 11
    for workload, graph, values, wrt, fn, x, _exact, kind in cases[:2]:
        prog = adl.engine("numeric", method="richardson", progress=False).compile(graph, wrt=wrt)
        fns: dict[str, Callable[[], Any]] = {OURS: lambda p=prog, v=values: p(v)}
        if nd is not None:
            maker = nd.Gradient if kind == "gradient" else nd.Derivative
            peer = maker(fn, full_output=True)
            fns["numdifftools"] = lambda p=peer, xx=x: p(xx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times = interleaved(fns, rounds)
        table.add(workload, f"{OURS} (richardson)", "time per call", times[OURS] * 1e3, MS)
        if nd is None:
            table.not_installed(workload, "numdifftools", "time per call", MS, why)
        else:
            table.add(workload, "numdifftools", "time per call", times["numdifftools"] * 1e3, MS)


def _fd_rows(table: Table, workload: str, framework: str, d: np.ndarray, e: np.ndarray,
             step: float, evals: int, exact: np.ndarray | None, note: str) -> None:
    """value (first component), estimate, measured error (max over components), step, calls."""
    table.add(workload, framework, "value", float(d[0]), "", note)
    table.add(workload, framework, "error estimate", float(np.max(e)), "", "max over components")
    if exact is None:
        table.add(workload, framework, "measured error", None, "",
                  "not differentiable there: no exact value (convention relu'(0) = 0)")
    else:
        err = float(np.max(np.abs(d - exact)))
        bound = "bounded by its estimate" if err <= float(np.max(e)) else "ABOVE its estimate"
        table.add(workload, framework, "measured error", err, "", bound)
    table.add(workload, framework, "step", step, "", "largest step taken")
    table.add(workload, framework, "evaluations", float(evals), "f calls")


# --- symbolic: SymPy alone --------------------------------------------------------------------

def _sympy_neuron(sp: Any) -> tuple[Callable[..., Any], float]:
    t0 = time.perf_counter()
    w = sp.symbols("w0:3", real=True)
    x = sp.symbols("x0:2", real=True)
    f = 1 / (1 + sp.exp(-(w[0] * x[0] + w[1] * x[1] + w[2])))
    grads = [sp.diff(f, wi) for wi in w]
    fn = sp.lambdify([*w, *x], grads, "numpy", cse=True)
    return fn, time.perf_counter() - t0


def _sympy_mlp(sp: Any, d: int) -> tuple[Callable[..., Any], float]:
    t0 = time.perf_counter()
    W1 = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"W1_{i}_{j}", real=True))  # noqa: N806
    W2 = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"W2_{i}_{j}", real=True))  # noqa: N806
    x = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"x_{i}", real=True))
    y = sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"y_{i}", real=True))
    sig = lambda m: m.applyfunc(lambda z: 1 / (1 + sp.exp(-z)))  # noqa: E731
    r = sig(W2 * sig(W1 * x)) - y
    loss = sp.Rational(1, 2) * sum(ri ** 2 for ri in r)
    params = list(W1) + list(W2)
    grads = [sp.diff(loss, p) for p in params]
    fn = sp.lambdify([params, list(x), list(y)], grads, "numpy", cse=True)
    return fn, time.perf_counter() - t0


def symbolic(table: Table, peers: dict[str, tuple[Any, str]], quick: bool) -> None:
    from autodiff_lab.engines.symbolic import clear_cache

    sp, why = peers["sympy"]
    rounds = 5 if quick else 21
    sizes = [2] if quick else [2, 4]  # D = 8 takes minutes in SymPy (see bench_symbolic.py)
    neuron = E.sigmoid_neuron_vector()
    cases: list[tuple[str, Any, dict[str, Any], list[str]]] = [
        ("neuron", neuron.graph, neuron.values, ["w"])]
    for d in sizes:
        g, v = sigmoid_mlp_example(d)
        cases.append((f"sigmoid-mlp-D{d}", g, v, ["W1", "W2"]))
    for workload, graph, values, wrt in cases:
        tape = adl.engine("tape").compile(graph, wrt=wrt)(values).grads
        fns: dict[str, Callable[[], Any]] = {}
        compile_s: dict[str, float] = {}
        results: dict[str, dict[str, np.ndarray]] = {}
        for mode in ("expanded", "matrix"):
            clear_cache()
            t0 = time.perf_counter()
            prog = adl.engine("symbolic", mode=mode, cache=False).compile(graph, wrt=wrt)
            compile_s[mode] = time.perf_counter() - t0
            fns[mode] = lambda p=prog: p(values)
            results[mode] = prog(values).grads
        peer_fn = None
        if sp is not None:
            if workload == "neuron":
                fn, compile_s["sympy"] = _sympy_neuron(sp)
                w, x = values["w"], values["x"]
                peer_fn = lambda f=fn: f(*w, *x)  # noqa: E731
                results["sympy"] = {"w": np.array(peer_fn(), dtype=float)}
            else:
                d = int(workload.rsplit("D", 1)[1])
                fn, compile_s["sympy"] = _sympy_mlp(sp, d)
                args = ([*np.ravel(values["W1"]), *np.ravel(values["W2"])], list(values["x"]),
                        list(values["y"]))
                peer_fn = lambda f=fn, a=args: f(*a)  # noqa: E731
                flat = np.array(peer_fn(), dtype=float)
                results["sympy"] = {"W1": flat[:d * d].reshape(d, d),
                                    "W2": flat[d * d:].reshape(d, d)}
            fns["sympy"] = peer_fn
        times = interleaved(fns, rounds, inner=20 if workload == "neuron" else 5)
        for mode in ("expanded", "matrix"):
            label = f"{OURS} (symbolic {mode})"
            table.add(workload, label, "compile", compile_s[mode] * 1e3, MS,
                      "graph → SymPy → diff → cse → lambdify" if mode == "expanded"
                      else "matrix-level derivative on the DAG, generated numpy")
            table.add(workload, label, "time per gradient", times[mode] * 1e3, MS)
            table.add(workload, label, "rel. difference to tape", rel_diff(results[mode], tape), "")
        if sp is None:
            for metric, unit in (("compile", MS), ("time per gradient", MS),
                                 ("rel. difference to tape", "")):
                table.not_installed(workload, "sympy", metric, unit, why)
            continue
        table.add(workload, "sympy", "compile", compile_s["sympy"] * 1e3, MS,
                  f"SymPy {version(sp)} alone: diff + lambdify(cse=True) of the hand-written formula")
        table.add(workload, "sympy", "time per gradient", times["sympy"] * 1e3, MS)
        table.add(workload, "sympy", "rel. difference to tape", rel_diff(results["sympy"], tape), "")


# --- targets ----------------------------------------------------------------------------------

#: (workload prefix, metric, ours framework, peer, what is checked, ok(peer ÷ ours))
TARGETS: list[tuple[str, str, str, str, str, Callable[[float], bool]]] = [
    ("mlp-784", "time per gradient", OURS, "autograd",
     "tape engine no slower than autograd on the inpainting MLP", lambda r: r >= 1.0),
    ("sigmoid-mlp-D", "compile", f"{OURS} (symbolic matrix)", "sympy",
     "matrix mode compiles the MLP gradient faster than SymPy's diff + lambdify",
     lambda r: r >= 1.0),
    ("relu'(1e-5)", "measured error", f"{OURS} (richardson)", "numdifftools",
     "our relu′ next to the kink at least as accurate as numdifftools'", lambda r: r >= 1.0),
]


def check_targets(table: Table, peers: dict[str, tuple[Any, str]]) -> list[dict[str, Any]]:
    """Each target's verdict; "not checked: <peer> not installed" when the peer did not run."""
    out = []
    for prefix, metric, ours_fw, peer, text, ok in TARGETS:
        workloads = sorted({r.workload for r in table.rows if r.workload.startswith(prefix)
                            and r.framework == ours_fw and r.metric == metric})
        for w in workloads:
            mine = table.value(w, ours_fw, metric)
            theirs = table.value(w, peer, metric)
            ran = peers[peer][0] is not None and theirs is not None
            ratio = None
            if ran and mine is not None:
                ratio = theirs / mine if mine else (float("inf") if theirs else 1.0)
            verdict = target_verdict(ratio, ok, ran, peer)
            out.append({"target": text, "workload": w, "peer": peer, "ratio": ratio,
                        "verdict": verdict})
    return out


def main(argv: list[str] | None = None) -> int:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller networks")
    ap.add_argument("--json", default=None,
                    help="output JSON path (default: a new benchmarks/results/bench_peers-<time>.json; "
                         "a CSV with the same columns is written beside it)")
    ap.add_argument("--without", default="",
                    help=f"comma-separated peers to treat as not installed ({', '.join(PEERS)})")
    args = ap.parse_args(argv)
    without = {p.strip() for p in args.without.split(",") if p.strip()}
    unknown = without - set(PEERS)
    if unknown:
        ap.error(f"--without: unknown peer(s) {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    peers = load_peers(without)
    table = Table("bench_peers", meta={
        "quick": args.quick, "numpy": np.__version__,
        "peers": {k: (version(m) if m is not None else f"{NOT_INSTALLED}: {w}")
                  for k, (m, w) in peers.items()}})
    for part in (reverse_mode, finite_differences, symbolic):
        part(table, peers, args.quick)
    table.fill_ratios(ours_for)
    table.meta["targets"] = check_targets(table, peers)
    print(table.text())
    print()
    for t in table.meta["targets"]:
        ratio = "" if t["ratio"] is None else f" (peer ÷ ours {t['ratio']:.3g})"
        print(f"target: {t['target']} [{t['workload']}]: {t['verdict']}{ratio}")
    path, csv_path = table.save(args.json)
    print(f"\nwrote {path} and {csv_path}")
    return 0


def ours_for(row: Any) -> str:
    """Which row of ours a peer's row is divided by: numdifftools by our Richardson (both
    extrapolate), SymPy by matrix mode, autograd by the tape."""
    if row.framework == "numdifftools":
        return f"{OURS} (richardson)"
    if row.framework == "sympy":
        return f"{OURS} (symbolic matrix)"
    return OURS


if __name__ == "__main__":
    raise SystemExit(main())
