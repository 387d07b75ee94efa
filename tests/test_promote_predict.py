"""Registry promotion (champion/challenger/rollback, concurrency) and submissions in each layout."""

import csv
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from aigc import tracking
from conftest import ROOT, artifact_paths, assert_user_error, fabricate_run, right_on, runs, untrained

NAME = "test-classifier"
COMMON = f"tracking.registered_model={NAME} tracking.experiment=promote-tests model.params.depth=8 data.batch_size=16"


def aigc(*args):
    from aigc.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def trained(module_store, dataset_factory):
    """Two train runs scored on the same validation images, made through the MLflow client (the tests read their
    records): a near-random one and one right on 80 % of the images, each with a real (untrained) Keras model of
    aigc's for predict to load. Train -> promote -> predict end to end: test_ui, test_servers, test_pipeline."""
    data = dataset_factory("gic", classes=4, per_class=40)
    model, val, probabilities = untrained(data, COMMON)
    made = dict(experiment="promote-tests", registered_model=NAME, metric="f1_weighted", name="demo",
                tags={"aigc.model_family": "cnn", "aigc.config": "demo", "aigc.dataset_digest": "gic-digest"})
    bad = fabricate_run("train", val.ids, val.labels, probabilities, model=model, **made)
    good = fabricate_run("train", val.ids, val.labels, right_on(val.labels, int(0.8 * len(val.ids))),
                         model=untrained(data, COMMON, seed=1)[0], **made)
    client = MlflowClient(module_store)
    scores = {run: client.get_run(run).data.metrics["final_f1_weighted"] for run in (bad, good)}
    assert scores[good] > scores[bad] + 0.1, scores  # the premise of the promotion tests
    return {"uri": module_store, "data": data, "bad": bad, "good": good, "scores": scores}


def promote(*args, overrides=COMMON):
    return aigc("promote", "--config", ROOT / "configs/demo.yaml", "--overrides", overrides, *args)


def aliases(uri, name=NAME):
    return {alias: str(version) for alias, version in MlflowClient(uri).get_registered_model(name).aliases.items()}


def test_promotion_picks_the_better_model_and_refuses_a_worse_one(trained):
    uri, bad, good = trained["uri"], trained["bad"], trained["good"]

    first = promote("--run", bad)
    assert first.exit_code == 0, first.output
    assert "PROMOTED: there was no champion yet" in first.output
    assert aliases(uri) == {"champion": "1", "challenger": "1"}

    cautious = promote(overrides=f"{COMMON} tracking.min_improvement=0.99")
    assert cautious.exit_code == 0, cautious.output
    assert "KEPT champion: not better" in cautious.output and "minimum improvement 0.99" in cautious.output
    assert aliases(uri) == {"champion": "1", "challenger": "2"}  # the good run, registered, not promoted

    missing = trained["data"].parent / "no-such-data"
    assert_user_error(promote("--data", missing), str(missing))  # refused before anything moves
    assert aliases(uri) == {"champion": "1", "challenger": "2"}
    better = promote("--data", trained["data"])
    assert "PROMOTED: better by +" in better.output and "and significant: McNemar p-value" in better.output
    assert "rule significant" in better.output and "images both have held-out predictions for" in better.output
    assert aliases(uri) == {"champion": "2", "challenger": "2", "previous-champion": "1"}
    # the evidence: McNemar's table and the images the two models classify differently, most damning first
    promoted_run = runs(uri, "promote")[0]
    client = MlflowClient(uri)
    table = pd.read_csv(client.download_artifacts(promoted_run.info.run_id, "promotion/mcnemar.csv"))
    differ = pd.read_csv(client.download_artifacts(promoted_run.info.run_id, "promotion/disagreements.csv"))
    champion_table, challenger_table = (tracking.load_probabilities(run) for run in (bad, good))
    assert table.drop(columns="images").to_numpy().sum() == len(champion_table)
    predicted = {run: dict(zip(t["id"], t.filter(like="p_").to_numpy().argmax(1)))
                 for run, t in ((bad, champion_table), (good, challenger_table))}
    assert sorted(differ["id"]) == sorted(i for i in predicted[bad] if predicted[bad][i] != predicted[good][i])
    assert list(differ["loser_confidence"]) == sorted(differ["loser_confidence"], reverse=True) and len(differ)
    challenger_wins = table.set_index("images").loc["champion wrong", "challenger right"]
    assert challenger_wins == (differ["loser"] == "champion").sum()
    page = Path(client.download_artifacts(promoted_run.info.run_id, "promotion/disagreements.html")).read_text()
    assert page.count("<img src='data:image/png;base64,") == min(60, (differ["loser"] == "champion").sum()) + min(
        60, (differ["loser"] == "challenger").sum()) + min(60, (differ["loser"] == "both").sum())
    assert f"{differ['id'][0]}: true " in page and "McNemar p-value" in page
    version = MlflowClient(uri).get_model_version(NAME, "2")
    assert version.run_id == good and version.tags["aigc.run_id"] == good
    assert float(version.tags["aigc.score"]) == pytest.approx(trained["scores"][good])
    assert {"aigc.val_digest", "aigc.dataset_digest", "aigc.config", "aigc.model_family"} <= set(version.tags)
    # Registered through mlflow.register_model: the UI's logged-model page reads this link.
    logged = mlflow.get_logged_model(MlflowClient(uri).get_run(good).data.tags["aigc.model_uri"].split("/")[-1])
    assert [{k: str(v) for k, v in link.items()} for link in json.loads(logged.tags["mlflow.modelVersions"])] == [
        {"name": NAME, "version": "2"}]

    worse = promote("--run", bad)
    assert "KEPT champion: not better: -" in worse.output
    assert aliases(uri)["champion"] == "2"
    assert len(MlflowClient(uri).search_model_versions(f"name='{NAME}'")) == 2  # bad was not registered twice
    (report,) = [r for r in runs(uri, "promote") if r.data.tags["aigc.decision"] == "kept"][:1]
    assert "promotion_report.txt" in artifact_paths(uri, report.info.run_id)

    back = promote("--rollback")
    assert "rolled back champion: version 2 -> 1" in back.output
    assert aliases(uri)["champion"] == "1"
    assert_user_error(promote("--rollback"), "no earlier champion", "versions 1, 2")

    by_hand = promote("--version", "2")
    assert "PROMOTED: promoted by hand" in by_hand.output and aliases(uri)["champion"] == "2"


