"""8. Precision: float32 against mixed_bfloat16 (and what `train.precision: auto` picks), side by side.

The same model, data, seed and epochs in each precision, built and compiled as `train` does
(gpu.models: set_seed applies train.precision); training images/s from aigc's EpochTimer (best
epoch after the first, which traces) and the validation accuracy of the last epoch. bfloat16
is the CPU's fast path only where oneDNN finds AMX or AVX512-BF16; elsewhere it is emulated and
slower, which this measures too.
"""

from __future__ import annotations

import keras

from aigc import training
from aigc.data.pipeline import eval_dataset, train_dataset
from benchmarks.figures import Figure, Result
from benchmarks.gpu import models
from benchmarks.workspace import REPO, RESNET20, Workspace

PRECISIONS = ("float32", "mixed_bfloat16")
# name -> (config, overrides): all on the shared 64x64 gic data; the branch CNN is the final
# deepfake attempt at 64x64 instead of 128x128 (17.7M parameters instead of 70.4M). The fast recipes
# train a fixed number of epochs here (no budget) on a cosine schedule, deepfake_fast at 64x64, not 100x100.
RECIPE = {"train.budget_minutes": None, "train.schedule": "cosine"}
MODELS = {
    "ResNet20": (RESNET20, {}),
    "branch CNN": (REPO / "configs" / "deepfake_attempt6.yaml", {"data.layout": "gic", "data.image_size": 64}),
    "gic_fast recipe": (REPO / "configs" / "gic_fast.yaml", RECIPE),
    "deepfake_fast recipe (64x64)": (REPO / "configs" / "deepfake_fast.yaml",
                                     {**RECIPE, "data.layout": "gic", "data.image_size": 64}),
}
SETTLED = {"train.early_stopping": None, "train.plateau": None}


def run(ws: Workspace) -> Result:
    epochs = 3 if ws.sizes.repeats < 3 else 6
    flags = sorted(training.cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"})
    auto = training.auto_precision()
    figures, data = [], {"epochs": epochs, "cpu_bf16_flags": flags, "auto": auto}
    for i, (name, (path, overrides)) in enumerate(MODELS.items()):
        measured = {p: measure(ws, ws.config(path, **overrides, **SETTLED, **{"train.precision": p}), epochs)
                    for p in PRECISIONS}
        data[name] = measured
        fast, slow = measured["mixed_bfloat16"], measured["float32"]
        figures += [
            Figure(f"precision_{i}_speed", f"{name}: bfloat16 / float32 training images/s",
                   fast["images_per_second"] / slow["images_per_second"], None,
                   detail=f"{fast['images_per_second']:.0f} vs {slow['images_per_second']:.0f} images/s"),
            Figure(f"precision_{i}_accuracy", f"{name}: val accuracy bfloat16 - float32 after {epochs} epochs",
                   fast["val_accuracy"] - slow["val_accuracy"], None, unit="",
                   detail=f"{fast['val_accuracy']:.4f} vs {slow['val_accuracy']:.4f}"),
        ]
    notes = [f"CPU bfloat16 flags: {', '.join(flags) or 'none'}; train.precision auto -> {auto}"]
    return Result("precision", figures, data, notes)


def measure(ws: Workspace, config, epochs: int) -> dict:
    """Training images/s (best epoch after the first) and the last epoch's validation accuracy."""
    dataset, cache = ws.data
    labels, val_labels = dataset.splits["train"].labels, dataset.splits["val"].labels
    try:
        _, fitted = models(config, dataset.num_classes)
        train_ds = train_dataset(cache.images("train"), labels, dataset.num_classes, config.data, config.augment,
                                 config.train.seed)
        val_ds = eval_dataset(cache.images("val"), val_labels, dataset.num_classes, config.data.batch_size)
        history = fitted.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0,
                             callbacks=[training.EpochTimer(len(labels))])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"images_per_second": max(history.history["images_per_second"][1:]),
            "val_accuracy": history.history["val_accuracy"][-1], "parameters": fitted.count_params()}
