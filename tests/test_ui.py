"""What a user sees: a quiet terminal, and runs, datasets, descriptions and links the MLflow UI shows
(read through the API the UI reads)."""

import os
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import ROOT, TINY_MODEL, artifact_paths, runs

# What `make run` printed before: TensorFlow's absl/C++ start-up lines, MLflow's UserWarnings
# (integer-column schema hint, ambiguous dataset source), Keras' shuffle note, the no-GPU line.
NOISE = ("UserWarning", "absl", "cpu_feature_guard", "oneDNN", "Hint: Inferred schema",
         "can be interpreted in multiple ways", "shuffle=True", "Skip logging GPU metrics", "Traceback")
COMMON = f"train.epochs=2 {TINY_MODEL} data.cache_dir=.aigc-cache"


@pytest.fixture(scope="module")
def flow(module_store, dataset_factory):
    """preprocess, a smoke train in a subprocess (its terminal output kept), promote and predict."""
    from aigc.cli import main

    data = dataset_factory("gic")
    config = str(ROOT / "configs/demo.yaml")
    aigc = lambda *args: CliRunner().invoke(main, [str(a) for a in args])  # noqa: E731
    assert aigc("preprocess", "--data", data, "--config", config, "--overrides", COMMON).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # aigc itself must quiet TF
    trained = subprocess.run([sys.executable, "-m", "aigc.cli", "train", "--data", str(data), "--config", config,
                              "--smoke", "--overrides", COMMON], env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    promoted = aigc("promote", "--config", config, "--overrides", COMMON)
    assert promoted.exit_code == 0, promoted.output
    predicted = aigc("predict", "--data", data, "--config", config, "--overrides", COMMON, "--out", "sub.csv")
    assert predicted.exit_code == 0, predicted.output
    client = MlflowClient(module_store)
    found = {kind: client.get_run(runs(module_store, kind)[0].info.run_id)
             for kind in ("preprocess", "train", "promote", "predict")}
    return {"uri": module_store, "client": client, "output": trained.stdout + trained.stderr, **found}


@pytest.mark.slow
def test_terminal_shows_aigc_and_mlflow_lines_only(flow):
    output = flow["output"]
    assert "train run " in output and "Epoch 1/2" in output
    assert "browse the runs: http://127.0.0.1:5000/#/experiments/" in output  # every command that ends a run
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output}"
    # not a terminal: one line per epoch, no progress bar redrawn with carriage returns
    assert "\r" not in output and re.search(r"^\d+/\d+ - .*val_accuracy", output, re.M)


@pytest.mark.slow
def test_counts_are_params_and_each_split_has_one_name_context_and_digest(flow):
    pre, train = flow["preprocess"], flow["train"]
    assert pre.data.metrics == {}  # no bar charts of counters before the curves
    assert pre.data.params["images_train"] == "48" and pre.data.params["duplicate_groups"] == "0"
    assert "train 48" in pre.data.tags["mlflow.note.content"]
    seen = {}
    for run in (pre, train, flow["predict"]):
        for item in run.inputs.dataset_inputs:
            seen.setdefault(item.dataset.name, set()).add((item.dataset.digest, item.tags[0].value))
    assert all(len(variants) == 1 for variants in seen.values()), seen
    split = {name.rsplit("-", 1)[1]: variants for name, variants in seen.items()}
    assert split["train"] == {(train.data.tags["aigc.train_digest"], "training")}
    assert split["val"] == {(train.data.tags["aigc.val_digest"], "validation")}
    assert split["test"] == {(pre.data.tags["aigc.test_digest"], "test")}
    assert pre.data.tags["aigc.val_digest"] == train.data.tags["aigc.val_digest"]