@pytest.mark.slow
def test_concurrent_promotes_leave_one_consistent_champion(trained):
    overrides = COMMON.replace(NAME, "race-classifier")
    command = [sys.executable, "-m", "aigc.cli", "promote", "--config", str(ROOT / "configs/demo.yaml"),
               "--overrides", overrides, "--run", trained["good"]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"]}
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    versions = MlflowClient(trained["uri"]).search_model_versions("name='race-classifier'")
    assert len(versions) == 1 and versions[0].run_id == trained["good"]
    assert aliases(trained["uri"], "race-classifier") == {"champion": "1", "challenger": "1"}
    assert sum("PROMOTED" in o for o in outputs) == 1


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_gic_submission_has_the_exact_format_and_every_test_id(trained, tmp_path):
    out = tmp_path / "gic.csv"
    result = aigc("predict", "--data", trained["data"], "--config", ROOT / "configs/demo.yaml",
                  "--overrides", COMMON, "--model", f"{NAME}@champion", "--out", out, "--tta", "true")
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"Image,Class\n")
    test_ids = [row[0] for row in _rows(trained["data"] / "test.csv")[1:]]
    rows = _rows(out)[1:]
    assert [row[0] for row in rows] == test_ids and all(row[0].endswith(".png") for row in rows)
    assert all(row[1] in {"0", "1", "2", "3"} for row in rows)
    run = runs(trained["uri"], "predict")[0]
    assert run.data.params["model_version"] == "2" and run.data.params["tta"] == "true"
    assert run.data.tags["aigc.model_version"] == f"{NAME}/2"
    assert {"submission/gic.csv", "predicted_distribution.png"} <= set(artifact_paths(trained["uri"], run.info.run_id))


