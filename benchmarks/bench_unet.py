"""U-Net and hourglass training step (forward + backward) time: the tape engine next to PyTorch CPU.

    python benchmarks/bench_unet.py              # every workload, 7 rounds
    python benchmarks/bench_unet.py --quick      # 3 rounds of the small workload
    python benchmarks/bench_unet.py --json out.json  # (default: results/bench_unet-<time>.json)
    python benchmarks/bench_unet.py --threads 1  # steadier when other jobs share the cores

Workloads, float32, loss ½‖f(z) − y‖² summed, gradient of every parameter:

* ``hourglass``: the Deep Image Prior study's network (``autodiff_lab/studies/dip.py``
  defaults: ``nn.Hourglass`` with five levels of 16, 32, 64, 128, 128 channels, 4-channel
  skips on the two deepest, bilinear up-sampling, LeakyReLU 0.2, batch norm, sigmoid
  output) on one 256×256 image from a 32-channel code;
* ``dip``: the study's U-Net (``--architecture unet --depth 4 --code-channels 8``:
  depth 4, channels 8, 16, 32, 32 and a 32-channel bottleneck, 4-channel skip connections,
  stride-2 convolutions down, bilinear up-sampling, LeakyReLU 0.2, batch norm, sigmoid
  output) on one 256×256 image from an 8-channel code;
* ``small``: a classic U-Net (depth 3, 16 channels doubling per level, max-pooling, nearest
  up-sampling) on a batch of 4 grey 64×64 images.

PyTorch runs the same architecture with the same weights (its modules carry our state-dict
names, so ``load_state_dict`` takes ours; the losses are compared before timing). "ours"
is ``nn.compile_step(..., anomaly=False)`` (PyTorch does not check for NaN either); the step
includes writing every ``p.grad`` and, for both, the batch-norm running-statistic updates.
Times are medians over interleaved rounds (each framework once per round) so load from
other processes hits both alike; 2 threads everywhere (OMP, OpenBLAS, MKL, Numba,
``torch.set_num_threads``). Without PyTorch the peer column says "peer not installed".
"""

from __future__ import annotations

import os
import sys

THREADS = 2
if "--threads" in sys.argv[:-1]:  # read before numpy and torch start their thread pools
    THREADS = int(sys.argv[sys.argv.index("--threads") + 1])
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = str(THREADS)
    from _cpu import set_default_coretype  # benchmarks/ is on sys.path when run

    set_default_coretype()  # SkylakeX where the CPU has AVX-512, else OpenBLAS's pick
    # the checkout this file is in, not an installed copy: the script's own folder is what
    # Python puts first on sys.path, so the package beside it would otherwise be skipped
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from autodiff_lab import nn  # noqa: E402
from autodiff_lab.graph import functions as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _table import NOT_INSTALLED, OURS, Table  # noqa: E402, I001

WORKLOADS: dict[str, dict[str, Any]] = {
    "hourglass": dict(kind="hourglass", batch=(1, 32, 256, 256),
                      net=dict(in_channels=32, out_channels=1, widths=(16, 32, 64, 128, 128),
                               skip_channels=(0, 0, 0, 4, 4), up="bilinear", output="sigmoid")),
    "dip": dict(kind="unet", batch=(1, 8, 256, 256),
                net=dict(in_channels=8, out_channels=1, depth=4, width=(8, 16, 32, 32, 32),
                         skip_channels=4, down="conv", up="bilinear", output="sigmoid")),
    "small": dict(kind="unet", batch=(4, 1, 64, 64),
                  net=dict(in_channels=1, out_channels=1, depth=3, width=16, growth=2,
                           down="maxpool", up="nearest")),
}


def _loss(pred: Any, target: Any) -> Any:
    return F.mse_loss(pred, target, reduction="sum")


