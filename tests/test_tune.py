"""The tune step: real (tiny) keras-tuner searches, and what a user finds in MLflow afterwards."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import EPOCH_KEYS, ROOT, artifact_paths, runs
from servers import free_port, mlflow_server

CONFIG = ROOT / "configs/cnn_tune.yaml"
# A 16x16 input through three kernel-5 blocks with pool stride 2: `same` fits, `valid` shrinks to nothing.
TINY = {"padding": "same", "filters_2": 8, "filters_3": 8, "kernel_1": 5, "kernel_2": 5, "kernel_3": 5, "strides_1": 2,
        "strides_2": 2, "strides_3": 2, "dropout_1": 0.0, "dropout_2": 0.0, "dropout_3": 0.0,
        "global_pooling": "avg", "extra_dense": False, "dense_final": 8, "dropout_final": 0.0}


def load(space, **overrides):
    """cnn_tune.yaml shrunk to seconds: 16x16 images, the TINY space plus `space`."""
    from aigc import config

    values = {"data.image_size": 16, "data.batch_size": 16, "tune.epochs": 1, "tune.retrain_epochs": 0,
              "tracking.log_system_metrics": False, "tune.space": {**TINY, **space}, **overrides}
    return config.load(CONFIG, values)


def tune(data, config, **kwargs):
    from aigc.steps.tune import tune as run_tune

    return run_tune(data, config, **kwargs)


TUNE_SCRIPT = ("import json, sys; from aigc import config; from aigc.steps.tune import tune; "
               "result = tune(sys.argv[1], config.load(sys.argv[2], json.loads(sys.argv[3]))); print('RESULT', result)")


def tune_process(data, overrides, env):
    """The tune step in a subprocess of its own (in the current folder), as `aigc tune` would run it."""
    return subprocess.Popen([sys.executable, "-c", TUNE_SCRIPT, str(data), str(CONFIG), json.dumps(overrides)],
                            env=env, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trial_runs(uri, parent_id):
    return [run for run in runs(uri, "trial") if run.data.tags.get("mlflow.parentRunId") == parent_id]


def artifact(uri, run_id, path):
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)


@pytest.fixture(scope="module")
def searched(module_store, dataset_factory):
    """4 trials of 2 epochs (padding same/valid x filters_1 8/16: the two `valid` ones fail), best retrained."""
    config = load({"filters_1": [8, 16], "padding": ["same", "valid"]}, **{"tune.max_trials": 4, "tune.epochs": 2})
    result = tune(dataset_factory("gic"), config, retrain_epochs=2)
    (parent,) = runs(module_store, "tune")
    return module_store, parent, result


@pytest.mark.slow
def test_every_trial_is_a_nested_run_with_the_same_param_keys(searched):
    uri, parent, result = searched
    trials = trial_runs(uri, parent.info.run_id)
    assert len(trials) == result["trials"] == 4
    assert sorted(run.data.tags["aigc.trial_id"] for run in trials) == ["0", "1", "2", "3"]
    keys = {frozenset(run.data.params) for run in trials}
    assert len(keys) == 1 and {"filters_1", "padding", "extra_dense_units"} <= set(next(iter(keys)))
    assert {run.data.params["extra_dense_units"] for run in trials} == {"none"}  # inactive: extra_dense off
    combos = {(run.data.params["padding"], run.data.params["filters_1"]) for run in trials}
    assert combos == {("same", "8"), ("same", "16"), ("valid", "8"), ("valid", "16")}


@pytest.mark.slow
def test_completed_trials_log_each_epoch_and_a_score(searched):
    uri, parent, _ = searched
    client = MlflowClient(uri)
    completed = [run for run in trial_runs(uri, parent.info.run_id) if run.data.params["padding"] == "same"]
    assert len(completed) == 2
    for run in completed:
        assert run.info.status == "FINISHED" and run.data.tags["aigc.trial_status"] == "completed"
        for key in EPOCH_KEYS:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1], key
        history = [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_accuracy")]
        assert run.data.metrics["score"] == max(history)


@pytest.mark.slow
def test_a_trial_that_does_not_fit_is_failed_and_the_search_goes_on(searched):
    uri, parent, _ = searched
    failed = [run for run in trial_runs(uri, parent.info.run_id) if run.data.params["padding"] == "valid"]
    assert len(failed) == 2
    for run in failed:
        assert run.info.status == "FAILED" and run.data.tags["aigc.trial_status"] == "failed"
        assert "negative" in run.data.tags["aigc.trial_error"] and "score" not in run.data.metrics
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_tune_run_logs_config_trials_table_figure_and_best(searched):
    uri, parent, result = searched
    params, tags = parent.data.params, parent.data.tags
    assert tags["aigc.tune_algorithm"] == "random" and params["tune.max_trials"] == "4"
    assert {"tuning/trials.csv", "tuning/scores.png", "tuning/best_hyperparameters.json", "config.yaml"} <= set(
        artifact_paths(uri, parent.info.run_id))
    table = pd.read_csv(artifact(uri, parent.info.run_id, "tuning/trials.csv"))
    assert len(table) == 4 and list(table["status"]) == ["completed", "completed", "failed", "failed"]
    assert table["score"].iloc[0] >= table["score"].iloc[1] and table["score"].iloc[2:].isna().all()
    best = json.loads(Path(artifact(uri, parent.info.run_id, "tuning/best_hyperparameters.json")).read_text())
    assert best["score"] == table["score"].iloc[0] == parent.data.metrics["best_score"] == result["best_score"]
    assert best["hyperparameters"] == result["best_hyperparameters"] and best["hyperparameters"]["padding"] == "same"
    assert tags["aigc.best_trial_run_id"] == table["run_id"].iloc[0]
    assert params["best.padding"] == "same" and params["best.filters_1"] == str(best["hyperparameters"]["filters_1"])


@pytest.mark.slow
def test_best_trial_is_retrained_as_a_promotable_train_run(searched):
    uri, parent, result = searched
    (retrained,) = runs(uri, "train")
    assert retrained.info.run_id == result["retrain_run_id"] == parent.data.tags["aigc.retrain_run_id"]
    assert retrained.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert retrained.data.tags["aigc.model_uri"].startswith("models:/")
    assert {"final_accuracy", "final_f1_weighted"} <= set(retrained.data.metrics)
    params = retrained.data.params
    best = result["best_hyperparameters"]
    assert params["model.name"] == "tunable_cnn" and params["train.epochs"] == "2"
    assert params["model.params.padding"] == "same" and json.loads(params["model.params.filters"]) == [
        best["filters_1"], 8, 8]
    steps = [m.step for m in MlflowClient(uri).get_metric_history(retrained.info.run_id, "epoch/val_loss")]
    assert sorted(steps) == [0, 1]


@pytest.mark.slow
def test_resume_runs_only_the_remaining_trials(store, dataset_factory):
    data, space = dataset_factory("gic"), {"filters_1": [8, 16], "dense_final": [8, 16]}
    first = tune(data, load(space, **{"tune.max_trials": 1}))
    assert len(trial_runs(store, first["run_id"])) == 1
    assert (Path(".aigc-tuner") / first["run_id"]).is_dir()

    second = tune(data, load(space, **{"tune.max_trials": 3}), resume=first["run_id"])
    assert second["run_id"] == first["run_id"] and second["trials"] == 3
    assert len(runs(store, "tune")) == 1
    trials = trial_runs(store, first["run_id"])
    assert sorted(run.data.tags["aigc.trial_id"] for run in trials) == ["0", "1", "2"]
    assert all(run.data.tags["aigc.trial_status"] == "completed" for run in trials)
    table = pd.read_csv(artifact(store, first["run_id"], "tuning/trials.csv"))
    assert len(table) == 3 and table["score"].iloc[0] == second["best_score"] == max(r.data.metrics["score"] for r in trials)


@pytest.mark.slow
def test_resume_after_kill_continues_the_cut_trial_in_its_own_run(store, dataset_factory):
    """kill -9 mid-trial, then resume: the trial goes on from its last epoch in the same nested run."""
    epochs = 6
    overrides = {"data.image_size": 32, "data.batch_size": 16, "tune.epochs": epochs, "tune.max_trials": 1,
                 "tune.retrain_epochs": 0, "tracking.log_system_metrics": False,
                 "tune.space": {**TINY, "filters_1": 64}}
    data = dataset_factory("gic", classes=4, per_class=40)
    first = tune_process(data, overrides, {**os.environ, "MLFLOW_TRACKING_URI": store})
    deadline = time.monotonic() + 120
    while not runs(store, "tune"):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    (parent,) = runs(store, "tune")
    # Kill between two backups: Keras rewrites its backup in place, and writes this file after the weights.
    backup = Path(".aigc-tuner", parent.info.run_id, "trial_0", "fit", "backup", "training_metadata.json")
    while _backed_up_epoch(backup) < 2:  # epochs done
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.01)
    first.kill()
    first.wait()
    client = MlflowClient(store)
    (trial,) = runs(store, "trial")
    assert 2 <= len(client.get_metric_history(trial.info.run_id, "epoch/val_loss")) < epochs

    from aigc import config

    tune(data, config.load(CONFIG, overrides), resume=parent.info.run_id)
    (resumed,) = runs(store, "trial")
    assert resumed.info.run_id == trial.info.run_id and resumed.data.tags["aigc.trial_status"] == "completed"
    steps = [m.step for m in client.get_metric_history(trial.info.run_id, "epoch/val_loss")]
    assert sorted(steps) == list(range(epochs))  # each epoch once: continued, not restarted
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def _backed_up_epoch(path) -> int:
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_hyperband_continues_trials_and_logs_its_bookkeeping(store, dataset_factory):
    """max_epochs 3: three 1-epoch trials, then the best one trained on to epoch 3 from its checkpoint."""
    config = load({"filters_1": [8, 16], "dense_final": [8, 16]},
                  **{"tune.algorithm": "hyperband", "tune.epochs": 3, "tune.max_trials": 4})
    result = tune(dataset_factory("gic"), config)
    trials = sorted(trial_runs(store, result["run_id"]), key=lambda run: run.data.tags["aigc.trial_id"])
    assert len(trials) == result["trials"] == 4
    assert len({frozenset(run.data.params) for run in trials}) == 1
    continued = trials[-1]
    assert continued.data.params["tuner/initial_epoch"] == "1" and continued.data.params["tuner/trial_id"] != "none"
    steps = [m.step for m in MlflowClient(store).get_metric_history(continued.info.run_id, "epoch/val_loss")]
    assert sorted(steps) == [0, 1]  # epochs 2 and 3 of the search: only the ones still to go


@pytest.mark.slow
def test_bayesian_search_and_a_trial_stopped_early(store, dataset_factory):
    # A constant learning rate never improves: early stopping ends each trial after its second epoch of 3.
    config = load({"filters_1": [8, 16], "dense_final": [8, 16]},
                  **{"tune.algorithm": "bayesian", "tune.max_trials": 2, "tune.epochs": 3,
                     "train.early_stopping": {"monitor": "learning_rate", "patience": 0}})
    result = tune(dataset_factory("gic"), config)
    assert result["trials"] == 2 and 0 <= result["best_score"] <= 1
    for run in trial_runs(store, result["run_id"]):
        assert run.info.status == "FINISHED" and run.data.tags["aigc.trial_status"] == "stopped early"
        assert sorted(m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "epoch/val_loss")) == [0, 1]


@pytest.mark.parametrize("change, fragment", [
    ({"model.name": "cnn"}, "set model.name: tunable_cnn"),
    ({"tune.objective": "val_f1"}, "tune.objective"),
    ({"tune.space": {"width": [1, 2]}}, "unknown search-space key(s) width"),
    ({"tune.space": {**TINY, "padding": "valid"}}, "the first choices give no model"),
])
def test_config_mistakes_fail_before_any_run(store, dataset_factory, change, fragment):
    from aigc import config
    from aigc.errors import UserError

    overrides = {"data.image_size": 16, **change}
    with pytest.raises(UserError) as raised:
        tune(dataset_factory("gic"), config.load(CONFIG, overrides))
    assert fragment in str(raised.value)
    assert runs(store) == []


def test_a_worker_without_the_chief_run_id_is_told_what_to_set(store, dataset_factory, monkeypatch):
    from aigc.errors import UserError

    for name, value in {"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1",
                        "KERASTUNER_ORACLE_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AIGC_TUNE_PARENT_RUN_ID", raising=False)
    with pytest.raises(UserError, match="AIGC_TUNE_PARENT_RUN_ID"):
        tune(dataset_factory("gic"), load({}))


# --- distributed: a real tracking server, a chief and two workers --------------------------------


@pytest.fixture
def tracking_server(template_store, tmp_path):
    """`mlflow server` over a copy of the migrated sqlite store; yields its URI."""
    shutil.copy(template_store, tmp_path / "server.db")
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path) as server:
        yield server.uri


@pytest.mark.slow
def test_distributed_chief_and_workers_log_every_trial_once_under_one_run(tracking_server, dataset_factory,
                                                                          tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trials = 4
    overrides = {"data.image_size": 16, "data.batch_size": 16, "tune.epochs": 1, "tune.max_trials": trials,
                 "tune.retrain_epochs": 0, "tracking.log_system_metrics": False,
                 "tune.space": {**TINY, "filters_1": [8, 16], "dense_final": [8, 16]}}
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_RUN_ID"}
    env.update(MLFLOW_TRACKING_URI=tracking_server, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(free_port()))
    data = dataset_factory("gic")
    chief = tune_process(data, overrides, {**env, "KERASTUNER_TUNER_ID": "chief"})
    deadline = time.monotonic() + 120
    while not runs(tracking_server, "tune"):  # the chief prints the id too; the server is simpler to ask
        assert chief.poll() is None, chief.communicate()[0]
        assert time.monotonic() < deadline, "the chief never created its run"
        time.sleep(0.5)
    (parent,) = runs(tracking_server, "tune")
    workers = [tune_process(data, overrides, {**env, "KERASTUNER_TUNER_ID": f"tuner{i}",
                                              "AIGC_TUNE_PARENT_RUN_ID": parent.info.run_id}) for i in range(2)]
    for process in (*workers, chief):
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output[-4000:]

    (parent,) = runs(tracking_server, "tune")
    assert parent.info.status == "FINISHED"
    found = trial_runs(tracking_server, parent.info.run_id)
    assert sorted(run.data.tags["aigc.trial_id"] for run in found) == [str(i) for i in range(trials)]
    assert len(found) == len(runs(tracking_server, "trial"))  # none outside the parent
    assert {run.data.tags["aigc.tuner_id"] for run in found} <= {"tuner0", "tuner1"}
    assert all(run.info.status == "FINISHED" and "epoch/val_loss" in run.data.metrics for run in found)
    assert len({frozenset(run.data.params) for run in found}) == 1
    table = pd.read_csv(artifact(tracking_server, parent.info.run_id, "tuning/trials.csv"))
    assert sorted(table["run_id"]) == sorted(run.info.run_id for run in found)
