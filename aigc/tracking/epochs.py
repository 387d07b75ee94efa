"""Per-epoch metrics: the Keras callback that logs them with step=epoch, and reading them back."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from aigc.tracking.connection import TRACKING_ERRORS, is_outage, refused
from aigc.tracking.log import key_part
from aigc.tracking.queries import metric_history
from aigc.tracking.views import EPOCH_IMAGES

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds", "images_per_second")
# Logged as `epoch/<Keras name>`. The UI gives each key prefix before a "/" a chart section of its own, the
# prefixed sections in alphabetical order ahead of "Model metrics": so a run's curves (and the epoch images)
# head its chart page, apart from the single-value final_*/calibration_* bars. Chart titles drop the section
# (`val_loss`); legends keep the whole key (`demo (epoch/val_loss)`). Code reading them back passes the
# Keras name through `epoch_key`.
EPOCH_PREFIX = "epoch/"


def epoch_key(name: str) -> str:
    """The MLflow key of the Keras per-epoch metric `name` (val_loss -> epoch/val_loss)."""
    return EPOCH_PREFIX + name


def logged_epochs(run_id: str) -> set[int]:
    """Epochs whose metrics a run already has (a resumed run must not log them twice)."""
    return {m.step for m in metric_history(run_id, epoch_key("val_loss"))}


def best_logged(run_id: str, key: str, mode: str) -> tuple[int, float] | None:
    """(epoch, value) of the best logged value of the epoch metric `key` (a Keras name), or None."""
    history = metric_history(run_id, epoch_key(key))
    if not history:
        return None
    pick = min if mode == "min" else max
    best = pick(history, key=lambda m: (m.value, -m.step) if mode == "max" else (m.value, m.step))
    return best.step, best.value


def epoch_history(run_id: str, seen: dict | None = None) -> dict[str, list[float]]:
    """Every epoch metric in epoch order, across resumes: the server's history plus what this
    process saw (`seen`: key -> {epoch: value}), so the curves are whole even offline."""
    merged = {key: dict((seen or {}).get(key, {})) for key in EPOCH_KEYS}
    try:
        for key in EPOCH_KEYS:
            merged[key].update({m.step: m.value for m in metric_history(run_id, epoch_key(key))})
    except TRACKING_ERRORS as error:
        if not is_outage(error):
            raise refused(error, f"run {run_id}") from None
    return {key: [values[step] for step in sorted(values)] for key, values in merged.items()}


def epoch_logger(run_id: str, already_logged: set[int]):
    """A Keras callback logging each epoch's metrics with step=epoch, in one atomic batch.

    While the server is away, epochs queue in `pending` and go with the next batch that
    gets through; `flush_into(outbox)` keeps whatever is left at the end. A request the
    server refuses (no permission, deleted run) stops training with a UserError.
    """
    import keras
    from mlflow.entities import Metric

    class EpochLogger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pending: list[Metric] = []
            self.seen: dict[str, dict[int, float]] = {}

        def on_epoch_end(self, epoch, logs=None):
            if epoch in already_logged:  # re-run after a crash between logging and backup
                return
            stamp = int(time.time() * 1000)
            for key in EPOCH_KEYS:
                if key in (logs or {}):
                    self.pending.append(Metric(epoch_key(key), float(logs[key]), stamp, epoch))
                    self.seen.setdefault(key, {})[epoch] = float(logs[key])
            self.send()

        def send(self) -> bool:
            try:
                MlflowClient().log_batch(run_id, metrics=self.pending)
            except TRACKING_ERRORS as error:
                if not is_outage(error):
                    raise refused(error, f"run {run_id}") from None
                print(f"aigc: tracking server unreachable ({type(error).__name__}); "
                      f"{len(self.pending)} metric values queued", flush=True)
                return False
            self.pending = []
            return True

        def flush_into(self, box) -> None:
            if self.pending and not self.send():
                box.queue_metrics(self.pending)

    return EpochLogger()


# The image key prefix: the UI shows one image per key with an epoch slider; under EPOCH_PREFIX the images
# join the curves' chart section.
EXAMPLES_KEY = epoch_key("validation_examples")


def epoch_images(run_id: str | None, images, labels, ids, class_names, epochs: int, count: int = 4) -> list:
    """[a Keras callback] logging `count` fixed validation images, each beside the model's class probabilities,
    as MLflow images with step=epoch about ten times per run (every epoch for short runs) and at the last
    epoch, so the run's image view shows the predictions evolve. [] without an MLflow run.
    """
    if run_id is None or not len(labels):
        return []
    import keras
    import numpy as np

    from aigc.figures import PredictionFigure

    labels = np.asarray(labels)
    # the first image of each class, classes in order: the same images in every run on this split
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)][:count]
    every = max(1, round(epochs / 10))
    sample = np.asarray(images[picks], dtype="float32")
    keys = [f"{EXAMPLES_KEY}_{key_part(ids[index])}" for index in picks]
    figures = [PredictionFigure(sample[n], class_names, int(labels[index]), str(ids[index]))
               for n, index in enumerate(picks)]

    class EpochImages(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % every and epoch + 1 != epochs:
                return
            probabilities = keras.ops.convert_to_numpy(self.model(sample, training=False))
            try:
                for figure, key, row in zip(figures, keys, probabilities):
                    MlflowClient().log_image(run_id, figure.draw(row, epoch), key=key, step=epoch)
                MlflowClient().set_tag(run_id, EPOCH_IMAGES, ",".join(keys))  # the runs view's image cards
            except TRACKING_ERRORS as error:
                if not is_outage(error):  # an outage only costs these pictures; the epoch metrics are queued
                    raise refused(error, f"run {run_id}") from None

    return [EpochImages()]
