"""Hostile and careless input (issue 17): nothing from an artifact executes, every mistake is one clear message.

One module store holds a real Keras model, a malicious exported SavedModel and hand-written ensemble
descriptions, all logged and registered the way MLflow does; each case is a row of a table run
through the in-process CLI (exit 2, one line, no traceback).
"""

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import ROOT, assert_user_error, runs

NAME = "hostile-classifier"
COMMON = f"tracking.registered_model={NAME} tracking.experiment=hostile data.batch_size=16"
CONFIG = ROOT / "configs/demo.yaml"


def _keras_model(side=32, classes=4):
    import keras

    inputs = keras.Input((side, side, 3))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    return keras.Model(inputs, outputs)


def _malicious_saved_model(folder: Path, target: Path) -> None:
    """A SavedModel whose resource initializer writes `target`: tf.saved_model.load runs it."""
    import tensorflow as tf

    class Payload(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="payload")

        def _initialize(self):
            tf.io.write_file(str(target), "code from the artifact ran")

    module = tf.Module()
    module.payload = Payload()
    tf.saved_model.save(module, str(folder))


def _logged_ensemble(text) -> str:
    """An ensemble model whose ensemble.json is `text(own_model_id)`, as a tampered run would hold it."""
    import tempfile

    model = mlflow.initialize_logged_model(name="ensemble", model_type="aigc-ensemble")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "ensemble.json").write_text(text(model.model_id))
        MlflowClient().log_model_artifacts(model.model_id, folder)
    mlflow.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


@pytest.fixture(scope="module")
def store(module_store, dataset_factory, tmp_path_factory):
    """Version 1 (@good): a real Keras model; version 2 (@evil): an exported SavedModel that writes a file on load."""
    import numpy as np

    from aigc import config as config_module, registry, tracking

    target = tmp_path_factory.mktemp("attack") / "pwned"
    settings = config_module.load(CONFIG, COMMON).tracking
    tracking.connect(settings)
    client = MlflowClient()
    made = {"uri": module_store, "data": dataset_factory("gic", classes=4, per_class=6), "target": target}
    with tracking.run("train", "good") as good:
        made["good_uri"] = tracking.log_keras_model(_keras_model(), np.zeros((2, 32, 32, 3), "float32"))
        tracking.set_tags({"aigc.model_uri": made["good_uri"], "aigc.registered_model": NAME})
    with tracking.run("train", "evil") as evil:
        folder = tmp_path_factory.mktemp("evil-model") / "model"
        (folder / "data").mkdir(parents=True)
        _malicious_saved_model(folder / "data" / "model", target)
        (folder / "MLmodel").write_text("flavors:\n  keras:\n    keras_version: 3.15.1\n    data: data\n"
                                        "    save_exported_model: true\n")
        made["evil_uri"] = tracking.log_model_folder(evil.info.run_id, folder)
        tracking.set_tags({"aigc.model_uri": made["evil_uri"], "aigc.registered_model": NAME})
    made["good_run"], made["evil_run"] = good.info.run_id, evil.info.run_id
    for alias, uri in (("good", made["good_uri"]), ("evil", made["evil_uri"])):
        version = registry.register(NAME, uri, {})
        client.set_registered_model_alias(NAME, alias, version.version)
    member = {"model_uri": made["good_uri"], "weight": 1}
    with tracking.run("ensemble", "descriptions"):
        made["ensembles"] = {
            "self": _logged_ensemble(lambda own: json.dumps(
                {"method": "soft", "members": [member, {"model_uri": f"models:/{own}", "weight": 1}]})),
            "evil_member": _logged_ensemble(lambda own: json.dumps(
                {"method": "soft", "members": [member, {"model_uri": made["evil_uri"], "weight": 1}]})),
            "local_member": _logged_ensemble(lambda own: json.dumps(
                {"method": "soft", "members": [{"model_uri": str(folder), "weight": 1}]})),
            "too_many": _logged_ensemble(lambda own: json.dumps({"method": "soft", "members": [member] * 51})),
            "not_json": _logged_ensemble(lambda own: "{'method': soft"),
            "list": _logged_ensemble(lambda own: "[1, 2]"),
            "bad_method": _logged_ensemble(lambda own: json.dumps({"method": "exec", "members": [member]})),
            "bad_weight": _logged_ensemble(lambda own: json.dumps(
                {"method": "soft", "members": [{"model_uri": made["good_uri"], "weight": "1; rm -rf"}]})),
            "no_uri": _logged_ensemble(lambda own: json.dumps({"method": "soft", "members": [{"weight": 1}]})),
            "bad_tta": _logged_ensemble(lambda own: json.dumps({"method": "soft", "members": [member], "tta": 7})),
        }
        made["ensembles"]["outer"] = _logged_ensemble(lambda own: json.dumps(  # a cycle through another model
            {"method": "soft", "members": [{"model_uri": made["ensembles"]["self"], "weight": 1}]}))
    mlflow.set_experiment("Default")  # what the CLI sets is its own business
    return made


