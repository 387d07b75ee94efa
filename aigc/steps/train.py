"""The `train` step: recorder -> data -> model -> fit -> the kept weights evaluated on validation -> record."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from aigc import crossfit, distributed, folds, inference, reports, scores, tracking, training, tta
from aigc.tracking import recorders
from aigc.config import Config, TrainConfig
from aigc.data import load_data
from aigc.data.fixes import Fixes, read_fixes
from aigc.data.parts import Part
from aigc.data.pipeline import class_weights, eval_dataset, oversampled_indices, train_dataset
from aigc.errors import UserError
from aigc.evaluation import competition_metric, evaluate, metric_function, probabilities_table
from aigc.models import build_model
from aigc.models.whitening import fit_whitening
from aigc.scores import CHOSEN, CROSS_FITTED, NONE, OUT_OF_FOLD, VALIDATION, Source

CHECKPOINTS = Path(".aigc-checkpoints")  # per-run resume state, removed when the run ends


def train(data_dir: str | Path, config: Config, resume: str | None = None) -> dict:
    """Train one model on the dataset's train split, evaluate it on val, and record it; `resume`: a killed run's id.

    With tracking.enabled false nothing goes to MLflow: the same results are written to
    aigc-runs/<name>-<time>/ (metrics in manifest.json, artifacts/, model.keras).
    """
    recorder = recorders.choose(config.tracking, distributed.is_chief(), resume)  # connects first: fails in seconds
    if recorder.run_id:  # an MLflow run to resume
        _check_resumable(recorder.run_id)
    dataset, cache = load_data(data_dir, config.data)
    fixes = read_fixes(dataset, config.data.exclude_ids, config.data.relabel)
    training.set_seed(config.train)
    train_part, val_part = (Part(name, cache.images(name), dataset.splits[name].labels, dataset.splits[name].ids,
                                 cache.split_digest(name)) for name in ("train", "val"))
    groups = folds.duplicate_groups(["train"] * len(train_part.ids), train_part.ids, cache.report["duplicates"])
    return fit_and_record(config, dataset, train_part, val_part, recorder, data_digest=cache.digest, fixes=fixes,
                          train_groups=groups)


def fit_and_record(config: Config, dataset, train_part: Part, val_part: Part, recorder, *, data_digest: str,
                   test: Part | None = None, name: str | None = None, tags: dict | None = None,
                   fixes: Fixes = Fixes(), train_groups=None, in_cv: bool = False, oof_views: bool = False) -> dict:
    """Fit one model on `train_part`, keep its weights as train.select_on says, evaluate them on `val_part`
    and record it all.

    `dataset`: the layouts.Dataset (classes, layout, root); `recorder`: from recorders.choose, not
    started yet (a recorder made with `parent_id` nests the run under that run, e.g. one fold of a
    cross-validation); `data_digest`: the whole dataset's digest (tag aigc.dataset_digest);
    `test`: unlabelled images also predicted with the kept weights (`test_probabilities`, logged as
    evaluation/test_probabilities.csv); `name`: the run's name (config.name); `tags`: more tags
    for the run, set at its start (e.g. which fold of a cross-validation it is); `fixes`: label-audit
    fixes of the training rows; `train_groups`: which training images are copies of each other (the
    inner selection slice keeps them together); `in_cv`: `val_part` is the fold's out-of-fold images,
    which choose nothing; `oof_views`: predict them under every TTA candidate too, for the cv run to fit its
    TTA set on (with the model in memory: not reloaded from the store). Call training.set_seed(config.train) first.

    Returns run_id (None unless MLflow), folder (the untracked run's, else None), model_uri,
    metrics and metric (the competition's), epochs, val_probabilities and test_probabilities
    (None without `test`), both with the kept weights, uncalibrated, and val_views: the validation
    probabilities under each TTA candidate (train.tta, or `oof_views`), "identity" alone without.
    """
    select = training.selection(config.train, in_cv)
    trained_part = fixes.training(train_part)
    fit_part, choose_part = _fit_and_choose(config.train, select, trained_part, val_part, train_groups)
    shape = (config.data.image_size, config.data.image_size, 3)
    with distributed.strategy().scope():
        model = build_model(config.model.name, shape, dataset.num_classes, config.model.params)
        # a patch-whitening first layer, if it has one: from the images fitted on, never the choosing ones
        fit_whitening(model, fit_part.images, config.train.seed)
        fitted = training.compile_model(
            distributed.adapt(training.with_augmenter(model, config.augment, config.train.seed)), config.train)
    train_ds = train_dataset(fit_part.images, fit_part.labels, dataset.num_classes, config.data, config.augment,
                             config.train.seed)
    choose_ds = eval_dataset(choose_part.images, choose_part.labels, dataset.num_classes, config.data.batch_size)
    val_ds = choose_ds if choose_part is val_part else eval_dataset(val_part.images, val_part.labels,
                                                                    dataset.num_classes, config.data.batch_size)
    monitor = config.train.checkpoint_monitor
    metric = competition_metric(dataset.layout.name, config.tracking.metric)

    # a cross-validation's fold is a part of its cv run (kind "fold"), not a candidate of its own
    with recorder.run("fold" if in_cv else "train", name or config.name) as run:
        # the training images as a whole (the fit rows are those less the choosing slice, logged beside them)
        params, run_tags, datasets = _inputs(config, dataset, trained_part, val_part, model, metric, data_digest,
                                             choose_part if choose_part is not val_part else None)
        run.log_inputs(config, model_summary(model), params, {**run_tags, **(tags or {})}, datasets)
        # a worker of a multi-worker run keeps its checkpoints out of the shared folder
        workdir = CHECKPOINTS / run.key if run.key else Path(tempfile.mkdtemp(prefix="aigc-worker-"))
        workdir.mkdir(parents=True, exist_ok=True)
        # a fold's images would crowd the experiment's charts with K more sets of cards; its cv run is the unit
        pictures = [] if in_cv else tracking.epoch_images(recorder.run_id, val_part.images, val_part.labels,
                                                          val_part.ids, dataset.class_names, config.train.epochs)
        history = training.fit(fitted, train_ds, choose_ds, config.train, workdir, run.callbacks() + pictures,
                               len(oversampled_indices(fit_part.labels, config.data.oversample)),
                               class_weight=class_weights(fit_part.labels, dataset.num_classes,
                                                          config.data.class_weights),
                               best_so_far=run.best_so_far(monitor, training.monitor_mode(monitor)), select=select)
        chosen, weights = training.choose_weights(fitted, workdir, config.train, choose_ds, select)  # EMA or raw
        predictor = distributed.adapt(model)  # the bare model (no augmentation layers), on this process alone
        probabilities = predictor.predict(val_ds, verbose=0)
        test_probabilities = None if test is None else predictor.predict(
            eval_dataset(test.images, None, dataset.num_classes, config.data.batch_size), verbose=0)
        curves = run.curves(history.history)
        monitored = curves.get(monitor) or curves["val_loss"]
        best_epoch = training.kept_epoch(workdir, len(monitored), select, weights)
        # TTA set and temperature, chosen on validation and cross-fitted (a fold leaves both to its cv run)
        wanted = oof_views if in_cv else config.train.tta
        views = _views(predictor, val_part, probabilities, config) if wanted else {"identity": probabilities}
        score = metric_function(metric, dataset.num_classes)
        done = crossfit.finish({"identity": probabilities} if in_cv else views, val_part.labels, score,
                               calibrate=config.train.calibrate == "temperature", seed=config.train.seed)
        shipped = len(done.transforms) > 1 or done.temperature is not None  # more than the bare model
        logged_probabilities = done.fitted.probabilities
        result = evaluate(logged_probabilities, val_part.labels, dataset.class_names, with_intervals=True)
        source = Source(OUT_OF_FOLD if in_cv else VALIDATION,
                        CHOSEN if select == "validation" else CROSS_FITTED if len(views) > 1 or shipped else NONE)

        def stage(box) -> None:
            box.stage(reports.evaluation_report(result, dataset.class_names, val_part.images, val_part.labels,
                                                val_part.ids, logged_probabilities, curves, source))
            note = _description(config, len(monitored), best_epoch, metric, result, select, choose_part, source)
            if weights:
                kept = ("the last epoch's raw weights, which scored better than the averaged (EMA) best epoch"
                        if weights["aigc.weights"] == "raw_last" else
                        "the best epoch's averaged (EMA) weights, which scored better than the last raw ones")
                note += f" The model keeps {kept} on {monitor} of the choosing images (`ema_best_*`, `raw_last_*`)."
            box.stage(reports.finish_report(done, val_part.labels, score, metric, "validation"))
            note += _shipped_note(done, metric, score, val_part.labels)
            if shipped:  # the bare model's own probabilities, beside the ones with what it ships with
                box.table(probabilities_table(val_part.ids, val_part.labels, probabilities),
                          "evaluation/val_probabilities_bare.csv")
            if config.tracking.log_model:
                box.model(model, np.asarray(val_part.images[:2], dtype="float32"), probabilities[:2], best_epoch)
                if shipped:
                    box.wrap(done.transforms if len(done.transforms) > 1 else None, done.temperature)
            if test is not None:  # a cross-validation averages these over its folds
                box.table(probabilities_table(test.ids, None, test_probabilities), "evaluation/test_probabilities.csv")
            planned, budget_tags = training.budget_record(workdir)  # planned vs actual epochs of a budgeted fit
            box.metrics({**planned, **chosen})
            box.tags({"aigc.best_epoch": best_epoch, "aigc.select_on": select, "aigc.tta": "+".join(done.transforms),
                      **budget_tags, **weights,
                      "mlflow.note.content": note})

        model_uri = run.finish(stage)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"run_id": recorder.run_id, "folder": recorder.folder and str(recorder.folder), "model_uri": model_uri,
            "metrics": result.metrics, "metric": metric, "epochs": len(monitored),
            "scored_on": f"{source.phrase(result.images)}: " + _scores_text(result, metric),
            "val_probabilities": probabilities, "val_views": views, "test_probabilities": test_probabilities}


def _fit_and_choose(train: TrainConfig, select: str, train_part: Part, val_part: Part, groups
                    ) -> tuple[Part, Part]:
    """(the images fitted on, the images that choose the kept weights: `val_part` itself unless "inner")."""
    if select != "inner":
        return train_part, val_part
    groups = None if groups is None or len(groups) != len(train_part.ids) else groups  # fixes dropped rows
    fit_rows, choose_rows = folds.selection_split(train_part.ids, train_part.labels, groups, train.select_fraction,
                                                  train.seed)
    return (train_part.take(fit_rows, train_part.name),
            train_part.take(choose_rows, f"{train_part.name}-select"))


def _scores_text(result, metric: str) -> str:
    """'accuracy 0.8856 (95 % CI 0.8670-0.9030), f1_macro ...': the competition's metric first."""
    values = result.metrics | result.intervals
    order = [metric, *(key for key in result.metrics if key != metric)]
    return ", ".join(f"{key} {scores.with_interval(values, key, '')}" for key in order)


def _views(model, part: Part, identity: np.ndarray, config: Config) -> dict[str, np.ndarray]:
    """The part's probabilities under every TTA candidate (aigc.tta), one prediction each."""
    return {"identity": identity, **inference.view_probabilities(model, part.images, config.data.batch_size,
                                                                 tta.CANDIDATES)}


def _shipped_note(done, metric: str, score, labels) -> str:
    """What the description says of the TTA set and temperature the model ships with."""
    note = ""
    if len(done.views) > 1:
        scored = done.tta_scores(labels, score, metric)
        chosen = " + ".join(done.transforms) if len(done.transforms) > 1 else "none (no transform helped)"
        note += (f" Test-time augmentation: {chosen}, chosen on the validation split; `final_*` scores each image "
                 f"by a set chosen without it ({metric} {scored[f'final_{metric}_without_tta']:.4f} without TTA).")
    if done.temperature is not None:
        note += (f" Calibrated: T = {done.temperature:.3f}, applied last; `calibrated_*` scores each image by a T "
                 "fitted without it.")
    if len(done.transforms) > 1 or done.temperature is not None:
        note += " The logged model is the Keras model (`aigc.keras_model_uri`) with them; `predict` applies them."
    return note


def _inputs(config: Config, dataset, train_part: Part, val_part: Part, model, metric: str, data_digest: str,
            choose_part: Part | None) -> tuple[dict, dict, list[dict]]:
    """What the run was given: (params, tags, datasets) for recorder.log_inputs."""
    params = {"num_classes": dataset.num_classes, "model_parameters": model.count_params()}
    tags = {"aigc.layout": dataset.layout.name, "aigc.dataset_digest": data_digest, "aigc.val_digest": val_part.digest,
            "aigc.train_digest": train_part.digest,
            "aigc.metric": metric, "aigc.registered_model": config.tracking.registered_model}
    parts = [(train_part, "training"), (val_part, "validation")] + ([(choose_part, "selection")] if choose_part else [])
    datasets = [{"ids": part.ids, "labels": part.labels, "digest": part.digest, "source": str(dataset.root),
                 "name": f"{dataset.root.name}-{part.name}", "context": context} for part, context in parts]
    return params, tags, datasets


def _description(config: Config, epochs: int, best_epoch: int, metric: str, result, select: str, choose_part: Part,
                 source: Source) -> str:
    """The run's note on its overview page: what was trained, which weights were kept, which numbers to read."""
    kept = {"last": f"the last epoch's weights (epoch {best_epoch}: nothing was chosen)",
            "inner": f"the weights of its best epoch {best_epoch}, chosen by {config.train.checkpoint_monitor} on "
                     f"{len(choose_part.ids)} training images held out of fitting (the `val_*` curves are theirs)",
            "validation": f"the weights of its best epoch {best_epoch}, chosen by {config.train.checkpoint_monitor} "
                          "on the validation split itself"}[select]
    scores_text = ", ".join(f"{key} {value:.4f}" for key, value in result.metrics.items())
    return (f"{config.name}: {config.model.name} at {config.data.image_size}x{config.data.image_size}, "
            f"{epochs} epochs; the model keeps {kept}. Scored on {source.phrase(result.images)} "
            f"(metrics `final_*`, each with a 95 % interval `_low`/`_high`): {scores_text}. The competition's "
            f"metric is {metric}: `final_{metric}` {scores.with_interval(result.metrics | result.intervals, metric, '')}."
            " The per-epoch curves are the weights of each epoch, not the logged model's.")  # markdown: `_*` literal


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