@pytest.mark.parametrize("layout, header", [("deepfake", b"image_id,label\n"), ("folders", b"image,label\n")])
def test_other_layouts_write_their_own_format(trained, dataset_factory, tmp_path, layout, header):
    data = dataset_factory(layout, classes=3, per_class=10)
    overrides = f"{COMMON} tracking.registered_model={layout}-model data.layout=auto"
    model = untrained(data, overrides, classes=3)[0]  # a model of this competition's classes: the format is what is tested
    model.save(tmp_path / "model.keras")
    out = tmp_path / f"{layout}.csv"
    result = aigc("predict", "--data", data, "--config", ROOT / "configs/demo.yaml", "--overrides", overrides,
                  "--model", tmp_path / "model.keras", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(header)
    ids = [row[0] for row in _rows(out)[1:]]
    if layout == "deepfake":  # the sample submission's order, ids without .png
        assert ids == [row[0] for row in _rows(data / "sample_submission.csv")[1:]]
        assert ids != [row[0] for row in _rows(data / "test.csv")[1:]] and not ids[0].endswith(".png")
    else:  # class names, not numbers, and one row per test image
        assert sorted(ids) == sorted(p.name for p in (data / "test").iterdir())
        assert {row[1] for row in _rows(out)[1:]} <= {"class_00", "class_01", "class_02"}


def test_failing_predict_leaves_the_earlier_submission_intact(trained, copy_dataset, tmp_path):
    data = copy_dataset("gic", classes=4, per_class=40)
    out = tmp_path / "submission.csv"
    out.write_text("Image,Class\nearlier,1\n")
    missing = _rows(data / "test.csv")[3][0]
    (data / "test_images" / missing).unlink()
    result = aigc("predict", "--data", data, "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON,
                  "--out", out)
    assert_user_error(result, missing, "missing")
    assert out.read_text() == "Image,Class\nearlier,1\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_atomic_writer_keeps_the_old_file_when_writing_fails(tmp_path):
    from aigc.data.csv_io import write_csv_atomic

    out = tmp_path / "submission.csv"
    out.write_text("old\n")

    def rows():
        yield ("a", "1")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_csv_atomic(out, ("Image", "Class"), rows())
    assert out.read_text() == "old\n" and list(tmp_path.iterdir()) == [out]


def test_unknown_alias_lists_versions_and_aliases(trained):
    result = aigc("predict", "--data", trained["data"], "--config", ROOT / "configs/demo.yaml",
                  "--overrides", COMMON, "--model", f"{NAME}@staging")
    assert_user_error(result, "alias staging not found", "versions 1, 2", "champion -> 2")


def test_model_for_another_class_count_is_refused(trained, dataset_factory):
    result = aigc("predict", "--data", dataset_factory("deepfake", classes=3, per_class=10),
                  "--config", ROOT / "configs/demo.yaml", "--overrides", f"{COMMON} data.layout=auto")
    assert_user_error(result, "predicts 4 classes", "has 3")


def test_leaderboard_ranks_runs_and_marks_the_champion(trained):
    result = aigc("runs", "--config", ROOT / "configs/demo.yaml", "--overrides", COMMON)
    assert result.exit_code == 0, result.output
    title, header, *rows = result.output.strip().split("\n\n")[0].splitlines()  # one table per validation set
    assert title.startswith("f1_weighted, scored on the validation split (") and "images)" in title
    assert header.split()[:7] == ["rank", "run", "name", "family", "f1_weighted", "95%_interval", "vs_leader"]
    assert trained["good"][:8] in rows[0] and "champion" in rows[0] and rows[0].split()[6] == "leader"
    assert rows[1].split()[6] in ("behind", "within-noise")

    by_accuracy = aigc("runs", "--config", ROOT / "configs/demo.yaml", "--overrides", f"{COMMON} tracking.metric=accuracy")
    _, header, *rows = by_accuracy.output.strip().split("\n\n")[0].splitlines()
    assert header.split()[4] == "accuracy"
    scores = [float(line.split()[4]) for line in rows]
    assert scores == sorted(scores, reverse=True)


def test_logged_model_pins_the_tensorflow_distribution_installed(trained):
    from packaging.utils import canonicalize_name

    # whichever distribution owns the imported package: tensorflow, tensorflow-cpu, tensorflow-macos, tf-nightly...
    owners = [d for d in importlib.metadata.distributions()
              if any(str(f) == "tensorflow/__init__.py" for f in d.files or [])]
    expected = {f"{canonicalize_name(d.metadata['Name'])}=={d.version}" for d in owners}
    requirements = Path(mlflow.artifacts.download_artifacts(
        f"runs:/{trained['good']}/demo/requirements.txt", tracking_uri=trained["uri"])).read_text().split()
    assert expected and expected <= set(requirements)
    assert {line.split("==")[0] for line in requirements} >= {"mlflow", "keras", "numpy"}