def predict(cli, store, model, out, *more):
    return cli("predict", "--data", store["data"], "--config", CONFIG, "--overrides", COMMON, "--model", model,
               "--out", out, *more)


@pytest.mark.parametrize("reference", ["evil@{alias}", "runs:/{evil_run}/evil", "{evil_run}", "{evil_uri}",
                                       "ensemble:evil_member"])
def test_a_model_whose_loading_runs_code_is_refused_before_it_runs(store, cli, tmp_path, reference):
    """issue 17, fails 1: an exported SavedModel's initializer wrote a file when MLflow loaded it."""
    if reference.startswith("ensemble:"):
        reference = store["ensembles"][reference.split(":")[1]]
    reference = reference.format(alias="evil", **store).replace("evil@evil", f"{NAME}@evil")
    result = predict(cli, store, reference, tmp_path / "out.csv")
    assert_user_error(result, "exported TensorFlow SavedModel", "refuses it")
    assert not store["target"].exists(), "code from the artifact ran"
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("ensemble, fragments", [
    ("self", ["contains itself", "->"]),
    ("outer", ["contains itself"]),
    ("local_member", ["not in the tracking store", "--allow-local-members"]),
    ("too_many", ["51 members", "at most 50"]),
    ("not_json", ["ensemble.json is not valid JSON"]),
    ("list", ["must be a JSON object"]),
    ("bad_method", ["method must be \"hard\" or \"soft\""]),
    ("bad_weight", ["member 1: weight must be a finite number"]),
    ("no_uri", ["member 1 must be an object with a \"model_uri\""]),
    ("bad_tta", ["tta must be a list"]),
])
def test_a_broken_or_hostile_ensemble_description_is_one_clear_message(store, cli, tmp_path, ensemble, fragments):
    result = predict(cli, store, store["ensembles"][ensemble], tmp_path / "out.csv")
    assert_user_error(result, store["ensembles"][ensemble], *fragments)


def test_a_safe_model_still_predicts(store, cli, tmp_path):
    result = predict(cli, store, f"{NAME}@good", tmp_path / "sub" / "out.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub" / "out.csv").read_text().startswith("Image,Class\n")


def _device(tmp):
    """A FIFO stands in for a device node: never /dev/null itself, which unfixed code would replace."""
    os.mkfifo(tmp / "fifo")
    return tmp / "fifo"


def _unwritable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "out.csv"


@pytest.mark.parametrize("out, fragments", [
    (_device, ["is not a regular file"]),
    (lambda tmp: tmp, ["is a directory"]),  # click's own check
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "out.csv", ["is a file, not a folder"]),
    (_unwritable, ["no permission to write"]),
])
def test_predict_refuses_an_output_path_it_cannot_replace_before_predicting(store, cli, tmp_path, out, fragments):
    """issue 17, fails 2: --out /dev/null became a regular file (after predicting); a FIFO here."""
    if os.geteuid() == 0 and out is _unwritable:
        pytest.skip("root writes anywhere")
    before = len(runs(store["uri"], "predict"))
    result = predict(cli, store, f"{NAME}@good", out(tmp_path))
    assert_user_error(result, "--out", *fragments)
    assert len(runs(store["uri"], "predict")) == before  # refused before the model was even loaded
    assert not (tmp_path / "fifo").is_file()  # a device stays a device


def test_allow_local_members_lets_a_local_member_through_to_the_safety_checks(store, cli, tmp_path):
    result = predict(cli, store, store["ensembles"]["local_member"], tmp_path / "out.csv", "--allow-local-members")
    assert_user_error(result, "exported TensorFlow SavedModel")
    assert not store["target"].exists()


