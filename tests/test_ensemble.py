"""Ensembles: votes and tie-breaks, greedy selection, a registered ensemble as champion, CSV merging."""

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from aigc.ensemble import combine, greedy_weights
from aigc.evaluation import apply_temperature
from aigc.inference import load_model
from conftest import ROOT, artifact_paths, assert_user_error, fabricate_run, runs, untrained

NAME = "ensemble-classifier"
COMMON = f"tracking.registered_model={NAME} tracking.experiment=ensemble-tests train.epochs=2 data.image_size=32"


def aigc(*args):
    from aigc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_hard_vote_ties_break_by_summed_probability_then_class_order():
    a = np.array([[0.6, 0.4, 0.0], [0.5, 0.5, 0.0]])
    b = np.array([[0.1, 0.9, 0.0], [0.0, 0.5, 0.5]])
    scores = combine([a, b], [1, 1], "hard")
    # image 0: one vote each for 0 and 1; class 1 has the larger summed probability (1.3 vs 0.7)
    # image 1: votes for 0 (argmax of a tie picks the first) and 1; summed 0.5 vs 1.0 -> class 1
    assert scores.argmax(axis=1).tolist() == [1, 1]
    assert np.allclose(scores.sum(axis=1), 1)
    even = np.array([[0.5, 0.5]])
    assert combine([even, even[:, ::-1]], [1, 1], "hard").argmax(axis=1).tolist() == [0]
    assert (combine([a, b], [1, 1], "hard") == scores).all()  # deterministic


def test_greedy_selection_never_scores_below_its_best_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    members = []
    for skill in (0.5, 0.45, 0.4):  # each member right on a different random subset
        probabilities = rng.dirichlet(np.ones(5), 200)
        right = rng.random(200) < skill
        probabilities[right, labels[right]] += 1
        members.append(probabilities / probabilities.sum(axis=1, keepdims=True))
    accuracy = lambda y, p: float(np.mean(y == p))  # noqa: E731
    weights = greedy_weights(members, labels, accuracy)
    ensemble = combine(members, weights, "soft").argmax(axis=1)
    assert accuracy(labels, ensemble) >= max(accuracy(labels, m.argmax(axis=1)) for m in members)
    assert np.isclose(weights.sum(), 1) and (weights >= 0).all()


@pytest.fixture(scope="module")
def members(module_store, dataset_factory):
    """Three models of different families on the same gic-style data: a calibrated CNN trained for real, and a
    ResNet and an LSTM logged untrained with their validation probabilities (an ensemble only reads records)."""
    data = dataset_factory("gic", classes=4, per_class=40)
    result = aigc("train", "--data", data, "--config", ROOT / "configs/demo_cnn.yaml", "--overrides",
                  f"{COMMON} train.calibrate=temperature")
    assert result.exit_code == 0, result.output
    trained = MlflowClient(module_store).get_run(result.output.split("train run ")[1].split(":")[0])
    logged = []
    for family, params in (("resnet", {"depth": 8}), ("lstm", {"units": [16, 16]})):
        model, val, probabilities = untrained(data, COMMON, family, params)
        logged.append(fabricate_run("train", val.ids, val.labels, probabilities, experiment="ensemble-tests",
                                    registered_model=NAME, metric="f1_weighted", name=f"untrained-{family}",
                                    digest=trained.data.tags["aigc.val_digest"], model=model,
                                    tags={"aigc.model_family": family, "aigc.kind": "train"}))
    return {"uri": module_store, "data": data, "runs": [logged[0], trained.info.run_id, logged[1]]}


