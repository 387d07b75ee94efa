"""The only module that talks to MLflow about runs: params, metrics, artifacts, models.

Everything else returns plain values and matplotlib figures; this module decides
how they are named and logged. The registry (aliases, versions) is in registry.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from aigc.errors import UserError

MAX_PARAM = 6000  # MLflow's limit on a param value's length


def _offline_errors():
    import requests

    return (mlflow.exceptions.MlflowException, requests.RequestException, ConnectionError, TimeoutError)


OFFLINE_ERRORS = _offline_errors()  # what a call to an unreachable tracking server raises


def connect(settings) -> None:
    """Point MLflow at its store (MLFLOW_TRACKING_URI or ./mlflow.db) and `settings.experiment`.

    A remote server that doesn't answer is reported at once, not after minutes of retries.
    """
    if not settings.enabled:
        raise UserError("tracking.enabled is false, but this step needs MLflow (runs, registry); "
                        "only `train` runs without it. Set tracking.enabled=true")
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        import requests

        # Fail a call within seconds while the server is away (the run buffers and retries),
        # instead of MLflow's default of minutes of backoff that would stall training.
        for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(key, value)

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as error:
            raise UserError(
                f"tracking server {uri} is not reachable ({type(error).__name__}); "
                "start it (make server) or fix MLFLOW_TRACKING_URI"
            ) from None
        _check_login(uri)
    if not os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` chose the experiment already
        mlflow.set_experiment(settings.experiment)


def _check_login(uri: str) -> None:
    """/health needs no login: ask for something that does, so bad credentials fail here, clearly."""
    try:
        MlflowClient().search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as error:
        code = getattr(error, "get_http_status_code", lambda: None)()
        text = str(error)
        if code == 401 or "401" in text:
            raise UserError(f"tracking server {uri} refused the login: set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD to an account of that server") from None
        if code == 403 or "403" in text:
            raise UserError(f"tracking server {uri}: this account may not read experiments; "
                            "ask the server's admin for permission") from None
        raise


@contextlib.contextmanager
def run(kind: str, name: str, run_id: str | None = None, tags: dict | None = None, system_metrics: bool = False,
        parent_id: str | None = None):
    """Start (or resume: `run_id`, or the run `mlflow run` created) a run tagged with its kind.

    `parent_id` nests it under a run that may be active in another process (distributed
    tuning workers). If the server is gone when the run ends, the final status waits in
    the outbox (`aigc sync`).
    """
    nested = mlflow.active_run() is not None
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if run_id and launcher and launcher != run_id and not nested and not parent_id:
        # `mlflow run -P resume=ID` made a run of its own; it stays empty, so say where the work went.
        # (Only for the top-level run: a retried tuning trial inside its tune run is no such case.)
        MlflowClient().set_tag(launcher, "mlflow.note.content", f"Resumed run {run_id}: training continued there.")
    experiment = get_run(parent_id).info.experiment_id if parent_id else None
    active = mlflow.start_run(run_id=run_id, experiment_id=experiment, run_name=None if run_id else name,
                              nested=nested, parent_run_id=None if run_id else parent_id,
                              log_system_metrics=system_metrics or None)
    status = "FAILED"
    try:
        if not run_id:
            mlflow.set_tags({"aigc.kind": kind, **_source_tags(), **(tags or {})})
        yield active
        status = "FINISHED"
    finally:
        _end_run(active.info.run_id, status)


def _end_run(run_id: str, status: str) -> None:
    from aigc.outbox import Outbox

    try:
        mlflow.end_run(status)
    except OFFLINE_ERRORS:  # `aigc sync` sets the status later
        Outbox(run_id).status(status)
        _stop_system_metrics(run_id)


def _stop_system_metrics(run_id: str) -> None:
    """end_run pops the run before telling the server; if that fails the monitor thread must still stop."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    monitor = run_id_to_system_metrics_monitor.pop(run_id, None)
    if monitor:
        monitor.finish()


def current_run_id() -> str:
    return mlflow.active_run().info.run_id


