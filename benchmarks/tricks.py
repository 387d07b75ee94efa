"""11. Tricks: what each small-image trick costs, at the fast recipes' real image sizes.

Each trick (`TRICKS`: its config keys) is switched on alone on the recipe with every trick off
(`gic_fast` at 64x64, `deepfake_fast` at 100x100, float32, fixed epochs, no budget), and so is the
recipe as its file has it; all are measured in turn (A B C ..., then back): aigc's `training.fit`
(pipeline, validation, plan, resume backup, the weights kept as the train step keeps them; the second
epoch), the compute ceiling (the compiled model fitted on one batch held in memory) and the input
pipeline alone. Each figure is a variant's loop images per CPU-second of this process over the no-trick
recipe's: on a 2-core machine shared with other jobs, wall-clock rates of a few seconds' epochs swung
0.6-1.1x for tricks that change no compute at all (Dirac init), while the CPU seconds the process itself
spends move far less; the wall rates are kept beside them. The loop over its own ceiling says what the
loop (validation, the input's CPU share) costs beside the model; the ceiling over no tricks' ceiling says
whether the trick moved the model's compute.
The accuracy side is `python -m benchmarks.ablation` (same tricks, synthetic data).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from aigc import training
from aigc.data import load_data
from aigc.data.pipeline import eval_dataset, train_dataset
from aigc.models import build_model
from aigc.models.whitening import fit_whitening
from benchmarks.figures import Figure, Result
from benchmarks.workspace import REPO, Workspace

# name -> the config keys that switch it on (over the recipe); the README's trick table lists the same
TRICKS = {
    "patch whitening": {"model.params.whiten": True},
    "Dirac init": {"model.params.dirac": True},
    "BatchNorm: no scale, momentum 0.4": {"model.params.bn_scale": False, "model.params.bn_momentum": 0.4},
    "BatchNorm biases at 4x the rate": {"train.bn_bias_lr_scale": 4.0},
    "lookahead (EMA 0.95, overwrite every 5 steps)": {"train.ema": 0.95, "train.ema_overwrite_frequency": 5},
    "alternating flip": {"augment.alternating_flip": True},
    "CutMix 1.0": {"augment.cutmix": 1.0},
    "MixUp 0.2": {"augment.mixup": 0.2},
    "colour jitter 0.2": {"augment.color_jitter": 0.2},
}
# every trick off (the keys' defaults): the baseline each trick is added to alone
OFF = {"model.params.whiten": False, "model.params.dirac": False, "model.params.bn_scale": True,
       "model.params.bn_momentum": 0.99, "train.bn_bias_lr_scale": 1.0, "train.ema": 0.0,
       "train.ema_overwrite_frequency": None, "augment.alternating_flip": False, "augment.cutmix": 0.0,
       "augment.mixup": 0.0, "augment.color_jitter": 0.0}
RECIPES = {"gic_fast": 64, "deepfake_fast": 100}  # recipe -> its image size
SETTLED = {"train.budget_minutes": None, "train.early_stopping": None, "train.plateau": None,
           "train.precision": "float32", "data.layout": "gic"}


CEILING_STEPS = 6  # batches an epoch of the held-batch fit


def run(ws: Workspace) -> Result:
    quick = ws.sizes.repeats < 3
    epochs, rounds, limit = 2, 1 if quick else 2, 64 if quick else 384  # 20 variants: about 10 minutes a round
    figures, data = [], {"epochs": epochs, "rounds": rounds, "images": limit}
    for recipe, size in RECIPES.items():
        base = {**SETTLED, "data.image_size": size, "train.epochs": epochs, "data.limit": limit}
        measured = {name: [] for name in variants()}
        for round_ in range(rounds):  # in turn; the next round in reverse
            order = list(measured) if round_ % 2 == 0 else list(reversed(measured))
            for name in order:
                config = ws.config(REPO / "configs" / f"{recipe}.yaml", **base, **variants()[name])
                measured[name].append(measure(ws, config))
        best = {name: {key: max(m[key] for m in runs) for key in runs[0]} for name, runs in measured.items()}
        data[recipe] = best
        plain = best[NONE]
        for i, name in enumerate(list(TRICKS) + [SHIPPED]):
            trick = best[name]
            figures.append(Figure(
                f"tricks_{recipe}_{i}", f"{recipe}: {name}, images per CPU-second over no tricks'",
                trick["aigc_cpu"] / plain["aigc_cpu"], None,
                detail=f"{trick['aigc_cpu']:.0f} vs {plain['aigc_cpu']:.0f}; loop / its compute ceiling "
                       f"{trick['aigc_cpu'] / trick['ceiling_cpu']:.2f} (no tricks "
                       f"{plain['aigc_cpu'] / plain['ceiling_cpu']:.2f}); ceiling over no tricks' "
                       f"{trick['ceiling_cpu'] / plain['ceiling_cpu']:.2f}x; wall {trick['aigc']:.0f} vs "
                       f"{plain['aigc']:.0f} images/s; pipeline alone {trick['pipeline']:.0f} images/s"))
    notes = [f"float32, {epochs} epochs of {limit} images a measurement (the second's rate), best of {rounds} "
             "round(s) taken in turn with the recipe"]
    return Result("tricks", figures, data, notes)


NONE, SHIPPED = "no tricks", "the recipe as shipped"


class CpuTimer(keras.callbacks.Callback):
    """Images per CPU-second of this process (all its threads: tf.data's too), each epoch."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images, self.rates = images_per_epoch, []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(self.images / (time.process_time() - self.start))


def variants() -> dict[str, dict]:
    """Overrides of a recipe: every trick off, each trick alone, and the recipe as its file has it."""
    return {NONE: OFF, **{name: {**OFF, **keys} for name, keys in TRICKS.items()}, SHIPPED: {}}


def build(config, classes: int, images):
    """(model, the compiled model to fit), as the train step makes them: whitening set from `images`."""
    training.set_seed(config.train)
    size = config.data.image_size
    model = build_model(config.model.name, (size, size, 3), classes, config.model.params)
    fit_whitening(model, images, config.train.seed)
    return model, training.compile_model(training.with_augmenter(model, config.augment, config.train.seed),
                                         config.train)


def measure(ws: Workspace, config) -> dict:
    """images/s of aigc's loop, of the compute ceiling and of the input pipeline alone."""
    dataset, cache = load_data(ws.data_dir, config.data, progress=False)  # a cache at the recipe's size
    images, labels = cache.images("train"), dataset.splits["train"].labels
    classes, batch = dataset.num_classes, config.data.batch_size
    try:
        train_ds = train_dataset(images, labels, classes, config.data, config.augment, config.train.seed)
        val_ds = eval_dataset(cache.images("val"), dataset.splits["val"].labels, classes, batch)
        start = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in train_ds)
        pipeline = seen / (time.perf_counter() - start)

        _, fitted = build(config, classes, images)
        steps = min(CEILING_STEPS, max(1, len(labels) // batch))
        x, y = next(iter(train_ds))
        held = tf.data.Dataset.from_tensors((x, y)).repeat()
        held_cpu, loop_cpu = CpuTimer(steps * int(x.shape[0])), CpuTimer(len(labels))
        ceiling = fitted.fit(held, steps_per_epoch=steps, epochs=config.train.epochs, verbose=0,
                             callbacks=[training.EpochTimer(steps * int(x.shape[0])), held_cpu])
        _, fitted = build(config, classes, images)  # a fresh model for aigc's own loop
        with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):  # Keras' epoch lines
            history = training.fit(fitted, train_ds, val_ds, config.train, Path(workdir), [loop_cpu], len(labels),
                                   select=training.selection(config.train))  # as the train step keeps weights
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"pipeline": pipeline, "ceiling": max(ceiling.history["images_per_second"][1:]),
            "aigc": max(history.history["images_per_second"][1:]),  # the first epoch traces
            "ceiling_cpu": max(held_cpu.rates[1:]), "aigc_cpu": max(loop_cpu.rates[1:])}
