"""The train step: real (smoke-sized) training, and everything a user finds in the MLflow run."""

import json
import socket
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import EPOCH_KEYS, ROOT, TINY_MODEL, artifact_paths, assert_user_error, runs

EPOCHS = 3


@pytest.fixture(scope="module")
def trained(module_store, dataset_factory):
    """One smoke-sized run of the seed's ResNet20 recipe on gic-style data, inspected by the tests below: its
    augmentation, inner selection, early stopping and plateau, with the smallest ResNet (depth 8). Tracing a depth-20
    train step costs ~10 s more on 2 cores, and the seed's own parameter count is test_models' to check."""
    from aigc.cli import main
    from click.testing import CliRunner

    data = dataset_factory("gic")
    with pytest.MonkeyPatch.context() as patch:  # a sample a second: a smoke run lasts seconds, MLflow's default 10 s
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        result = CliRunner().invoke(main, ["train", "--data", str(data), "--config",
                                           str(ROOT / "configs/resnet20.yaml"), "--smoke", "--overrides",
                                           f"train.epochs={EPOCHS} model.params.depth=8"])
    assert result.exit_code == 0, result.output
    (run,) = runs(module_store, "train")
    return module_store, run, data


def test_run_records_config_tags_and_inputs(trained):
    uri, run, _ = trained
    params, tags = run.data.params, run.data.tags
    assert params["model.name"] == "resnet" and params["train.epochs"] == str(EPOCHS)
    # a depth-8 ResNet: 79,050 parameters for 10 classes, 65 fewer for each of the 6 classes this data lacks
    assert params["augment.rotation"] == "10.0" and params["model_parameters"] == str(79_050 - 6 * 65)
    for tag in ("aigc.model_family", "aigc.layout", "aigc.dataset_digest", "mlflow.source.git.commit",
                "aigc.tensorflow_version", "aigc.keras_version"):
        assert tags.get(tag), tag
    assert tags["aigc.layout"] == "gic" and tags["aigc.model_family"] == "resnet"
    # the seed stops early and halves its rate on a plateau: those choices are made on a slice of the training
    # images held out of fitting, so the validation split chooses nothing and its score is held out
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"training", "validation", "selection"} and tags["aigc.select_on"] == "inner"
    # TTA is measured on validation: its choice is cross-fitted, so is the score
    assert tags["aigc.score_on"] == "validation" and tags["aigc.score_fit"] == "cross-fitted"
    assert any(key.startswith("system/") for key in run.data.metrics)
    assert "config.yaml" in artifact_paths(uri, run.info.run_id)


def test_every_epoch_metric_is_logged_once_per_epoch(trained):
    uri, run, _ = trained
    client = MlflowClient(uri)
    for key in EPOCH_KEYS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(EPOCHS)), key
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "epoch/images_per_second"))
    # the best epoch reported is the one the checkpoint kept: the best of its monitored curve, first on ties
    monitor = run.data.params["train.checkpoint_monitor"]
    curve = [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"epoch/{monitor}"),
                                     key=lambda m: m.step)]
    best = int(np.argmin(curve) if "loss" in monitor else np.argmax(curve))
    assert run.data.tags["aigc.best_epoch"] == str(best)
    assert [m.step for m in run.outputs.model_outputs] == [best]  # the logged model is that epoch's output


