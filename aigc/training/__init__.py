"""Keras mechanics of a training run: seed, compile, fit and the weights kept (several machines: distributed.py).

Beside it: `precision` (the number format), `optimizer` (optimizer and learning rate), `schedules` (the
schedule that ends with training), `budget` (the plan that fills train.budget_minutes), `callbacks` (the
fit's callbacks); their names are importable from here too.
No MLflow here: the train step passes tracking's epoch logger in as a callback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import tensorflow as tf

from aigc.config import TrainConfig
from aigc.training.budget import PLAN, Plan, budget_record, plan_epochs  # noqa: F401 - aigc.training's API
from aigc.training.callbacks import (BEST, BEST_EPOCH, RAW, AtomicBest, EpochTimer, RawWeights,  # noqa: F401
                                     fit_callbacks, kept_epoch, monitor_mode)
from aigc.training.optimizer import current_learning_rate, learning_rate, make_optimizer  # noqa: F401
from aigc.training.precision import auto_precision, cpu_flags, precision_policy  # noqa: F401
from aigc.training.schedules import PlannedSchedule, planned_schedule, selection  # noqa: F401


def set_seed(train: TrainConfig) -> None:
    """Seed Python, NumPy and TF; op determinism makes reruns identical (and slower)."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision_policy(train))


def with_augmenter(model: keras.Model, augment, seed: int) -> keras.Model:
    """The model to fit: `model` behind the augmentation layers when augment.on_device is set.

    The layers share `model`'s weights and are inactive at inference, so the bare `model`
    is what gets evaluated and logged.
    """
    from aigc.data.augment import build_augmenter

    augmenter = build_augmenter(augment, seed=seed) if augment.on_device else None
    if augmenter is None:
        return model
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(augmenter(inputs)), name=f"{model.name}_augmented")


def compile_model(model: keras.Model, train: TrainConfig) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(train),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
        metrics=["accuracy"],
        jit_compile=train.jit_compile,
    )
    if not tf.distribute.has_strategy():  # under a strategy's scope Keras builds all this itself before fitting
        _build_state(model)
    return model


def _build_state(model: keras.Model) -> None:
    """Create the optimizer's, the loss's and the metrics' variables now, from one blank image.

    Without a distribution strategy Keras 3.15 creates them inside the first trace of the train step
    (keras/src/backend/tensorflow/trainer.py, `_maybe_symbolic_build`: "defer building ... for backwards
    compatibility"), and TensorFlow traces a function that creates variables twice. Measured on CPU: the
    first fit of a depth-8 ResNet on 36 32x32 images 6.3-6.8 s -> 3.2-4.2 s; the second trace was a
    2-3 s tax on every fit, fold and trial, whatever the data's size.
    """
    images = tf.zeros((1, *model.input_shape[1:]))
    labels = tf.one_hot([0], model.output_shape[-1])
    predicted = model(images, training=False)
    model.compute_loss(images, labels, predicted, training=False)
    model.compute_metrics(images, labels, predicted, sample_weight=None)
    model.optimizer.build(model.trainable_variables)
    model.reset_metrics()  # the blank image counted in no metric


def fit(model, train_ds, val_ds, train: TrainConfig, workdir: Path, extra_callbacks: list,
        images_per_epoch: int, class_weight=None, best_so_far=None, select: str = "validation"
        ) -> keras.callbacks.History:
    """model.fit with validation, the best epoch's weights in `workdir` and a per-epoch backup there,
    so a killed run resumes where it stopped; returns this process's History. `val_ds`: the images the
    choices are made on (`select` "inner" or "validation"), or only watched (`select` "last").

    Keras' own validation pass (validation_data) and ModelCheckpoint, not hand-written ones: measured
    on 1,024 + 512 32x32 images, 4 epochs of a small CNN, fit took 7.97/8.63 s with aigc's former
    Validation callback and 8.40/8.02 s with validation_data; keeping the best epoch's probabilities
    saved one predict of the validation set at the end (0.2-0.3 s), and its val_loss left out the
    activity penalty (3.436 against evaluate's 3.457 with an activity L2 of 1e-2).

    Callback order matters: the tracking logger (in `extra_callbacks`) runs before the
    backup is written, so an epoch is never lost; a re-run epoch is skipped by the logger.
    """
    # double_checkpoint: a kill while the backup is written falls back to the previous epoch's
    backup = keras.callbacks.BackupAndRestore(str(workdir / "backup"), delete_checkpoint=False, double_checkpoint=True)
    steps = fit_callbacks(train, workdir, images_per_epoch, best_so_far, select)
    schedule = planned_schedule(train)
    if schedule is not None:  # the optimizer's public setter; the Plan callback sets where it ends
        model.optimizer.learning_rate = schedule
    batches = int(train_ds.cardinality())  # known for aigc's pipeline; else measured in the first epoch
    plan = Plan(train, workdir, images_per_epoch, batches if batches > 0 else 1, schedule)
    verbose = "auto" if sys.stdout.isatty() else 2  # a bar in a terminal, one line per epoch in logs
    return model.fit(train_ds, validation_data=val_ds, epochs=train.epochs, class_weight=class_weight,
                     callbacks=[plan] + steps + list(extra_callbacks) + [backup], verbose=verbose,
                     shuffle=False)  # tf.data shuffles (train_dataset); Keras warns that its own shuffle is ignored


def choose_weights(model: keras.Model, workdir: Path, train: TrainConfig, val_ds, select: str = "validation"
                   ) -> tuple[dict, dict]:
    """Load the weights to keep: the best epoch's; with EMA, the averaged best epoch's or the last epoch's raw
    weights, whichever scores better on train.checkpoint_monitor (EMA helps a long run, hurts a short one),
    measured on `val_ds` (the choosing images). `select` "last": the fit's last weights, nothing chosen.

    Returns (metrics, tags) saying what was compared and kept; empty without EMA.
    """
    if select == "last":
        return {}, {}
    restore_best(model, workdir)
    raw = workdir / RAW
    if not train.ema or not raw.is_file():
        return {}, {}
    monitor = train.checkpoint_monitor
    key = monitor.removeprefix("val_")  # evaluate names the validation metrics without the prefix

    def score() -> float:
        return float(model.evaluate(val_ds, verbose=0, return_dict=True)[key])

    averaged = score()
    model.load_weights(str(raw))
    plain = score()
    keep_raw = plain < averaged if monitor_mode(monitor) == "min" else plain > averaged
    if not keep_raw:
        restore_best(model, workdir)
    return ({f"ema_best_{monitor}": averaged, f"raw_last_{monitor}": plain},
            {"aigc.weights": "raw_last" if keep_raw else "ema_best"})


def restore_best(model: keras.Model, workdir: Path) -> bool:
    """Load the best epoch's weights (by train.checkpoint_monitor) into the model, if an epoch was saved."""
    path = workdir / BEST
    if path.is_file():
        model.load_weights(str(path))
        return True
    return False
