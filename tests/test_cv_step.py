"""The `cv` step end to end: nested fold runs, the OOF table, the fold ensemble promoted and predicting,
duplicates kept in one fold, resume after kill -9, and ensembles fitted on OOF."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import ROOT, TINY_MODEL, artifact_paths, assert_user_error, fabricate_run, runs

FOLDS = 3
CONFIG = str(ROOT / "configs/resnet20.yaml")
SMALL = f"cv.folds={FOLDS} {TINY_MODEL} train.epochs=1"


def with_duplicates(source, target):
    """A copy of a gic dataset where one train image is copied into val and another twice within train."""
    shutil.copytree(source, target)
    rows = {name: list(csv.reader(open(target / f"{name}.csv"))) for name in ("train", "val")}
    first, second = rows["train"][1], rows["train"][2]
    copies = [("train", "copy-in-val.png", first, "val"), ("train", "copy-in-train.png", second, "train")]
    for _, new_id, (image_id, label), split in copies:
        shutil.copy(target / "train_images" / image_id, target / f"{split}_images" / new_id)
        rows[split].insert(1, [new_id, label])  # at the top: smoke runs read the first rows only
    for name, table in rows.items():
        with open(target / f"{name}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(table)
    return target, {first[0]: "copy-in-val.png", second[0]: "copy-in-train.png"}


def fixes_for(data, folder):
    """Label-audit fix files for a few pooled images: two left out of training, two relabelled."""
    rows = list(csv.reader(open(data / "train.csv")))[3:7]  # smoke runs read the first rows only
    (folder / "exclude.csv").write_text("id\n" + "".join(f"{image_id}\n" for image_id, _ in rows[:2]))
    (folder / "relabel.csv").write_text("id,label\n" + "".join(f"{image_id},{(int(label) + 1) % 4}\n"
                                                                for image_id, label in rows[2:]))
    return folder / "exclude.csv", folder / "relabel.csv", {image_id: int(label) for image_id, label in rows}


@pytest.fixture(scope="module")
def crossed(module_store, dataset_factory, tmp_path_factory):
    """One smoke-sized 3-fold CV on gic data with duplicates and label fixes, then promote and predict its fold
    ensemble (~50 s on 2 cores: its tests are marked slow, in `make test`, not the edit-run loop)."""
    from click.testing import CliRunner

    from aigc.cli import main

    data, copies = with_duplicates(dataset_factory("gic"), tmp_path_factory.mktemp("dups") / "gic")
    exclude, relabel, fixed = fixes_for(data, tmp_path_factory.mktemp("fixes"))
    invoke = lambda *args: CliRunner().invoke(main, [str(a) for a in args])  # noqa: E731
    result = invoke("cv", "--data", data, "--config", CONFIG, "--smoke", "--overrides",
                    f"{SMALL} train.calibrate=temperature data.exclude_ids={exclude} data.relabel={relabel}")
    assert result.exit_code == 0, result.output
    (parent,) = runs(module_store, "cv")
    promoted = invoke("promote", "--config", CONFIG, "--run", parent.info.run_id)
    assert promoted.exit_code == 0, promoted.output
    submission = tmp_path_factory.mktemp("out") / "submission.csv"
    predicted = invoke("predict", "--data", data, "--config", CONFIG, "--out", submission)
    assert predicted.exit_code == 0, predicted.output
    return module_store, parent, data, copies, result.output, promoted.output, submission, fixed


@pytest.mark.slow
def test_parent_has_one_finished_nested_run_per_fold(crossed):
    uri, parent, *_ = crossed
    folds = runs(uri, "fold")
    assert sorted(int(r.data.tags["aigc.fold"]) for r in folds) == list(range(FOLDS))
    for run in folds:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert "evaluation/test_probabilities.csv" in artifact_paths(uri, run.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["aigc.model_uri"].startswith("models:/")
    # train.calibrate: temperature is fitted once, on the OOF probabilities; the folds leave it to the parent
    assert "calibration_temperature" in parent.data.metrics
    assert "evaluation/reliability_temperature.png" in artifact_paths(uri, parent.info.run_id, "evaluation")
    assert not any("calibration_temperature" in run.data.metrics for run in folds)
    description = json.loads((Path(mlflow.artifacts.download_artifacts(
        parent.data.tags["aigc.model_uri"], tracking_uri=uri)) / "ensemble.json").read_text())
    assert description["temperature"] == pytest.approx(parent.data.metrics["calibration_temperature"])


@pytest.mark.slow
def test_oof_table_covers_every_pooled_id_once_and_duplicates_share_a_fold(crossed):
    uri, parent, data, copies, *_ = crossed
    client = MlflowClient(uri)
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "evaluation/val_probabilities.csv"))
    assigned = pd.read_csv(client.download_artifacts(parent.info.run_id, "cv/folds.csv"))
    assert table["id"].is_unique and sorted(table["id"]) == sorted(assigned["id"])
    assert len(table) == int(parent.data.params["pooled_images"])
    fold_of = dict(zip(assigned["id"], assigned["fold"]))
    assert dict(zip(table["id"], table["fold"])) == fold_of  # each id predicted by the fold that held it out
    for original, copy in copies.items():
        assert fold_of[original] == fold_of[copy], (original, copy)
    for fold in range(FOLDS):  # every class is validated in every fold (stratified)
        assert set(assigned[assigned["fold"] == fold]["label"]) == set(assigned["label"])


@pytest.mark.slow
def test_parent_logs_oof_scores_spread_tta_and_test_average(crossed):
    uri, parent, data, *_ = crossed
    metrics = MlflowClient(uri).get_run(parent.info.run_id).data.metrics
    for key in ("final_accuracy", "final_f1_macro", "final_f1_weighted", "final_log_loss", "final_images",
                "fold_accuracy_mean", "fold_accuracy_std", "final_f1_weighted_with_tta",
                "final_f1_weighted_without_tta", "final_f1_weighted_with_tta_in_sample", "final_f1_weighted_in_sample",
                "final_f1_weighted_low", "final_f1_weighted_high", "uncalibrated_ece", "calibrated_ece",
                "calibrated_ece_in_sample"):
        assert key in metrics, key
    # TTA is chosen on all the OOF predictions it is shipped with: there it never scores below plain prediction;
    # the score that counts is each fold's, by a set chosen on the other folds (cross-fitted)
    assert metrics["final_f1_weighted_with_tta_in_sample"] >= metrics["final_f1_weighted_without_tta"]
    assert metrics["final_f1_weighted"] == pytest.approx(metrics["final_f1_weighted_with_tta"])
    assert metrics["final_images"] == int(parent.data.params["pooled_images"])
    assert parent.data.tags["aigc.score_on"] == "out-of-fold" and parent.data.tags["aigc.score_fit"] == "cross-fitted"
    paths = artifact_paths(uri, parent.info.run_id)
    for path in ("evaluation/confusion_matrix.png", "evaluation/confusion_examples.html", "tta/trials.csv",
                 "tta/cross_fitted.csv", "cv/oof_without_tta.csv", "cv/test_probabilities.csv", "config.yaml"):
        assert path in paths, path
    per_fold = pd.read_csv(MlflowClient(uri).download_artifacts(parent.info.run_id, "tta/cross_fitted.csv"))
    assert list(per_fold["part"]) == list(range(FOLDS)) and per_fold["images"].sum() == metrics["final_images"]
    # each fold's score: a table, a figure, and a curve across the folds (the charts' "fold" section)
    scores = pd.read_csv(MlflowClient(uri).download_artifacts(parent.info.run_id, "cv/fold_scores.csv"))
    assert list(scores["fold"]) == list(range(FOLDS)) and "cv/fold_scores.png" in paths
    history = MlflowClient(uri).get_metric_history(parent.info.run_id, "fold/f1_weighted")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [
        (row.fold, round(row.f1_weighted, 6)) for row in scores.itertuples()]
    assert metrics["fold_f1_weighted_mean"] == pytest.approx(scores["f1_weighted"].mean())
    test = pd.read_csv(MlflowClient(uri).download_artifacts(parent.info.run_id, "cv/test_probabilities.csv"))
    expected = [row["Image"] for row in csv.DictReader(open(data / "test.csv"))]
    assert list(test["id"]) == expected
    note = parent.data.tags["mlflow.note.content"]
    assert "cross-validation" in note and "out-of-fold predictions of" in note and "95 % CI" in note


@pytest.mark.slow
def test_label_fixes_train_the_folds_but_every_oof_image_keeps_its_original_label(crossed):
    uri, parent, *_, fixed = crossed
    client = MlflowClient(uri)
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "evaluation/val_probabilities.csv"))
    labels = dict(zip(table["id"].astype(str), table["label"]))
    assert all(labels[image_id] == label for image_id, label in fixed.items())  # scored against the original
    folds = pd.read_csv(client.download_artifacts(parent.info.run_id, "cv/folds.csv"))
    assert dict(zip(folds["id"].astype(str), folds["label"])) == labels
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert {"final_accuracy_fixed_labels", "final_f1_weighted_fixed_labels"} <= set(metrics)
    fold_runs = runs(uri, "fold")
    assert all(run.data.tags["aigc.exclude_ids"] and run.data.tags["aigc.relabel"] for run in fold_runs)
    excluded = list(fixed)[:2]
    for run in fold_runs:  # each fold trained on its training rows less the excluded images (a slice of them chose)
        fold = int(run.data.tags["aigc.fold"])
        rows = {i.tags[0].value: json.loads(i.dataset.profile)["num_rows"] for i in run.inputs.dataset_inputs}
        others = folds[folds["fold"] != fold]["id"].astype(str)
        assert rows["training"] == len(others) - sum(i in set(others) for i in excluded)
        assert 0 < rows["selection"] < rows["training"]
        assert rows["validation"] == int((folds["fold"] == fold).sum())  # every held-out image, fixed or not


@pytest.mark.slow
def test_fold_ensemble_is_promoted_and_predicts_the_exact_submission(crossed):
    uri, parent, data, _, output, promoted, submission, _ = crossed
    assert "PROMOTED" in promoted
    version = MlflowClient(uri).get_model_version_by_alias("gic-classifier", "champion")
    assert version.run_id == parent.info.run_id
    rows = list(csv.reader(open(submission)))
    assert rows[0] == ["Image", "Class"]
    assert [r[0] for r in rows[1:]] == [row["Image"] for row in csv.DictReader(open(data / "test.csv"))]


@pytest.mark.slow
def test_leaderboard_ranks_the_cv_run_among_runs_scored_out_of_fold(crossed, cli):
    uri, parent, *_ = crossed
    table = cli("runs", "--config", CONFIG)
    blocks = table.output.strip().split("\n\n")
    (block,) = [b for b in blocks if parent.info.run_id[:8] in b]
    title, header, *rows = block.splitlines()
    assert title.startswith("f1_weighted, scored on out-of-fold predictions of ") and "pooled images" in title
    assert header.split()[4:7] == ["f1_weighted", "95%_interval", "vs_leader"]
    (row,) = [r for r in rows if parent.info.run_id[:8] in r]
    assert float(row.split()[4]) == pytest.approx(parent.data.metrics["final_f1_weighted"], abs=1e-4)
    low, high = map(float, row.split()[5].split("-"))
    assert low <= float(row.split()[4]) <= high


@pytest.mark.slow
def test_pseudo_labels_and_an_ensemble_fitted_on_two_cv_runs_oof(crossed, cli):
    """A second CV of the same pool (2 folds, one pseudo-label round), then a greedy ensemble of both
    CV runs fitted on their aligned OOF predictions; a CV run of another pool is refused."""
    uri, first, data, *_ = crossed
    second = cli("cv", "--data", data, "--config", CONFIG, "--smoke", "--overrides",
                 f"cv.folds=2 {TINY_MODEL} train.epochs=1 cv.pseudo_label.threshold=0.51")
    assert second.exit_code == 0, second.output
    second_run = runs(uri, "cv")[0]
    client = MlflowClient(uri)
    counts = pd.read_csv(client.download_artifacts(second_run.info.run_id, "pseudo_labels/round1.csv"))
    assert list(counts["fold"]) == [0, 1] and set(counts["threshold"]) == {0.51}
    assert {f"class_{c}" for c in range(4)} <= set(counts.columns)
    folds = [r for r in runs(uri, "fold") if r.data.tags["mlflow.parentRunId"] == second_run.info.run_id]
    assert sorted((int(r.data.tags["aigc.fold"]), int(r.data.tags["aigc.round"])) for r in folds) == \
        [(0, 0), (0, 1), (1, 0), (1, 1)]
    tests = sum(1 for _ in csv.DictReader(open(data / "test.csv")))
    assert all(0 <= n <= tests for n in counts["images"])  # pseudo labels come from the test split only

    members = f"{first.info.run_id} {second_run.info.run_id}"
    fitted = cli("ensemble", "--data", data, "--config", CONFIG, "--members", members, "--method", "greedy")
    assert fitted.exit_code == 0, fitted.output
    run = runs(uri, "ensemble")[0]
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "evaluation/val_probabilities.csv"))
    assert len(table) == int(first.data.params["pooled_images"])  # fitted on every OOF row, not the val split
    best_member = max(client.get_run(r).data.metrics["final_f1_weighted"] for r in members.split())
    # greedy never scores below its best member on the rows it was fitted on; its real score is cross-fitted
    assert run.data.metrics["final_f1_weighted_in_sample"] >= best_member - 1e-9
    assert run.data.tags["aigc.score_on"] == "out-of-fold" and run.data.tags["aigc.score_fit"] == "cross-fitted"

    # a CV run of another pool (as cv.pool_validation=false leaves one: its OOF rows lack the validation
    # images), made through the client: only its records are read
    oof = pd.read_csv(client.download_artifacts(first.info.run_id, "evaluation/val_probabilities.csv"))
    val_ids = {row["Image"] for row in csv.DictReader(open(data / "val.csv"))}
    other = oof[~oof["id"].isin(val_ids)]
    assert 0 < len(other) < len(oof)
    other_id = fabricate_run("cv", other["id"], other["label"], other[[c for c in oof if c.startswith("p_")]],
                             experiment=client.get_experiment(first.info.experiment_id).name,
                             registered_model="gic-classifier", metric="f1_weighted", rows="out-of-fold",
                             fit="cross-fitted", digest="train-pool")
    refused = cli("ensemble", "--data", data, "--config", CONFIG, "--members", f"{first.info.run_id} {other_id}")
    assert_user_error(refused, "different out-of-fold ids")


def test_cv_is_refused_without_enough_images_per_class(store, dataset_factory, cli):
    data = dataset_factory("gic")
    result = cli("cv", "--data", data, "--config", CONFIG, "--smoke", "--overrides", "cv.folds=40")
    assert_user_error(result, "cv.folds=40", "class")


@pytest.mark.slow
def test_killed_cv_resumes_and_logs_every_fold_once(store, dataset_factory, tmp_path, cli):
    data = dataset_factory("deepfake")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "aigc.cli", "cv", "--data", str(data), "--config",
               str(ROOT / "configs/deepfake_attempt1.yaml"), "--smoke", "--overrides",
               f"cv.folds={FOLDS} train.epochs=1 data.image_size=32 {TINY_MODEL}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    client, deadline = MlflowClient(store), time.monotonic() + 600
    while time.monotonic() < deadline:  # kill -9 once fold 0 has finished and fold 1 has started
        found = runs(store, "fold")
        if any(r.info.status == "FINISHED" for r in found) and len(found) >= 2:
            break
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (parent,) = runs(store, "cv")
    resumed = cli(*command[3:], "--resume", parent.info.run_id)  # in this process, in the same folder
    assert resumed.exit_code == 0, resumed.output
    live = [r for r in runs(store, "fold") if r.info.lifecycle_stage == "active"]
    assert sorted(int(r.data.tags["aigc.fold"]) for r in live) == list(range(FOLDS))
    assert all(r.info.status == "FINISHED" for r in live)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and "aigc.model_uri" in parent.data.tags
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "evaluation/val_probabilities.csv"))
    assert table["id"].is_unique and len(table) == int(parent.data.params["pooled_images"])

    # the deepfake fold ensemble is promoted and writes the competition's exact submission
    config = str(ROOT / "configs/deepfake_attempt1.yaml")
    promoted = cli("promote", "--config", config, "--run", parent.info.run_id)
    assert promoted.exit_code == 0 and "PROMOTED" in promoted.output, promoted.output
    out = tmp_path / "submission.csv"
    predicted = cli("predict", "--data", data, "--config", config, "--out", out)
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["image_id", "label"]
    assert [r[0] for r in rows[1:]] == [r["image_id"] for r in csv.DictReader(open(data / "sample_submission.csv"))]
