"""Shared fixtures: a throwaway sqlite MLflow store per test, generated datasets, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import aigc  # noqa: F401  the process settings a command runs with (quiet TensorFlow, GC thresholds), from the start

os.environ["MLFLOW_AUTOLOGGING_TESTING"] = "true"  # errors MLflow would swallow raise instead
# `make test` runs TEST_JOBS workers side by side: TensorFlow's and OpenBLAS's thread pools, sized to every core by
# default, would spin waiting for cores the other workers hold. Each worker, and every process it starts, gets its
# share of the cores.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, str(max(1, len(os.sched_getaffinity(0)) // _workers)))

ROOT = Path(__file__).resolve().parents[1]
# The per-epoch metrics a train or trial run logs with step=epoch, as the UI lists them
EPOCH_KEYS = ("epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy", "epoch/learning_rate",
              "epoch/epoch_seconds", "epoch/images_per_second")
# The model a test trains when the model family is not what it checks: one block of 8 filters. Measured on 2 cores,
# a first fit of 48 32x32 images takes 1.5 s of CPU and a first predict 0.3 s, against 4.9 s and 0.8 s for the
# smallest ResNet (depth 8): most of it is tracing, which every new model (fold, step, process) pays again.
TINY_CNN = {"filters": [8], "kernel_sizes": [3], "paddings": ["same"], "pool_strides": [2], "dropout_rates": [0.1],
            "dense_units": 8}
TINY_MODEL = f"model.name=cnn model.params={json.dumps(TINY_CNN, separators=(',', ':'))}"  # as overrides: no spaces
# pyproject's `timeout` bounds every test; one marked slow (servers, subprocess training, tuning) gets
# this many seconds instead, unless it names its own. Both include the module fixture it may build.
SLOW_TIMEOUT = 1800


# `make test` runs modules on 2 workers (pytest-xdist --dist loadfile: a module's fixtures train once).
# The longest modules start first, so that no worker is left alone with one at the end; measured with
# --durations on 2 cores, longest first.
LONGEST_MODULES = ["test_pipeline", "test_tune", "test_cv_step", "test_faults", "test_servers", "test_train",
                   "test_ui", "test_hostile", "test_submit", "test_distributed", "test_readme", "test_budget",
                   "test_promote_predict", "test_ensemble", "test_data", "test_decisions", "test_models", "test_cv",
                   "test_audit", "test_compare", "test_crossfit"]


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's own order is kept


@pytest.fixture(autouse=True)
def float32_policy():
    """Each test starts in Keras' default float32: a step's train.precision sets the process-wide dtype
    policy (training.set_seed), which would otherwise leak into whatever test this worker runs next."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def template_store(tmp_path_factory):
    """An sqlite store migrated once per session: migrations take seconds."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def use_store(template, folder: Path, monkeypatch) -> str:
    """Copy the template store into `folder`, make it the tracking URI and the working directory."""
    import mlflow

    db = folder / "mlflow.db"
    shutil.copy(template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(folder)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("Default")  # forget an experiment chosen in an earlier module's store
    return uri


def release_store():
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(template_store, tmp_path, monkeypatch):
    """A fresh copy of the store, made the tracking URI; the test runs in tmp_path."""
    yield use_store(template_store, tmp_path, monkeypatch)
    release_store()


@pytest.fixture(scope="module")
def module_store(template_store, tmp_path_factory):
    """Like `store`, shared by a module's tests (one expensive run, many checks)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield use_store(template_store, tmp_path_factory.mktemp("module-store"), monkeypatch)
        release_store()


@pytest.fixture(scope="session")
def dataset_factory(tmp_path_factory):
    """make(layout, **kwargs) -> a generated dataset folder, built once per argument set."""
    from aigc.data.synthetic import make_dataset

    built = {}

    def make(layout="gic", classes=4, per_class=12, size=32, seed=1):
        key = (layout, classes, per_class, size, seed)
        if key not in built:
            out = tmp_path_factory.mktemp(f"data-{layout}")
            built[key] = make_dataset(out, layout=layout, classes=classes, per_class=per_class, size=size, seed=seed)
        return Path(built[key])

    return make


@pytest.fixture
def copy_dataset(dataset_factory, tmp_path):
    """A private, writable copy of a generated dataset (for tests that break it)."""

    def copy(layout="gic", **kwargs):
        target = tmp_path / f"{layout}-copy"
        shutil.copytree(dataset_factory(layout, **kwargs), target)
        return target

    return copy