def log_params(params: dict[str, Any]) -> None:
    """Log params, skipping those the run already has (entry-point params, resumed runs)."""
    existing = mlflow.get_run(current_run_id()).data.params
    fresh = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        text = text[:MAX_PARAM]
        if existing.get(key) is None:
            fresh[key] = text
    if fresh:
        mlflow.log_params(fresh)


def log_config(config) -> None:
    """The resolved config: flattened as params and whole as config.yaml."""
    log_params(config.flat())
    mlflow.log_text(config.to_yaml(), "config.yaml")
    mlflow.set_tags({"aigc.config": Path(config.source).stem, "aigc.model_family": config.model.name})


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)


def log_figure(figure, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, path)
    plt.close(figure)


def log_table(frame: pd.DataFrame, path: str) -> None:
    """A table as CSV (readable anywhere; the MLflow UI previews it)."""
    mlflow.log_text(frame.to_csv(index=False), path)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_dict(data: dict, path: str) -> None:
    mlflow.log_dict(data, path)


def log_file(path: str | Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), folder)


def log_dataset(ids, labels, digest: str, source: str, name: str, context: str) -> None:
    """A split as an MLflow dataset input, with our digest (MLflow's reads only 10,000 values)."""
    frame = pd.DataFrame({"id": list(ids)})
    if labels is not None:
        frame["label"] = np.asarray(labels)
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36],
                                      targets="label" if labels is not None else None)
    mlflow.log_input(dataset, context=context)


