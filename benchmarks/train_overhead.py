"""2. Training overhead (aigc train / bare model.fit) and 3. tracking overhead (with / without MLflow).

Three variants of one ResNet20 epoch on the same images, interleaved:
  aigc       aigc.steps.train.train: files, cache, augmentation, full tracking, evaluation, model logging;
  untracked  the same aigc train with tracking.enabled false: every result written to aigc-runs/,
             not one MLflow call;
  bare       build + compile + model.fit on in-memory float32 arrays, no augmentation, no tracking.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from aigc import tracking, training
from aigc.models import build_model
from aigc.steps.train import train
from benchmarks.figures import Figure, Result
from benchmarks.timing import Stopwatch, interleaved
from benchmarks.workspace import Workspace

TRAIN_TARGET, TRACKING_TARGET = 1.10, 1.02
SEED_EPOCHS = 200  # the gic seed's ResNet20 schedule: what the fixed costs are spread over in practice


def run(ws: Workspace) -> Result:
    """One-epoch runs of the three variants; ratios of their wall times, and where the difference goes."""
    config = ws.config(**{"train.epochs": 1})
    untracked = ws.config(**{"train.epochs": 1, "tracking.enabled": False})
    ws.track(config)
    dataset, cache = ws.data  # the cache exists before any timed run, as after `preprocess`
    arrays = in_memory(dataset, cache)
    variants = {
        "aigc": lambda: logged_epoch_seconds(train(ws.data_dir, config)["run_id"]),
        "untracked": lambda: local_epoch_seconds(train(ws.data_dir, untracked)["folder"]),
        "bare": lambda: bare_fit(config, dataset.num_classes, *arrays),
    }
    timings = interleaved(variants, ws.sizes.heavy_repeats)
    wall = {name: timings.best(name) for name in variants}
    epoch = {name: min(seconds) for name, seconds in timings.outputs.items()}
    figures = [
        Figure("train_overhead", "Training overhead: one epoch of aigc train / bare model.fit",
               wall["aigc"] / wall["bare"], TRAIN_TARGET, "lower",
               detail=f"({wall['aigc']:.1f} vs {wall['bare']:.1f} s)"),
        Figure("tracking_overhead", "Tracking overhead: aigc train with / without MLflow",
               wall["aigc"] / wall["untracked"], TRACKING_TARGET, "lower",
               detail=f"({wall['aigc']:.1f} vs {wall['untracked']:.1f} s)"),
    ]
    logging_ms = epoch_logging_ms(config)
    return Result("train_overhead", figures, {
        "train_images": len(arrays[0]), "val_images": len(arrays[2]), **timings.to_dict(),
        "epoch_seconds": timings.outputs, "epoch_logging_ms": logging_ms},
        notes(wall, epoch, logging_ms, {name: timings.best_cpu(name) for name in variants}))


def notes(wall: dict, epoch: dict, logging_ms: float, cpu: dict) -> list[str]:
    """Inside vs outside the epoch, CPU seconds, and both ratios projected to the seed's 200 epochs."""
    fixed = {name: wall[name] - epoch[name] for name in wall}
    # Tracking adds its fixed cost plus one log_batch per epoch; the epochs themselves are the same work.
    untracked_epoch = epoch["untracked"]
    tracked = ((fixed["aigc"] + SEED_EPOCHS * (untracked_epoch + logging_ms / 1000))
               / (fixed["untracked"] + SEED_EPOCHS * untracked_epoch))
    return [
        (f"epoch only (fit's epoch incl. validation): aigc / bare {epoch['aigc'] / epoch['bare']:.3f}, "
         f"aigc / untracked {epoch['aigc'] / epoch['untracked']:.3f}"),
        "outside the epoch (load, build, evaluate, log): " + ", ".join(f"{n} {s:.1f} s" for n, s in fixed.items()),
        (f"CPU seconds: aigc / bare {cpu['aigc'] / cpu['bare']:.3f}, "
         f"aigc / untracked {cpu['aigc'] / cpu['untracked']:.3f}"),
        f"per-epoch MLflow logging (epoch logger, one log_batch): {logging_ms:.1f} ms",
        (f"projected to {SEED_EPOCHS} epochs (fixed costs spread out): aigc / bare "
         f"{(fixed['aigc'] + SEED_EPOCHS * epoch['aigc']) / (fixed['bare'] + SEED_EPOCHS * epoch['bare']):.3f}, "
         f"tracking {tracked:.4f}"),
    ]


def epoch_logging_ms(config, calls: int = 20) -> float:
    """What aigc's epoch logger costs per epoch, timed alone (too small to see in a noisy epoch)."""
    logs = {key: 0.5 for key in tracking.EPOCH_KEYS}
    with tracking.run("train", "bench-epoch-logger") as active:
        logger = tracking.epoch_logger(active.info.run_id, set())
        with Stopwatch() as watch:
            for epoch in range(calls):
                logger.on_epoch_end(epoch, logs)
    return 1000 * watch.seconds / calls


def in_memory(dataset, cache):
    """Train and val images as float32 arrays and one-hot labels: what bare model.fit is given."""
    def split(name):
        labels = dataset.splits[name].labels
        return np.asarray(cache.images(name), np.float32), np.eye(dataset.num_classes, dtype=np.float32)[labels]

    return (*split("train"), *split("val"))


def bare_fit(config, num_classes, x, y, x_val, y_val) -> float:
    """Build, compile (aigc's optimizer and loss) and fit; returns the epoch's seconds."""
    model = build_model(config.model.name, x.shape[1:], num_classes, config.model.params)
    training.compile_model(model, config.train)
    history = model.fit(x, y, batch_size=config.data.batch_size, epochs=1, validation_data=(x_val, y_val),
                        callbacks=[training.EpochTimer(len(x))], verbose=0)
    return history.history["epoch_seconds"][0]


def local_epoch_seconds(folder: str) -> float:
    """The epoch's seconds from an untracked run's folder, which is then removed (it is the run's only trace)."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    shutil.rmtree(folder)
    (seconds,) = [value for key, value, _, _ in manifest["metrics"] if key == "epoch_seconds"]
    return seconds


def logged_epoch_seconds(run_id: str) -> float:
    return tracking.epoch_history(run_id)["epoch_seconds"][0]