@pytest.mark.parametrize("args", [["--version", "99"], ["--rollback"], ["--run", "0" * 32],
                                  ["--overrides", "tracking.registered_model=nothing-here"]])
def test_a_refused_promote_leaves_no_failed_run(store, cli, args):
    """issue 17: a promote with no candidate or a bad version left a FAILED run in the experiment."""
    overrides = [] if "--overrides" in args else ["--overrides", COMMON]
    before = {r.info.run_id for r in runs(store["uri"])}
    result = cli("promote", "--config", CONFIG, *overrides, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert {r.info.run_id for r in runs(store["uri"])} == before


def test_a_model_name_with_a_quote_is_quoted_in_registry_searches(store, cli, tmp_path):
    """A registered model named it's broke the filter string `name='it's'` (a traceback listing versions)."""
    MlflowClient().create_registered_model("it's")
    result = predict(cli, store, "it's@nope", tmp_path / "out.csv")
    assert_user_error(result, "alias nope not found", "model it's has versions none")


def _nonempty(tmp):
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    return tmp / "full"


def _not_utf8(tmp):
    (tmp / "a.csv").write_text("Image,Class\n1.png,0\n")
    (tmp / "b.csv").write_bytes(b"Image,Class\n\xff\xfe.png,0\n")
    return "--csv", tmp / "a.csv", "--csv", tmp / "b.csv"


def _file(tmp):
    (tmp / "file").write_text("x")
    return tmp / "file"


def _damaged_outbox(tmp):
    (tmp / ".aigc-outbox" / "abc").mkdir(parents=True)
    (tmp / ".aigc-outbox" / "abc" / "manifest.json").write_bytes(b"{damaged\xff")
    return ["sync"]


# (command line built from tmp_path, the working directory, fragments of the one-line message): each was a traceback (exit 1)
CASES = {
    "make-dataset into a device": (lambda tmp: ["make-dataset", "--out", _device(tmp)], ["is not a folder"]),
    "make-dataset under a file": (lambda tmp: ["make-dataset", "--out", _file(tmp) / "sub"], ["is a file"]),
    "make-dataset into a full folder": (lambda tmp: ["make-dataset", "--out", _nonempty(tmp)], ["is not empty"]),
    "cache folder is a file": (lambda tmp: ["preprocess", "--data", "{data}", "--config", CONFIG, "--overrides",
                                            f"{COMMON} data.cache_dir={_file(tmp)}"], ["File exists"]),
    "submission not UTF-8": (lambda tmp: ["ensemble", *_not_utf8(tmp), "--out", tmp / "m.csv"],
                             ["b.csv: not UTF-8"]),
    "merged into a device": (lambda tmp: ["ensemble", *_not_utf8(tmp), "--out", _device(tmp)],
                             ["is not a regular file"]),
    "pipeline into a device": (lambda tmp: ["pipeline", "--data", "{data}", "--configs", CONFIG, "--out", _device(tmp)],
                               ["is not a regular file"]),
    "too many members": (lambda tmp: ["ensemble", "--data", "{data}", "--config", CONFIG, "--top-k", "51"],
                         ["at most 50 members"]),
    "more members than configured": (lambda tmp: ["ensemble", "--data", "{data}", "--config", CONFIG, "--top-k", "4",
                                                  "--overrides", "ensemble.max_members=3"],
                                     ["at most 3 members (ensemble.max_members)"]),
    "a run that does not exist": (lambda tmp: ["predict", "--data", "{data}", "--config", CONFIG, "--model",
                                               "runs:/abc/demo", "--out", tmp / "o.csv"], ["cannot load model"]),
    "damaged outbox": (_damaged_outbox, ["manifest.json is damaged", "move"]),
    "a name MLflow's search cannot quote": (lambda tmp: ["promote", "--config", CONFIG, "--overrides",
                                                         "tracking.registered_model=it\"s'"], ["both ' and \""]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_input_is_one_clear_message(store, cli, tmp_path, monkeypatch, case):
    build, fragments = CASES[case]
    monkeypatch.chdir(tmp_path)
    args = [str(a).replace("{data}", str(store["data"])) for a in build(tmp_path)]
    assert_user_error(cli(*args), *fragments)
    assert not (tmp_path / "fifo").is_file()  # a device stays a device
