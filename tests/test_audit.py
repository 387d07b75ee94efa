"""Data audits against known truth: generated data with flipped labels and injected near-duplicates.

The label audit is tested on real out-of-fold probabilities of a fast real model (logistic
regression on hue histograms of the generated PNGs, sklearn's cross_val_predict), logged as
a cv run's OOF table in a real MLflow store: a Keras CV at smoke size is too weak to rank
label noise, and a useful one would take minutes on this machine.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from conftest import artifact_paths, assert_user_error, runs

from aigc import config as config_module
from aigc.data import load_data
from aigc.data.layouts import open_dataset


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    from aigc.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("noisy") / "data", classes=4, per_class=100, size=32, seed=5,
                        label_noise=0.05)


def _hue_features(paths):
    from PIL import Image

    features = []
    for path in paths:
        hsv = np.asarray(Image.open(path).convert("HSV"), dtype=np.float32) / 255
        weight = (hsv[..., 1] * hsv[..., 2]) ** 4  # the object is the most saturated, brightest thing
        histogram = np.histogram(hsv[..., 0], bins=36, range=(0, 1), weights=weight)[0]
        features.append(histogram / max(histogram.sum(), 1e-9))
    return np.array(features)


def _log_oof_run(dataset, kind="cv"):
    """A finished run holding real out-of-fold probabilities (id, label, fold, p_*), as the cv step logs them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from aigc import tracking

    splits = [dataset.splits["train"], dataset.splits["val"]]
    ids = [i for s in splits for i in s.ids]
    labels = np.concatenate([s.labels for s in splits])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    probabilities = cross_val_predict(LogisticRegression(max_iter=2000, C=10),
                                      _hue_features([p for s in splits for p in s.paths]), labels, cv=folds,
                                      method="predict_proba")
    fold = np.zeros(len(ids), dtype=int)
    for n, (_, rows) in enumerate(folds.split(np.zeros(len(ids)), labels)):
        fold[rows] = n
    table = pd.DataFrame({"id": ids, "label": labels, "fold": fold,
                          **{f"p_{c}": probabilities[:, c] for c in range(probabilities.shape[1])}})
    with tracking.run(kind, f"oof-{kind}") as active:
        tracking.log_table(table, "evaluation/val_probabilities.csv")
        tracking.set_tags({"aigc.model_uri": "models:/m-none"})
        return active.info.run_id


@pytest.fixture(scope="module")
def label_audit(noisy, module_store):
    from click.testing import CliRunner

    from aigc.cli import main

    dataset = open_dataset(noisy, "auto", 0, 0.1)
    cv_run = _log_oof_run(dataset)
    result = CliRunner().invoke(main, ["audit", "labels", "--data", str(noisy), "--run", cv_run])
    assert result.exit_code == 0, result.output
    audit_run = runs(module_store, "audit")[0]
    return {"cv_run": cv_run, "run": audit_run, "uri": module_store, "data": noisy, "dataset": dataset}


def test_make_dataset_writes_the_faults_it_injected(cli, tmp_path):
    result = cli("make-dataset", "--out", tmp_path / "d", "--classes", "3", "--per-class", "20", "--size", "32",
                 "--label-noise", "0.1", "--near-duplicates", "4")
    assert result.exit_code == 0, result.output
    flipped, copies = _read(tmp_path / "d/flipped_ids.csv"), _read(tmp_path / "d/near_duplicates.csv")
    assert len(flipped) == 6 + 1 and all(r["true_label"] != r["given_label"] for r in flipped)  # 10% of 60 + of 12
    labels = {r["Image"]: r["Class"] for name in ("train", "val") for r in _read(tmp_path / f"d/{name}.csv")}
    assert all(labels[r["id"]] == r["given_label"] for r in flipped)
    assert len(copies) == 4 and {r["copy"].split("/")[0] for r in copies} == {"val", "test"}
    test_ids = {r["Image"] for r in _read(tmp_path / "d/test.csv")}
    assert {r["copy_id"] for r in copies if r["copy"].startswith("test/")} <= test_ids
    assert_user_error(cli("make-dataset", "--out", tmp_path / "f", "--layout", "folders", "--label-noise", "0.1"),
                      "csv layout")


