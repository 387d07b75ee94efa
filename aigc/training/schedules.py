"""The learning-rate schedule that ends where training ends (the budget plan moves its end), and what
chooses the weights a fit keeps (which depends on whether such a schedule ends it)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from aigc.config import TrainConfig


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


def planned_schedule(train: TrainConfig) -> PlannedSchedule | None:
    """The schedule that ends with training, where one is wanted (cosine/onecycle with a budget, a warm-up or onecycle)."""
    if train.schedule == "onecycle" or (train.schedule == "cosine" and (train.budget_minutes or train.warmup_epochs)):
        return PlannedSchedule(train.learning_rate, train.schedule)
    return None


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
