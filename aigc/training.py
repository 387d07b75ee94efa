"""Keras mechanics of a training run: seed, optimizer, schedule, callbacks, fit (several machines: distributed.py).

No MLflow here: the train step passes tracking's epoch logger in as a callback.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from aigc.config import TrainConfig


def set_seed(train: TrainConfig) -> None:
    """Seed Python, NumPy and TF; op determinism makes reruns identical (and slower)."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    if train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def learning_rate(train: TrainConfig):
    """A float, or a schedule object for the exponential / cosine schedules."""
    if train.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(train.learning_rate, train.decay_steps, train.decay_rate)
    if train.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, train.decay_steps)
    return train.learning_rate


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    rate = learning_rate(train)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=train.momentum)
    return keras.optimizers.Adam(rate)


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
    return model


def current_learning_rate(model: keras.Model) -> float:
    """The rate the optimizer uses now (schedules are evaluated at the current step)."""
    optimizer = model.optimizer
    rate = optimizer.learning_rate
    if callable(rate):
        rate = rate(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(rate))


class EpochTimer(keras.callbacks.Callback):
    """Adds epoch seconds, images/s and the learning rate to each epoch's logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        logs.update({"epoch_seconds": seconds, "images_per_second": self.images_per_epoch / seconds,
                     "learning_rate": current_learning_rate(self.model)})


class Validation(keras.callbacks.Callback):
    """Each epoch's validation pass, run here instead of by fit(validation_data=...).

    It adds val_loss and val_accuracy to the epoch's logs exactly as fit would, and keeps
    the probabilities (`latest`), so the final evaluation on the best epoch's weights
    reuses that epoch's pass instead of predicting the validation images once more.
    Listed first, so every later callback sees the val_ metrics.
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.labels, self.latest = dataset, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.labels is None:  # one-hot, in the dataset's fixed order
            self.labels = np.concatenate([y for _, y in self.dataset.as_numpy_iterator()])
        self.latest = self.model.predict(self.dataset, verbose=0)
        # The compiled loss (label smoothing included) plus the weight penalties: what evaluate reports.
        penalties = [v.regularizer(v) for v in self.model.trainable_weights if v.regularizer is not None]
        loss = self.model.loss(self.labels, self.latest) + sum(penalties)
        logs.update({"val_loss": float(keras.ops.convert_to_numpy(loss)),
                     "val_accuracy": float(np.mean(self.latest.argmax(1) == self.labels.argmax(1)))})


BEST = "best.weights.h5"


class BestCheckpoint(keras.callbacks.Callback):
    """The best epoch's weights by `monitor`, written atomically: a kill -9 never leaves half a file.

    Also keeps that epoch's validation probabilities (`probabilities`, None until an epoch
    of this process beats `best`, the best before a crash when resuming).
    """

    def __init__(self, path: Path, monitor: str, validation: Validation, best: float | None = None):
        super().__init__()
        self.path, self.monitor, self.validation, self.best = Path(path), monitor, validation, best
        self.better = (lambda new, old: new < old) if _mode(monitor) == "min" else (lambda new, old: new > old)
        self.probabilities, self.best_epoch, self.last_epoch = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        value = (logs or {}).get(self.monitor)
        if value is None or (self.best is not None and not self.better(value, self.best)):
            return
        self.best, self.best_epoch, self.probabilities = value, epoch, self.validation.latest
        temporary = self.path.with_name(f".tmp-{self.path.name}")
        self.model.save_weights(str(temporary))
        os.replace(temporary, self.path)


def callbacks(train: TrainConfig, workdir: Path, images_per_epoch: int, validation: Validation,
              best_so_far: float | None = None) -> list:
    """Validation, timer, best-epoch checkpoint, early stopping, plateau; the resume backup goes last (see fit)."""
    result = [validation, EpochTimer(images_per_epoch),
              BestCheckpoint(workdir / BEST, train.checkpoint_monitor, validation, best_so_far)]
    if train.early_stopping:
        stop = train.early_stopping
        result.append(keras.callbacks.EarlyStopping(monitor=stop.monitor, patience=stop.patience,
                                                    restore_best_weights=False, mode=_mode(stop.monitor)))
    if train.plateau:
        plateau = train.plateau
        result.append(keras.callbacks.ReduceLROnPlateau(monitor=plateau.monitor, factor=plateau.factor,
                                                        patience=plateau.patience, min_lr=plateau.min_lr,
                                                        mode=_mode(plateau.monitor)))
    return result


@dataclass
class FitResult:
    history: keras.callbacks.History  # this process's epochs
    best_probabilities: np.ndarray | None  # validation probabilities of the best epoch, if this process ran it
    best_is_last: bool  # the model already holds the best weights (no need to load them back)


def fit(model, train_ds, val_ds, train: TrainConfig, workdir: Path, extra_callbacks: list,
        images_per_epoch: int, class_weight=None, best_so_far=None) -> FitResult:
    """model.fit with a per-epoch backup in `workdir`, so a killed run resumes where it stopped.

    Callback order matters: the tracking logger (in `extra_callbacks`) runs before the
    backup is written, so an epoch is never lost; a re-run epoch is skipped by the logger.
    """
    # double_checkpoint: a kill while the backup is written falls back to the previous epoch's
    backup = keras.callbacks.BackupAndRestore(str(workdir / "backup"), delete_checkpoint=False, double_checkpoint=True)
    steps = callbacks(train, workdir, images_per_epoch, Validation(val_ds), best_so_far)
    verbose = "auto" if sys.stdout.isatty() else 2  # a bar in a terminal, one line per epoch in logs
    history = model.fit(train_ds, epochs=train.epochs, callbacks=steps + list(extra_callbacks) + [backup],
                        class_weight=class_weight, verbose=verbose)
    (best,) = [step for step in steps if isinstance(step, BestCheckpoint)]
    return FitResult(history, best.probabilities, best.best_epoch is not None and best.best_epoch == best.last_epoch)


def restore_best(model: keras.Model, workdir: Path, result: FitResult | None = None) -> bool:
    """Load the best epoch's weights (by train.checkpoint_monitor) into the model.

    Skipped when `result` says the last epoch was the best: the model holds those weights.
    """
    if result is not None and result.best_is_last:
        return True
    path = workdir / BEST
    if path.is_file():
        model.load_weights(str(path))
        return True
    return False


def _mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"