@pytest.mark.slow
def test_experiment_runs_and_version_are_described(flow):
    client, train = flow["client"], flow["train"]
    experiment = client.get_experiment(train.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs
    assert "final_" in experiment.tags["mlflow.note.content"]
    note = train.data.tags["mlflow.note.content"]
    best = train.data.tags["aigc.best_epoch"]
    assert note.startswith("demo: cnn at 32x32") and f"best epoch {best}" in note
    assert f"`final_f1_weighted` {train.data.metrics['final_f1_weighted']:.4f}" in note
    version = client.get_model_version("demo-classifier", "1")
    assert train.info.run_id in version.description and "Champion: there was no champion yet" in version.description
    assert f"{train.data.metrics['final_f1_weighted']:.4f}" in version.description
    assert "PROMOTED" in flow["promote"].data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_promote_and_predict_link_the_model_version_they_used(flow):
    client = flow["client"]
    model_id = client.get_model_version("demo-classifier", "1").source.removeprefix("models:/")
    assert [m.model_id for m in flow["train"].outputs.model_outputs] == [model_id]
    for kind in ("promote", "predict"):  # the run page lists this model and its registered version
        assert [m.model_id for m in flow[kind].inputs.model_inputs] == [model_id], kind
    assert "demo-classifier" in mlflow.get_logged_model(model_id).tags.get("mlflow.modelVersions", "")
    predict = flow["predict"]
    assert [(i.dataset.name.endswith("-test"), i.tags[0].value) for i in predict.inputs.dataset_inputs] == [(True, "test")]
    shares = {k: v for k, v in predict.data.metrics.items() if k.startswith("predicted/")}
    assert len(shares) == 4 and np.isclose(sum(shares.values()), 1.0)
    assert "version 1" in predict.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_fixed_validation_images_are_logged_per_epoch(flow):
    paths = artifact_paths(flow["uri"], flow["train"].info.run_id, "images")
    pictures = [p for p in paths if p.endswith(".png")]
    keys = {p.split("+step+")[0] for p in pictures}
    steps = {int(p.split("+step+")[1].split("+")[0]) for p in pictures}
    # key epoch/validation_examples_<id>: MLflow names the file after it with its "/" as "~"
    assert len(keys) == 4 and all(k.split("/")[-1].startswith("epoch~validation_examples_") for k in keys)
    assert steps == {0, 1}


def test_shell_quoted_entry_point_params_are_also_logged_plain(store):
    from aigc import tracking

    with mlflow.start_run(experiment_id="0") as run:  # the store's own: an earlier module's may linger
        mlflow.log_params({"overrides": "''", "configs": "'a.yaml b.yaml'", "data": "/d"})  # as `mlflow run` logs
        tracking.log_params({"data_dir": "/d"})
    params = MlflowClient(store).get_run(run.info.run_id).data.params
    assert params["args.overrides"] == "" and params["args.configs"] == "a.yaml b.yaml" and "args.data" not in params


def test_figures_show_whole_ids_and_rounded_tables():
    from aigc import evaluation, figures, pages

    rng = np.random.default_rng(0)
    ids = [f"0b1e7c52-{i:04d}-4b8e-9c1a-1f2e3d4c5b6a.png" for i in range(12)]
    labels = np.arange(12) % 3
    probabilities = rng.dirichlet(np.ones(3), 12)
    images = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    result = evaluation.evaluate(probabilities, labels, ["a", "b", "c"])
    assert all(len(f"{v}") <= 6 for v in result.per_class["precision"])  # 0.6667, not 0.6666666666666666
    page = pages.confusion_html(images, labels, result.predictions, probabilities.max(axis=1), ["a", "b", "c"], ids)
    assert f'title="{ids[0]}"' in page  # hovering a thumbnail names the image
    figure = figures.mistakes_figure(images, probabilities, labels, ids, ["a", "b", "c"])
    texts = [text for axis in figure.axes for text in axis.texts]  # each thumbnail's title
    titles = [text.get_text().replace("\n", "") for text in texts]
    assert titles and all(any(i in t for i in ids) for t in titles)  # whole ids, wrapped not cut
    assert all(text.get_fontsize() >= 9 for text in texts)
    shown = figures.PredictionFigure(images[0], ["a", "b", "c"], 0, ids[0])
    first, later = shown.draw(probabilities[0], 3), shown.draw(probabilities[1], 4)
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    # drawn again, epoch after epoch: nothing of the earlier bars is left
    assert not np.array_equal(first, later)
    assert np.array_equal(later, figures.PredictionFigure(images[0], ["a", "b", "c"], 0, ids[0]).draw(
        probabilities[1], 4))


@pytest.mark.slow
def test_ui_pages_show_runs_descriptions_models_and_the_html_matrix(flow, tmp_path):
    """`make ui-check` on this store: what only a browser shows (headless Debian Chromium)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import ui_check

    reason = ui_check.browser_missing()
    if reason:
        pytest.skip(f"no browser to drive: {reason}")
    assert ui_check.check(flow["uri"], tmp_path / "shots") == []
    assert all((tmp_path / "shots" / f"{shot}.png").read_bytes()[:4] == b"\x89PNG"
               for shot in ("runs-view", "experiment", "experiment-charts", "run-overview", "run-charts",
                            "confusion-matrix", "registered-model", "logged-model"))


def test_confusion_page_shows_a_cells_images_sorts_by_error_and_filters_mistakes(tmp_path):
    """issue 16: the interactive confusion matrix in headless Chromium, from a downloaded file."""
    sys.path.insert(0, str(ROOT / "tests"))
    import ui_check

    from aigc import pages

    reason = ui_check.browser_missing()
    if reason:
        pytest.skip(f"no browser to drive: {reason}")
    from playwright.sync_api import sync_playwright

    # class b is the worst (half of it predicted c), then c, then a (always right)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    predictions = np.array([0] * 10 + [1] * 5 + [2] * 5 + [2] * 8 + [0] * 2)
    confidence = np.linspace(0.4, 0.99, 30)
    ids = [f"img-{i:02d}.png" for i in range(30)]
    images = np.random.default_rng(0).integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "confusion_examples.html"
    path.write_text(pages.confusion_html(images, labels, predictions, confidence, ["a", "b", "c"], ids, per_cell=3))
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=ui_check.shutil.which("chromium"),
                                             args=ui_check.CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(path.as_uri())
        page.click('#matrix td[data-t="1"][data-p="2"]')  # b predicted as c: 5 images, the 3 most confident
        shown = page.eval_on_selector_all("#cell figure", "fs => fs.map(f => f.querySelector('img').title)")
        assert shown == ["img-19.png", "img-18.png", "img-17.png"]
        assert "true b, predicted c: 5 images, the 3 most confident shown" in page.inner_text("#cellhead")
        page.click("#sort")
        rows = page.eval_on_selector_all("#matrix tr[data-t]", "rs => rs.map(r => r.dataset.t)")
        columns = page.eval_on_selector_all("#matrix tr.head th[data-p]", "hs => hs.map(h => h.dataset.p)")
        assert rows == ["1", "2", "0"] and columns == ["1", "2", "0"]  # by error rate: 50%, 20%, 0%
        assert page.eval_on_selector_all('#matrix tr[data-t="1"] td', "ds => ds.map(d => d.dataset.p)") == [
            "1", "2", "0"]  # each row's cells follow the columns
        page.select_option("#ft", "2")
        visible = page.eval_on_selector_all("#mistakes figure:not([hidden])", "fs => fs.map(f => f.dataset.t)")
        assert visible == ["2", "2"] and page.inner_text("#shown") == "2 shown"
        page.select_option("#ft", "")
        page.select_option("#fp", "2")
        visible = page.eval_on_selector_all("#mistakes figure:not([hidden])", "fs => fs.map(f => f.dataset.p)")
        assert visible == ["2", "2", "2"]  # b -> c, the 3 most confident kept per cell
        browser.close()
    assert errors == []