def invoke_cli(*args):
    """Run `aigc ARGS...` in-process; returns click's Result (exit_code, output)."""
    from aigc.cli import main

    environ = dict(os.environ)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    finally:  # as with a process: what the command set in its environment ends with it
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture
def cli():
    """invoke_cli, as a fixture."""
    return invoke_cli


def assert_user_error(result, *fragments):
    """Exit 2, one clear message containing every fragment, no traceback."""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output}\n{result.exception!r}"
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in {output!r}"


def runs(uri, kind=None):
    """Every run in the store, newest first (optionally only one aigc.kind)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, order_by=["attributes.start_time DESC"]) if experiments else []
    return [r for r in found if kind is None or r.data.tags.get("aigc.kind") == kind]


def artifact_paths(uri, run_id, folder=None):
    """Every artifact file of a run, recursively."""
    from mlflow import MlflowClient

    client, found = MlflowClient(uri), []
    for item in client.list_artifacts(run_id, folder):
        found += artifact_paths(uri, run_id, item.path) if item.is_dir else [item.path]
    return found


def untrained(data, overrides: str, family: str = "cnn", params: dict | None = None, side: int = 32,
              classes: int = 4, seed: int = 0):
    """A real Keras model of aigc's, never trained, and its probabilities on `data`'s validation split (read
    with configs/demo.yaml + `overrides`): a run made of it is a near-random model whose records (and
    predictions) are real. Returns (model, the validation split, probabilities)."""
    import keras

    from aigc import config as config_module
    from aigc.data import load_data
    from aigc.inference import predict_probabilities
    from aigc.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(family, (side, side, 3), classes, params or TINY_CNN)
    dataset, cache = load_data(data, config_module.load(ROOT / "configs/demo.yaml", overrides).data, progress=False)
    return model, dataset.splits["val"], predict_probabilities(model, cache.images("val"), 16)


def right_on(labels, count: int, classes: int = 4):
    """Confident probabilities that are right on the first `count` images and wrong on the others."""
    import numpy as np

    labels = np.asarray(labels)
    predicted = np.where(np.arange(len(labels)) < count, labels, (labels + 1) % classes)
    return 0.1 / (classes - 1) * (1 - np.eye(classes)[predicted]) + 0.9 * np.eye(classes)[predicted]


def fabricate_run(kind: str, ids, labels, probabilities, *, experiment: str, registered_model: str,
                  metric: str = "accuracy", rows: str = "validation", fit: str = "none", digest: str = "val-digest",
                  name: str | None = None, source: bool = True, model=None, tags: dict | None = None) -> str:
    """A finished train/cv/ensemble run as aigc's steps leave one, made through the real MLflow client without
    training: its held-out probabilities (evaluation/val_probabilities.csv), final scores with their intervals,
    the tags promote and the rankings read, and a logged model (an ensemble description naming a member that
    does not exist: registrable, not loadable; `model`: a real Keras model instead, logged as aigc logs one, so
    the run can be promoted and predict). `source` False: no record of which images the score is on, as an older
    aigc left its runs. `tags`: more tags (e.g. aigc.model_family)."""
    import mlflow
    import numpy as np

    from aigc import ensemble, tracking
    from aigc.evaluation import evaluate, probabilities_table
    from aigc.scores import IMAGES, Source

    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=float)
    mlflow.set_experiment(experiment)
    result = evaluate(probabilities, labels, [str(c) for c in range(probabilities.shape[1])], with_intervals=True)
    with tracking.run(kind, name or kind) as active:
        tracking.log_metrics({f"final_{k}": v for k, v in {**result.metrics, **result.intervals}.items()}
                             | {IMAGES: len(labels)})
        table = probabilities_table(ids, labels, probabilities)
        if rows == "out-of-fold":
            table.insert(2, "fold", np.arange(len(labels)) % 3)
        tracking.log_table(table, "evaluation/val_probabilities.csv")
        if model is None:
            uri = tracking.log_ensemble_model(ensemble.description([{"model_uri": "models:/m-fabricated", "run_id": ""}],
                                                                   [1.0], "soft", "fabricated"))
        else:
            side = model.input_shape[1]
            uri = tracking.log_keras_model(model, np.zeros((2, side, side, 3), "float32"))
        tracking.set_tags({"aigc.metric": metric, "aigc.val_digest": digest, "aigc.registered_model": registered_model,
                           "aigc.model_uri": uri, **(Source(rows, fit).tags() if source else {}), **(tags or {})})
    return active.info.run_id