def log_keras_model(model, sample: np.ndarray, outputs: np.ndarray | None = None, step: int = 0) -> str:
    """The model in the Keras 3 flavour with a signature and pinned requirements; returns its URI.

    `outputs`: the model's outputs for `sample` when already known (saves a predict call).
    """
    from mlflow.models import infer_signature

    signature = infer_signature(sample, model.predict(sample, verbose=0) if outputs is None else outputs)
    info = mlflow.keras.log_model(model, name="model", signature=signature,
                                  pip_requirements=pip_requirements(), step=step)
    return info.model_uri


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs ~7 s per model."""
    import importlib.metadata as md

    return [f"{name}=={md.version(name)}" for name in ("mlflow", "keras", "tensorflow-cpu", "numpy")
            if _installed(name)]


def metric_history(run_id: str, key: str) -> list:
    return MlflowClient().get_metric_history(run_id, key)


def get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; check the run id") from None


def download_artifact(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    dst = dst or tempfile.mkdtemp(prefix="aigc-")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def _installed(name):
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def _source_tags() -> dict[str, str]:
    """Git commit and library versions (mlflow run sets its own git tag; direct CLI runs need ours)."""
    import keras
    import tensorflow as tf

    tags = {"aigc.tensorflow_version": tf.__version__, "aigc.keras_version": keras.__version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


# --- training runs -------------------------------------------------------------

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds", "images_per_second")


def logged_epochs(run_id: str) -> set[int]:
    """Epochs whose metrics a run already has (a resumed run must not log them twice)."""
    return {m.step for m in metric_history(run_id, "val_loss")}


def best_logged(run_id: str, key: str, mode: str) -> tuple[int, float] | None:
    """(epoch, value) of the best logged value of `key`, or None."""
    history = metric_history(run_id, key)
    if not history:
        return None
    pick = min if mode == "min" else max
    best = pick(history, key=lambda m: (m.value, -m.step) if mode == "max" else (m.value, m.step))
    return best.step, best.value


def epoch_history(run_id: str, seen: dict | None = None) -> dict[str, list[float]]:
    """Every epoch metric in epoch order, across resumes: the server's history plus what this
    process saw (`seen`: key -> {epoch: value}), so the curves are whole even offline."""
    merged = {key: dict((seen or {}).get(key, {})) for key in EPOCH_KEYS}
    try:
        for key in EPOCH_KEYS:
            merged[key].update({m.step: m.value for m in metric_history(run_id, key)})
    except OFFLINE_ERRORS:
        pass
    return {key: [values[step] for step in sorted(values)] for key, values in merged.items()}


def epoch_logger(run_id: str, already_logged: set[int]):
    """A Keras callback logging each epoch's metrics with step=epoch, in one atomic batch.

    While the server is away, epochs queue in `pending` and go with the next batch that
    gets through; `flush_into(outbox)` keeps whatever is left at the end.
    """
    import keras
    from mlflow.entities import Metric

    class EpochLogger(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pending: list[Metric] = []
            self.seen: dict[str, dict[int, float]] = {}

        def on_epoch_end(self, epoch, logs=None):
            if epoch in already_logged:  # re-run after a crash between logging and backup
                return
            stamp = int(time.time() * 1000)
            for key in EPOCH_KEYS:
                if key in (logs or {}):
                    self.pending.append(Metric(key, float(logs[key]), stamp, epoch))
                    self.seen.setdefault(key, {})[epoch] = float(logs[key])
            self.send()

        def send(self) -> bool:
            try:
                MlflowClient().log_batch(run_id, metrics=self.pending)
            except OFFLINE_ERRORS as error:
                print(f"aigc: tracking server unreachable ({type(error).__name__}); "
                      f"{len(self.pending)} metric values queued", flush=True)
                return False
            self.pending = []
            return True

        def flush_into(self, box) -> None:
            if self.pending and not self.send():
                box.manifest["metrics"] += [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
                box.save()

    return EpochLogger()


def stage_evaluation(box, evaluation, class_names, images, labels, ids, probabilities, history=None) -> None:
    """Everything a finished train/ensemble run shows, written to its outbox for shipping."""
    from aigc import evaluation as ev

    box.metrics({f"final_{key}": value for key, value in evaluation.metrics.items()})
    box.table(evaluation.per_class, "evaluation/per_class.csv")
    box.table(ev.confusion_table(evaluation, class_names), "evaluation/confusion_counts.csv")
    box.figure(ev.confusion_figure(evaluation, class_names), "evaluation/confusion_matrix.png")
    box.text(ev.confusion_html(images, evaluation, labels, class_names), "evaluation/confusion_examples.html")
    box.figure(ev.mistakes_figure(images, probabilities, labels, ids, class_names), "evaluation/mistakes.png")
    box.table(ev.probabilities_table(ids, labels, probabilities), "evaluation/val_probabilities.csv")
    if history:
        box.figure(ev.curves_figure(history), "evaluation/curves.png")


def ship(box) -> bool:
    """Upload an outbox into its run (idempotent: nothing is logged twice); False if offline."""
    from mlflow.entities import Metric, RunTag

    client, run_id = MlflowClient(), box.run_id
    try:
        run = client.get_run(run_id)
        keys = {m[0] for m in box.manifest["metrics"]}
        logged = {(key, m.step, m.value) for key in keys for m in client.get_metric_history(run_id, key)}
        metrics = [Metric(k, v, t, s) for k, v, t, s in box.manifest["metrics"] if (k, s, v) not in logged]
        tags = [RunTag(k, v) for k, v in box.manifest["tags"].items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        if tags:
            client.log_batch(run_id, tags=tags)
        if any(box.artifacts.iterdir()):
            client.log_artifacts(run_id, str(box.artifacts))
        if box.manifest["model"] and "aigc.model_uri" not in run.data.tags:
            _ship_model(box)
        if box.manifest["status"]:
            client.set_terminated(run_id, box.manifest["status"])
    except OFFLINE_ERRORS:
        return False
    box.discard()
    return True


class _StagedKerasFile:
    """All mlflow.keras.log_model asks of a model is `.save(path)` (given a signature): this
    one copies the outbox's model.keras, so shipping neither loads nor re-saves the model."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, target, **_) -> None:
        shutil.copyfile(self.path, target)


def _ship_model(box) -> None:
    sample = np.load(box.folder / "sample.npz")
    active = mlflow.active_run()
    context = contextlib.nullcontext() if active and active.info.run_id == box.run_id else \
        mlflow.start_run(run_id=box.run_id)
    with context:
        uri = log_keras_model(_StagedKerasFile(box.folder / "model.keras"), sample["inputs"], sample["outputs"],
                              step=box.manifest["model"]["step"])
        mlflow.set_tag("aigc.model_uri", uri)