def test_final_evaluation_and_figures(trained):
    uri, run, _ = trained
    metrics = run.data.metrics
    for key in ("final_accuracy", "final_f1_macro", "final_f1_weighted"):
        assert 0 <= metrics[f"{key}_low"] <= metrics[key] <= metrics[f"{key}_high"] <= 1  # its 95 % interval
    assert metrics["final_log_loss_low"] <= metrics["final_log_loss"] <= metrics["final_log_loss_high"]
    assert metrics["final_images"] == len(pd.read_csv(trained[2] / "val.csv"))
    artifacts = set(artifact_paths(uri, run.info.run_id))
    expected = {"per_class.csv", "confusion_counts.csv", "confusion_matrix.png", "curves.png", "mistakes.png",
                "confusion_examples.html", "val_probabilities.csv"}
    assert {f"evaluation/{name}" for name in expected} <= artifacts
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation"))
    per_class = pd.read_csv(folder / "per_class.csv")
    assert list(per_class.columns) == ["class", "precision", "recall", "f1", "support"] and len(per_class) == 4
    counts = pd.read_csv(folder / "confusion_counts.csv").drop(columns="true").to_numpy()
    assert counts.sum() == per_class["support"].sum()
    assert np.isclose(np.trace(counts) / counts.sum(), metrics["final_accuracy"])
    html = (folder / "confusion_examples.html").read_text()
    assert html.count("<tr") == 5 and "data:image/png;base64," in html  # a header and 4 classes
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_logged_model_loads_and_reproduces_validation_probabilities(trained):
    uri, run, _ = trained
    from aigc.data.cache import Cache
    from aigc.inference import load_model, predict_probabilities

    (cache_dir,) = Path(".aigc-cache").iterdir()
    images = Cache(cache_dir).images("val")
    tags = run.data.tags
    bare = mlflow.keras.load_model(tags["aigc.keras_model_uri"])  # the Keras model: the kept weights
    shipped = tags["aigc.model_uri"] != tags["aigc.keras_model_uri"]  # wrapped with the TTA set that helped
    table = "evaluation/val_probabilities_bare.csv" if shipped else "evaluation/val_probabilities.csv"
    probabilities = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=table))
    logged = probabilities[[c for c in probabilities.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(bare.predict(images.astype("float32"), verbose=0), logged, atol=1e-4)
    assert (probabilities["id"].str.endswith(".png")).all()
    model = load_model(tags["aigc.model_uri"])  # what predict applies: the bare model, or it with its TTA set
    assert tuple(getattr(model, "tta", None) or ("identity",)) == tuple(tags["aigc.tta"].split("+"))
    if shipped:
        views = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="tta/trials.csv"))
        assert views["transforms"].iloc[0] == "identity" and len(views) > 18  # every candidate was tried
    assert predict_probabilities(model, images, 8).shape == logged.shape
    logged_model = mlflow.get_logged_model(tags["aigc.keras_model_uri"].split("/")[-1])
    assert logged_model.source_run_id == run.info.run_id and logged_model.metrics  # best epoch's metrics linked


@pytest.mark.slow  # a recipe smoke run (the ResNet and its tricks): the edit-run loop trains smaller models
def test_deepfake_final_model_trains_smoke_sized(dataset_factory, store, cli):
    result = cli("train", "--data", dataset_factory("deepfake", classes=5, per_class=8, size=40),
                 "--config", ROOT / "configs/deepfake_attempt6.yaml", "--smoke")
    assert result.exit_code == 0, result.output
    (run,) = runs(store, "train")
    assert run.data.tags["aigc.layout"] == "deepfake" and run.data.tags["aigc.metric"] == "accuracy"
    assert run.data.params["model.name"] == "branch_cnn" and "final_accuracy" in run.data.metrics


@pytest.mark.parametrize("override, fragments", [
    ("model.name=transformer", ["unknown model 'transformer'", "resnet"]),
    ("model.name=branch_cnn model.params={} data.image_size=8", ["does not fit image size 8x8"]),  # params: not resnet20's
    ("model.params.width=3", ["model.params.width"]),
])
def test_model_mistakes_are_one_clear_message(dataset_factory, store, cli, override, fragments):
    result = cli("train", "--data", dataset_factory("gic"), "--overrides", override)
    assert_user_error(result, *fragments)
    assert runs(store) == []


def test_unreachable_tracking_server_fails_fast(dataset_factory, cli, monkeypatch, tmp_path):
    """Fast without a clock: the step asks the server once and stops, where MLflow's client would retry
    with backoff for minutes. The "server" accepts each connection and drops it (a reset: unreachable)."""
    listener = socket.create_server(("127.0.0.1", 0))
    attempts = []

    def drop_every_connection():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            attempts.append(connection)
            connection.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        result = cli("train", "--data", dataset_factory("gic"), "--smoke")
    finally:
        listener.close()
    assert_user_error(result, uri, "not reachable")
    assert len(attempts) == 1  # no retry, no backoff
    assert not (tmp_path / ".aigc-cache").exists()  # refused before decoding a single image


