"""Case study 2: an MLP that fills in a hidden block of handwritten digits.

ŷ = W2·relu(W1·x + b1) + b2 on flattened 28×28 digits (784-256-784,
:class:`~autodiff_lab.nn.InpaintingMLP`): the input is a digit with one random 12×12
block set to 0, the target the complete digit, the loss ½‖y − ŷ‖² summed over the pixels
and averaged over the batch (:class:`~autodiff_lab.nn.MSELoss`). Training draws a new
block for every image of every batch (a ``transform`` of ``nn.fit``, from the run's
generator); the 1,000 test digits get fixed blocks from ``seed + 1``. Adam with a cosine
decay of the learning rate, one step per batch.

Reported on the test digits, as PSNR (peak 1): the masked input (the baseline), the
prediction, and the prediction pasted into the hidden block only (the known pixels kept),
each over the whole test set (10·log10(1 / MSE) with the MSE over every pixel of every
image) and as the mean of the per-image PSNRs (a masked digit whose block hides only
background equals its ground truth, an infinite PSNR: those images are left out of that
mean, and counted). Writes ``model.npz``, ``metrics.json``, ``loss.png`` (training loss
per step, test loss per epoch), ``panel.png`` (masked / prediction / pasted / ground truth
for 8 test digits), ``filters.png`` (the first layer's weights of 10 hidden units).

``engine="symbolic"`` (matrix mode) trains the same network on the same batches and gives
the same loss curve to float tolerance; ``"numeric"`` is refused before the first step.
"""

from __future__ import annotations

import numpy as np

from autodiff_lab.studies.common import (
    ALL_ENGINES,
    STUDY_MAX_NUMERIC,
    RunFolder,
    StudyOptions,
    StudyResult,
    check_engine,
    per_image_psnr,
    psnr_db,
    refuse_infeasible_engine,
    say,
    scheduled_epochs,
    training_record,
)

NAME = "inpainting"
SUMMARY = ("an MLP 784-256-784 fills a hidden 12×12 block of digits: test PSNR of the masked "
           "input, the prediction and the prediction pasted into the hole")
ENGINES = ALL_ENGINES
DEFAULT_ENGINE = "tape"

HIDDEN = 256
BLOCK = 12
EPOCHS, QUICK_EPOCHS = 20, 1
BATCH = 64
LR = 2e-3
MIN_LR = 1e-5
QUICK_TRAIN, QUICK_TEST = 256, 100
PANEL = 8
#: what the defaults should reach, checked into metrics.json
TARGET_GAIN_DB = 4.0
TARGET_SECONDS = 60.0


class BlockMasks:
    """The training transform: hide one random ``block``×``block`` square of each input
    (a new square for every image of every batch, drawn from the run's generator)."""

    __name__ = "block_masks"

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block

    def __call__(self, rng: np.random.Generator, xb: np.ndarray, yb: np.ndarray):
        from autodiff_lab.data import random_block_mask
        masked, _ = random_block_mask(yb, self.block, rng)
        return masked, yb

    def __repr__(self) -> str:
        return f"BlockMasks(block={self.block})"


def load(quick: bool, seed: int, dtype=np.float32):
    """Training digits (N, 784), test digits, their fixed masked versions and masks."""
    from autodiff_lab.data import load_digits, random_block_mask
    x_train, _ = load_digits("train")
    x_test, _ = load_digits("test")
    if quick:
        x_train, x_test = x_train[:QUICK_TRAIN], x_test[:QUICK_TEST]
    x_train = x_train.reshape(len(x_train), -1).astype(dtype)
    x_test = x_test.reshape(len(x_test), -1).astype(dtype)
    masked_test, mask_test = random_block_mask(x_test, BLOCK, np.random.default_rng(seed + 1))
    return x_train, x_test, masked_test, mask_test


def build(seed: int, dtype=np.float32, lr: float = LR):
    """The model and its optimiser, from the seed."""
    from autodiff_lab import nn
    model = nn.InpaintingMLP(784, HIDDEN, dtype=dtype, rng=seed)
    return model, nn.Adam(model.parameters(), lr=lr)


def scores(model, x_test: np.ndarray, masked: np.ndarray, mask: np.ndarray) -> dict:
    """Test PSNRs of the masked input, the prediction and the prediction pasted into the hole."""
    from autodiff_lab import nn
    pred = np.clip(nn.predict(model, masked).astype(np.float64), 0.0, 1.0)
    pasted = mask * x_test + (1 - mask) * pred
    out: dict = {"definition": "PSNR (peak 1) of the whole test set: 10·log10(1/MSE), MSE over "
                               "every pixel of every image; *_mean_per_image: the mean of each "
                               "image's PSNR over the images whose masked input differs from the "
                               "ground truth",
                 "test_images": int(len(x_test))}
    finite = per_image_psnr(masked, x_test)
    keep = np.isfinite(finite)
    for key, est in (("masked_input", masked), ("prediction", pred), ("pasted", pasted)):
        out[f"{key}_db"] = psnr_db(est, x_test)
        out[f"{key}_mean_per_image_db"] = float(np.mean(per_image_psnr(est, x_test)[keep]))
    out["images_with_blank_block"] = int((~keep).sum())
    out["gain_pasted_db"] = out["pasted_db"] - out["masked_input_db"]
    out["gain_prediction_db"] = out["prediction_db"] - out["masked_input_db"]
    return out, pred, pasted


