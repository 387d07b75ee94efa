"""The `main` entry point: every step a child run of main; a second run reuses finished steps."""

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import ROOT, runs



@pytest.mark.slow
def test_main_runs_every_step_as_a_child_and_reuses_finished_ones(dataset_factory, store, monkeypatch, tmp_path):
    from aigc.cli import main

    # Entry points run `python` from PATH: this interpreter's (MLFLOW_NOTES: Projects).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)  # the project's relative config paths, as `mlflow run .` sees them
    data = dataset_factory("gic")
    out = tmp_path / "submission.csv"
    overrides = f"train.epochs=1 data.cache_dir={tmp_path / 'cache'}"
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

    # Edited, not committed: main reuses a step only for the same resolved config and code, so the edited
    # config trains again and the untouched one (and preprocess) is reused
    out.unlink()
    cnn.write_text(cnn.read_text().replace("learning_rate:", "learning_rate: 0.0009 #"))
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("reusing finished run") == 2  # preprocess and the demo train
    assert "[main] train: starting" in second.output
    assert len(runs(store, "train")) == 3 and len(runs(store, "preprocess")) == 1
    assert len(runs(store, "predict")) == 2 and out.is_file()  # registry-dependent steps always run

    # main -P cv=2: the config (the small CNN's, seconds a fold) is cross-validated, and its fold ensemble is
    # promoted and predicts
    cv_args = ["pipeline", "--data", str(data), "--configs", str(cnn), "--cv", "2", "--overrides",
               f"{overrides} tracking.registered_model=demo-cv", "--out", str(out)]
    third = CliRunner().invoke(main, cv_args)
    assert third.exit_code == 0, third.output
    assert "champion: demo-cv version 1" in third.output
    newest = runs(store, "main")[0]
    kinds = sorted(r.data.tags["aigc.kind"] for r in runs(store) if r.data.tags.get("mlflow.parentRunId") ==
                   newest.info.run_id)
    assert kinds == ["cv", "predict", "promote"]  # the data section did not change: preprocess is reused
    assert "[main] preprocess: reusing finished run" in third.output
    (cv_run,) = runs(store, "cv")
    assert MlflowClient(store).get_model_version_by_alias("demo-cv", "champion").run_id == cv_run.info.run_id
    assert out.read_bytes().startswith(b"Image,Class\n")
