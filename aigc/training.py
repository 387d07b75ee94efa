"""Keras mechanics of a training run: seed, optimizer, schedule, callbacks, fit (several machines: distributed.py).

No MLflow here: the train step passes tracking's epoch logger in as a callback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from aigc.config import TrainConfig
from aigc.scores import direction


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


def learning_rate(train: TrainConfig):
    """A float, or a schedule object for the exponential / cosine schedules."""
    if train.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(train.learning_rate, train.decay_steps, train.decay_rate)
    if train.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, train.decay_steps)
    return train.learning_rate


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    rate = learning_rate(train)
    ema = {"use_ema": bool(train.ema), "ema_momentum": train.ema or 0.99}
    if train.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=train.weight_decay, **ema)
        # decay shrinks weights toward 0: meaningless for biases and the norms' scale/offset (as in AdamW's paper)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=train.momentum, **ema)
    return keras.optimizers.Adam(rate, **ema)


class PlannedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a half cosine that reaches its floor at `total` steps, where training ends.

    `total` and `warmup` are variables, so the budget plan can move the end once it has measured an
    epoch without retracing the train step. cosine: from 0 up to the peak, down to 0; onecycle (Smith's
    super-convergence, fast.ai's constants): from peak/25 up over 30% of the run, down to peak/1e4.
    """

    def __init__(self, peak: float, kind: str, total: int = 1, warmup: int = 0):
        self.peak, self.kind = float(peak), kind
        self.start, self.end = (self.peak / 25, self.peak / 1e4) if kind == "onecycle" else (0.0, 0.0)
        self.total = tf.Variable(float(total), trainable=False, dtype=tf.float32)
        self.warmup = tf.Variable(float(warmup), trainable=False, dtype=tf.float32)

    def set(self, total_steps: int, warmup_steps: int) -> None:
        self.total.assign(float(max(total_steps, 1)))
        self.warmup.assign(float(min(warmup_steps, max(total_steps - 1, 0))))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rising = self.start + (self.peak - self.start) * step / tf.maximum(self.warmup, 1.0)
        progress = tf.clip_by_value((step - self.warmup) / tf.maximum(self.total - self.warmup, 1.0), 0.0, 1.0)
        falling = self.end + (self.peak - self.end) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "kind": self.kind, "total": int(self.total.numpy()),
                "warmup": int(self.warmup.numpy())}


def selection(train: TrainConfig, in_cv: bool = False) -> str:
    """What chooses the weights a fit keeps (train.select_on): "last" (nothing: the last epoch's), "inner" (a
    slice of the training images held out of fitting) or "validation" (the run's validation split).

    auto: "last" when there is nothing to choose (a planned schedule ends training where it should, with no
    early stopping, plateau or EMA to decide), else "inner". In a cross-validation fold "validation" would be
    the fold's own out-of-fold images, so it is "inner" there: folds never choose on the images they score.
    """
    mode = train.select_on
    if mode == "auto":
        choices = train.early_stopping or train.plateau or train.ema or planned_schedule(train) is None
        mode = "inner" if choices else "last"
    return "inner" if in_cv and mode == "validation" else mode


def planned_schedule(train: TrainConfig) -> PlannedSchedule | None:
    """The schedule that ends with training, where one is wanted (cosine/onecycle with a budget, a warm-up or onecycle)."""
    if train.schedule == "onecycle" or (train.schedule == "cosine" and (train.budget_minutes or train.warmup_epochs)):
        return PlannedSchedule(train.learning_rate, train.schedule)
    return None


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
RAW = "raw.weights.h5"  # with EMA: the last epoch's raw weights, the alternative to the averaged best epoch
PLAN = "plan.json"  # the budget plan, beside the resume backup: a resumed run keeps it
PLANNING_EPOCHS = 2  # the first epoch pays for tracing; the second measures the steady pace
SAVE_SECONDS = 5.0
MARGIN = 1.1  # plan for epochs 10% slower than measured: a busy machine must not cut the last one