@pytest.mark.slow
def test_ensemble_of_three_families_is_registered_promoted_and_predicts(members, tmp_path):
    uri, data = members["uri"], members["data"]
    result = aigc("ensemble", "--data", data, "--config", ROOT / "configs/demo.yaml", "--overrides",
                  f"{COMMON} train.calibrate=temperature", "--members", " ".join(members["runs"]), "--method", "greedy")
    assert result.exit_code == 0, result.output
    (run,) = runs(uri, "ensemble")
    client = MlflowClient(uri)
    # train.calibrate: temperature: the ensemble stores the T it fitted on validation in its description
    description = json.loads((Path(mlflow.artifacts.download_artifacts(
        run.data.tags["aigc.model_uri"], tracking_uri=uri)) / "ensemble.json").read_text())
    assert description["temperature"] == pytest.approx(run.data.metrics["calibration_temperature"])
    assert {"calibrated_ece", "calibrated_log_loss"} <= set(run.data.metrics)
    member_scores = [client.get_run(r).data.metrics["final_f1_weighted"] for r in members["runs"]]
    # Greedy selection is made on the validation set, so there it scores at least as well as its best member;
    # its score is each part of the validation split scored by an ensemble fitted on the others
    assert run.data.metrics["final_f1_weighted_in_sample"] >= max(member_scores) - 1e-9
    assert run.data.tags["aigc.score_on"] == "validation" and run.data.tags["aigc.score_fit"] == "cross-fitted"
    assert "cross-fitted" in run.data.tags["mlflow.note.content"] and "in_sample" in run.data.tags[
        "mlflow.note.content"]
    artifacts = set(artifact_paths(uri, run.info.run_id))
    assert {"ensemble/members.csv", "ensemble/members_vs_ensemble.png", "ensemble/weights.json",
            "evaluation/confusion_matrix.png", "evaluation/per_class.csv", "evaluation/val_probabilities.csv"} <= artifacts
    families = {client.get_run(r).data.tags["aigc.model_family"] for r in members["runs"]}
    assert families == {"resnet", "cnn", "lstm"}

    promoted = aigc("promote", "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON, "--run", run.info.run_id)
    assert "PROMOTED" in promoted.output, promoted.output
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == run.info.run_id and champion.tags["aigc.kind"] == "ensemble"

    out = tmp_path / "submission.csv"
    predicted = aigc("predict", "--data", data, "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON,
                     "--out", out)
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Image", "Class"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in list(csv.reader((data / "test.csv").open()))[1:]]
    # the calibrated ensemble's probabilities behind the submission, logged on the predict run
    predict_run = runs(uri, "predict")[0]
    table = pd.read_csv(client.download_artifacts(predict_run.info.run_id, "test_probabilities.csv"))
    probabilities = table.filter(like="p_").to_numpy()
    assert list(table["id"]) == [r[0] for r in rows[1:]] and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    champion_model = load_model(champion.source)
    assert champion_model.temperature == pytest.approx(description["temperature"])


@pytest.mark.slow
def test_a_calibrated_train_run_ships_its_temperature_applied_last(members):
    """train.calibrate: temperature: the run's model is its Keras model with T (and its TTA set, if one helped),
    the probabilities averaged over the views first, divided by T last; the class never changes."""
    from aigc.inference import predict_probabilities

    client = MlflowClient(members["uri"])
    run = client.get_run(members["runs"][1])  # demo_cnn, train.calibrate=temperature
    temperature = run.data.metrics["calibration_temperature"]
    assert temperature > 0 and {"calibrated_ece", "calibrated_brier", "calibrated_log_loss",
                                "uncalibrated_ece"} <= set(run.data.metrics)
    assert "evaluation/reliability_temperature.png" in artifact_paths(members["uri"], run.info.run_id, "evaluation")
    assert f"T = {temperature:.3f}" in run.data.tags["mlflow.note.content"]
    shipped = load_model(run.data.tags["aigc.model_uri"])  # a description: safe, nothing from the artifact runs
    bare = load_model(run.data.tags["aigc.keras_model_uri"])
    assert shipped.temperature == pytest.approx(temperature) and shipped.members[0].count_params() == \
        bare.count_params()
    images = np.random.default_rng(0).integers(0, 256, (6, *bare.input_shape[1:])).astype(np.uint8)
    views = list(shipped.tta or ["identity"])
    averaged = predict_probabilities(bare, images, 4, views)
    written = predict_probabilities(shipped, images, 4)
    assert np.allclose(written, apply_temperature(averaged, temperature), atol=1e-5)
    assert (written.argmax(axis=1) == averaged.argmax(axis=1)).all()


@pytest.mark.slow
def test_top_k_picks_the_best_finished_runs_by_the_configured_metric(members):
    result = aigc("ensemble", "--data", members["data"], "--config", ROOT / "configs/demo.yaml",
                  "--overrides", f"{COMMON} tracking.metric=f1_macro", "--top-k", "2", "--method", "soft")
    assert result.exit_code == 0, result.output
    run = runs(members["uri"], "ensemble")[0]
    client = MlflowClient(members["uri"])
    by_f1_macro = sorted(members["runs"], key=lambda r: -client.get_run(r).data.metrics["final_f1_macro"])
    # every candidate is listed; choosing the top 2 is part of the (cross-fitted) fit: the others weigh 0
    assert sorted(run.data.params["members"].split()) == sorted(members["runs"])
    assert run.data.params["metric"] == "f1_macro" and run.data.params["top_k"] == "2"
    weights = json.loads(Path(client.download_artifacts(run.info.run_id, "ensemble/weights.json")).read_text())
    assert {r for r, w in weights["weights"].items() if w > 0} == set(by_f1_macro[:2])


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def test_csv_mode_majority_votes_with_earliest_file_breaking_ties(tmp_path):
    header = ["image_id", "label"]
    a = _write(tmp_path / "a.csv", [header, ["x", "1"], ["y", "2"], ["z", "0"]])
    b = _write(tmp_path / "b.csv", [header, ["y", "3"], ["x", "1"], ["z", "4"]])
    c = _write(tmp_path / "c.csv", [header, ["x", "0"], ["y", "3"], ["z", "2"]])
    out = tmp_path / "merged.csv"
    result = aigc("ensemble", "--csv", a, b, c, "--out", out)
    assert result.exit_code == 0, result.output
    # x: 1,1,0 -> 1; y: 2,3,3 -> 3; z: 0,4,2 all tied -> a.csv's 0; rows in the first file's order
    assert out.read_text() == "image_id,label\nx,1\ny,3\nz,0\n"


def test_csv_mode_rejects_files_with_different_ids(tmp_path):
    a = _write(tmp_path / "a.csv", [["Image", "Class"], ["p.png", "1"], ["q.png", "2"]])
    b = _write(tmp_path / "b.csv", [["Image", "Class"], ["p.png", "1"], ["r.png", "2"]])
    out = tmp_path / "merged.csv"
    result = aigc("ensemble", "--csv", a, b, "--out", out)
    assert_user_error(result, "b.csv", "ids differ", "r.png", "q.png")
    assert not out.exists()
