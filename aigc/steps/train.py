"""The `train` step: data -> model -> fit -> evaluation on the best weights -> MLflow."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np

from aigc import tracking, training
from aigc.config import Config
from aigc.data import load_data
from aigc.data.pipeline import class_weights, eval_dataset, oversampled_indices, train_dataset
from aigc.errors import UserError
from aigc.evaluation import competition_metric, evaluate
from aigc.models import build_model
from aigc.tracking import Outbox

CHECKPOINTS = Path(".aigc-checkpoints")  # per-run resume state, removed when the run ends
LOCAL_RUNS = Path("aigc-runs")  # results of runs with tracking.enabled false


def train(data_dir: str | Path, config: Config, resume: str | None = None) -> dict:
    """Train one model and log everything about it; `resume`: continue a killed run.

    With tracking.enabled false nothing goes to MLflow: the same results are written to
    aigc-runs/<name>-<time>/ (metrics in manifest.json, artifacts/, model.keras).
    """
    dataset, cache = load_data(data_dir, config.data)
    training.set_seed(config.train)
    tracked = config.tracking.enabled
    if tracked:
        tracking.connect(config.tracking)
    elif resume:
        raise UserError("--resume continues a tracked run; it needs tracking.enabled=true")
    if resume:
        _check_resumable(resume)
    chief = training.is_chief()
    strategy = training.distribution_strategy()
    shape = (config.data.image_size, config.data.image_size, 3)
    with strategy.scope():
        model = build_model(config.model.name, shape, dataset.num_classes, config.model.params)
        fitted = training.compile_model(training.with_augmenter(model, config.augment, config.train.seed),
                                        config.train)

    train_split, val_split = dataset.splits["train"], dataset.splits["val"]
    train_images, val_images = cache.images("train"), cache.images("val")
    train_ds = train_dataset(train_images, train_split.labels, dataset.num_classes, config.data, config.augment,
                             config.train.seed)
    val_ds = eval_dataset(val_images, val_split.labels, dataset.num_classes, config.data.batch_size)
    images_per_epoch = len(oversampled_indices(train_split.labels, config.data.oversample))

    logging = tracked and chief  # only the chief of a distributed run talks to MLflow
    run = tracking.run("train", config.name, run_id=resume, system_metrics=config.tracking.log_system_metrics) \
        if logging else contextlib.nullcontext()
    with run as active:
        run_id = active.info.run_id if logging else _local_run_id(config) if chief else "worker"
        if logging and not resume:
            _log_inputs(config, dataset, cache, model)
        local = Outbox(run_id, root=LOCAL_RUNS) if chief and not logging else None
        if local is not None:  # the same two files an MLflow run gets at its start
            local.text(config.to_yaml(), "config.yaml")
            local.text(model_summary(model), "model_summary.txt")
        workdir = CHECKPOINTS / run_id
        workdir.mkdir(parents=True, exist_ok=True)
        mode = "min" if "loss" in config.train.checkpoint_monitor else "max"
        best = tracking.best_logged(run_id, config.train.checkpoint_monitor, mode) if resume else None
        loggers = [tracking.epoch_logger(run_id, tracking.logged_epochs(run_id) if resume else set())] \
            if logging else []
        outcome = training.fit(fitted, train_ds, val_ds, config.train, workdir, loggers, images_per_epoch,
                           class_weight=class_weights(train_split.labels, dataset.num_classes,
                                                      config.data.class_weights),
                           best_so_far=best[1] if best else None)
        training.restore_best(fitted, workdir, outcome)
        if not chief:
            return {"run_id": None}
        probabilities = outcome.best_probabilities  # the best epoch's validation pass, on these same weights
        if probabilities is None:  # resumed, and the best epoch was before the crash
            probabilities = model.predict(val_ds, verbose=0)
        result = evaluate(probabilities, val_split.labels, dataset.class_names)
        # A resumed run's history is on the server: this process saw only the epochs since.
        history = tracking.epoch_history(run_id, loggers[0].seen) if logging else outcome.history.history
        box = Outbox(run_id) if logging else local
        if not logging:  # no epoch logger sent the curves anywhere
            box.history({key: history[key] for key in tracking.EPOCH_KEYS if key in history})
        epochs = _stage(box, config, model, result, dataset, val_images, probabilities, history)
        model_uri = _ship(box, loggers[0]) if logging else None
        shutil.rmtree(workdir, ignore_errors=True)
    metric = competition_metric(dataset.layout.name, config.tracking.metric)
    return {"run_id": run_id if logging else None, "metrics": result.metrics, "metric": metric,
            "model_uri": model_uri, "epochs": epochs, "folder": None if logging else str(box.folder)}


def _stage(box, config, model, result, dataset, val_images, probabilities, history) -> int:
    """Write the evaluation and model into `box`; returns the number of epochs in the history."""
    val = dataset.splits["val"]
    monitored = history.get(config.train.checkpoint_monitor) or history["val_loss"]
    pick = np.argmin if "loss" in config.train.checkpoint_monitor else np.argmax
    best_epoch = int(pick(monitored)) if monitored else 0
    tracking.stage_evaluation(box, result, dataset.class_names, val_images, val.labels, val.ids, probabilities, history)
    if config.tracking.log_model:
        box.model(model, np.asarray(val_images[:2], dtype="float32"), probabilities[:2], best_epoch)
    box.tags({"aigc.best_epoch": best_epoch})
    return len(monitored)


def _ship(box, logger) -> str | None:
    """Send the staged results (kept for `aigc sync` if offline); the model URI once it is logged."""
    logger.flush_into(box)
    if not tracking.ship(box):
        print(f"aigc: tracking server unreachable: this run's results are kept in {box.folder}; "
              "run `aigc sync` when it is back", flush=True)
        return None
    return tracking.get_run(box.run_id).data.tags.get("aigc.model_uri")


def _local_run_id(config: Config) -> str:
    """A folder name for an untracked run: the config's name and the start time."""
    return f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _log_inputs(config: Config, dataset, cache, model) -> None:
    """What the run was given: config, data identity, model size."""
    tracking.log_config(config)
    tracking.log_params({"num_classes": dataset.num_classes, "model_parameters": model.count_params()})
    metric = competition_metric(dataset.layout.name, config.tracking.metric)
    tracking.set_tags({
        "aigc.layout": dataset.layout.name, "aigc.dataset_digest": cache.digest,
        "aigc.val_digest": cache.split_digest("val"), "aigc.metric": metric,
        "aigc.registered_model": config.tracking.registered_model,
    })
    for name in ("train", "val"):
        split = dataset.splits[name]
        tracking.log_dataset(split.ids, split.labels, cache.split_digest(name), str(dataset.root),
                             f"{dataset.root.name}-{name}", context="training" if name == "train" else "validation")
    tracking.log_text(model_summary(model), "model_summary.txt")


def model_summary(model) -> str:
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


def _check_resumable(run_id: str) -> None:
    run = tracking.get_run(run_id)
    if run.data.tags.get("aigc.kind") != "train":
        raise UserError(f"run {run_id} is not a train run; --resume takes the id of a killed train run")
    if "aigc.model_uri" in run.data.tags:
        raise UserError(f"run {run_id} already finished training; nothing to resume")
    if not (CHECKPOINTS / run_id / "backup").is_dir():
        raise UserError(f"no resume state for run {run_id} in {CHECKPOINTS}/; run it from the folder it started in")