class Plan(keras.callbacks.Callback):
    """Fits training into train.budget_minutes and ends a PlannedSchedule with it.

    After each of the first PLANNING_EPOCHS epochs it measures the epoch (validation included)
    and plans as many epochs as the rest of the budget holds (at most train.epochs), moving the
    schedule's end there; training stops after the planned epochs. Later epochs that run slower
    than planned shorten the plan (and the schedule with it); a batch past the budget stops the
    epoch it is in. The plan and the seconds spent are saved
    in `workdir` each epoch, so a resumed run keeps the plan and spends only what is left.
    """

    def __init__(self, train: TrainConfig, workdir: Path, images_per_epoch: int, steps_per_epoch: int,
                 schedule: PlannedSchedule | None):
        super().__init__()
        self.seconds = train.budget_minutes * 60 if train.budget_minutes else None
        self.max_epochs, self.warmup_epochs = train.epochs, train.warmup_epochs
        self.images, self.steps, self.schedule = images_per_epoch, steps_per_epoch, schedule
        self.path = Path(workdir) / PLAN
        self.plan = json.loads(self.path.read_text()) if self.path.is_file() else {"seconds_used": 0.0}

    def _shape(self, epochs: int) -> None:
        if self.schedule is not None:
            warmup = self.warmup_epochs * self.steps if self.warmup_epochs else (
                0.3 * epochs * self.steps if self.schedule.kind == "onecycle" else 0)
            self.schedule.set(epochs * self.steps, int(warmup))

    def on_train_begin(self, logs=None):
        self.saved = time.perf_counter()
        self.last_end = None  # the end of this process's previous epoch: pace between two ends counts everything
        self.started = self.saved - self.plan["seconds_used"]  # a resumed run has spent some already
        self._shape(self.plan.get("planned_epochs", self.max_epochs))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.validation_start = self.first_train = self.first_test = time.perf_counter()
        self.first_step, self.test_steps = int(self.model.optimizer.iterations.numpy()), 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch == 0:
            self.first_train = now  # the first batch pays for tracing: the pace is measured after it
        if self.seconds and now - self.started > self.seconds:
            self.model.stop_training = True  # fit still validates this partial epoch and keeps the best
            self.plan["stopped_by_budget"] = True
        if now - self.saved > SAVE_SECONDS:  # a kill mid-epoch loses at most this much of the budget's account
            self.plan["seconds_used"] = now - self.started
            self._save(now)

    def on_test_begin(self, logs=None):
        self.validation_start = time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        self.test_steps = batch + 1
        if batch == 0:
            self.first_test = time.perf_counter()

    def _steady(self, first: float, start: float, end: float, steps: int) -> float:
        """Seconds `steps` batches take once traced: the time after the first batch, scaled to all of them."""
        return (end - first) * steps / (steps - 1) if steps > 1 else end - start

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        used = now - self.started
        self.steps = int(self.model.optimizer.iterations.numpy()) - self.first_step or self.steps
        training = self._steady(self.first_train, self.epoch_start, self.validation_start, self.steps)
        if self.last_end is None:  # the first epoch traces: estimate its steady pace from the batches after the first
            seconds = training + self._steady(self.first_test, self.validation_start, now, self.test_steps)
        else:  # end to end: the callbacks, checkpoint and progress bar between epochs cost too
            seconds = now - self.last_end
        self.last_end = now
        self.plan.update(seconds_used=used, actual_epochs=epoch + 1)
        if self.seconds and epoch < PLANNING_EPOCHS and not self.plan.get("fixed"):
            more = int((self.seconds - used) // (seconds * MARGIN))
            self.plan.update(planned_epochs=max(1, min(self.max_epochs, epoch + 1 + more)), epoch_seconds=seconds,
                             images_per_second=self.images / max(training, 1e-9), fixed=epoch + 1 == PLANNING_EPOCHS)
            self._shape(self.plan["planned_epochs"])
            print(f"aigc: budget {self.seconds / 60:g} min: {self.plan['images_per_second']:.0f} images/s, "
                  f"{seconds:.1f} s an epoch -> {self.plan['planned_epochs']} epochs", flush=True)
        elif self.seconds:
            # behind the plan (a busy machine, a resumed run's retracing): end it earlier, schedule included,
            # so the last epoch still lands on the schedule's end inside the budget
            fits = epoch + 1 + max(0, int((self.seconds - used) // (seconds * MARGIN)))
            if fits < self.plan["planned_epochs"]:
                self.plan.update(planned_epochs=fits, shortened=self.plan.get("shortened", 0) + 1)
                self._shape(fits)
        if self.seconds and epoch + 1 >= self.plan["planned_epochs"]:
            self.model.stop_training = True
        self._save(now)

    def _save(self, now: float) -> None:
        _write_json(self.path, self.plan)
        self.saved = now


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def budget_record(workdir: Path) -> tuple[dict, dict]:
    """(metrics, tags) saying what a budgeted fit planned and did; empty when it had no budget."""
    path = Path(workdir) / PLAN
    plan = json.loads(path.read_text()) if path.is_file() else {}
    if "planned_epochs" not in plan:
        return {}, {}
    metrics = {"budget_planned_epochs": plan["planned_epochs"], "budget_actual_epochs": plan["actual_epochs"],
               "budget_replans": plan.get("shortened", 0),
               "budget_images_per_second": plan["images_per_second"], "budget_seconds_used": plan["seconds_used"]}
    return metrics, {"aigc.budget_stopped_by_budget": str(bool(plan.get("stopped_by_budget"))).lower()}


def monitor_mode(monitor: str) -> str:
    """Which way a monitored value improves (scores.direction), passed to every Keras callback as `mode`, so the
    checkpoint, early stopping, the plateau and the run's best epoch always agree."""
    return direction(monitor)


class AtomicBest(keras.callbacks.Callback):
    """Moves the file ModelCheckpoint just wrote over the best weights: a kill -9 mid-write leaves the
    previous best intact (ModelCheckpoint writes its target in place). Listed right after it."""

    def __init__(self, written: Path, path: Path):
        super().__init__()
        self.written, self.path = Path(written), Path(path)

    def on_train_begin(self, logs=None):
        self.written.unlink(missing_ok=True)  # half a file from a killed process must never be moved into place

    def on_epoch_end(self, epoch, logs=None):
        if self.written.exists():
            os.replace(self.written, self.path)


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