def test_label_audit_finds_the_flipped_labels(label_audit):
    from mlflow import MlflowClient

    client, run = MlflowClient(label_audit["uri"]), label_audit["run"]
    assert run.data.tags["aigc.cv_run"] == label_audit["cv_run"]
    assert run.data.tags["mlflow.parentRunId"] == label_audit["cv_run"]
    assert {"audit/label_suspects.csv", "audit/label_suspects_per_class.csv", "audit/label_suspects.html",
            "fixes/exclude_ids.csv", "fixes/relabel.csv"} <= set(artifact_paths(label_audit["uri"], run.info.run_id))
    suspects = pd.read_csv(client.download_artifacts(run.info.run_id, "audit/label_suspects.csv"), dtype={"id": str})
    assert list(suspects.columns[:6]) == ["rank", "id", "split", "given_label", "suggested_label", "self_confidence"]
    assert suspects["self_confidence"].is_monotonic_increasing
    flipped = {r["id"]: r for r in _read(label_audit["data"] / "flipped_ids.csv")}
    found = set(suspects["id"]) & set(flipped)
    assert len(found) >= 0.8 * len(flipped), (len(found), len(flipped))
    assert len(found) >= 0.5 * len(suspects), (len(found), len(suspects))
    assert run.data.metrics["label_suspects"] == len(suspects)
    page = open(client.download_artifacts(run.info.run_id, "audit/label_suspects.html")).read()
    assert "data:image/png;base64," in page and "<script" not in page and "-&gt; suggested" in page


def test_label_audit_refuses_probabilities_that_are_not_out_of_fold(label_audit, cli):
    train_run = _log_oof_run(label_audit["dataset"], kind="train")
    assert_user_error(cli("audit", "labels", "--data", label_audit["data"], "--run", train_run),
                      train_run, "is a train run", "aigc cv")


def test_fix_files_change_the_training_rows_only_and_their_digest(label_audit, tmp_path):
    from mlflow import MlflowClient

    from aigc import tracking
    from aigc.data.fixes import read_fixes
    from aigc.data.parts import Part

    client, run_id = MlflowClient(label_audit["uri"]), label_audit["run"].info.run_id
    exclude = client.download_artifacts(run_id, "fixes/exclude_ids.csv", str(tmp_path))
    relabel = client.download_artifacts(run_id, "fixes/relabel.csv", str(tmp_path))
    base = config_module.load(None, f"data.cache_dir={tmp_path / 'cache'}", False)
    dataset, cache = load_data(label_audit["data"], base.data, progress=False)
    fixed_config = config_module.load(None, f"data.cache_dir={tmp_path / 'cache'} data.exclude_ids={exclude}", False)
    fixed_dataset, fixed_cache = load_data(label_audit["data"], fixed_config.data, progress=False)
    # the data as read is the same: validation keeps every image and its original label
    assert fixed_cache.digest == cache.digest and fixed_dataset.splits["val"].ids == dataset.splits["val"].ids
    train, val = (Part(name, cache.images(name), dataset.splits[name].labels, dataset.splits[name].ids,
                       cache.split_digest(name)) for name in ("train", "val"))
    dropped = set(pd.read_csv(exclude, dtype=str)["id"])
    trained = read_fixes(dataset, str(exclude)).training(train)
    assert not set(trained.ids) & dropped and set(trained.ids) == set(train.ids) - dropped
    assert trained.digest != train.digest and len(trained.images) == len(trained.ids)
    relabelled = read_fixes(dataset, relabel=str(relabel)).training(train)
    flipped = {r["id"]: int(r["true_label"]) for r in _read(label_audit["data"] / "flipped_ids.csv")}
    repaired = sum(relabelled.labels[n] == flipped[i] for n, i in enumerate(relabelled.ids) if i in flipped)
    assert repaired >= 0.8 * sum(i in flipped for i in train.ids) and relabelled.digest != train.digest
    rows, labels = read_fixes(dataset, str(exclude), str(relabel)).labels(val.ids, val.labels)  # scored both ways
    assert len(rows) == len(set(val.ids) - dropped)
    with tracking.run("preprocess", "fixed"):  # the run records which fix file its data had
        tracking.log_config(fixed_config)
    assert runs(label_audit["uri"], "preprocess")[0].data.tags["aigc.exclude_ids"].startswith(str(exclude))


def test_a_bad_fix_file_is_one_clear_message(label_audit, cli, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id\nnot-an-image.png\n")
    assert_user_error(cli("preprocess", "--data", label_audit["data"], "--overrides", f"data.exclude_ids={bad}"),
                      str(bad), "row 2", "not-an-image.png")


@pytest.mark.parametrize("injected", [12, 0])
def test_preprocess_finds_the_injected_near_duplicates_and_nothing_on_clean_data(injected, cli, store, tmp_path):
    from mlflow import MlflowClient

    from aigc.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "d", classes=4, per_class=40, size=32, seed=2, near_duplicates=injected)
    result = cli("preprocess", "--data", data)
    assert result.exit_code == 0, result.output
    run = runs(store, "preprocess")[0]
    table = pd.read_csv(MlflowClient(store).download_artifacts(run.info.run_id, "near_duplicates.csv"), dtype=str)
    groups = {frozenset(f"{r.split}/{r.id}" for r in members.itertuples()) for _, members in table.groupby("group")}
    counts = {key: int(value) for key, value in run.data.params.items() if key.startswith("near_duplicate_")}
    if not injected:
        assert not groups and counts["near_duplicate_groups"] == 0
        return
    pairs = [{r["source"], r["copy"]} for r in _read(data / "near_duplicates.csv")]
    found = sum(any(pair <= group for group in groups) for pair in pairs)
    assert found >= 0.95 * len(pairs)
    assert counts["near_duplicate_groups"] == len(groups) <= len(pairs)  # nothing else grouped
    assert counts.get("near_duplicate_groups_train_val", 0) + counts.get("near_duplicate_groups_test_train", 0) \
        == len(groups)
    assert "near_duplicates.html" in artifact_paths(store, run.info.run_id)
    from aigc import folds

    dataset, cache = load_data(data, config_module.load(None, "", False).data, progress=False)
    pool = folds.pool_splits(dataset, cache, True, near_duplicate_distance=4)  # what cv cuts folds from
    group = dict(zip(pool.ids, pool.groups))
    copies = [(r["source"].split("/", 1)[1], r["copy_id"]) for r in _read(data / "near_duplicates.csv")
              if r["copy"].startswith("val/")]
    assert copies and all(group[source] == group[copy] for source, copy in copies)


