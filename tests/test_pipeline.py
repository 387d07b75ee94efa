"""The `main` entry point: every step a child run of main; a second run reuses the finished steps it may."""

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import ROOT, TINY_MODEL, runs



@pytest.mark.slow
def test_main_runs_every_step_as_a_child_and_reuses_finished_ones(dataset_factory, store, monkeypatch, tmp_path):
    from aigc.cli import main

    # Entry points run `python` from PATH: this interpreter's (MLFLOW_NOTES: Projects).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)  # the project's relative config paths, as `mlflow run .` sees them
    data = dataset_factory("gic")
    out = tmp_path / "submission.csv"
    overrides = f"train.epochs=1 {TINY_MODEL} data.cache_dir={tmp_path / 'cache'}"  # both configs: the smallest model
    cnn = tmp_path / "demo_cnn.yaml"  # a config the user edits between two runs of main
    cnn.write_text((ROOT / "configs/demo_cnn.yaml").read_text())
    args = ["pipeline", "--data", str(data), "--configs", f"configs/demo.yaml {cnn}", "--overrides", overrides,
            "--out", str(out)]

    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "champion: demo-classifier version 1" in first.output and f"submission: {out}" in first.output
    assert out.read_bytes().startswith(b"Image,Class\n") and len(out.read_text().splitlines()) == 1 + 8
    (parent,) = runs(store, "main")
    children = [r for r in runs(store) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    kinds = sorted(r.data.tags["aigc.kind"] for r in children)
    assert kinds == ["predict", "preprocess", "promote", "train", "train"]
    assert all(r.info.status == "FINISHED" for r in children)
    # the runs view make run's link opens: kind and competition metric as columns (the browser check shows them)
    view = json.loads(MlflowClient(store).get_experiment(parent.info.experiment_id).tags[
        "mlflow.sharedViewState.aigc-runs"])
    assert {"tags.`aigc.kind`", "metrics.`final_f1_weighted`"} <= set(view["selectedColumns"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "aigc.kind"}]  # main's steps in view

    # Edited, not committed, and cross-validated (main -P cv=2): the data section did not change, so preprocess is
    # reused; the config's fold ensemble is promoted (to its own registered model here) and predicts
    out.unlink()
    cnn.write_text(cnn.read_text().replace("learning_rate:", "learning_rate: 0.0009 #"))
    cv_args = ["pipeline", "--data", str(data), "--configs", str(cnn), "--cv", "2", "--overrides",
               f"{overrides} tracking.registered_model=demo-cv", "--out", str(out)]
    second = CliRunner().invoke(main, cv_args)
    assert second.exit_code == 0, second.output
    assert "champion: demo-cv version 1" in second.output
    assert second.output.count("reusing finished run") == 1 and "[main] preprocess: reusing finished run" in second.output
    newest = runs(store, "main")[0]
    kinds = sorted(r.data.tags["aigc.kind"] for r in runs(store) if r.data.tags.get("mlflow.parentRunId") ==
                   newest.info.run_id)
    assert kinds == ["cv", "predict", "promote"]  # registry-dependent steps always run
    (cv_run,) = runs(store, "cv")
    assert MlflowClient(store).get_model_version_by_alias("demo-cv", "champion").run_id == cv_run.info.run_id
    assert out.read_bytes().startswith(b"Image,Class\n")


def test_main_reuses_a_step_only_for_the_same_config_code_and_data(store, tmp_path):
    """What main asks before it starts a step, read from runs made through the client as `mlflow run` leaves them."""
    import mlflow

    from aigc import tracking
    from aigc.config import load

    config = tmp_path / "demo_cnn.yaml"
    config.write_text((ROOT / "configs/demo_cnn.yaml").read_text())
    digest, code = load(str(config)).digest(), tracking.code_digest()
    client, experiment = MlflowClient(store), mlflow.set_experiment("reuse").experiment_id  # where main searches

    def finished(entry_point, config_digest, dataset, status="FINISHED"):
        run = client.create_run(experiment, tags={"mlflow.project.entryPoint": entry_point,
                                                  tracking.CONFIG_DIGEST: config_digest, tracking.CODE_DIGEST: code,
                                                  "aigc.dataset_digest": dataset})
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    done = finished("train", digest, "data-a")
    finished("train", digest, "data-a", status="FAILED")
    assert tracking.finished_step("train", digest, code, "data-a").info.run_id == done
    assert tracking.finished_step("cv", digest, code, "data-a") is None  # another entry point
    assert tracking.finished_step("train", digest, code, "data-b") is None  # another dataset
    assert tracking.finished_step("train", digest, "other code", "data-a") is None  # aigc's code changed
    config.write_text(config.read_text().replace("learning_rate:", "learning_rate: 0.0009 #"))  # edited, not committed
    for edited in (load(str(config)).digest(), load(str(ROOT / "configs/demo_cnn.yaml"), "train.epochs=1").digest()):
        assert tracking.finished_step("train", edited, code, "data-a") is None  # an override is an edit too