def sync() -> list[tuple[str, bool]]:
    """Ship every pending outbox: (run id, shipped) pairs."""
    from aigc.outbox import pending

    return [(box.run_id, ship(box)) for box in pending()]


# --- finding runs ------------------------------------------------------------------

def current_experiment_id() -> str:
    return mlflow.active_run().info.experiment_id


def search_runs(filter_string: str, experiment_ids: list[str] | None = None, order_by: list[str] | None = None):
    """Runs of the given experiments (default: the active run's) matching an MLflow filter."""
    ids = experiment_ids or [current_experiment_id()]
    return MlflowClient().search_runs(ids, filter_string, order_by=order_by or ["attributes.start_time DESC"],
                                      max_results=5000)


def load_probabilities(run_id: str) -> pd.DataFrame:
    """The validation probabilities a train or ensemble run logged (id, label, p_0..)."""
    return pd.read_csv(download_artifact(run_id, "evaluation/val_probabilities.csv"))


def run_project_step(project: Path | str, entry_point: str, parameters: dict) -> str:
    """Run an MLflow Project entry point as a child of the active run; returns its run id."""
    from mlflow.projects import run as project_run

    submitted = project_run(str(project), entry_point=entry_point, parameters=parameters, env_manager="local",
                            experiment_id=current_experiment_id(), synchronous=True)
    return submitted.run_id


def finished_step(entry_point: str, parameters: dict, git_commit: str):
    """A FINISHED run of this entry point with these params at this commit (a reusable step), or None."""
    for run in search_runs(f"tags.`mlflow.project.entryPoint` = '{entry_point}' and attributes.status = 'FINISHED'"):
        # MLflow logs entry-point params shell-quoted ('a b' for a value with a space)
        same_params = all(run.data.params.get(k) in (str(v), shlex.quote(str(v))) for k, v in parameters.items())
        if same_params and run.data.tags.get("mlflow.source.git.commit") == git_commit:
            return run
    return None


def git_commit() -> str:
    return _source_tags().get("mlflow.source.git.commit", "")


def experiment_id(name: str) -> str | None:
    experiment = MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


# --- tuning ----------------------------------------------------------------------


def child_runs(parent_id: str, kind: str) -> list:
    """The runs of one aigc.kind nested under `parent_id`, oldest first."""
    found = search_runs(f"tags.mlflow.parentRunId = '{parent_id}' and tags.`aigc.kind` = '{kind}'",
                        [get_run(parent_id).info.experiment_id], ["attributes.start_time ASC"])
    return list(found)


def log_ensemble_model(description: dict) -> str:
    """The ensemble as a logged model holding only its JSON description; returns its URI."""
    from aigc.inference import ENSEMBLE_FILE

    model = mlflow.initialize_logged_model(name="ensemble", source_run_id=current_run_id(), model_type="aigc-ensemble",
                                           tags={"aigc.method": description["method"]})
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / ENSEMBLE_FILE).write_text(json.dumps(description, indent=2))
        MlflowClient().log_model_artifacts(model.model_id, folder)
    mlflow.finalize_logged_model(model.model_id, "READY")
    return f"models:/{model.model_id}"


# --- the leaderboard loop (aigc submit) ------------------------------------------
# Writes to runs that already ended (a predict run, its source run): no active run needed.


def record_on_run(run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    """Add metrics (each a new point in its history, step = points so far) and tags to a finished run."""
    from mlflow.entities import Metric, RunTag

    stamp = int(time.time() * 1000)
    points = [Metric(key, float(value), stamp, len(metric_history(run_id, key))) for key, value in metrics.items()]
    MlflowClient().log_batch(run_id, metrics=points, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def artifact_files(run_id: str, folder: str) -> list[str]:
    """Paths of the files directly in a run's artifact folder."""
    return [item.path for item in MlflowClient().list_artifacts(run_id, folder) if not item.is_dir]


def download_artifact_quietly(run_id: str, path: str, dst: str | Path) -> Path:
    """download_artifact without MLflow's progress bar: `aigc submit` answers in one line."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return download_artifact(run_id, path, dst)
    finally:
        if previous is None:
            del os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"]
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
