"""10. Recipes: where the fast recipes' training time goes, at their real image sizes.

For gic_fast (64x64) and deepfake_fast (100x100), in float32 on the shared gic data (resized to the
recipe's size): the input pipeline alone (an epoch of `train_dataset`, augmentation included, no
model); the compute ceiling (the compiled model fitted on one batch held in memory: no input
pipeline, no callbacks); and aigc's own `training.fit` (pipeline, validation, checkpoint, budget
plan, resume backup). aigc / ceiling near 1 means the loop adds nothing worth removing; pipeline /
aigc well above 1 means the input never makes the model wait.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from aigc import training
from aigc.data import load_data
from aigc.data.pipeline import eval_dataset, train_dataset
from benchmarks.figures import Figure, Result
from benchmarks.gpu import models
from benchmarks.workspace import REPO, Workspace

RECIPES = {"gic_fast": 64, "deepfake_fast": 100}  # recipe -> its image size
SETTLED = {"train.budget_minutes": None, "train.schedule": "cosine", "train.early_stopping": None,
           "train.plateau": None, "train.precision": "float32", "data.layout": "gic"}


def run(ws: Workspace) -> Result:
    epochs = 3 if ws.sizes.repeats < 3 else 4
    figures, data = [], {"epochs": epochs}
    for i, (name, size) in enumerate(RECIPES.items()):
        config = ws.config(REPO / "configs" / f"{name}.yaml", **SETTLED, **{"data.image_size": size,
                                                                            "train.epochs": epochs})
        measured = measure(ws, config)
        data[name] = measured
        aigc, ceiling, pipeline = (measured[k] for k in ("aigc", "ceiling", "pipeline"))
        figures += [
            Figure(f"recipes_{i}_loop", f"{name} ({size}x{size}): aigc training.fit / compute ceiling, images/s",
                   aigc / ceiling, None, detail=f"{aigc:.0f} vs {ceiling:.0f} images/s"),
            Figure(f"recipes_{i}_input", f"{name} ({size}x{size}): input pipeline alone / aigc training, images/s",
                   pipeline / aigc, None, detail=f"{pipeline:.0f} vs {aigc:.0f} images/s"),
        ]
    return Result("recipes", figures, data, [f"float32, {epochs} epochs each, best epoch after the first"])


def measure(ws: Workspace, config) -> dict:
    dataset, cache = load_data(ws.data_dir, config.data, progress=False)  # a cache at the recipe's size
    images, labels = cache.images("train"), dataset.splits["train"].labels
    classes, batch = dataset.num_classes, config.data.batch_size
    try:
        _, fitted = models(config, classes)
        train_ds = train_dataset(images, labels, classes, config.data, config.augment, config.train.seed)
        val_ds = eval_dataset(cache.images("val"), dataset.splits["val"].labels, classes, batch)
        start = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in train_ds)
        pipeline = seen / (time.perf_counter() - start)

        steps = max(1, len(labels) // batch)
        x, y = next(iter(train_ds))
        held = tf.data.Dataset.from_tensors((x, y)).repeat()
        ceiling = fitted.fit(held, steps_per_epoch=steps, epochs=config.train.epochs, verbose=0,
                             callbacks=[training.EpochTimer(steps * int(x.shape[0]))])
        _, fitted = models(config, classes)  # a fresh model for aigc's own loop
        with tempfile.TemporaryDirectory() as workdir:
            history = training.fit(fitted, train_ds, val_ds, config.train, Path(workdir), [], len(labels))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"pipeline": pipeline, "ceiling": max(ceiling.history["images_per_second"][1:]),
            "aigc": max(history.history["images_per_second"][1:]), "parameters": fitted.count_params()}
