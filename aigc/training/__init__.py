"""Keras mechanics of a training run: seed and precision, callbacks, fit (several machines: distributed.py).

Beside it: `budget` (the plan that fills train.budget_minutes), `optimizer` (optimizer and learning
rate), `schedules` (the schedule that ends with training); their names are importable from here too.
No MLflow here: the train step passes tracking's epoch logger in as a callback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from aigc.config import TrainConfig
from aigc.scores import direction
from aigc.training.budget import PLAN, Plan, budget_record, plan_epochs  # noqa: F401 - aigc.training's API
from aigc.training.optimizer import learning_rate, make_optimizer  # noqa: F401
from aigc.training.schedules import PlannedSchedule, planned_schedule, selection  # noqa: F401


def set_seed(train: TrainConfig) -> None:
    """Seed Python, NumPy and TF; op determinism makes reruns identical (and slower)."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision_policy(train))


def precision_policy(train: TrainConfig) -> str:
    """The Keras dtype policy train.precision names (auto: what this machine computes fastest)."""
    if train.mixed_precision and train.precision == "float32":  # the former switch
        return "mixed_float16"
    return auto_precision() if train.precision == "auto" else train.precision


def auto_precision() -> str:
    """mixed_float16 on a GPU with tensor cores (compute capability 7+), mixed_bfloat16 on a CPU whose
    oneDNN kernels have bfloat16 units (AMX or AVX512-BF16), else float32."""
    for gpu in tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) >= (7, 0):
            return "mixed_float16"
    return "mixed_bfloat16" if cpu_flags() & {"amx_bf16", "avx512_bf16"} else "float32"


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open(path) as info:
            return {flag for line in info if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


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


BEST = "best.weights.h5"
BEST_EPOCH = "best_epoch.txt"  # the epoch (0-based) whose weights are BEST: the checkpoint's own choice
RAW = "raw.weights.h5"  # with EMA: the last epoch's raw weights, the alternative to the averaged best epoch


def monitor_mode(monitor: str) -> str:
    """Which way a monitored value improves (scores.direction), passed to every Keras callback as `mode`, so the
    checkpoint, early stopping, the plateau and the run's best epoch always agree."""
    return direction(monitor)


class AtomicBest(keras.callbacks.Callback):
    """Moves the file ModelCheckpoint just wrote over the best weights: a kill -9 mid-write leaves the
    previous best intact (ModelCheckpoint writes its target in place). Listed right after it. It also notes
    which epoch that was (BEST_EPOCH), so the run reports the epoch the checkpoint kept instead of deciding
    again from the curves: the checkpoint is the one owner of "best epoch" (`kept_epoch`)."""

    def __init__(self, written: Path, path: Path):
        super().__init__()
        self.written, self.path = Path(written), Path(path)

    def on_train_begin(self, logs=None):
        self.written.unlink(missing_ok=True)  # half a file from a killed process must never be moved into place

    def on_epoch_end(self, epoch, logs=None):
        if self.written.exists():
            os.replace(self.written, self.path)
            note = self.path.with_name(f".tmp-{BEST_EPOCH}")
            note.write_text(str(epoch))
            os.replace(note, self.path.with_name(BEST_EPOCH))


def kept_epoch(workdir: Path, epochs: int, select: str, weights: dict) -> int:
    """The epoch (0-based) whose weights the model ends with after `choose_weights`: the last of `epochs` when
    nothing was chosen or the raw last weights won, else the epoch the checkpoint kept."""
    note = Path(workdir) / BEST_EPOCH
    if select == "last" or weights.get("aigc.weights") == "raw_last" or not note.is_file():
        return epochs - 1
    return int(note.read_text())


class RawWeights(keras.callbacks.Callback):
    """With EMA: saves the raw weights at each epoch's end, before SwapEMAWeights (listed after it) puts the
    averages in the model, so the end of the fit can keep whichever validates better (choose_weights)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        written = self.path.with_name(f".tmp-{self.path.name}")
        self.model.save_weights(str(written))
        os.replace(written, self.path)


def callbacks(train: TrainConfig, workdir: Path, images_per_epoch: int, best_so_far: float | None = None,
              select: str = "validation") -> list:
    """Timer, best-epoch checkpoint, early stopping, plateau; the resume backup goes last (see fit).

    `best_so_far`: the best value of train.checkpoint_monitor before a crash, so a resumed run keeps
    the old best weights until an epoch beats them. `select` "last" (see `selection`): no best epoch is
    kept, the fit's last weights are the model.
    """
    written = workdir / f".tmp-{BEST}"
    monitor = train.checkpoint_monitor
    # EMA: validate, checkpoint (and so log) the averaged weights; train on the raw ones between epochs
    swap = [RawWeights(workdir / RAW), keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if train.ema else []
    result = [EpochTimer(images_per_epoch), *swap]
    if select != "last":
        result += [keras.callbacks.ModelCheckpoint(str(written), monitor, mode=monitor_mode(monitor),
                                                   save_best_only=True, save_weights_only=True,
                                                   initial_value_threshold=best_so_far),
                   AtomicBest(written, workdir / BEST)]
    if train.early_stopping:
        stop = train.early_stopping
        result.append(keras.callbacks.EarlyStopping(monitor=stop.monitor, patience=stop.patience,
                                                    restore_best_weights=False, mode=monitor_mode(stop.monitor)))
    if train.plateau:
        plateau = train.plateau
        result.append(keras.callbacks.ReduceLROnPlateau(monitor=plateau.monitor, factor=plateau.factor,
                                                        patience=plateau.patience, min_lr=plateau.min_lr,
                                                        mode=monitor_mode(plateau.monitor)))
    return result


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
    steps = callbacks(train, workdir, images_per_epoch, best_so_far, select)
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