def torch_unet(model: nn.UNet, dtype: str = "float32") -> Any:
    """The same U-Net in PyTorch, with our weights (its modules are named as ours), in
    ``dtype`` (tests/nn/test_unet.py compares the two in float64)."""
    import torch
    from torch import nn as tnn

    def act() -> Any:
        return tnn.LeakyReLU(0.2) if model.activation == "leaky_relu" else tnn.ReLU()

    class Block(tnn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            bn = model.batch_norm
            self.conv1 = tnn.Conv2d(cin, cout, 3, padding=1, bias=not bn)
            self.bn1 = tnn.BatchNorm2d(cout) if bn else tnn.Identity()
            self.act1 = act()
            self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1, bias=not bn)
            self.bn2 = tnn.BatchNorm2d(cout) if bn else tnn.Identity()
            self.act2 = act()

        def forward(self, x: Any) -> Any:
            return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))

    class Skip(tnn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            bn = model.batch_norm
            self.conv = tnn.Conv2d(cin, cout, 1, bias=not bn)
            self.bn = tnn.BatchNorm2d(cout) if bn else tnn.Identity()
            self.act = act()

        def forward(self, x: Any) -> Any:
            return self.act(self.bn(self.conv(x)))

    class TorchUNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            c, d = model.channels, model.depth
            self.encoders = tnn.ModuleList(Block(model.in_channels if i == 0 else c[i - 1], c[i])
                                           for i in range(d))
            self.downs = tnn.ModuleList(tnn.MaxPool2d(2) if model.down == "maxpool" else
                                        tnn.Conv2d(c[i], c[i], 3, stride=2, padding=1)
                                        for i in range(d))
            self.bottleneck = Block(c[d - 1], c[d])
            if model.up == "transpose":
                self.ups = tnn.ModuleList(tnn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2)
                                          for i in range(d))
                up = c[:d]
            else:
                self.ups = tnn.ModuleList(tnn.Upsample(scale_factor=2, mode=model.up)
                                          for _ in range(d))
                up = c[1:]
            k = model.skip_channels
            if k is not None:
                self.skips = tnn.ModuleList(Skip(c[i], k) for i in range(d))
            skip = c[:d] if k is None else [k] * d
            self.decoders = tnn.ModuleList(Block(skip[i] + up[i], c[i]) for i in range(d))
            self.head = tnn.Conv2d(c[0], model.out_channels, 1)
            self.final = tnn.Sigmoid() if model.output == "sigmoid" else tnn.Identity()

        def forward(self, x: Any) -> Any:
            skips = []
            for enc, down in zip(self.encoders, self.downs):
                x = enc(x)
                skips.append(x if model.skip_channels is None else self.skips[len(skips)](x))
                x = down(x)
            x = self.bottleneck(x)
            for i in reversed(range(len(self.decoders))):
                x = self.decoders[i](torch.cat([skips[i], self.ups[i](x)], dim=1))
            return self.final(self.head(x))

    net = TorchUNet().to(getattr(torch, dtype))
    net.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return net


def torch_hourglass(model: nn.Hourglass, dtype: str = "float32") -> Any:
    """The same hourglass in PyTorch, with our weights (its modules are named as ours), in
    ``dtype`` (tests/nn/test_hourglass.py compares the two in float64)."""
    import torch
    from torch import nn as tnn

    def unit(cin: int, cout: int, k: int, stride: int = 1) -> Any:
        return tnn.Sequential(tnn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                              tnn.BatchNorm2d(cout), tnn.LeakyReLU(model.negative_slope)
                              if model.activation == "leaky_relu" else tnn.ReLU())

    class TorchHourglass(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            w, s, d = model.widths, model.skip_channels, model.depth
            inputs = [model.in_channels, *w[:-1]]
            self.skips = tnn.ModuleList(unit(inputs[i], s[i], 1) if s[i] else tnn.Identity()
                                        for i in range(d))
            self.downs = tnn.ModuleList(tnn.Sequential(unit(inputs[i], w[i], 3, 2),
                                                       unit(w[i], w[i], 3)) for i in range(d))
            self.ups = tnn.ModuleList(tnn.Upsample(scale_factor=2, mode=model.up)
                                      for _ in range(d))
            mixed = [s[i] + (w[i + 1] if i + 1 < d else w[i]) for i in range(d)]
            self.mix_norms = tnn.ModuleList(tnn.BatchNorm2d(c) for c in mixed)
            self.decoders = tnn.ModuleList(tnn.Sequential(unit(mixed[i], w[i], 3),
                                                          unit(w[i], w[i], 1)) for i in range(d))
            self.head = tnn.Conv2d(w[0], model.out_channels, 1)
            self.final = tnn.Sigmoid() if model.output == "sigmoid" else tnn.Identity()

        def level(self, i: int, x: Any) -> Any:
            deeper = self.downs[i](x)
            if i + 1 < model.depth:
                deeper = self.level(i + 1, deeper)
            h = self.ups[i](deeper)
            if model.skip_channels[i]:
                h = torch.cat([self.skips[i](x), h], dim=1)
            return self.decoders[i](self.mix_norms[i](h))

        def forward(self, x: Any) -> Any:
            return self.final(self.head(self.level(0, x)))

    net = TorchHourglass().to(getattr(torch, dtype))
    net.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return net


#: each kind of network: our class and its PyTorch twin
NETWORKS: dict[str, tuple[Any, Any]] = {"unet": (nn.UNet, torch_unet),
                                        "hourglass": (nn.Hourglass, torch_hourglass)}


def measure(name: str, rounds: int) -> dict[str, Any]:
    spec = WORKLOADS[name]
    ours_class, twin = NETWORKS[spec["kind"]]
    model = ours_class(**spec["net"], dtype=np.float32, rng=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.1, spec["batch"]).astype(np.float32)
    y = rng.random((spec["batch"][0], model.out_channels) + spec["batch"][2:]).astype(np.float32)
    step = nn.compile_step(model, _loss, x, y, anomaly=False)
    out: dict[str, Any] = {"workload": name, "batch": list(spec["batch"]),
                           "network": spec["net"],
                           "parameters": model.num_parameters}
    try:
        import torch
        torch.set_num_threads(THREADS)
        net = twin(model)
        tx, ty = torch.tensor(x), torch.tensor(y)
    except ImportError:
        net = None

    def ours() -> float:
        return step(x, y).loss

    def theirs() -> float:
        for p in net.parameters():
            p.grad = None
        loss = 0.5 * ((net(tx) - ty) ** 2).sum()
        loss.backward()
        return float(loss.detach())

    first_ours = ours()  # compiles; batch-norm statistics move in both from here on
    times: dict[str, list[float]] = {"ours": []}
    cpu: dict[str, list[float]] = {"ours": []}
    if net is not None:
        first_theirs = theirs()
        out["loss_relative_difference"] = abs(first_ours - first_theirs) / abs(first_theirs)
        times["pytorch"], cpu["pytorch"] = [], []
    for _ in range(rounds):
        for label, fn in (("ours", ours), ("pytorch", theirs)):
            if label in times:
                c, t = time.process_time(), time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t)
                cpu[label].append(time.process_time() - c)
    out["ours_seconds"] = statistics.median(times["ours"])
    # CPU time of the process (every thread, spinning ones included): on a busy machine
    # the wall times include waits for a core, which this does not
    out["ours_cpu_seconds"] = statistics.median(cpu["ours"])
    if net is not None:
        out["pytorch_seconds"] = statistics.median(times["pytorch"])
        out["ratio_ours_over_pytorch"] = out["ours_seconds"] / out["pytorch_seconds"]
        out["pytorch_cpu_seconds"] = statistics.median(cpu["pytorch"])
    else:
        out["pytorch_seconds"] = NOT_INSTALLED
    return out


