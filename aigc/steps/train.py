"""The `train` step: recorder -> data -> model -> fit -> evaluation on the best weights -> record."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc import distributed, tracking, training
from aigc.tracking import recorders
from aigc.config import Config
from aigc.data import load_data
from aigc.data.pipeline import class_weights, eval_dataset, oversampled_indices, train_dataset
from aigc.errors import UserError
from aigc.evaluation import apply_temperature, competition_metric, evaluate, probabilities_table
from aigc.models import build_model
from aigc.models.common import with_temperature
from aigc.models.whitening import fit_whitening

CHECKPOINTS = Path(".aigc-checkpoints")  # per-run resume state, removed when the run ends


@dataclass(frozen=True)
class Part:
    """Images to train or validate on: `images` indexable like cache.images(split) (uint8 N x H x W x 3),
    `labels` (int, N), `ids` (N, as the competition spells them), `digest` (identifies exactly these rows)."""

    name: str  # e.g. "train", "val", "fold2-train": the logged dataset is called <data folder>-<name>
    images: object
    labels: np.ndarray
    ids: tuple
    digest: str


def train(data_dir: str | Path, config: Config, resume: str | None = None) -> dict:
    """Train one model on the dataset's train split, evaluate it on val, and record it; `resume`: a killed run's id.

    With tracking.enabled false nothing goes to MLflow: the same results are written to
    aigc-runs/<name>-<time>/ (metrics in manifest.json, artifacts/, model.keras).
    """
    recorder = recorders.choose(config.tracking, distributed.is_chief(), resume)  # connects first: fails in seconds
    if recorder.run_id:  # an MLflow run to resume
        _check_resumable(recorder.run_id)
    dataset, cache = load_data(data_dir, config.data)
    training.set_seed(config.train)
    train_part, val_part = (Part(name, cache.images(name), dataset.splits[name].labels, dataset.splits[name].ids,
                                 cache.split_digest(name)) for name in ("train", "val"))
    return fit_and_record(config, dataset, train_part, val_part, recorder, data_digest=cache.digest)


def fit_and_record(config: Config, dataset, train_part: Part, val_part: Part, recorder, *, data_digest: str,
                   test: Part | None = None, name: str | None = None, tags: dict | None = None) -> dict:
    """Fit one model on `train_part`, pick its best epoch on `val_part`, evaluate it there and record it all.

    `dataset`: the layouts.Dataset (classes, layout, root); `recorder`: from recorders.choose, not
    started yet (a recorder made with `parent_id` nests the run under that run, e.g. one fold of a
    cross-validation); `data_digest`: the whole dataset's digest (tag aigc.dataset_digest);
    `test`: unlabelled images also predicted with the best weights (`test_probabilities`, logged as
    evaluation/test_probabilities.csv); `name`: the run's name (config.name); `tags`: more tags
    for the run, set at its start (e.g. which fold of a cross-validation it is). Call training.set_seed(config.train) first.

    Returns run_id (None unless MLflow), folder (the untracked run's, else None), model_uri,
    metrics and metric (the competition's), epochs, val_probabilities and test_probabilities
    (None without `test`), both on the best epoch's weights.
    """
    shape = (config.data.image_size, config.data.image_size, 3)
    with distributed.strategy().scope():
        model = build_model(config.model.name, shape, dataset.num_classes, config.model.params)
        fit_whitening(model, train_part.images, config.train.seed)  # a patch-whitening first layer, if it has one
        fitted = training.compile_model(
            distributed.adapt(training.with_augmenter(model, config.augment, config.train.seed)), config.train)
    train_ds = train_dataset(train_part.images, train_part.labels, dataset.num_classes, config.data, config.augment,
                             config.train.seed)
    val_ds = eval_dataset(val_part.images, val_part.labels, dataset.num_classes, config.data.batch_size)
    monitor = config.train.checkpoint_monitor
    metric = competition_metric(dataset.layout.name, config.tracking.metric)

    with recorder.run("train", name or config.name) as run:
        params, run_tags, datasets = _inputs(config, dataset, train_part, val_part, model, metric, data_digest)
        run.log_inputs(config, model_summary(model), params, {**run_tags, **(tags or {})}, datasets)
        # a worker of a multi-worker run keeps its checkpoints out of the shared folder
        workdir = CHECKPOINTS / run.key if run.key else Path(tempfile.mkdtemp(prefix="aigc-worker-"))
        workdir.mkdir(parents=True, exist_ok=True)
        pictures = tracking.epoch_images(recorder.run_id, val_part.images, val_part.labels, val_part.ids,
                                         dataset.class_names, config.train.epochs)
        history = training.fit(fitted, train_ds, val_ds, config.train, workdir, run.callbacks() + pictures,
                               len(oversampled_indices(train_part.labels, config.data.oversample)),
                               class_weight=class_weights(train_part.labels, dataset.num_classes,
                                                          config.data.class_weights),
                               best_so_far=run.best_so_far(monitor, training.monitor_mode(monitor)))
        chosen, weights = training.choose_weights(fitted, workdir, config.train, val_ds)  # with EMA: averaged or raw
        probabilities = model.predict(val_ds, verbose=0)  # the bare model: no augmentation layers
        test_probabilities = None if test is None else model.predict(
            eval_dataset(test.images, None, dataset.num_classes, config.data.batch_size), verbose=0)
        result = evaluate(probabilities, val_part.labels, dataset.class_names)
        curves = run.curves(history.history)
        monitored = curves.get(monitor) or curves["val_loss"]
        best_epoch = int(np.argmin(monitored) if training.monitor_mode(monitor) == "min" else np.argmax(monitored))
        if weights.get("aigc.weights") == "raw_last":
            best_epoch = len(monitored) - 1

        def stage(box) -> None:
            tracking.stage_evaluation(box, result, dataset.class_names, val_part.images, val_part.labels,
                                      val_part.ids, probabilities, curves)
            logged, outputs, note = model, probabilities[:2], _description(config, len(monitored), best_epoch,
                                                                          metric, result)
            if weights:
                kept = ("the last epoch's raw weights, which scored better than the averaged (EMA) best epoch"
                        if weights["aigc.weights"] == "raw_last" else
                        "the best epoch's averaged (EMA) weights, which scored better than the last raw ones")
                note += f" The model keeps {kept} on {monitor} (`ema_best_*`, `raw_last_*`)."
            if config.train.calibrate == "temperature":  # fitted on validation; the logged model applies it
                temperature = tracking.stage_temperature(box, probabilities, val_part.labels, "validation")
                logged, outputs = with_temperature(model, temperature), apply_temperature(outputs, temperature)
                note += (f" The logged model is calibrated: its softmax divides the logits by T = {temperature:.3f}, "
                         "fitted on the validation split (`calibrated_*` metrics).")
            if config.tracking.log_model:
                box.model(logged, np.asarray(val_part.images[:2], dtype="float32"), outputs, best_epoch)
            if test is not None:  # a cross-validation averages these over its folds
                box.table(probabilities_table(test.ids, None, test_probabilities), "evaluation/test_probabilities.csv")
            planned, budget_tags = training.budget_record(workdir)  # planned vs actual epochs of a budgeted fit
            box.metrics({**planned, **chosen})
            box.tags({"aigc.best_epoch": best_epoch, **budget_tags, **weights,
                      "mlflow.note.content": note})

        model_uri = run.finish(stage)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"run_id": recorder.run_id, "folder": recorder.folder and str(recorder.folder), "model_uri": model_uri,
            "metrics": result.metrics, "metric": metric, "epochs": len(monitored),
            "val_probabilities": probabilities, "test_probabilities": test_probabilities}


def _inputs(config: Config, dataset, train_part: Part, val_part: Part, model, metric: str,
            data_digest: str) -> tuple[dict, dict, list[dict]]:
    """What the run was given: (params, tags, datasets) for recorder.log_inputs."""
    params = {"num_classes": dataset.num_classes, "model_parameters": model.count_params()}
    tags = {"aigc.layout": dataset.layout.name, "aigc.dataset_digest": data_digest, "aigc.val_digest": val_part.digest,
            "aigc.train_digest": train_part.digest,
            "aigc.metric": metric, "aigc.registered_model": config.tracking.registered_model}
    datasets = [{"ids": part.ids, "labels": part.labels, "digest": part.digest, "source": str(dataset.root),
                 "name": f"{dataset.root.name}-{part.name}", "context": context}
                for part, context in ((train_part, "training"), (val_part, "validation"))]
    return params, tags, datasets


def _description(config: Config, epochs: int, best_epoch: int, metric: str, result) -> str:
    """The run's note on its overview page: what was trained and which numbers to read."""
    scores = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics.items())
    return (f"{config.name}: {config.model.name} at {config.data.image_size}x{config.data.image_size}, "
            f"{epochs} epochs (best epoch {best_epoch}, by {config.train.checkpoint_monitor}). Evaluated on the "
            f"validation split with the best epoch's weights (metrics `final_*`): {scores}. The competition's "
            f"metric is {metric}: `final_{metric}` {result.metrics.get(metric, float('nan')):.4f}. The per-epoch "
            "`val_*` curves are the weights of each epoch, not the logged model's.")  # markdown: `_*` literal


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
