"""The `tune` step: keras-tuner search (one nested MLflow run per trial) -> results -> best trial retrained.

Distributed searches (a chief and workers): see the docstring of aigc/tuning.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from aigc import folds, tracking, training, tuning
from aigc.config import Config, ModelConfig
from aigc.data import load_data
from aigc.data.pipeline import class_weights, eval_dataset, oversampled_indices, train_dataset
from aigc.errors import UserError
from aigc.models import tunable_cnn
from aigc.steps.train import train


def tune(data_dir: str | Path, config: Config, resume: str | None = None, retrain_epochs: int | None = None) -> dict:
    """Search `config.tune.space`, then retrain the best trial (`retrain_epochs` None or < 0: tune.retrain_epochs).

    `resume`: the id of a tune run whose search goes on (a worker: the chief's run to log under).
    """
    dataset, cache = load_data(data_dir, config.data)
    shape = (config.data.image_size, config.data.image_size, 3)
    tuning.check(config, shape, dataset.num_classes)
    training.set_seed(config.train)
    tracking.connect(config.tracking)
    search = _search_inputs(config, dataset, cache)
    if tuning.role() == "worker":
        return _work(config, shape, dataset.num_classes, resume or os.environ.get(tuning.PARENT_ENV), search)
    if resume:
        _check_tune_run(resume, need_state=True)
    epochs = config.tune.retrain_epochs if retrain_epochs is None or retrain_epochs < 0 else retrain_epochs
    with tracking.run("tune", config.name, run_id=resume, system_metrics=config.tracking.log_system_metrics) as run:
        parent = run.info.run_id
        if not resume:
            _log_inputs(config, dataset, cache)
        tuner = tuning.make_tuner(config, shape, dataset.num_classes, parent)
        if tuning.role() == "chief":  # workers need this id before the search can start
            print(f"tune run {parent}: start workers with {tuning.PARENT_ENV}={parent}", file=sys.stderr, flush=True)
        tuner.search(*search[0], **search[1])
        best, trials = _log_results(tuner, parent)
        retrained = _retrain(data_dir, config, best, epochs) if epochs else None
    return {"run_id": parent, "best_score": best["score"], "best_hyperparameters": best["hyperparameters"],
            "trials": trials, "retrain_run_id": retrained and retrained["run_id"],
            "model_uri": retrained and retrained["model_uri"]}


def _search_inputs(config: Config, dataset, cache) -> tuple[tuple, dict]:
    """(args, kwargs) of tuner.search: the same pipelines a train run uses, and the trial length.

    Trials are scored on a slice of the training images held out of fitting (train.select_fraction), never on
    the validation split: the best trial's retrained run is then scored on validation images nothing chose on.
    """
    split = dataset.splits["train"]
    fit_rows, choose_rows = folds.selection_split(split.ids, split.labels, None, config.train.select_fraction,
                                                  config.train.seed)
    images = folds.PooledImages([cache.images("train")])
    train_ds = train_dataset(images.take(fit_rows), split.labels[fit_rows], dataset.num_classes, config.data,
                             config.augment, config.train.seed)
    val_ds = eval_dataset(images.take(choose_rows), split.labels[choose_rows], dataset.num_classes,
                          config.data.batch_size)
    return (train_ds, val_ds), {
        "epochs": config.tune.epochs,
        "images_per_epoch": len(oversampled_indices(split.labels[fit_rows], config.data.oversample)),
        "class_weight": class_weights(split.labels[fit_rows], dataset.num_classes, config.data.class_weights),
    }


def _work(config: Config, shape, num_classes: int, parent: str | None, search) -> dict:
    """A distributed worker: run trials the chief hands out, under the chief's run; the chief logs the rest."""
    if not parent:
        raise UserError(f"tuning worker {os.environ.get('KERASTUNER_TUNER_ID')}: set {tuning.PARENT_ENV} "
                        "(or --resume) to the run id the chief printed")
    _check_tune_run(parent, need_state=False)
    tuner = tuning.make_tuner(config, shape, num_classes, parent)
    tuner.search(*search[0], **search[1])
    mine = [run for run in tracking.child_runs(parent, "trial") if run.data.tags.get("aigc.tuner_id") == tuner.tuner_id]
    return {"run_id": parent, "best_score": None, "best_hyperparameters": None, "trials": len(mine),
            "retrain_run_id": None, "model_uri": None}


def _log_inputs(config: Config, dataset, cache) -> None:
    """What the search was given: the config (whose tune section is the search) and the data's identity."""
    tracking.log_config(config)
    tracking.log_params({"num_classes": dataset.num_classes})
    tracking.set_tags({"aigc.layout": dataset.layout.name, "aigc.dataset_digest": cache.digest,
                       "aigc.tune_algorithm": config.tune.algorithm})


def _log_results(tuner, parent: str) -> tuple[dict, int]:
    """Trials table, score figure and best hyperparameters on the tune run; returns (best, trial count)."""
    objective = tuner.oracle.objective
    table = tuning.trials_table(tracking.child_runs(parent, "trial"), objective.direction)
    tracking.log_table(table, "tuning/trials.csv")
    tracking.log_figure(tuning.score_figure(table, objective), "tuning/scores.png")
    best = tuning.best_trial(tuner)
    if best is None:
        raise UserError(f"tune run {parent}: no trial completed; see tuning/trials.csv for each trial's error")
    # Params can't change: after a resume that found a better trial, best_hyperparameters.json is the truth.
    tracking.log_params({f"best.{name}": value for name, value in best["hyperparameters"].items()})
    tracking.log_dict({**best, "objective": objective.name}, "tuning/best_hyperparameters.json")
    tracking.log_metrics({"best_score": best["score"]}, step=len(table))
    best_run = table.loc[table["trial"] == best["trial_id"], "run_id"]
    tracking.set_tags({"aigc.best_trial_id": best["trial_id"], "aigc.best_trial_run_id": best_run.iloc[0]})
    return best, len(table)


def _retrain(data_dir, config: Config, best: dict, epochs: int) -> dict:
    """The best trial as a regular train run (nested under the tune run), which `promote` can pick."""
    model = ModelConfig("tunable_cnn", tunable_cnn.build_kwargs(best["hyperparameters"]))
    derived = dataclasses.replace(config, name=f"{config.name}-best", model=model,
                                  train=dataclasses.replace(config.train, epochs=epochs))
    result = train(data_dir, derived)
    tracking.set_tags({"aigc.retrain_run_id": result["run_id"]})
    return result


def _check_tune_run(run_id: str, need_state: bool) -> None:
    """A run to resume (`need_state`: its keras-tuner state is here) or for a worker to log under."""
    if tracking.get_run(run_id).data.tags.get("aigc.kind") != "tune":
        raise UserError(f"run {run_id} is not a tune run; --resume takes the id of a tune run")
    if need_state and not (tuning.STATE / run_id).is_dir():
        raise UserError(f"no search state for run {run_id} in {tuning.STATE}/; run it from the folder it started in")