def main() -> None:
    from autodiff_lab.kernels import tiered
    tiered.foreground()  # time the Numba kernels, not the reference path of a cold cache
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds of the small workload only")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None,
                    help="write the results here (default: a new "
                         "benchmarks/results/bench_unet-<time>.json, with a CSV beside it)")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="threads for both frameworks (default 2; 1 is steadier on a busy machine)")
    args = ap.parse_args()
    names = ["small"] if args.quick else list(WORKLOADS)
    rounds = 3 if args.quick else args.rounds
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = []
    print(f"U-Net and hourglass step (forward + backward), float32, {THREADS} threads, load "
          f"average {load:.1f} on {os.cpu_count()} cores, median of {rounds} interleaved rounds")
    print(f"{'workload':<8} {'input':<18} {'params':>8} {'ours (s)':>9} {'PyTorch (s)':>12} "
          f"{'ratio':>6}  {'CPU s: ours':>11} {'PyTorch':>8}")
    for name in names:
        r = measure(name, rounds)
        results.append(r)
        torch_s = r["pytorch_seconds"]
        torch_text = f"{torch_s:12.3f}" if isinstance(torch_s, float) else f"{torch_s:>12}"
        ratio = f"{r['ratio_ours_over_pytorch']:6.2f}" if "ratio_ours_over_pytorch" in r else "     -"
        print(f"{name:<8} {'×'.join(map(str, r['batch'])):<18} {r['parameters']:>8} "
              f"{r['ours_seconds']:9.3f} {torch_text} {ratio}  {r['ours_cpu_seconds']:11.3f} "
              f"{r.get('pytorch_cpu_seconds', float('nan')):8.3f}", flush=True)
    table = Table("bench_unet", meta={"threads": THREADS, "rounds": rounds, "results": results})
    for r in results:
        what = f"{'×'.join(map(str, r['batch']))}, {r['parameters']} parameters"
        table.add(r["workload"], OURS, "seconds per step", r["ours_seconds"], "s", what)
        if isinstance(r["pytorch_seconds"], float):
            table.add(r["workload"], "pytorch", "seconds per step", r["pytorch_seconds"], "s", what)
        else:
            table.not_installed(r["workload"], "pytorch", "seconds per step", "s")
    table.fill_ratios()
    path, csv_path = table.save(args.json)
    print(f"wrote {path} and {csv_path}")


if __name__ == "__main__":
    main()
