"""Case study 3: a DnCNN-style residual denoiser for Gaussian noise σ = 25/255.

The network (:class:`~autodiff_lab.nn.DnCNN`, Zhang et al., IEEE TIP 2017): 3×3 conv +
ReLU, then (depth − 2) × [3×3 conv without bias + batch norm + ReLU], then a 3×3 conv to
one channel. It predicts the *noise* (residual learning): clean ≈ noisy − network(noisy).
Fully convolutional, so a network trained on small patches denoises whole images of any
size (in evaluation mode: batch norm uses its running statistics).

Training data: random 40×40 patches (with a random one of the 8 flips/rotations) of the
training grey images -- every shipped image except the test images camera, coins and text
-- with fresh Gaussian noise for every batch, in float32. Loss ½·mean((net(noisy) −
noise)²), Adam with a linear warm-up and a cosine decay of the learning rate. The final
convolution starts at a tenth of its He-normal scale, so the network starts close to
"predict no noise" instead of adding large random noise (this saves the first few hundred
steps of a short run).

The training is bounded by a time budget (``minutes``): a few calibration steps on a copy
of the model measure the speed, the cosine schedule is planned for the number of steps that
fit in the budget and re-planned every 50 steps from the speed actually seen (a shared
machine's speed changes), and the run stops at the budget in any case. Reported: PSNR of the noisy
image, of the best Gaussian filter (σ chosen per image on a grid, with the clean image: an
optimistic classical baseline) and of the network, on camera, coins and text with a fixed
noise seed. Writes ``model.npz``, ``metrics.json``, ``panel.png`` (noisy / Gaussian /
network / clean for each test image), ``crops.png`` (the same, 128×128 crops at full
resolution), ``loss.png`` and ``<image>_noisy.png`` / ``<image>_denoised.png``.

Configurations: ``default`` (5 layers, 32 channels, batch 8, 5 minutes) and ``long``
(8 layers, 48 channels, batch 16, 60 minutes: aims at BM3D's 29.45 dB on camera).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from autodiff_lab.errors import InputError
from autodiff_lab.studies.common import (
    ALL_ENGINES,
    STUDY_MAX_NUMERIC,
    RunFolder,
    StudyOptions,
    StudyResult,
    check_engine,
    psnr_db,
    read_settings,
    refuse_infeasible_engine,
    say,
    training_record,
)

NAME = "denoiser"
SUMMARY = ("a DnCNN-style residual denoiser (σ = 25/255) trained on patches within a time "
           "budget: PSNR of noisy, best Gaussian filter and network on camera, coins, text")
ENGINES = ALL_ENGINES
DEFAULT_ENGINE = "tape"
SIGMA = 25 / 255
#: noise of the test images (fixed, so runs with different seeds are scored alike)
TEST_NOISE_SEED = 2017
#: training steps per "epoch" (checkpoints, validation PSNR, progress)
EPOCH_STEPS = 100
CALIBRATION_STEPS = 8
TARGET_CAMERA_DB = 29.0
TARGET_GAIN_DB = 1.0


@dataclass(frozen=True)
class Recipe:
    """One training configuration of the denoiser."""

    depth: int = 5
    channels: int = 32
    batch: int = 8
    patch: int = 40
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup: int = 100
    last_layer_scale: float = 0.1
    minutes: float = 5.0
    steps: int | None = None      #: a fixed step count instead of the time budget (quick)
    crop: int | None = None       #: score on centre crops of the test images (quick)
    description: str = ""


CONFIGS = {
    "default": Recipe(description="DnCNN-lite: 5 layers, 32 channels, batch 8 of 40×40 patches, "
                                  "Adam 2e-3 (100 warm-up steps, cosine to 2e-5), 5 minutes"),
    "long": Recipe(depth=8, channels=48, batch=16, patch=40, lr=1e-3, min_lr=1e-5, warmup=300,
                   minutes=60.0, description="8 layers, 48 channels, batch 16 of 40×40 patches, "
                                             "Adam 1e-3 (300 warm-up steps, cosine to 1e-5), 60 "
                                             "minutes: aims at BM3D's 29.45 dB on camera"),
}
QUICK = Recipe(depth=3, channels=8, batch=4, patch=24, warmup=2, minutes=1.0, steps=8, crop=64,
               description="smoke test: 3 layers, 8 channels, 8 steps, 64×64 test crops")


class NoisyPatches:
    """The training data: random augmented patches of the training images with fresh
    Gaussian noise, as (noisy, noise) -- the network learns to predict the noise."""

    __name__ = "noisy_patches"

    def __init__(self, images: dict[str, np.ndarray], size: int, sigma: float = SIGMA) -> None:
        self.images, self.size, self.sigma = images, size, sigma

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        from autodiff_lab.data import random_patches
        clean = random_patches(self.images, self.size, batch_size, rng)
        noise = rng.normal(0.0, self.sigma, clean.shape).astype(np.float32)
        return clean + noise, noise

    def __repr__(self) -> str:
        return f"NoisyPatches({sorted(self.images)}, size={self.size}, sigma={self.sigma:.4f})"


def training_images() -> dict[str, np.ndarray]:
    """Every shipped grey image except the test images."""
    from autodiff_lab.data import DENOISE_TEST_IMAGES, load_gray_images
    return {k: v for k, v in load_gray_images().items() if k not in DENOISE_TEST_IMAGES}


def test_images(crop: int | None = None) -> dict[str, np.ndarray]:
    """camera, coins and text (centre crops of ``crop``² pixels when given)."""
    from autodiff_lab.data import DENOISE_TEST_IMAGES, load_gray_images
    out = {}
    for k, v in load_gray_images(DENOISE_TEST_IMAGES).items():
        if crop:
            top, left = (v.shape[0] - crop) // 2, (v.shape[1] - crop) // 2
            v = v[top:top + crop, left:left + crop]
        out[k] = v
    return out


def build(recipe: Recipe, seed: int):
    """The network (float32) and its optimiser, from the seed."""
    from autodiff_lab import nn
    model = nn.DnCNN(recipe.depth, recipe.channels, 1, dtype=np.float32, rng=seed)
    last = model.layers[len(model.layers) - 1]
    last.weight.data *= np.float32(recipe.last_layer_scale)
    return model, nn.Adam(model.parameters(), lr=recipe.lr)


def schedule(optimizer, recipe: Recipe, total: int):
    """Linear warm-up, then a cosine decay over ``total`` steps."""
    from autodiff_lab import nn
    warmup = min(recipe.warmup, max(total - 1, 0) // 10)
    return nn.CosineLR(optimizer, total_steps=max(total, 1), min_lr=recipe.min_lr, warmup_steps=warmup)


def replan_schedule(scheduler, time_limit: float, most_steps: int, every: int = 50):
    """A ``fit`` callback for runs bounded by time: every ``every`` steps, estimate from the
    steps so far how many still fit in ``time_limit`` seconds and end the cosine decay there
    (at most ``most_steps``). The calibration is only a first guess: a shared machine's speed
    changes, and a schedule planned for steps that never come leaves the learning rate high."""
    start = time.perf_counter()

    def callback(info) -> None:
        if info.step % every:
            return
        elapsed = time.perf_counter() - start
        remaining = max(time_limit - elapsed, 0.0) * 0.96  # validation and checkpoints
        total = info.step + int(remaining * info.step / max(elapsed, 1e-9))
        scheduler.total_steps = int(min(max(total, info.step + 1, scheduler.warmup_steps + 1),
                                        most_steps))

    return callback


def _validation(seed: int, size: int = 64, count: int = 8):
    """Fixed noisy crops of the training images: the validation loss and PSNR each epoch."""
    from autodiff_lab.data import random_patches
    rng = np.random.default_rng(seed + 7)
    clean = random_patches(training_images(), size, count, rng, augment=False)
    noise = rng.normal(0.0, SIGMA, clean.shape).astype(np.float32)
    return clean + noise, noise


def calibrate(recipe: Recipe, seed: int, engine: str, sampler: NoisyPatches) -> float:
    """Seconds per training step (sampling, forward, backward, update), measured on a copy
    of the model so the run itself is not changed: the median of the steps after the first
    two (which trace, compile and warm up). An engine that cannot train the model is
    refused here, before any training."""
    from autodiff_lab import nn
    model, optimizer = build(recipe, seed)
    stamps: list[float] = []
    start = time.perf_counter()
    nn.fit(model, nn.MSELoss(reduction="mean"), optimizer, sampler, engine=engine, epochs=1,
           steps_per_epoch=CALIBRATION_STEPS, batch_size=recipe.batch, seed=seed + 99,
           max_numeric_evaluations=STUDY_MAX_NUMERIC, progress=False,
           callback=lambda info: stamps.append(time.perf_counter()))
    times = np.diff([start, *stamps])[2:]
    return float(np.median(times))


def plan_steps(recipe: Recipe, budget_s: float, step_s: float) -> int:
    """Steps that fit in ``budget_s`` at ``step_s`` each (a 4 % margin for the per-epoch
    validation and checkpoints), rounded down to whole epochs (at least one)."""
    steps = int(0.96 * budget_s / max(step_s, 1e-6))
    return max(EPOCH_STEPS, steps // EPOCH_STEPS * EPOCH_STEPS)


def evaluate_images(model, crop: int | None) -> tuple[dict, dict]:
    """PSNRs of noisy, best Gaussian and network on each test image; and the images."""
    from autodiff_lab.data import best_gaussian_filter
    rng = np.random.default_rng(TEST_NOISE_SEED)
    scores, pictures = {}, {}
    for name, clean in test_images(crop).items():
        noisy = clean + rng.normal(0.0, SIGMA, clean.shape)
        gauss, sigma, gauss_db = best_gaussian_filter(noisy, clean)
        start = time.perf_counter()
        net = np.clip(model.denoise(noisy.astype(np.float32)).astype(np.float64), 0.0, 1.0)
        seconds = time.perf_counter() - start
        scores[name] = {
            "shape": list(clean.shape), "noisy_db": psnr_db(noisy, clean),
            "gaussian_db": float(gauss_db), "gaussian_sigma_px": float(sigma),
            "network_db": psnr_db(net, clean), "denoise_s": seconds,
        }
        scores[name]["gain_over_gaussian_db"] = scores[name]["network_db"] - scores[name]["gaussian_db"]
        pictures[name] = (noisy, gauss, net, clean)
    return scores, pictures


def _recipe(options: StudyOptions) -> Recipe:
    if options.quick:
        recipe = QUICK
    else:
        name = options.config or "default"
        if name not in CONFIGS:
            raise InputError(f"unknown --config {name!r} for the denoiser; choose one of "
                             f"{', '.join(CONFIGS)}")
        recipe = CONFIGS[name]
    if options.minutes is not None:
        m = options.minutes
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
            raise InputError(f"--minutes must be a positive number, got {m!r}")
        recipe = replace(recipe, minutes=float(m), steps=None if not options.quick else recipe.steps)
    if options.epochs is not None:
        if isinstance(options.epochs, bool) or not isinstance(options.epochs, int) or options.epochs < 1:
            raise InputError(f"--epochs must be a positive integer, got {options.epochs!r}")
        recipe = replace(recipe, steps=options.epochs * EPOCH_STEPS)
    return recipe


def run(options: StudyOptions, folder: RunFolder) -> StudyResult:
    """Train within the time budget, then score on the test images (module docstring)."""
    from autodiff_lab import figures, nn
    from autodiff_lab.data import write_image

    engine = check_engine(NAME, options.engine, ENGINES, DEFAULT_ENGINE)
    recipe = _recipe(options)
    budget = 60.0 * recipe.minutes
    sampler = NoisyPatches(training_images(), recipe.patch)
    started = time.perf_counter()
    if folder.resumed:
        saved = read_settings(folder.path)
        total, step_s = int(saved["planned_steps"]), float(saved["calibrated_step_s"])
        if options.epochs is not None and options.epochs * EPOCH_STEPS != total:
            raise InputError(f"a resumed denoiser run keeps its planned {total} steps "
                             f"({total // EPOCH_STEPS} epochs of {EPOCH_STEPS})")
    else:
        refuse_infeasible_engine(engine, build(recipe, options.seed)[0], nn.MSELoss(reduction="mean"),
                                 sampler, recipe.batch, steps_per_epoch=1)
        say(options, f"denoiser: {recipe.description or recipe}; calibrating the {engine} engine")
        step_s = calibrate(recipe, options.seed, engine, sampler)
        total = recipe.steps or plan_steps(recipe, budget - (time.perf_counter() - started), step_s)
    calibration_s = time.perf_counter() - started
    epochs = -(-total // EPOCH_STEPS) if total >= EPOCH_STEPS else 1
    steps_per_epoch = EPOCH_STEPS if total >= EPOCH_STEPS else total
    folder.write_settings(NAME, options, {"recipe": asdict(recipe), "planned_steps": total,
                                          "calibrated_step_s": step_s})
    say(options, f"{1e3 * step_s:.0f} ms per step: {total} steps planned "
                 f"({epochs} epoch(s) of {steps_per_epoch}) within {recipe.minutes:g} min")

    model, optimizer = build(recipe, options.seed)
    scheduler = schedule(optimizer, recipe, total)
    val = _validation(options.seed)
    timed = not recipe.steps or (options.minutes is not None and not options.quick)
    time_limit = max(budget - calibration_s, 0.0) if timed else None
    replan = (replan_schedule(scheduler, time_limit, epochs * steps_per_epoch)
              if timed and not folder.resumed else None)
    history = nn.fit(model, nn.MSELoss(reduction="mean"), optimizer, sampler, val, engine=engine,
                     epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=recipe.batch,
                     scheduler=scheduler, schedule_per="step", seed=options.seed,
                     metrics={"val_psnr_db": lambda m: _val_psnr(m, val)},
                     out=folder.training(), resume=folder.checkpoint(), time_limit=time_limit,
                     max_numeric_evaluations=STUDY_MAX_NUMERIC, progress=not options.quiet, plot=False,
                     callback=replan)
    training = training_record(history)
    training["calibration_s"] = calibration_s if not folder.resumed else 0.0
    training["total_training_s"] = training["wall_time_s"] + training["calibration_s"]
    training["planned_steps"] = total
    training["schedule_steps"] = scheduler.total_steps  # after re-planning on the way
    training["calibrated_step_ms"] = 1e3 * step_s

    say(options, "scoring on " + ", ".join(test_images(recipe.crop)))
    scores, pictures = evaluate_images(model, recipe.crop)
    folder.save_model(model)
    folder.record(history.plot(folder.file("loss"), title=f"DnCNN ({engine}): ½·mean((net − noise)²)"))
    names = list(pictures)
    rows = [list(pictures[n]) for n in names]
    caps = [[scores[n]["noisy_db"], f"σ = {scores[n]['gaussian_sigma_px']:g} px: "
             f"{scores[n]['gaussian_db']:.2f} dB", scores[n]["network_db"], None] for n in names]
    cols = ["noisy (σ = 25)", "best Gaussian", "network", "clean"]
    folder.record(figures.image_panel(rows, folder.file("panel"), column_titles=cols, captions=caps,
                                      row_titles=names, title="DnCNN denoiser on the test images"))
    crop_rows = []
    for n in names:
        h, w = pictures[n][0].shape
        c = min(128, h, w)
        t, s = (h - c) // 2, (w - c) // 2
        crop_rows.append([p[t:t + c, s:s + c] for p in pictures[n]])
    folder.record(figures.image_panel(crop_rows, folder.file("crops"), column_titles=cols,
                                      row_titles=names, title="centre crops at full resolution"))
    for n in names:
        folder.record(write_image(folder.file(f"{n}_noisy.png"), pictures[n][0]),
                      write_image(folder.file(f"{n}_denoised.png"), pictures[n][2]))

    camera = scores.get("camera", {})
    met = (not recipe.crop and camera.get("network_db", 0) >= TARGET_CAMERA_DB
           and all(s["gain_over_gaussian_db"] >= TARGET_GAIN_DB for s in scores.values())
           and training["total_training_s"] <= 300.0)
    metrics = {
        "study": NAME,
        "engine": engine,
        "config": "quick" if options.quick else (options.config or "default"),
        "recipe": asdict(recipe),
        "model": {"class": "DnCNN", "depth": recipe.depth, "channels": recipe.channels,
                  "parameters": model.num_parameters, "dtype": "float32"},
        "data": {"train_images": sorted(sampler.images), "patch": recipe.patch, "sigma": SIGMA,
                 "test_noise_seed": TEST_NOISE_SEED, "test_crop": recipe.crop},
        "loss": "½·mean over pixels of (predicted noise − noise)² (nn.MSELoss(reduction='mean'))",
        "training": training,
        "psnr": scores,
        "psnr_definition": "10·log10(1/MSE) over the image's pixels, images in [0, 1]; the "
                           "network's output clipped to [0, 1]",
        "targets": {"camera_db": TARGET_CAMERA_DB, "gain_over_gaussian_db": TARGET_GAIN_DB,
                    "training_s": 300.0, "met": bool(met)},
    }
    folder.write_metrics(metrics)
    summary = "; ".join(f"{n} {s['noisy_db']:.2f} → Gaussian {s['gaussian_db']:.2f} → network "
                        f"{s['network_db']:.2f} dB" for n, s in scores.items())
    steps_line = (f"{training['steps']} steps in {training['total_training_s']:.0f} s "
                  f"({training['steps_per_s'] or float('nan'):.1f} steps/s, stopped: {training['stopped']})")
    return StudyResult(NAME, folder.path, metrics, folder.files, [summary, steps_line])


def _val_psnr(model, val) -> float:
    from autodiff_lab import nn
    noisy, noise = val
    residual = nn.predict(model, noisy, batch_size=None) - noise
    return 10.0 * math.log10(1.0 / float(np.mean(residual.astype(np.float64) ** 2)))


__all__ = ["CONFIGS", "NoisyPatches", "Recipe", "build", "evaluate_images", "run", "test_images"]