def test_calibration_is_logged_and_temperature_scaling_fixes_an_overconfident_model(label_audit, noisy):
    from mlflow import MlflowClient

    from aigc import evaluation as ev
    from aigc import tracking

    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    # Overconfident for real: a nearly unregularised linear model on raw 8x8 pixels overfits its
    # training folds and is sure of its held-out predictions, half of them wrong.
    dataset = label_audit["dataset"]
    split = dataset.splits["train"]
    pixels = np.array([np.asarray(Image.open(p).convert("RGB").resize((8, 8)), np.float32).ravel() / 255
                       for p in split.paths])
    labels = split.labels
    overconfident = cross_val_predict(LogisticRegression(C=1e4, max_iter=3000), pixels, labels, cv=4,
                                      method="predict_proba")
    fit, held_out = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    temperature = ev.fit_temperature(overconfident[fit], labels[fit])
    calibrated = ev.apply_temperature(overconfident, temperature)
    assert temperature > 1
    before, after = (ev.calibration_metrics(p[held_out], labels[held_out]) for p in (overconfident, calibrated))
    assert after["ece"] < 0.5 * before["ece"] and after["log_loss"] < before["log_loss"], (before, after)
    assert (calibrated.argmax(axis=1) == overconfident.argmax(axis=1)).all()  # calibration never changes a class

    # every train/ensemble/cv run's evaluation carries the calibration (tracking.stage_evaluation)
    tracking.connect(config_module.load(None, "").tracking)  # this module's store, whatever an earlier test chose
    with tracking.run("train", "calibration") as active:
        box = tracking.Outbox(active.info.run_id)
        tracking.stage_evaluation(box, ev.evaluate(overconfident, labels, dataset.class_names), dataset.class_names,
                                  np.zeros((len(labels), 8, 8, 3), np.uint8), labels, list(split.ids), overconfident)
        tracking.ship(box)
    run = MlflowClient(label_audit["uri"]).get_run(active.info.run_id)
    assert run.data.metrics["calibration_ece"] == pytest.approx(
        ev.expected_calibration_error(overconfident, labels))
    assert {"calibration_brier", "final_log_loss"} <= set(run.data.metrics)
    assert "evaluation/reliability.png" in artifact_paths(label_audit["uri"], run.info.run_id, "evaluation")


def test_a_stored_temperature_is_applied_when_the_model_predicts(store):
    import keras

    from aigc import ensemble, inference, tracking
    from aigc.errors import UserError
    from aigc.evaluation import apply_temperature

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(keras.layers.Rescaling(4.0)(inputs)))
    member = keras.Model(inputs, outputs)  # a real model; its weights do not matter here
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    tracking.connect(config_module.load(None, "", False).tracking)  # this test's store
    with tracking.run("cv", "calibrated"):
        member_uri = tracking.log_keras_model(member, images[:2].astype("float32"))
        plain = tracking.log_ensemble_model(ensemble.fold_ensemble([member_uri], ["r"]))
        calibrated = tracking.log_ensemble_model(ensemble.fold_ensemble([member_uri], ["r"], temperature=2.5))
        broken = tracking.log_ensemble_model({**ensemble.fold_ensemble([member_uri], ["r"]), "temperature": "hot"})
    raw = inference.predict_probabilities(inference.load_model(plain), images, 4)
    scaled = inference.predict_probabilities(inference.load_model(calibrated), images, 4)
    np.testing.assert_allclose(scaled, apply_temperature(raw, 2.5), rtol=1e-5, atol=1e-6)
    assert scaled.max(axis=1).mean() < raw.max(axis=1).mean()  # softer, same classes
    assert (scaled.argmax(axis=1) == raw.argmax(axis=1)).all()
    with pytest.raises(UserError, match="temperature must be a positive number, got 'hot'"):
        inference.load_model(broken)