def test_resume_of_unknown_run_is_a_clear_error(dataset_factory, store, cli):
    result = cli("train", "--data", dataset_factory("gic"), "--smoke", "--resume", "0123456789abcdef")
    assert_user_error(result, "0123456789abcdef", "not found")


@pytest.mark.slow  # a train run of its own beside the module's: `make test`, not the edit-run loop
def test_untracked_train_writes_results_locally_and_its_model_predicts(dataset_factory, store, cli, tmp_path):
    data = dataset_factory("gic")
    result = cli("train", "--data", data, "--smoke", "--overrides", f"tracking.enabled=false {TINY_MODEL}")
    assert result.exit_code == 0, result.output
    assert runs(store) == []  # nothing reached MLflow
    (folder,) = (tmp_path / "aigc-runs").iterdir()
    assert f"results in {Path('aigc-runs') / folder.name}" in result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    steps = {(key, step) for key, _, _, step in manifest["metrics"]}
    finals = [f"final_{score}{end}" for score in ("accuracy", "f1_macro", "f1_weighted", "log_loss")
              for end in ("", "_low", "_high")]
    tta = [f"final_f1_weighted_{end}" for end in ("with_tta", "with_tta_in_sample", "without_tta")]
    assert {(key, 0) for key in (*EPOCH_KEYS, *finals, *tta, "final_images", "calibration_ece",
                                 "calibration_brier")} == steps
    found = {str(p.relative_to(folder / "artifacts")) for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"config.yaml", "model_summary.txt", "evaluation/confusion_matrix.png", "evaluation/val_probabilities.csv",
            "evaluation/curves.png"} <= found
    # The local model is a model reference like any other.
    predicted = cli("predict", "--data", data, "--model", folder / "model.keras", "--out", tmp_path / "sub.csv")
    assert predicted.exit_code == 0, predicted.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == len(list((data / "test_images").iterdir()))
    # Steps that need MLflow say so instead of running without it.
    assert_user_error(cli("promote", "--overrides", "tracking.enabled=false"), "tracking.enabled", "train")


def test_validation_loss_is_what_keras_evaluate_reports(tmp_path):
    """The logged val_loss is Keras' own validation pass: label smoothing and the activity penalty included."""
    from aigc import training
    from aigc.config import TrainConfig
    from aigc.data.pipeline import eval_dataset
    from aigc.models import build_model

    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (50, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 3, 50)
    train = TrainConfig(label_smoothing=0.1, epochs=1)
    model = build_model("cnn", (32, 32, 3), 3, {"filters": [8, 8, 8], "l2": 1e-2})  # L2 on the Dense's activity too
    assert any(layer.activity_regularizer is not None for layer in model.layers)
    model = training.compile_model(model, train)
    dataset = eval_dataset(images, labels, 3, batch_size=16)
    history = training.fit(model, dataset, dataset, train, tmp_path, [], images_per_epoch=50)
    assert training.restore_best(model, tmp_path)  # the only epoch was saved as the best
    expected = model.evaluate(dataset, verbose=0, return_dict=True)
    assert history.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-5)
    assert history.history["val_accuracy"][0] == pytest.approx(expected["accuracy"])