def run(options: StudyOptions, folder: RunFolder) -> StudyResult:
    """Train and score the inpainting MLP (module docstring)."""
    from autodiff_lab import figures, nn

    engine = check_engine(NAME, options.engine, ENGINES, DEFAULT_ENGINE)
    epochs = scheduled_epochs(folder, options, QUICK_EPOCHS if options.quick else EPOCHS)
    x_train, x_test, masked_test, mask_test = load(options.quick, options.seed)
    model, optimizer = build(options.seed)
    steps_per_epoch = -(-len(x_train) // BATCH)
    scheduler = nn.CosineLR(optimizer, total_steps=epochs * steps_per_epoch, min_lr=MIN_LR)
    refuse_infeasible_engine(engine, model, nn.MSELoss(), (x_train, x_train), BATCH)
    folder.write_settings(NAME, options, {"hidden": HIDDEN, "block": BLOCK, "batch": BATCH, "lr": LR})
    say(options, f"training the inpainting MLP 784-{HIDDEN}-784 with the {engine} engine: {epochs} "
                 f"epoch(s) of {steps_per_epoch} steps, batch {BATCH}, Adam {LR:g} with cosine decay")

    def pasted_psnr(m) -> float:
        pred = np.clip(nn.predict(m, masked_test), 0.0, 1.0)
        return psnr_db(mask_test * x_test + (1 - mask_test) * pred, x_test)

    history = nn.fit(model, nn.MSELoss(), optimizer, (x_train, x_train), (masked_test, x_test),
                     engine=engine, epochs=epochs, batch_size=BATCH, scheduler=scheduler,
                     schedule_per="step", transform=BlockMasks(BLOCK), seed=options.seed,
                     metrics={"pasted_psnr_db": pasted_psnr}, out=folder.training(),
                     resume=folder.checkpoint(), max_numeric_evaluations=STUDY_MAX_NUMERIC,
                     progress=not options.quiet, plot=False)

    result, pred, pasted = scores(model, x_test, masked_test, mask_test)
    folder.save_model(model)
    folder.record(history.plot(folder.file("loss"),
                               title=f"inpainting MLP ({engine}): ½‖y − ŷ‖² per digit"))
    idx = np.arange(min(PANEL, len(x_test)))
    rows = [[a[i].reshape(28, 28) for i in idx] for a in (masked_test, pred, pasted, x_test)]
    caps = [[float(v) for v in per_image_psnr(a[idx], x_test[idx])] for a in (masked_test, pred, pasted)]
    caps.append([None] * len(idx))
    folder.record(figures.image_panel(rows, folder.file("panel"), captions=caps,
                                      row_titles=["masked", "prediction", "pasted", "truth"],
                                      title=f"test digits: pasted {result['pasted_db']:.2f} dB vs "
                                            f"masked {result['masked_input_db']:.2f} dB"))
    W1 = model.fc1.weight.data
    strongest = np.argsort(-np.linalg.norm(W1, axis=1))[:10]
    folder.record(figures.weight_templates(W1[strongest], folder.file("filters"),
                                           titles=[f"unit {int(u)}" for u in strongest],
                                           title="first-layer weights of the 10 strongest hidden units"))
    training = training_record(history)
    metrics = {
        "study": NAME,
        "engine": engine,
        "model": {"class": "InpaintingMLP", "layers": [784, HIDDEN, 784],
                  "parameters": model.num_parameters, "dtype": "float32"},
        "data": {"train_images": len(x_train), "test_images": len(x_test), "block": BLOCK,
                 "test_masks_seed": options.seed + 1},
        "optimizer": {"name": "Adam", "lr": LR, "schedule": f"cosine per step to {MIN_LR:g}",
                      "batch": BATCH, "epochs": epochs},
        "loss": "½‖y − ŷ‖² summed over pixels, averaged over the batch (nn.MSELoss)",
        "training": training,
        "psnr": result,
        "targets": {"pasted_gain_db": TARGET_GAIN_DB, "training_s": TARGET_SECONDS,
                    "met": bool(result["gain_pasted_db"] >= TARGET_GAIN_DB
                                and training["wall_time_s"] <= TARGET_SECONDS)},
    }
    folder.write_metrics(metrics)
    summary = (f"test PSNR: masked {result['masked_input_db']:.2f} dB, prediction "
               f"{result['prediction_db']:.2f} dB, pasted {result['pasted_db']:.2f} dB "
               f"(+{result['gain_pasted_db']:.2f} dB) after {training['steps']} steps in "
               f"{training['wall_time_s']:.1f} s")
    return StudyResult(NAME, folder.path, metrics, folder.files, [summary])


__all__ = ["BlockMasks", "build", "load", "run", "scores"]
