"""keras-tuner searches over the tunable CNN, each trial logged as an MLflow run nested under the tune run.

Distributed search (keras-tuner's own mechanism): one chief serves the oracle, any number of
workers run trials, and every process logs to the same MLflow tracking server (not sqlite: it
locks with several writers). Use the same data, config and overrides everywhere.

1. Start a tracking server that every machine can reach, and point every process at it:

       mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://... \\
           --host 0.0.0.0 --port 5000
       export MLFLOW_TRACKING_URI=http://TRACKING_HOST:5000

2. On the chief's machine (it creates the tune run, serves the oracle on port 8000, waits for
   the workers, then logs the results and retrains the best trial):

       KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=0.0.0.0 KERASTUNER_ORACLE_PORT=8000 \\
           aigc tune --data DIR --config configs/cnn_tune.yaml

   It prints `tune run RUN_ID ...` on stderr as soon as the run exists.

3. On each worker machine (tuner0, tuner1, ... : one distinct id per worker process):

       KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=CHIEF_HOST KERASTUNER_ORACLE_PORT=8000 \\
       AIGC_TUNE_PARENT_RUN_ID=RUN_ID aigc tune --data DIR --config configs/cnn_tune.yaml

   (`--resume RUN_ID` works as well as AIGC_TUNE_PARENT_RUN_ID.) Each trial becomes a run
   nested under RUN_ID, whichever worker ran it.

keras-tuner's limits apply: the chief exits only after every worker has asked for a trial past
the budget (a worker that dies leaves it waiting), and Hyperband continues a trial from the
checkpoint of an earlier one, so its workers need a shared working directory.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import keras_tuner
import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from aigc import tracking, training
from aigc.errors import UserError
from aigc.models import keras_message, plain_keras_errors, tunable_cnn
from aigc.models.common import ParamError
from aigc.scores import direction

PARENT_ENV = "AIGC_TUNE_PARENT_RUN_ID"  # how a worker learns the chief's tune run
STATE = Path(".aigc-tuner")  # keras-tuner's state, one folder per tune run id
TABLE_COLUMNS = ["trial", "run_id", "status", "score"]


def role() -> str:
    """'chief' or 'worker' of a distributed search (keras-tuner's KERASTUNER_* variables), else 'single'."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


class TunableModel(keras_tuner.HyperModel):
    """The tunable CNN over `config.tune.space`, compiled and fitted exactly like a train run."""

    def __init__(self, config, input_shape, num_classes):
        super().__init__(name="tunable_cnn")
        self.config, self.input_shape, self.num_classes = config, input_shape, num_classes

    def build(self, hp):
        model = tunable_cnn.build_from_hp(hp, self.input_shape, self.num_classes, self.config.tune.space)
        return training.compile_model(model, self.config.train)

    def fit(self, hp, model, train_ds, val_ds, *, workdir, images_per_epoch, epochs, callbacks=(),
            class_weight=None, initial_epoch=0):
        # Hyperband continues a trial from an earlier one's weights: train only the epochs still to go.
        train = dataclasses.replace(self.config.train, epochs=epochs - initial_epoch)
        return training.fit(model, train_ds, val_ds, train, workdir, callbacks, images_per_epoch,
                            class_weight=class_weight)


class TrialRuns:
    """Tuner mixin: each trial runs inside an MLflow run nested under the tune run `parent_id`."""

    bookkeeping: tuple = ()  # the tuner's own per-trial values, logged beside the hyperparameters

    def __init__(self, parent_id, **kwargs):
        self.parent_id = parent_id
        super().__init__(**kwargs)

    def run_trial(self, trial, *args, **kwargs):
        # A trial cut short by a crash is retried on resume: it continues its own run, not a second one.
        earlier = {run.data.tags.get("aigc.trial_id"): run.info.run_id
                   for run in tracking.child_runs(self.parent_id, "trial")}
        run_id = earlier.get(trial.trial_id)
        tags = {"aigc.trial_id": trial.trial_id, "aigc.tuner_id": self.tuner_id}
        with tracking.run("trial", f"trial-{trial.trial_id}", run_id, tags, parent_id=self.parent_id) as run:
            tracking.log_params(self.trial_params(trial.hyperparameters))
            try:
                with plain_keras_errors():  # a failed trial's message without Keras' argument dump
                    histories, score, status = self._fit(trial, run.info.run_id, run_id is not None, args, kwargs)
            except Exception as error:
                tracking.set_tags({"aigc.trial_status": "failed", "aigc.trial_error": keras_message(error)[:1000]})
                if isinstance(error, keras_tuner.errors.FatalError):
                    raise
                # FAILED, not INVALID: the oracle records it and the search goes on without a retry.
                raise keras_tuner.errors.FailedTrialError(keras_message(error)) from error
            tracking.log_metrics({"score": score})
            tracking.set_tags({"aigc.trial_status": status})
        return histories

    def _fit(self, trial, run_id, resumed, args, kwargs):
        """Build and fit through keras-tuner's own run_trial, with the epoch logger of this trial's run."""
        workdir = Path(self.get_trial_dir(trial.trial_id)) / "fit"
        workdir.mkdir(parents=True, exist_ok=True)
        logger = tracking.epoch_logger(run_id, tracking.logged_epochs(run_id) if resumed else set())
        kwargs = {**kwargs, "workdir": workdir, "callbacks": [*kwargs.get("callbacks", []), logger]}
        histories = super().run_trial(trial, *args, **kwargs)
        shutil.rmtree(workdir / "backup", ignore_errors=True)  # the trial is over: nothing left to resume
        score = float(np.mean([best_value(history, self.oracle.objective) for history in histories]))
        if not np.isfinite(score):
            raise keras_tuner.errors.FailedTrialError(f"{self.oracle.objective.name} is not finite: {score}")
        stopped = any(history.epoch and history.epoch[-1] + 1 < history.params["epochs"] for history in histories)
        return histories, score, "stopped early" if stopped else "completed"

    def trial_params(self, hp) -> dict:
        """Every name of the space in every trial (inactive ones "none"): the parallel-coordinates view needs it."""
        params = {p.name: hp.values.get(p.name, "none") if hp.is_active(p) else "none" for p in hp.space}
        params.update({name: hp.values.get(name, "none") for name in self.bookkeeping})
        return params


class RandomSearch(TrialRuns, keras_tuner.RandomSearch):
    pass


class BayesianOptimization(TrialRuns, keras_tuner.BayesianOptimization):
    pass


class Hyperband(TrialRuns, keras_tuner.Hyperband):
    bookkeeping = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


TUNERS = {"random": RandomSearch, "hyperband": Hyperband, "bayesian": BayesianOptimization}


def check(config, input_shape, num_classes) -> None:
    """Fail before any run exists: another model, an objective keras-tuner can't rank, a space that doesn't build."""
    where = config.source
    if config.model.name != "tunable_cnn":
        raise UserError(f"{where}: tune searches model tunable_cnn; set model.name: tunable_cnn")
    # A metric keras-tuner knows (keras_tuner.engine.* is its exported API; its private code lives in
    # keras_tuner.src); which way it improves is scores.direction's.
    if keras_tuner.engine.metrics_tracking.infer_metric_direction(config.tune.objective) is None:
        raise UserError(f"{where}: tune.objective: keras-tuner can't tell if {config.tune.objective!r} is better "
                        "high or low; use val_accuracy, val_loss, accuracy or loss")
    try:  # the first choice of every name: keras-tuner builds it before the first trial
        with plain_keras_errors():
            TunableModel(config, input_shape, num_classes).build(keras_tuner.HyperParameters())
    except ParamError as error:
        raise UserError(f"{where}: tune: {error}") from error
    except ValueError as error:
        raise UserError(f"{where}: tune.space: the first choices give no model for data.image_size "
                        f"{input_shape[0]}: {keras_message(error)}") from error


def make_tuner(config, input_shape, num_classes, parent_id: str):
    """The configured tuner; its state lives in .aigc-tuner/<parent_id>, so a resumed search reloads it."""
    tune = config.tune
    budget = {"max_epochs": tune.epochs} if tune.algorithm == "hyperband" else {"max_trials": tune.max_trials}
    objective = keras_tuner.Objective(tune.objective, direction(tune.objective))
    tuner = TUNERS[tune.algorithm](
        parent_id, hypermodel=TunableModel(config, input_shape, num_classes), objective=objective,
        seed=config.train.seed, directory=str(STATE), project_name=parent_id, overwrite=False, **budget)
    if tune.algorithm == "hyperband" and role() != "worker":
        # tune.max_trials caps every search, but keras-tuner 1.4.8's HyperbandOracle takes no max_trials (removed in
        # keras-team/keras-tuner#171): its base Oracle's public max_trials is set instead, before any trial exists.
        # An oracle argument for it upstream would remove this line.
        tuner.oracle.max_trials = tune.max_trials
    return tuner


def best_value(history, objective) -> float:
    """The best epoch's value of the objective (as keras-tuner scores a trial)."""
    values = history.history.get(objective.name)
    if not values:
        raise keras_tuner.errors.FailedTrialError(f"the trial logged no {objective.name}")
    return float(np.nanmax(values) if objective.direction == "max" else np.nanmin(values))


def best_trial(tuner) -> dict | None:
    """The best completed trial: {trial_id, score, hyperparameters} (active ones only), or None."""
    found = tuner.oracle.get_best_trials(1)
    if not found or found[0].status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
        return None
    trial, hp = found[0], found[0].hyperparameters
    values = {p.name: hp.values[p.name] for p in hp.space if p.name in hp.values and hp.is_active(p)}
    return {"trial_id": trial.trial_id, "score": float(trial.score), "hyperparameters": values}


def trials_table(runs, direction: str) -> pd.DataFrame:
    """One row per trial run (id, run id, status, score, hyperparameters), best score first."""
    rows = [{"trial": run.data.tags.get("aigc.trial_id"), "run_id": run.info.run_id,
             "status": run.data.tags.get("aigc.trial_status", run.info.status.lower()),
             "score": run.data.metrics.get("score", np.nan), **run.data.params} for run in runs]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS + sorted({key for row in rows for key in row} - set(TABLE_COLUMNS)))
    return table.sort_values("score", ascending=direction == "min", na_position="last", ignore_index=True)


def score_figure(table: pd.DataFrame, objective):
    """Each trial's score in trial order with the best so far (`objective`: the oracle's): still improving?"""
    scored = table.dropna(subset=["score"]).assign(order=lambda t: t["trial"].astype(int)).sort_values("order")
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(scored["order"], scored["score"], "o", label="trial")
    best = scored["score"].cummax() if objective.direction == "max" else scored["score"].cummin()
    axis.step(scored["order"], best, where="post", label="best so far")
    failed = len(table) - len(scored)
    axis.set_title(f"{objective.name} by trial" + (f" ({failed} failed)" if failed else ""))
    axis.set_xlabel("trial")
    axis.set_ylabel(objective.name)
    axis.legend()
    figure.tight_layout()
    return figure