@pytest.mark.slow  # a train run of its own beside the module's: `make test`, not the edit-run loop
def test_fit_and_record_runs_one_fold_nested_and_predicts_test_images(dataset_factory, store):
    """The core a cross-validation step calls per fold: given arrays, a nested run, test probabilities."""
    from aigc import config, training
    from aigc.tracking import recorders
    from aigc.data import load_data
    from aigc.data.parts import Part
    from aigc.steps.train import fit_and_record

    cfg = config.load(ROOT / "configs/resnet20.yaml", f"{TINY_MODEL} train.epochs=2", smoke=True)
    dataset, cache = load_data(dataset_factory("gic"), cfg.data)
    training.set_seed(cfg.train)
    images, labels, ids = cache.images("train"), dataset.splits["train"].labels, dataset.splits["train"].ids
    half = len(ids) // 2
    parts = [Part(f"fold1-{name}", images[rows], labels[rows], tuple(np.asarray(ids)[rows]), f"digest-{name}")
             for name, rows in (("train", np.arange(half)), ("val", np.arange(half, len(ids))))]
    test_images = cache.images("test")
    test = Part("test", test_images, None, dataset.splits["test"].ids, cache.split_digest("test"))
    with recorders.choose(cfg.tracking).run("cv", "cv") as parent:
        recorder = recorders.choose(cfg.tracking, parent_id=parent.run_id)
        result = fit_and_record(cfg, dataset, *parts, recorder, data_digest=cache.digest, test=test,
                                name="fold1", tags={"aigc.fold": "1"}, in_cv=True)
    run = MlflowClient(store).get_run(result["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.info.run_name == "fold1"
    assert run.info.status == "FINISHED" and run.data.tags["aigc.val_digest"] == "digest-val"
    assert run.data.tags["aigc.fold"] == "1"
    # resnet20 stops early and lowers its rate on a plateau: a slice of the fold's training images chooses,
    # never the fold's own held-out images
    assert run.data.tags["aigc.select_on"] == "inner" and run.data.tags["aigc.score_on"] == "out-of-fold"
    assert {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs} == {
        (f"{dataset.root.name}-fold1-train", "training"), (f"{dataset.root.name}-fold1-val", "validation"),
        (f"{dataset.root.name}-fold1-train-select", "selection")}
    assert result["val_probabilities"].shape == (len(ids) - half, dataset.num_classes)
    assert result["test_probabilities"].shape == (len(test_images), dataset.num_classes)
    model = mlflow.keras.load_model(result["model_uri"])  # the best weights, as logged
    np.testing.assert_allclose(model.predict(test_images.astype("float32"), verbose=0), result["test_probabilities"],
                               atol=1e-5)
    assert result["metrics"]["accuracy"] == pytest.approx(run.data.metrics["final_accuracy"])


def test_gpu_switches_take_effect_from_the_config():
    """Mixed precision, XLA and on-device augmentation are config keys, not code changes."""
    import keras

    from aigc import config, training
    from aigc.models import build_model

    cfg = config.load(ROOT / "configs/resnet20.yaml",
                      "train.mixed_precision=true train.jit_compile=true augment.on_device=true")
    try:
        training.set_seed(cfg.train)
        model = build_model("resnet", (32, 32, 3), 10, {"depth": 8})
        assert training.compile_model(model, cfg.train).jit_compile is True
        assert model.get_layer(index=-3).dtype_policy.name == "mixed_float16"
        assert model.outputs[0].dtype == "float32"
        fitted = training.compile_model(training.with_augmenter(model, cfg.augment, 1), cfg.train)
        assert fitted is not model and fitted.layers[1].name == "augmenter"
        assert fitted.jit_compile is False  # TF's image transform has no XLA kernel: Keras turns XLA off
        assert fitted.count_params() == model.count_params()  # the same weights, augmented in the model
    finally:
        keras.mixed_precision.set_global_policy("float32")
    plain = config.load(ROOT / "configs/resnet20.yaml")
    assert training.with_augmenter(model, plain.augment, 1) is model


@pytest.mark.slow  # a train run of its own beside the module's: `make test`, not the edit-run loop
def test_on_device_augmentation_trains(dataset_factory, store, cli):
    result = cli("train", "--data", dataset_factory("gic"), "--config", ROOT / "configs/resnet20.yaml", "--smoke",
                 "--overrides", f"augment.on_device=true train.jit_compile=true {TINY_MODEL}")
    assert result.exit_code == 0, result.output
    (run,) = runs(store, "train")
    assert run.data.params["augment.on_device"] == "true" and "final_accuracy" in run.data.metrics
