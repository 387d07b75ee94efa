"""The callbacks of aigc's fit: epoch timing, the best epoch's weights (written atomically, the epoch noted),
the raw weights beside EMA's, early stopping and the plateau, all agreeing on which way the metric improves."""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

from aigc.config import TrainConfig
from aigc.scores import direction
from aigc.training.optimizer import current_learning_rate


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


def fit_callbacks(train: TrainConfig, workdir: Path, images_per_epoch: int, best_so_far: float | None = None,
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
